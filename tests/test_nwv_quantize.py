"""int8 pages: round trip within half a step, the int8 runtime and its SavedModel."""
import numpy as np
import pytest
import tensorflow as tf

from nwv import export, quantize
from nwv.runtime import VirtualizedNetworks
from tests.test_nwv_runtime import _dense, _fisher


def test_round_trip_is_within_half_a_quantization_step():
    rng = np.random.default_rng(0)
    pool = (rng.normal(size=(50, 37)) * rng.uniform(0.01, 3, (50, 1))).astype(np.float32)
    pool[3] = 0.0
    codes, scales = quantize.quantize_pages(pool)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    largest = np.abs(pool).max(axis=1)
    # the smallest grid point 2^(n/16) that covers each page: codes reach 121..127
    steps = 16 * np.log2(scales)
    np.testing.assert_array_equal(steps, np.rint(steps))
    assert np.all(scales * 127 >= largest) and np.all(scales[largest > 0] * 127 < largest[
        largest > 0] * 2 ** (1 / 16) * (1 + 1e-6))
    assert 121 <= np.abs(codes).max() <= 127 and np.all(np.abs(codes).max(axis=1)[
        largest > 0] >= 121)
    back = quantize.dequantize_pages(codes, scales)
    assert np.all(np.abs(back - pool) <= scales[:, None] / 2 + 1e-7)
    np.testing.assert_array_equal(back[3], 0.0)
    with pytest.raises(ValueError, match="finite pages"):
        quantize.quantize_pages(np.full((2, 3), np.nan))


def test_fake_quantize_rounds_forward_and_passes_gradients_straight():
    pool = tf.Variable(np.random.default_rng(1).normal(size=(4, 10)).astype(np.float32))
    with tf.GradientTape() as tape:
        out = quantize.fake_quantize(pool)
        loss = tf.reduce_sum(out * 3.0)
    np.testing.assert_allclose(out.numpy(), quantize.dequantize_pages(
        *quantize.quantize_pages(pool.numpy())), atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, pool).numpy(), 3.0)


def _float_and_int8(tmp_path):
    """(float32 runtime, the same pool loaded with int8 pages) of two small networks."""
    import nwv
    big, small = _dense(0, [16, 8, 3], name="big"), _dense(1, [6, 4], name="small")
    rt = nwv.virtualize({"big": big, "small": small},
                        fisher={"big": _fisher(big, 0), "small": _fisher(small, 1)},
                        page_size=10)
    rt.save(str(tmp_path / "pool"))
    return rt, VirtualizedNetworks.load(str(tmp_path / "pool"), storage="int8")


def test_int8_runtime_runs_the_dequantized_weights_and_exports_them(tmp_path):
    rt, q = _float_and_int8(tmp_path)
    assert q.stored_bytes() * 4 < rt.stored_bytes() * 1.6          # ÷4 plus the scales
    x = np.random.default_rng(2).normal(size=(5, 5)).astype(np.float32)
    for name in ("big", "small"):
        plain = rt.to_keras(name)
        for variable, value in zip(plain.trainable_variables, q.weights(name)):
            variable.assign(value)                                    # the int8 weights
        np.testing.assert_allclose(q.run(name, x).numpy(), plain(x).numpy(), atol=1e-5)
    info = export.export_savedmodel(q, str(tmp_path / "sm"))
    assert info["storage"] == "int8" and export.variable_bytes(str(tmp_path / "sm")) == \
        q.stored_bytes()
    served = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(served.big(x).numpy(), q.run("big", x).numpy(), atol=1e-6)


def test_set_fake_quant_switches_compiled_runs_to_the_int8_weights(tmp_path):
    rt, q = _float_and_int8(tmp_path)
    x = np.random.default_rng(3).normal(size=(5, 5)).astype(np.float32)
    float_logits = rt.run("big", x).numpy()                  # traced without rounding
    assert not np.allclose(float_logits, q.run("big", x).numpy(), atol=1e-6)
    rt.set_fake_quant(True)
    np.testing.assert_allclose(rt.run("big", x).numpy(), q.run("big", x).numpy(), atol=1e-5)
    both = rt.run_all({"big": x, "small": x})
    np.testing.assert_allclose(both["small"].numpy(), q.run("small", x).numpy(), atol=1e-5)
    rt.set_fake_quant(False)
    np.testing.assert_array_equal(rt.run("big", x).numpy(), float_logits)
    with pytest.raises(ValueError, match="already stores int8 pages"):
        q.set_fake_quant(True)


def test_float_pages_are_the_costliest_to_round_and_read_exactly():
    rng = np.random.default_rng(4)
    pool = rng.normal(size=(6, 10)).astype(np.float32)
    # page 2 packs a large kernel weight with small biases that the Fisher says matter:
    # its scale (set by the 3.0) rounds the biases by most of their value
    pool[2, :3] = [3.0, 0.011, 0.017]
    fisher = np.ones_like(pool)
    fisher[2, 1:3] = 1e4
    error = quantize.quantization_error(pool, fisher)
    assert int(np.argmax(error)) == 2
    np.testing.assert_array_equal(quantize.choose_float_pages(pool, fisher, 1), [2])
    assert quantize.choose_float_pages(pool, fisher, 0).size == 0
    np.testing.assert_array_equal(  # ties go to the lower index; the result is sorted
        quantize.choose_float_pages(np.ones((4, 3), np.float32) * 0.3, np.ones((4, 3)), 2),
        [0, 1])
    codes, scales, slots, rows = quantize.quantize_mixed(pool, [4, 2])
    assert slots.dtype == np.int8 and slots.tolist() == [0, 0, 1, 0, 2, 0]
    assert rows.shape == (3, 10) and not rows[0].any()
    back = quantize.dequantize_mixed(codes, scales, slots, rows)
    np.testing.assert_array_equal(back[[2, 4]], pool[[2, 4]])        # bit for bit
    int8_only = quantize.dequantize_pages(*quantize.quantize_pages(pool))
    np.testing.assert_array_equal(back[[0, 1, 3, 5]], int8_only[[0, 1, 3, 5]])
    for bad in ([2, 2], [6], [-1]):
        with pytest.raises(ValueError, match="distinct pages"):
            quantize.quantize_mixed(pool, bad)
    with pytest.raises(ValueError, match="float pages <= 6"):
        quantize.choose_float_pages(pool, fisher, 7)
    with pytest.raises(ValueError, match="non-negative Fisher"):
        quantize.quantization_error(pool, -fisher)
    with pytest.raises(ValueError, match="Fisher of the pool's shape"):
        quantize.quantization_error(pool, fisher[:3])


def test_int8_runtime_with_float_pages_runs_them_exactly_and_exports_them(tmp_path):
    rt, q = _float_and_int8(tmp_path)
    pool_dir = str(tmp_path / "pool")
    mixed = VirtualizedNetworks.load(pool_dir, storage="int8", float_pages=2)
    expected = quantize.choose_float_pages(rt.pool_array(), rt.page_fisher(), 2)
    np.testing.assert_array_equal(mixed.float_pages, expected)
    pool = mixed.pool_array()
    np.testing.assert_array_equal(pool[expected], rt.pool_array()[expected])
    others = np.setdiff1d(np.arange(pool.shape[0]), expected)
    np.testing.assert_array_equal(pool[others], q.pool_array()[others])
    m, page = pool.shape
    assert mixed.stored_bytes() == q.stored_bytes() + m + 4 * 3 * page
    x = np.random.default_rng(5).normal(size=(5, 5)).astype(np.float32)
    for name in ("big", "small"):
        plain = rt.to_keras(name)
        for variable, value in zip(plain.trainable_variables, mixed.weights(name)):
            variable.assign(value)
        np.testing.assert_allclose(mixed.run(name, x).numpy(), plain(x).numpy(), atol=1e-5)
    info = export.export_savedmodel(mixed, str(tmp_path / "sm"))
    assert export.variable_bytes(str(tmp_path / "sm")) == mixed.stored_bytes()
    served = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(served.big(x).numpy(), mixed.run("big", x).numpy(), atol=1e-6)
    assert info["storage"] == "int8"
    with pytest.raises(ValueError, match="needs storage='int8'"):
        VirtualizedNetworks.load(pool_dir, float_pages=1)
    without_fisher = VirtualizedNetworks.load(pool_dir)
    with pytest.raises(ValueError, match="no network has one"):
        VirtualizedNetworks(without_fisher.pool_array(),
                            {n: without_fisher.spec(n) for n in without_fisher.names},
                            storage="int8", float_pages=1)


def test_fisher_chooses_a_finer_scale_that_clips_weights_the_networks_ignore():
    # page 0: one large weight the networks are insensitive to, small ones they are not
    pool = np.array([[2.0, 0.013, -0.021, 0.034, 0.05], [0.4, -0.3, 0.2, 0.1, 0.0]],
                    np.float32)
    fisher = np.array([[0.0, 1e3, 1e3, 1e3, 1e3], [1.0] * 5], np.float32)
    plain = quantize.page_scales(pool)
    scales = quantize.page_scales(pool, fisher)
    steps = 16 * np.log2(scales)
    np.testing.assert_array_equal(steps, np.rint(steps))               # on the grid
    # page 0: more than an octave finer (the search ends at two); the 2.0 clips to 127
    assert plain[0] / 4 * (1 - 1e-6) <= scales[0] < plain[0] / 2
    codes, same = quantize.quantize_pages(pool, fisher)
    np.testing.assert_array_equal(same, scales)
    assert codes[0, 0] == 127
    assert quantize.quantization_error(pool, fisher)[0] < \
        quantize.quantization_error(pool, fisher, plain)[0] / 10
    # without Fisher (or with zero Fisher) the max |w| scale
    np.testing.assert_array_equal(quantize.page_scales(pool, np.zeros_like(fisher)), plain)
    rng = np.random.default_rng(6)
    pool = (rng.normal(size=(40, 30)) * rng.uniform(0.01, 2, (40, 1))).astype(np.float32)
    fisher = rng.exponential(size=pool.shape).astype(np.float32) * (rng.random(pool.shape) > .2)
    chosen = quantize.quantization_error(pool, fisher)
    assert np.all(chosen <= quantize.quantization_error(pool, fisher,
                                                        quantize.page_scales(pool)))
    # the straight-through rounding of quantisation-aware optimisation picks the same
    np.testing.assert_allclose(
        quantize.fake_quantize(tf.constant(pool), tf.constant(fisher)).numpy(),
        quantize.dequantize_pages(*quantize.quantize_pages(pool, fisher)), atol=1e-6)
    with pytest.raises(ValueError, match="positive scales"):
        quantize.encode(pool, np.zeros(40, np.float32))


def test_int8_storage_uses_the_networks_fisher_for_its_scales(tmp_path):
    rt, q = _float_and_int8(tmp_path)
    pool, fisher = rt.pool_array(), rt.page_fisher()
    np.testing.assert_array_equal(q.page_scales.numpy(), quantize.page_scales(pool, fisher))
    assert not np.array_equal(q.page_scales.numpy(), quantize.page_scales(pool))
    plain = VirtualizedNetworks.load(str(tmp_path / "pool"), storage="int8", int8_scales="max")
    np.testing.assert_array_equal(plain.page_scales.numpy(), quantize.page_scales(pool))
    # a float runtime loaded without Fisher quantizes (for export) as the int8 one stores
    without = VirtualizedNetworks.load(str(tmp_path / "pool"))
    assert without.page_fisher() is None
    codes, scales, _, _ = without.quantize_pool(without.pool_array())
    np.testing.assert_array_equal(codes, q.page_codes.numpy())
    np.testing.assert_array_equal(scales, q.page_scales.numpy())
    with pytest.raises(ValueError, match="int8_scales"):
        VirtualizedNetworks.load(str(tmp_path / "pool"), storage="int8", int8_scales="mse")
