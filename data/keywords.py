"""Shared pieces of the keyword-spotting task modules: 1-s clips at 16 kHz -> MFCC 61x13x1.

Real keyword clips (Speech Commands) carry background noise and the word is not
at a fixed place in the second. Training augmentation covers that
(`features.place_in_noise`): the word anywhere in the second, gain 0.3-1, white
or brown noise on 80% of clips at 5-30 dB SNR. The `<task>_noisy` evaluation
tasks (`data/tasks/noisy_keywords.py`) apply the same corruption once per clip,
deterministically (seeded by the clip's content), to measure robustness.
"""
import tensorflow as tf

from data import features

SAMPLE_RATE = 16000
INPUT_SHAPE = (61, 13, 1)


def preprocess(audio):
    """float32 [samples] -> MFCC [61, 13, 1], padded to 1 s, L2-normalised (NWV GSC input)."""
    audio = features.fix_length(audio, SAMPLE_RATE)
    return features.l2_normalize(features.mfcc(audio, SAMPLE_RATE))[..., tf.newaxis]


def augment(audio, seed):
    """The word anywhere in the second, over noise at 5-30 dB SNR (training only)."""
    return features.place_in_noise(audio, seed, length=SAMPLE_RATE)


def noisy_preprocess(audio):
    """`preprocess` of the clip corrupted like `augment`, with a seed from its content."""
    return preprocess(features.place_in_noise(audio, features.content_seed(audio),
                                              length=SAMPLE_RATE, noise_probability=1.0))
