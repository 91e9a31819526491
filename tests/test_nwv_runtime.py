"""nwv.runtime: executing networks from the shared pool equals plain Keras execution."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nwv import api, pages, state
from nwv.runtime import NetworkSpec, VirtualizedNetworks, check_supported


def _dense(seed, widths, inputs=5, name="tiny"):
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((inputs,))
    for i, w in enumerate(widths[:-1]):
        x = keras.layers.Dense(w, activation="relu", name=f"fc{i}")(x)
    return keras.Model(inp, keras.layers.Dense(widths[-1], name="logits")(x), name=name)


def _fisher(model, seed):
    rng = np.random.default_rng(seed)
    return [rng.gamma(0.5, size=v.shape).astype(np.float32) for v in model.trainable_variables]


@pytest.fixture(scope="module")
def pair():
    big, small = _dense(0, [16, 8, 3], name="big"), _dense(1, [6, 4], name="small")
    originals = {m.name: [v.numpy().copy() for v in m.trainable_variables]
                 for m in (big, small)}
    rt = api.virtualize({"small": small, "big": big},
                        fisher={"small": _fisher(small, 1), "big": _fisher(big, 0)},
                        page_size=10, matching="optimal")
    return rt, big, small, originals


def test_tiny_pool_execution_equals_keras(pair):
    rt, *_ = pair
    x = np.random.default_rng(2).normal(size=(9, 5)).astype(np.float32)
    for name in ("big", "small"):
        plain = rt.to_keras(name)
        np.testing.assert_allclose(rt.run(name, x).numpy(), plain(x).numpy(), atol=1e-6)
        rt.switch(name)
        assert rt.active == name
        np.testing.assert_allclose(rt(x).numpy(), plain(x).numpy(), atol=1e-6)


def test_unshared_pages_are_bit_exact_and_callers_models_untouched(pair):
    rt, big, small, originals = pair
    occupancy = np.zeros(rt.page_pool.shape[0], int)
    for name in rt.names:
        np.add.at(occupancy, rt.page_table(name), 1)
    assert rt.page_pool.shape[0] == rt.layout("big").n_pages     # largest network sets m
    assert np.any(occupancy == 2) and np.any(occupancy == 1)
    for model in (big, small):
        own, _ = pages.paginate(originals[model.name], 10)
        table = rt.page_table(model.name)
        exclusive = occupancy[table] == 1
        pool_pages = rt.pool_array()[table]
        assert pool_pages[exclusive].tobytes() == own[exclusive].tobytes()
        for variable, original in zip(model.trainable_variables, originals[model.name]):
            assert variable.numpy().tobytes() == original.tobytes()      # not mutated


def test_run_all_equals_one_by_one(pair):
    rt, *_ = pair
    rng = np.random.default_rng(3)
    xs = {"big": rng.normal(size=(4, 5)).astype(np.float32),
          "small": rng.normal(size=(7, 5)).astype(np.float32)}
    together = rt.run_all(xs)
    for name, x in xs.items():
        np.testing.assert_array_equal(together[name].numpy(), rt.run(name, x).numpy())
    with pytest.raises(KeyError, match="no network 'nope'"):
        rt.run_all({"nope": xs["big"]})


def test_pool_update_is_seen_without_copies(pair):
    rt, *_ = pair
    x = np.ones((2, 5), np.float32)
    before = rt.run("small", x).numpy()
    saved = rt.pool_array()
    rt.page_pool.assign(saved * 0.5)
    try:
        assert not np.allclose(rt.run("small", x).numpy(), before)
    finally:
        rt.page_pool.assign(saved)
    np.testing.assert_array_equal(rt.run("small", x).numpy(), before)


def test_reference_mnist_from_pool_and_from_disk(shared_dir, tmp_path):
    import models
    from models import artifacts

    path = f"{shared_dir}/reference/nwv/mnist.npz"
    net = artifacts.load_model(path, "nwv_mnist")
    fisher = models.load_reference_fisher(path)
    rt = api.virtualize({"mnist": net}, fisher={"mnist": fisher}, page_size=100)
    x = np.random.default_rng(4).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    expected = net(x).numpy()
    np.testing.assert_allclose(rt.run("mnist", x).numpy(), expected, atol=1e-6)
    for got, want in zip(rt.weights("mnist"), net.get_weights()):
        assert got.tobytes() == want.tobytes()                 # bit for bit, not shared

    rt.save(str(tmp_path))
    from_disk = VirtualizedNetworks.load(str(tmp_path))
    np.testing.assert_allclose(from_disk.run("mnist", x).numpy(), expected, atol=1e-6)


def test_unsupported_layers_fail_early_naming_the_layer():
    inp = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="fc")(inp))
    with pytest.raises(ValueError, match="layer 'bn'.*non-trainable"):
        check_supported(keras.Model(inp, x))
    model = _dense(5, [3])
    with pytest.raises(ValueError, match="expected a page table of 2 entries"):
        VirtualizedNetworks(np.zeros((2, 10), np.float32), {"m": NetworkSpec(model, [0])})
    with pytest.raises(ValueError, match="page index outside the pool"):
        VirtualizedNetworks(np.zeros((2, 10), np.float32),
                            {"m": NetworkSpec(model, [0, 2])})
    with pytest.raises(ValueError, match="expected a NetworkSpec"):
        VirtualizedNetworks(np.zeros((2, 10), np.float32), {"m": (model, [1, 0])})
    # A valid table that reads the pool's pages in reverse order runs the weights there.
    flat, _ = pages.paginate([v.numpy() for v in model.trainable_variables], 10)
    rt = VirtualizedNetworks(flat[::-1], {"m": NetworkSpec(model, [1, 0])})
    x = np.ones((3, 5), np.float32)
    np.testing.assert_allclose(rt.run("m", x).numpy(), model(x).numpy(), atol=1e-6)


def test_in_memory_runtime_saves_and_loads_identically(pair, tmp_path):
    """In memory and on disk are one thing: save, load, same logits, Fisher and teachers."""
    rt, big, small, originals = pair
    rt.save(str(tmp_path / "pool"))
    assert rt.pool_dir == str(tmp_path / "pool")
    back = VirtualizedNetworks.load(str(tmp_path / "pool"), for_training=True)
    x = np.random.default_rng(5).normal(size=(3, 5)).astype(np.float32)
    assert back.names == rt.names
    assert back.pool_array().tobytes() == rt.pool_array().tobytes()
    for name, model in (("big", big), ("small", small)):
        np.testing.assert_array_equal(back.run(name, x).numpy(), rt.run(name, x).numpy())
        assert back.spec(name).fisher.tobytes() == rt.spec(name).fisher.tobytes()
        teacher = back.spec(name).teacher            # the original weights, bit for bit
        assert [v.numpy().tobytes() for v in teacher.trainable_variables] == \
            [o.tobytes() for o in originals[name]]
    loaded = state.load_state(str(tmp_path / "pool"))
    assert loaded.networks["big"].asset == "big.json"        # a plain Keras model: JSON


def test_virtualize_computes_a_missing_fisher(tiny_data):
    import models
    a, b = models.build("nwv_mnist"), models.build("nwv_mnist", num_classes=2)
    rt = api.virtualize({"digits": a, "parity": b},
                        tasks={"digits": "mnist", "parity": "mnist_parity"},
                        data_dir=tiny_data, fisher_samples=8)
    assert rt.spec("digits").fisher_source == "computed:expected:8"
    assert rt.spec("digits").fisher.shape == (rt.layout("digits").n_pages, 100)
    assert float(rt.spec("parity").fisher.sum()) > 0
    with pytest.raises(ValueError, match="a computed Fisher needs the network's task"):
        api.virtualize({"digits": a})


def test_wrong_input_shape_names_the_network(pair):
    rt, *_ = pair
    with pytest.raises(ValueError, match=r"network 'big' expects inputs of shape \[batch, 5\], "
                                         r"received \[2, 4\]"):
        rt.run("big", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="network 'small' expects inputs"):
        rt.run_all({"small": np.zeros((2, 5, 1), np.float32)})


def test_a_presized_pool_shares_less_and_shrinking_shares_more(pair):
    """virtualize(pool_pages=) gives the low-compression end; PoolDirState.shrink
    merges the cheapest pages below the largest network, pages read twice."""
    rt, big, small, _ = pair
    fisher = {"small": _fisher(small, 1), "big": _fisher(big, 0)}
    natural = rt.page_pool.shape[0]
    roomy = api.virtualize({"small": small, "big": big}, fisher=fisher, page_size=10,
                           pool_pages=natural + 3)
    assert roomy.page_pool.shape[0] == natural + 3                # 3 fewer shared pages
    x = np.ones((2, 5), np.float32)
    state_ = rt.to_state()
    before = state_.stored_bytes()
    removed = state_.shrink(natural - 4)
    assert removed == 4 and state_.pool.shape[0] == natural - 4
    assert state_.stored_bytes() == before - 4 * 10 * 4
    big_table = state_.networks["big"].page_table
    assert len(set(big_table.tolist())) < big_table.size          # shares its own pages
    shrunk = VirtualizedNetworks.from_state(state_)
    assert np.all(np.isfinite(shrunk.run("big", x).numpy()))
