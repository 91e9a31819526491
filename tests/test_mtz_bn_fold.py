"""mtz.bn_fold: a layer followed by inference-mode BatchNormalization equals the folded layer."""
import keras
import numpy as np
import pytest

from mtz.bn_fold import batch_norm_affine, fold_batch_norm


def randomise_bn(bn, rng, channels):
    weights = []
    for w in bn.weights:  # gamma, beta (if any), moving_mean, moving_variance
        if "variance" in w.path:
            weights.append(rng.uniform(0.2, 3.0, channels))
        else:
            weights.append(rng.normal(0.0, 1.0, channels))
    bn.set_weights([w.astype(np.float32) for w in weights])


def fold_layer(bn, kernel, bias):
    return fold_batch_norm(kernel, bias, gamma=bn.gamma.numpy() if bn.scale else None,
                           beta=bn.beta.numpy() if bn.center else None,
                           moving_mean=bn.moving_mean.numpy(),
                           moving_variance=bn.moving_variance.numpy(), epsilon=bn.epsilon)


@pytest.mark.parametrize("use_bias, center, scale", [(True, True, True), (False, True, True),
                                                     (True, False, False)])
def test_conv_then_bn_equals_folded_conv(use_bias, center, scale):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
    conv = keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=use_bias)
    bn = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=1e-3)
    y = bn(conv(x), training=False)  # builds both layers
    if use_bias:
        conv.bias.assign(rng.normal(size=5).astype(np.float32))
    randomise_bn(bn, rng, 5)
    expected = bn(conv(x), training=False).numpy()
    kernel, bias = fold_layer(bn, conv.kernel.numpy(), conv.bias.numpy() if use_bias else None)
    assert kernel.shape == (3, 3, 3, 5) and kernel.dtype == np.float32 and bias.shape == (5,)
    folded = keras.layers.Conv2D(5, 3, strides=2, padding="same")
    folded.build(x.shape)
    folded.set_weights([kernel, bias])
    np.testing.assert_allclose(folded(x).numpy(), expected, atol=1e-5, rtol=1e-5)
    assert y.shape == expected.shape


def test_dense_then_bn_equals_folded_dense():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 4)).astype(np.float32)
    dense, bn = keras.layers.Dense(6), keras.layers.BatchNormalization(epsilon=1e-5)
    bn(dense(x), training=False)
    dense.bias.assign(rng.normal(size=6).astype(np.float32))
    randomise_bn(bn, rng, 6)
    expected = bn(dense(x), training=False).numpy()
    kernel, bias = fold_layer(bn, dense.kernel.numpy(), dense.bias.numpy())
    np.testing.assert_allclose(x @ kernel + bias, expected, atol=1e-5, rtol=1e-5)


def test_formula_and_errors():
    kernel = np.arange(6.0).reshape(2, 3)
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -1.0])
    mean, var = np.array([1.0, -1.0, 0.0]), np.array([3.0, 0.0, 8.0])
    k, b = fold_batch_norm(kernel, np.ones(3), gamma=gamma, beta=beta, moving_mean=mean,
                           moving_variance=var, epsilon=1.0)
    sigma = np.array([2.0, 1.0, 3.0])
    np.testing.assert_allclose(k, kernel * gamma / sigma)
    np.testing.assert_allclose(b, gamma * (1.0 - mean) / sigma + beta)
    scale, shift = batch_norm_affine(None, None, mean, var, epsilon=1.0)
    np.testing.assert_allclose(scale, 1 / sigma)
    np.testing.assert_allclose(shift, -mean / sigma)
    with pytest.raises(ValueError, match=r"expected gamma of shape \[3\]"):
        fold_batch_norm(kernel, None, gamma=np.ones(2), beta=None, moving_mean=mean,
                        moving_variance=var)
    with pytest.raises(ValueError, match=r"expected moving_mean of shape \[3\]"):
        fold_batch_norm(kernel, None, gamma=None, beta=None, moving_mean=np.zeros(4),
                        moving_variance=np.ones(4))
    with pytest.raises(ValueError, match="variance \\+ epsilon > 0"):
        fold_batch_norm(kernel, None, gamma=None, beta=None, moving_mean=mean,
                        moving_variance=-np.ones(3), epsilon=0.0)
    with pytest.raises(ValueError, match="expected finite"):
        fold_batch_norm(kernel, None, gamma=None, beta=None, moving_mean=mean * np.nan,
                        moving_variance=var)
    with pytest.raises(ValueError, match="expected a kernel"):
        fold_batch_norm(np.ones(3), None, gamma=None, beta=None, moving_mean=mean,
                        moving_variance=var)
