"""Pure preprocessing functions shared by task modules (tf ops, graph-safe).

Images: scale to [0, 1], optional per-image L2 normalisation (GTSRB).
Audio: pad/crop to a fixed length, random time shift and background noise
(Speech Commands practice), MFCC and log-mel features with `tf.signal`.
"""
from __future__ import annotations

import tensorflow as tf


def scale_image(image, size=None):
    """uint8 [H, W, C] -> float32 [h, w, C] in [0, 1], resized to `size` if given."""
    image = tf.cast(image, tf.float32) / 255.0
    if size is not None:
        image = tf.image.resize(image, size)
    return image


def l2_normalize(x):
    """x / ||x||₂ over the whole example (the NWV GTSRB and GSC inputs)."""
    return tf.math.l2_normalize(x, axis=None, epsilon=1e-12)


def fix_length(audio, length):
    """Zero-pads or crops float32 [samples] to `length` samples (keeps the start)."""
    audio = audio[:length]
    return tf.pad(audio, [[0, length - tf.shape(audio)[0]]])


def shift_and_noise(audio, seed, *, max_shift=1600, noise_max=0.1, noise_probability=0.5):
    """Random shift of up to ±`max_shift` samples and additive noise (train only).

    The clip is circularly shifted inside its zero-padded 1-s window; with
    probability `noise_probability` white noise of uniform random amplitude in
    [0, `noise_max`) × the clip's peak is added (otherwise the clip stays clean,
    like validation and test clips). Stateless: `seed` is a [2] int tensor, so a
    pipeline seed gives the same augmentation every run.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    shift = tf.random.stateless_uniform([], seeds[0], -max_shift, max_shift + 1, tf.int32)
    audio = tf.roll(audio, shift, axis=0)
    noisy = tf.random.stateless_uniform([], seeds[3]) < noise_probability
    gain = tf.where(noisy, tf.random.stateless_uniform([], seeds[1], 0.0, noise_max), 0.0)
    noise = tf.random.stateless_normal(tf.shape(audio), seeds[2])
    peak = tf.reduce_max(tf.abs(audio)) + 1e-6
    return audio + gain * peak * noise


def log_mel(audio, sample_rate, *, frame_length, frame_step, fft_length, num_mel_bins,
            lower_hz=20.0, upper_hz=None):
    """float32 [samples] -> log-mel spectrogram [frames, num_mel_bins] (log(mel + 1e-6))."""
    stft = tf.signal.stft(audio, frame_length, frame_step, fft_length)
    power = tf.abs(stft) ** 2
    matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins, fft_length // 2 + 1, sample_rate, lower_hz,
        upper_hz or sample_rate / 2.0)
    return tf.math.log(tf.matmul(power, matrix) + 1e-6)


def mfcc(audio, sample_rate=16000, *, frame_length=640, frame_step=256, fft_length=1024,
         num_mel_bins=40, num_coefficients=13):
    """float32 [samples] -> MFCC [frames, num_coefficients].

    With 16,000 samples (1 s) the defaults give 61 frames of 40 ms every 16 ms,
    the NWV GSC network's 61 x 13 input.
    """
    mel = log_mel(audio, sample_rate, frame_length=frame_length, frame_step=frame_step,
                  fft_length=fft_length, num_mel_bins=num_mel_bins,
                  upper_hz=sample_rate / 2.0)
    return tf.signal.mfccs_from_log_mel_spectrograms(mel)[..., :num_coefficients]


def delta(features, axis=0):
    """First-order difference along time (same length, first row repeated)."""
    padded = tf.concat([tf.gather(features, [0], axis=axis), features], axis=axis)
    return tf.experimental.numpy.diff(padded, axis=axis)
