"""Task modules: declared shapes from local folders and tarballs, carving, clear errors."""
import os

import numpy as np
import pytest
import tensorflow as tf

import data
from tests.conftest import write_images


@pytest.mark.parametrize("task", ["mnist", "cifar10", "tts_commands", "mnist_parity",
                                  "tts_directions", "cifar10_animals"])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_pipeline_yields_declared_shapes(tiny_data, task, split):
    spec = data.get(task)
    x, y = next(iter(data.load(task, split, tiny_data, batch_size=4)))
    assert x.shape[1:] == spec.input_shape
    assert x.dtype.name == "float32" and y.dtype.name == "int64"
    assert np.all(np.isfinite(x.numpy()))
    assert 0 <= y.numpy().min() and y.numpy().max() < spec.num_classes


def test_carved_splits_are_disjoint_stratified_and_fixed(tiny_data):
    spec = data.get("mnist")
    parts = {s: data.list_files(spec, s, tiny_data) for s in data.SPLITS}
    sets = {s: set(f.paths) for s, f in parts.items()}
    assert not sets["train"] & sets["test"] and not sets["train"] & sets["validation"]
    assert not sets["validation"] & sets["test"]
    assert sum(len(v) for v in sets.values()) == 200
    assert np.bincount(parts["test"].labels).tolist() == [2] * 10
    assert data.list_files(spec, "test", tiny_data).paths == parts["test"].paths


def test_existing_test_split_is_used_not_carved(tiny_data):
    spec = data.get("cifar10")
    test = data.list_files(spec, "test", tiny_data)
    assert len(test.paths) == 30 and all("/test/" in p for p in test.paths)
    train = data.list_files(spec, "train", tiny_data)
    val = data.list_files(spec, "validation", tiny_data)
    assert len(train.paths) + len(val.paths) == 80  # only validation carved


def test_derived_task_relabels_and_drops(tiny_data):
    animals = data.list_files(data.get("cifar10"), "test", tiny_data)
    assert data.num_examples("cifar10_animals", "test", tiny_data) == 18
    assert len(animals.paths) == 30


def test_same_seed_same_order(tiny_data):
    def labels(seed):
        ds = data.load("mnist", "train", tiny_data, batch_size=200, seed=seed)
        return next(iter(ds))[1].numpy()
    assert np.array_equal(labels(3), labels(3))
    assert not np.array_equal(labels(3), labels(4))


def test_audio_augmentation_is_seeded(tiny_data):
    def first(seed):
        ds = data.load("tts_commands", "train", tiny_data, batch_size=8, seed=seed,
                       shuffle=False, augment=True)
        return next(iter(ds))[0].numpy()
    assert np.array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


def test_directory_of_task_itself_and_tarball_path(tiny_data, tmp_path):
    direct = data.num_examples("mnist", "test", os.path.join(tiny_data, "mnist"))
    assert direct == 20
    tarball = os.path.join(tiny_data, "cifar10_train.tar.gz")
    assert data.num_examples("cifar10", "test", tarball) == 30


def test_unknown_task_suggests():
    with pytest.raises(ValueError, match="did you mean mnist"):
        data.get("mnits")


def test_missing_task_names_places(tiny_data):
    with pytest.raises(FileNotFoundError, match="no data for task 'svhn'.*svhn_"):
        data.load("svhn", "train", tiny_data)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load("mnist", "train", "/nonexistent/folder")


def test_malformed_folders_are_clear(tmp_path):
    write_images(str(tmp_path), "mnist", "train", ["0", "banana"], 2, (28, 28, 1))
    with pytest.raises(ValueError, match=r"class folders \['banana'\]"):
        data.load("mnist", "train", str(tmp_path))
    os.makedirs(tmp_path / "svhn" / "extra")
    with pytest.raises(ValueError, match="splits present: \\['extra'\\]"):
        data.load("svhn", "test", str(tmp_path))
    (tmp_path / "gtsrb_train.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="cannot read tarball"):
        data.load("gtsrb", "train", str(tmp_path))


def test_task_without_tfds_needs_data_dir():
    with pytest.raises(ValueError, match="no TensorFlow Datasets source"):
        data.load("gtsrb", "train")


def test_every_task_declares_consistent_metadata():
    import models
    for name in data.available():
        spec = data.get(name)
        assert spec.num_classes >= 2 and len(spec.input_shape) == 3
        if spec.default_model in ("nwv_mnist", "nwv_cifar10", "nwv_tts", "nwv_gsc"):
            info = models.info(spec.default_model)
            assert info.input_shape == spec.input_shape


def test_limit_without_shuffle_is_a_fixed_mixed_subset(tiny_data):
    def labels():
        ds = data.load("mnist", "train", tiny_data, batch_size=100, shuffle=False, limit=30)
        return np.concatenate([y.numpy() for _, y in ds])
    first = labels()
    assert len(first) == 30 and len(np.unique(first)) > 3
    assert np.array_equal(first, labels())


def test_tfds_builders_of_every_task_construct_offline():
    """The TFDS path works in a fresh install: each task's builder is found and the
    modules TFDS imports lazily when it downloads are installed (nothing is fetched)."""
    import importlib
    import tensorflow_datasets as tfds

    importlib.import_module("importlib_resources")
    names = sorted({data.get(t).tfds_name for t in data.available() if data.get(t).tfds_name})
    assert "mnist" in names and "cifar10" in names
    for name in names:
        builder = tfds.builder(name, try_gcs=False)
        assert builder.info.features is not None, name


def test_an_undecodable_image_is_named(tmp_path):
    write_images(str(tmp_path), "mnist", "train", ["0", "1"], 3, (28, 28, 1))
    bad = tmp_path / "mnist" / "train" / "1" / "broken.png"
    bad.write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="broken.png: cannot decode this image file"):
        for _ in data.load("mnist", "train", str(tmp_path), batch_size=2):
            pass


def test_word_placed_in_noise_keeps_the_word_and_the_snr_range():
    import tensorflow as tf
    from data import features, keywords
    word = 0.1 * np.sin(np.arange(1, 4001, dtype=np.float32) / 7.0)   # no zero sample
    for i in range(8):
        seed = tf.constant([i, 5], tf.int64)
        clean = features.place_in_noise(word, seed, length=16000, noise_probability=0.0).numpy()
        start = int(np.flatnonzero(clean)[0])
        gain = clean[start + 1] / word[1]
        np.testing.assert_allclose(clean[start:start + 4000], gain * word, rtol=1e-5, atol=1e-7)
        assert 0.3 <= gain <= 1.0 and not clean[:start].any() and not clean[start + 4000:].any()
        noisy = features.place_in_noise(word, seed, length=16000, noise_probability=1.0).numpy()
        noise = noisy - clean                    # same seed: same place and gain
        snr = 10 * np.log10(np.mean((gain * word) ** 2) / np.mean(noise ** 2))
        assert 4.9 < snr < 30.1, snr
        np.testing.assert_array_equal(
            noisy, features.place_in_noise(word, seed, length=16000,
                                           noise_probability=1.0).numpy())
    kept = [np.array_equal(keywords.augment(word, tf.constant([i, 1], tf.int64)).numpy(),
                           features.fix_length(word, 16000).numpy()) for i in range(200)]
    assert 0.15 < np.mean(kept) < 0.35          # CLEAN_SHARE = 0.25 of clips untouched


def test_listing_follows_files_added_and_removed(tmp_path):
    """Split listings are kept per process; adding or removing a file is seen."""
    spec = data.get("mnist")
    root = str(tmp_path)
    write_images(root, "mnist", "train", spec.class_names, 3, (28, 28, 1))
    assert len(data.list_files(spec, "train", root).paths) == 30
    write_images(str(tmp_path / "extra"), "mnist", "train", spec.class_names, 4, (28, 28, 1))
    added = os.path.join(root, "mnist", "train", "3", "0099.png")
    os.rename(str(tmp_path / "extra" / "mnist" / "train" / "3" / "0003.png"), added)
    assert added in data.list_files(spec, "train", root).paths
    assert len(data.list_files(spec, "train", root).paths) == 31
    os.remove(os.path.join(root, "mnist", "train", "0", "0000.png"))
    paths = data.list_files(spec, "train", root).paths
    assert len(paths) == 30 and not any(p.endswith(os.path.join("0", "0000.png")) for p in paths)


def test_evaluation_from_kept_batches_equals_loading(tiny_data):
    """`evaluate` on `evaluation_batches` (kept after the first pass) gives the numbers
    of a fresh load, every time."""
    from models import training

    def model(x):     # a fixed linear read-out of the MFCC
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        return flat @ tf.reshape(tf.range(61 * 13 * 10, dtype=tf.float32) % 7 - 3.0,
                                 [61 * 13, 10])

    fresh = training.evaluate(model, "tts_commands", "validation", data_dir=tiny_data,
                              batch_size=16)
    kept = training.evaluation_batches("tts_commands", "validation", data_dir=tiny_data,
                                       batch_size=16)
    for _ in range(2):
        assert training.evaluate(model, "tts_commands", "validation", batches=kept) == fresh


def test_keyword_features_per_batch_equal_per_clip_bit_for_bit():
    """The MFCC runs once per batch (`batch_features`); its values are those of
    each clip computed on its own, so batching changes no result."""
    from data import features, keywords

    rng = np.random.default_rng(0)
    clips = [keywords.preprocess(tf.constant(
        rng.normal(0, 0.1 * (i + 1), n).astype(np.float32)))
        for i, n in enumerate(rng.integers(4000, 20000, 9))]
    batch = keywords.batch_features(tf.stack(clips)).numpy()
    one_by_one = np.stack([features.l2_normalize(features.mfcc(c)).numpy()[..., None]
                           for c in clips])
    assert batch.shape == (9, *keywords.INPUT_SHAPE)
    assert np.array_equal(batch, one_by_one)
