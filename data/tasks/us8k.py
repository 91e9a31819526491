"""UrbanSound8K: 10 environmental sound classes -> log-mel + delta, 60x41x2.

Piczak's features: 60 mel bands, 1024-sample windows, hop 512 at 22,050 Hz, the
first 41 frames (about 0.95 s) of each clip. Local folder only (no TFDS builder):
`us8k/<split>/<class>/<clip>.wav`, e.g. the official folds arranged into splits.
"""
import tensorflow as tf

from data import features
from data.spec import AUDIO, TaskSpec, register_task

SAMPLE_RATE = 22050
INPUT_SHAPE = (60, 41, 2)
CLASS_NAMES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
               "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")
_SAMPLES = 1024 + 40 * 512


def preprocess(audio):
    """float32 [samples] -> [60 mel bands, 41 frames, (log-mel, delta)]."""
    audio = features.fix_length(audio, _SAMPLES)
    mel = features.log_mel(audio, SAMPLE_RATE, frame_length=1024, frame_step=512,
                           fft_length=1024, num_mel_bins=60)  # [41, 60]
    mel = tf.transpose(mel)
    return tf.stack([mel, features.delta(mel, axis=1)], axis=-1)


SPEC = register_task(TaskSpec(
    name="us8k", kind=AUDIO, input_shape=INPUT_SHAPE, class_names=CLASS_NAMES,
    preprocess=preprocess, tfds_name=None, default_model="us8k", sample_rate=SAMPLE_RATE,
))
