"""Synthetic keyword speech (espeak-ng, ../shared/datasets): 10 keywords -> MFCC 61x13x1.

Clips are trimmed utterances without noise; placing the word anywhere in the
second and adding background noise happen at load time (`augment=True`,
`data.keywords`); `tts_commands_noisy` is the noisy, shifted evaluation variant.
"""
from data.spec import AUDIO, TaskSpec, register_task
from data import keywords

CLASS_NAMES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

SPEC = register_task(TaskSpec(
    name="tts_commands", kind=AUDIO, input_shape=keywords.INPUT_SHAPE,
    class_names=CLASS_NAMES, preprocess=keywords.preprocess, augment=keywords.augment,
    batch_features=keywords.batch_features,
    tfds_name=None, default_model="nwv_tts", sample_rate=keywords.SAMPLE_RATE,
))
