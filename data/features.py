"""Pure preprocessing functions shared by task modules (tf ops, graph-safe).

Images: scale to [0, 1], optional per-image L2 normalisation (GTSRB); image tasks
train without augmentation.
Audio: pad/crop to a fixed length; the word placed anywhere in the window with
white or brown background noise at a random SNR (what real keyword clips look
like); MFCC and log-mel features with `tf.signal`. Random functions are
stateless: a [2] int seed tensor gives the same result every run.
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


def l2_normalize_each(x):
    """`l2_normalize` of every example of a batch [batch, ...]: each norm is reduced
    on its own, bit for bit as one example's (a reduction over axes 1.. sums in
    another order)."""
    return tf.map_fn(l2_normalize, x)


def fix_length(audio, length):
    """Zero-pads or crops float32 [samples] to `length` samples (keeps the start)."""
    audio = audio[:length]
    return tf.pad(audio, [[0, length - tf.shape(audio)[0]]])


def brown_noise(seed, length: int, *, window: int = 400):
    """Unit-variance brown-ish noise [length]: integrated white noise with its moving
    average over `window` samples removed (a high-pass), as real background hum is
    mostly low-frequency. `seed` is a [2] int stateless seed."""
    white = tf.random.stateless_normal([length + window], seed)
    walk = tf.cumsum(white)
    padded = tf.concat([tf.zeros([1]), tf.cumsum(walk)], 0)
    average = (padded[window:] - padded[:-window]) / float(window)   # trailing mean
    noise = walk[window - 1:] - average
    noise = noise[:length]
    return noise / (tf.math.reduce_std(noise) + 1e-9)


def place_in_noise(audio, seed, *, length: int, noise_probability: float = 0.8,
                   snr_db=(5.0, 30.0), gain=(0.3, 1.0), brown_probability: float = 0.5):
    """A clip as a keyword spotter meets it: the word at a random place in a window of
    `length` samples, scaled by a random gain, over white or brown noise at a random SNR.

    The SNR is relative to the word's own power; with probability 1 −
    `noise_probability` the window stays clean. Stateless: `seed` is a [2] int tensor.

    Args:
      audio: float32 [samples] trimmed utterance (cropped to `length`).
      seed: [2] int seed.
      length: window in samples (16,000: one second at 16 kHz).
      noise_probability: share of clips with noise.
      snr_db: (low, high) uniform range of the SNR in dB.
      gain: (low, high) uniform range of the word's gain.
      brown_probability: share of noisy clips with brown rather than white noise.
    Returns:
      float32 [length] in [-1, 1].
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    audio = audio[:length]
    n = tf.shape(audio)[0]
    offset = tf.random.stateless_uniform([], seeds[0], 0, length - n + 1, tf.int32)
    word = audio * tf.random.stateless_uniform([], seeds[1], gain[0], gain[1])
    placed = tf.pad(word, [[offset, length - n - offset]])
    brown = tf.random.stateless_uniform([], seeds[3]) < brown_probability
    snr = tf.random.stateless_uniform([], seeds[4], snr_db[0], snr_db[1])
    noisy = tf.random.stateless_uniform([], seeds[5]) < noise_probability

    def with_noise():             # only the noise a clip uses is drawn (tf.cond)
        noise = tf.cond(brown, lambda: brown_noise(seeds[2], length),
                        lambda: tf.random.stateless_normal([length], seeds[2]))
        power = tf.reduce_mean(tf.square(word)) + 1e-9
        scale = tf.sqrt(power / (tf.reduce_mean(tf.square(noise)) + 1e-12)
                        / 10.0 ** (snr / 10.0))
        return placed + scale * noise

    return tf.clip_by_value(tf.cond(noisy, with_noise, lambda: placed), -1.0, 1.0)


def content_seed(x):
    """A [2] int seed derived from a tensor's values: the same example always gets the
    same randomness (deterministic corrupted evaluation sets)."""
    digest = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(x), 2 ** 31 - 1)
    return tf.stack([digest, tf.constant(17, tf.int64)])


def log_mel(audio, sample_rate, *, frame_length, frame_step, fft_length, num_mel_bins,
            lower_hz=20.0, upper_hz=None):
    """float32 [..., samples] -> log-mel spectrogram [..., frames, num_mel_bins]
    (log(mel + 1e-6)). A batch gives bit for bit the values of its clips one by one,
    on every CPU: the STFT works frame by frame, and the mel projection is one
    [frames, bins] x [bins, mels] matmul per clip (`map_fn`). A matmul over all the
    batch's rows at once sums some rows in another order on CPUs without AVX-512
    (the kernel's blocking depends on the row count)."""
    stft = tf.signal.stft(audio, frame_length, frame_step, fft_length)
    power = tf.abs(stft) ** 2                                     # [..., frames, bins]
    matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins, fft_length // 2 + 1, sample_rate, lower_hz,
        upper_hz or sample_rate / 2.0)
    clips = tf.reshape(power, tf.concat([[-1], tf.shape(power)[-2:]], 0))
    mel = tf.map_fn(lambda clip: tf.matmul(clip, matrix), clips)
    mel = tf.reshape(mel, tf.concat([tf.shape(power)[:-1], [num_mel_bins]], 0))
    return tf.math.log(mel + 1e-6)


def mfcc(audio, sample_rate=16000, *, frame_length=640, frame_step=256, fft_length=1024,
         num_mel_bins=40, num_coefficients=13):
    """float32 [..., samples] -> MFCC [..., frames, num_coefficients] (a batch: the
    values of its clips one by one, see `log_mel`).

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
