"""Shared pieces of the keyword-spotting task modules: 1-s clips at 16 kHz -> MFCC 61x13x1."""
import tensorflow as tf

from data import features

SAMPLE_RATE = 16000
INPUT_SHAPE = (61, 13, 1)


def preprocess(audio):
    """float32 [samples] -> MFCC [61, 13, 1], padded to 1 s, L2-normalised (NWV GSC input)."""
    audio = features.fix_length(audio, SAMPLE_RATE)
    return features.l2_normalize(features.mfcc(audio, SAMPLE_RATE))[..., tf.newaxis]


def augment(audio, seed):
    """Pad to 1 s, random shift ±100 ms and background noise (training only)."""
    return features.shift_and_noise(features.fix_length(audio, SAMPLE_RATE), seed)
