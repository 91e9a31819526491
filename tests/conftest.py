"""Shared fixtures: tiny generated datasets in the `<task>/<split>/<class>/<file>` layout.

No test touches the network or ../shared (tests that use ../shared skip when it
is absent). Images encode their class as a bright block at a class-specific
place, keywords as a class-specific tone, so tiny models can learn them.
"""
import os
import shutil
import tarfile
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache():
    """Tarball extractions go to a test cache, never the user's. It persists between
    sessions, so ../shared's tarballs are extracted once (entries are keyed by the
    tarball's path, size and time); the tiny generated tarballs remove theirs."""
    os.environ["ZIPVIRT_CACHE"] = os.path.join(tempfile.gettempdir(),
                                               f"zipvirt-test-cache-{os.getuid()}")


def write_images(root, task, split, class_names, per_class, shape, seed=0):
    """Writes PNGs whose class is a bright 4x4 block at a class-dependent place."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, task, split, cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 60, size=shape).astype(np.uint8)
            top, left = (4 * label) % (h - 4), (7 * label) % (w - 4)
            image[top:top + 4, left:left + 4, :] = 255
            png = tf.io.encode_png(tf.constant(image)).numpy()
            with open(os.path.join(folder, f"{i:04d}.png"), "wb") as handle:
                handle.write(png)


def write_tones(root, task, split, class_names, per_class, seed=0, rate=16000):
    """Writes 16-bit WAVs (0.5-0.9 s) holding a class-dependent tone plus noise."""
    rng = np.random.default_rng(seed)
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, task, split, cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            n = int(rate * rng.uniform(0.5, 0.9))
            t = np.arange(n) / rate
            audio = 0.5 * np.sin(2 * np.pi * (300 + 250 * label) * t)
            audio += 0.02 * rng.standard_normal(n)
            wav = tf.audio.encode_wav(tf.constant(audio[:, None], tf.float32), rate)
            with open(os.path.join(folder, f"{i:04d}.wav"), "wb") as handle:
                handle.write(wav.numpy())


def make_tarball(folder, task, out_path):
    with tarfile.open(out_path, "w:gz") as archive:
        archive.add(os.path.join(folder, task), arcname=task)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A data folder: mnist (train only, folder), cifar10 (as a tarball,
    train+test), tts_commands (train only, folder). Returns its path."""
    import data
    from data import local

    root = str(tmp_path_factory.mktemp("data"))
    write_images(root, "mnist", "train", data.get("mnist").class_names, 20, (28, 28, 1))
    staging = str(tmp_path_factory.mktemp("staging"))
    cifar = data.get("cifar10").class_names
    write_images(staging, "cifar10", "train", cifar, 8, (32, 32, 3), seed=1)
    write_images(staging, "cifar10", "test", cifar, 3, (32, 32, 3), seed=2)
    tarball = os.path.join(root, "cifar10_train.tar.gz")
    make_tarball(staging, "cifar10", tarball)
    write_tones(root, "tts_commands", "train", data.get("tts_commands").class_names, 10)
    yield root
    shutil.rmtree(local.extraction_dir(tarball), ignore_errors=True)


@pytest.fixture(scope="session")
def shared_dir():
    """../shared when present (real data and reference weights), else skip."""
    if not os.path.isdir(os.path.join(SHARED, "reference", "nwv")):
        pytest.skip("../shared is absent")
    return SHARED
