"""Google Speech Commands v2: the 35 keywords, 1-s 16 kHz clips -> MFCC 61x13x1.

TFDS's `speech_commands` builder holds the 12-label v0.02 variant, not these 35
keywords: use a local folder `speech_commands/<split>/<keyword>/<clip>.wav`.
"""
from data.spec import AUDIO, TaskSpec, register_task
from data import keywords

CLASS_NAMES = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow",
               "forward", "four", "go", "happy", "house", "learn", "left", "marvin", "nine",
               "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three",
               "tree", "two", "up", "visual", "wow", "yes", "zero")

SPEC = register_task(TaskSpec(
    name="speech_commands", kind=AUDIO, input_shape=keywords.INPUT_SHAPE,
    class_names=CLASS_NAMES, preprocess=keywords.preprocess, augment=keywords.augment,
    batch_features=keywords.batch_features,
    tfds_name=None, default_model="nwv_gsc", sample_rate=keywords.SAMPLE_RATE,
))
