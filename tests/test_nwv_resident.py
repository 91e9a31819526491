"""Two-level pages: a RAM budget keeps part of the pool resident and swaps the rest."""
import numpy as np
import pytest

from nwv import pages, quantize, resident
from nwv.runtime import NetworkSpec, VirtualizedNetworks
from tests.test_nwv_runtime import _dense, _fisher


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """A pool larger than its largest network (as zipped pools are): a and b apart,
    c sharing pages of both."""
    nets = {"a": _dense(0, [16, 8, 3], name="a"), "b": _dense(1, [12, 3], name="b"),
            "c": _dense(2, [6, 6, 2], name="c")}
    sizes = {n: -(-sum(int(np.prod(v.shape)) for v in m.trainable_variables) // 10)
             for n, m in nets.items()}
    tables = {"a": np.arange(sizes["a"]),
              "b": sizes["a"] + np.arange(sizes["b"])}
    tables["c"] = np.concatenate([tables["a"][:sizes["c"] // 2],
                                  tables["b"][:sizes["c"] - sizes["c"] // 2]])
    m = sizes["a"] + sizes["b"]
    pool = np.random.default_rng(0).normal(size=(m, 10)).astype(np.float32) * 0.3
    specs = {n: NetworkSpec(model, tables[n], fisher=pages.paginate(_fisher(model, i), 10)[0])
             for i, (n, model) in enumerate(nets.items())}
    folder = str(tmp_path_factory.mktemp("pool"))
    VirtualizedNetworks(pool, specs).save(folder)
    return folder


def test_plan_fits_the_budget_and_prefers_shared_pages():
    tables = {"a": np.array([0, 1, 2]), "b": np.array([2, 3]), "c": np.array([2, 1])}
    density = np.array([9.0, 0.0, 0.0, 5.0])
    for budget in (3, 4, 5):
        plan = resident.plan_resident(tables, density, page_bytes=1, budget=budget)
        assert plan.bytes <= budget
        assert plan.resident[0] == 2                 # used by all three networks
    whole = resident.plan_resident(tables, density, page_bytes=1, budget=4)
    assert whole.buffer_slots == 0 and len(whole.resident) == 4
    with pytest.raises(ValueError, match="expected resident_bytes >= 3"):
        resident.plan_resident(tables, density, page_bytes=1, budget=2)


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_any_switch_sequence_gives_the_all_in_memory_logits(pool_dir, storage):
    full = VirtualizedNetworks.load(pool_dir, storage=storage)
    if storage == "int8":    # swapped pages get the all-in-memory (Fisher-chosen) scales
        floats = VirtualizedNetworks.load(pool_dir).pool_array()
        assert not np.array_equal(full.page_scales.numpy(), quantize.page_scales(floats))
    largest = max(full.layout(n).n_pages for n in full.names)
    page_bytes = full.stored_bytes() // full.pool_array().shape[0]
    budget = (largest + 1) * page_bytes
    small = VirtualizedNetworks.load(pool_dir, storage=storage, resident_bytes=budget)
    assert small.stored_bytes() <= budget < full.stored_bytes()
    assert small.resident_plan.buffer_slots > 0
    x = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    expected = {n: full.run(n, x).numpy() for n in full.names}
    rng = np.random.default_rng(4)
    for name in rng.choice(full.names, 12):
        small.switch(name)
        np.testing.assert_array_equal(small(x).numpy(), expected[name])
    together = small.run_all({n: x for n in small.names})
    for name in small.names:
        np.testing.assert_array_equal(together[name].numpy(), expected[name])
    with pytest.raises(ValueError, match="cannot be saved"):
        small.save(pool_dir + "_copy")
    same = VirtualizedNetworks.load(pool_dir, storage=storage, resident_bytes=10 ** 9)
    assert same.resident_plan is None                  # the whole pool: today's runtime
