"""Shared pieces of the keyword-spotting task modules: 1-s clips at 16 kHz -> MFCC 61x13x1.

Real keyword clips (Speech Commands) carry background noise and the word is not
at a fixed place in the second. Training augmentation covers that
(`features.place_in_noise`): for three clips in four the word anywhere in the
second, gain 0.3-1, white or brown noise on 80% of them at 5-30 dB SNR; the
fourth stays clean and at the start, as clean test clips are. The `<task>_noisy` evaluation
tasks (`data/tasks/noisy_keywords.py`) apply the same corruption once per clip,
deterministically (seeded by the clip's content), to measure robustness.
"""
import tensorflow as tf

from data import features

SAMPLE_RATE = 16000
INPUT_SHAPE = (61, 13, 1)


def preprocess(audio):
    """float32 [samples] -> [16000]: the clip padded or cropped to 1 s (per clip; the
    MFCC is computed per batch, `batch_features`)."""
    return features.fix_length(audio, SAMPLE_RATE)


def batch_features(audio):
    """float32 [batch, 16000] -> MFCC [batch, 61, 13, 1], each clip L2-normalised (the
    NWV GSC input). Bit for bit the clips' MFCCs one by one, in one vectorised call."""
    mfcc = features.mfcc(audio, SAMPLE_RATE)
    return features.l2_normalize_each(mfcc)[..., tf.newaxis]


# Share of training clips kept clean and at the start of the second, as clean test clips
# are; the others are placed anywhere over noise. Measured on tts_commands (nwv_tts,
# 60 epochs): all clips placed in noise gave 70% clean / 87% noisy test accuracy, a
# quarter kept clean 92% / 88%.
CLEAN_SHARE = 0.25


def augment(audio, seed):
    """A quarter of the clips clean (padded to 1 s), the others with the word anywhere in
    the second, 80% of those over noise at 5-30 dB SNR (training only)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    return tf.cond(tf.random.stateless_uniform([], seeds[1]) < CLEAN_SHARE,
                   lambda: features.fix_length(audio, SAMPLE_RATE),
                   lambda: features.place_in_noise(audio, seeds[0], length=SAMPLE_RATE))


def noisy_preprocess(audio):
    """The 1-s clip corrupted like `augment`, with a seed from its content."""
    return features.place_in_noise(audio, features.content_seed(audio), length=SAMPLE_RATE,
                                   noise_probability=1.0)
