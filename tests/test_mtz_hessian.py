"""mtz.hessian: known answers, chunking, conv patches against TensorFlow."""
import numpy as np
import pytest
import tensorflow as tf

from mtz import hessian


def test_layer_hessian_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    h = hessian.layer_hessian(x, bias=False, damping=0.0)
    np.testing.assert_allclose(h, np.array([[35.0, 44.0], [44.0, 56.0]]) / 3, rtol=1e-15)
    hb = hessian.layer_hessian(x, bias=True, damping=0.0)
    expected = np.array([[35.0, 44.0, 9.0], [44.0, 56.0, 12.0], [9.0, 12.0, 3.0]]) / 3
    np.testing.assert_allclose(hb, expected, rtol=1e-15)
    assert hb.dtype == np.float64


def test_relative_damping():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    plain = hessian.layer_hessian(x, bias=True, damping=0.0)
    damped = hessian.layer_hessian(x, bias=True, damping=0.1)
    lam = 0.1 * np.mean(np.diag(plain))
    np.testing.assert_allclose(damped, plain + lam * np.eye(3), rtol=1e-14)
    # An all-zero Hessian gets the absolute damping, so it is positive definite.
    zero = hessian.layer_hessian(np.zeros((4, 3)), bias=False, damping=1e-6)
    np.testing.assert_allclose(zero, 1e-6 * np.eye(3))
    np.linalg.cholesky(hessian.layer_hessian(np.ones((2, 5)), damping=1e-6))


def test_chunked_and_streamed_equal_one_shot():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((103, 7)).astype(np.float32)
    one = hessian.layer_hessian(x, damping=0.0)
    x64 = np.c_[x.astype(np.float64), np.ones(103)]
    np.testing.assert_allclose(one, x64.T @ x64 / 103, rtol=1e-12)
    chunked = hessian.layer_hessian(x, damping=0.0, chunk_rows=5)
    acc = hessian.HessianAccumulator(7, bias=True, chunk_rows=3)
    for start, stop in [(0, 1), (1, 40), (40, 41), (41, 103)]:
        acc.update(x[start:stop])
    assert acc.count == 103 and acc.dim == 8
    np.testing.assert_allclose(chunked, one, rtol=1e-12)
    np.testing.assert_allclose(acc.result(damping=0.0), one, rtol=1e-12)
    np.testing.assert_allclose(acc.result(1e-3), hessian.layer_hessian(x, damping=1e-3),
                               rtol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3,)), "expected inputs of shape"),
    (np.array([[1.0, np.nan]]), "expected finite inputs"),
])
def test_hessian_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        hessian.layer_hessian(bad)


def test_accumulator_errors():
    acc = hessian.HessianAccumulator(3)
    with pytest.raises(ValueError, match="at least one sample"):
        acc.result()
    with pytest.raises(ValueError, match=r"expected inputs of shape \[n, 3\], received \(2, 4\)"):
        acc.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="damping"):
        acc.update(np.ones((2, 3))).result(damping=-1.0)


CASES = [  # (input shape, kernel, strides, padding, dilation)
    ((2, 7, 9, 3), (3, 3), (1, 1), "valid", 1),
    ((2, 7, 9, 3), (3, 3), (1, 1), "same", 1),
    ((2, 7, 9, 3), (3, 2), (2, 2), "valid", 1),
    ((2, 7, 9, 3), (3, 3), (2, 2), "same", 1),
    ((1, 8, 8, 2), (2, 2), (2, 2), "same", 1),
    ((1, 9, 10, 2), (3, 3), (1, 1), "same", 2),
]


@pytest.mark.parametrize("shape, kernel_size, strides, padding, dilation", CASES)
def test_conv_patches_match_tensorflow(shape, kernel_size, strides, padding, dilation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, shape[3], 4)).astype(np.float32)
    patches = hessian.conv_patches(x, kernel_size, strides, padding, dilation=dilation)
    conv = tf.nn.conv2d(x, kernel, strides=strides, padding=padding.upper(),
                        dilations=dilation).numpy()
    assert patches.shape == (conv.shape[0] * conv.shape[1] * conv.shape[2],
                             kernel_size[0] * kernel_size[1] * shape[3])
    np.testing.assert_allclose(patches @ kernel.reshape(-1, 4), conv.reshape(-1, 4),
                               rtol=1e-4, atol=1e-4)
    if strides == (1, 1) or dilation == 1:  # extract_patches: rates with strides 1 only
        tf_patches = tf.image.extract_patches(
            x, sizes=[1, *kernel_size, 1], strides=[1, *strides, 1],
            rates=[1, dilation, dilation, 1], padding=padding.upper()).numpy()
        np.testing.assert_array_equal(patches, tf_patches.reshape(patches.shape))


def test_conv_patch_errors():
    with pytest.raises(ValueError, match="padding 'valid' or 'same'"):
        hessian.conv_patches(np.zeros((1, 4, 4, 1)), 3, padding="full")
    with pytest.raises(ValueError, match=r"expected x of shape \[N, H, W, C\]"):
        hessian.conv_patches(np.zeros((4, 4, 1)), 3)
    with pytest.raises(ValueError, match="size >= 5"):
        hessian.conv_patches(np.zeros((1, 4, 4, 1)), 3, dilation=2)


def test_conv_layer_hessian_full_and_chunked():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6, 6, 3))
    for padding in ("valid", "same"):
        patches = hessian.conv_patches(x, 3, 2, padding)
        expected = hessian.layer_hessian(patches, damping=1e-4)
        got = hessian.conv_layer_hessian(x, 3, 2, padding, damping=1e-4, chunk_rows=10)
        assert got.shape == (28, 28)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_conv_layer_hessian_per_tap():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((4, 5, 5, 3)), 0.0) + 1.0  # positive means
    h = hessian.conv_layer_hessian(x, (2, 3), padding="same", per_tap=True, damping=0.0)
    channel = x.reshape(-1, 3).T @ x.reshape(-1, 3) / 100
    assert h.shape == (19, 19)
    for tap in range(6):
        block = slice(3 * tap, 3 * tap + 3)
        np.testing.assert_allclose(h[block, block], channel, rtol=1e-12)
        h[block, block] = 0.0
    assert h[-1, -1] == 1.0
    h[-1, -1] = 0.0
    assert not h.any()  # block diagonal, bias decoupled
    full = hessian.conv_layer_hessian(x, (2, 3), padding="same", per_tap=True)
    assert np.linalg.eigvalsh(full).min() > 0


def test_alpha_helpers():
    h_a, h_b = np.eye(2), 3 * np.eye(2)
    a, b = hessian.alpha_scaled(h_a, h_b)
    np.testing.assert_array_equal(a, h_a)
    np.testing.assert_array_equal(b, h_b)
    a, b = hessian.alpha_scaled(h_a, h_b, alpha=0.25)
    np.testing.assert_allclose(a, 0.5 * h_a)
    np.testing.assert_allclose(b, 1.5 * h_b)
    for bad in (-0.1, 1.5, "x", None):
        with pytest.raises(ValueError, match=r"expected alpha in \[0, 1\]"):
            hessian.check_alpha(bad)


@pytest.mark.parametrize("kind,per_tap", [("dense", False), ("conv", False), ("conv", True)])
def test_tensorflow_moments_give_the_numpy_hessian(kind, per_tap):
    """mtz.probes (TensorFlow, float64, reducible over replicas) equals mtz.hessian."""
    import keras
    from mtz import probes
    rng = np.random.default_rng(5)
    if kind == "dense":
        inp = keras.Input((3, 4, 2))
        flat = keras.layers.Flatten()(inp)
        model = keras.Model(inp, keras.layers.Dense(3, name="fc")(flat))
        x = rng.normal(size=(50, 3, 4, 2)).astype(np.float32)
        select = np.array([1, -1])                         # channel 1, then a zero channel
        taps = 12
        cols = x.reshape(50, taps, 2)[:, :, [1, 0]]
        cols[:, :, 1] = 0.0
        expected = hessian.layer_hessian(cols.reshape(50, -1), damping=1e-6)
    else:
        inp = keras.Input((7, 6, 3))
        model = keras.Model(inp, keras.layers.Conv2D(4, 3, strides=2, padding="same",
                                                     name="conv")(inp))
        x = rng.normal(size=(20, 7, 6, 3)).astype(np.float32)
        select = np.array([2, 0])
        taps = 9
        expected = hessian.conv_layer_hessian(x[..., [2, 0]], 3, 2, "same", damping=1e-6,
                                              per_tap=per_tap)
    geometry = probes.LayerGeometry(kind, taps, select, kernel_size=(3, 3), strides=(2, 2),
                                    padding="same", per_tap=per_tap)
    xtx, colsum, count = probes.layer_moments(model, "fc" if kind == "dense" else "conv", x,
                                              geometry, batch_size=16)
    if per_tap:
        acc = hessian.HessianAccumulator(len(select), bias=False).add_moments(xtx, colsum, count)
        got = hessian.add_damping(hessian.per_tap_hessian(acc.result(0.0), taps), 1e-6)
    else:
        got = hessian.HessianAccumulator(geometry.dim).add_moments(xtx, colsum, count).result(1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
