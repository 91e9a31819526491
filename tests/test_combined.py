"""Zip + virtualize: a zipped model in a page pool, run_all, SavedModel export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mtz
from nwv import combined, export, state
from nwv.runtime import VirtualizedNetworks
from tests.test_mtz_zip import inputs_for, permuted_copy, small_cnn


@pytest.fixture(scope="module")
def zipped_pool(tmp_path_factory):
    a = small_cnn(0)
    b, _ = permuted_copy(small_cnn(1), 2)
    x = inputs_for(a)
    zipped = mtz.zip_models([a, b], [x, x], share="0.75", names=["left", "right"])
    pool_dir = str(tmp_path_factory.mktemp("pool"))
    runtime = combined.save_zipped(pool_dir, zipped, page_size=16,
                                   fisher_inputs={"left": x, "right": x}, fisher_samples=16,
                                   teachers={"left": a})
    return zipped, pool_dir, runtime, x


def test_zipped_model_round_trips_through_the_pool(zipped_pool):
    zipped, pool_dir, runtime, x = zipped_pool
    expected = zipped.model([x, x])
    for i, name in enumerate(["left", "right"]):
        runtime.switch(name)
        np.testing.assert_allclose(runtime(x), expected[i], atol=1e-5)
    reloaded = VirtualizedNetworks.load(pool_dir)
    np.testing.assert_allclose(reloaded.run("right", x), expected[1], atol=1e-5)


def test_shared_blocks_are_stored_once(zipped_pool):
    zipped, pool_dir, runtime, _ = zipped_pool
    loaded = state.load_state(pool_dir)
    left = set(loaded.networks["left"].page_table.tolist())
    right = set(loaded.networks["right"].page_table.tolist())
    assert left & right, "shared blocks must be shared pages"
    assert left - right and right - left, "task-specific blocks must be the task's alone"
    assert left | right == set(range(loaded.pool.shape[0]))
    for name, index in (("left", 0), ("right", 1)):  # a member's pages hold its weights only
        own = sum(np.prod(v.shape) for v in zipped.member(index).trainable_variables
                  if v.path in set(loaded.networks[name].variable_names))
        assert own == sum(np.prod(s) for s in loaded.networks[name].variable_shapes)
        assert len(loaded.networks[name].variable_names) < len(zipped.model.trainable_variables)
    counts = combined.stored_weights(loaded)
    n_params = zipped.parameter_counts()["zipped"]
    assert counts["pool_weights"] < counts["networks_weights"]
    assert n_params <= counts["pool_weights"] < n_params + 16 * 2 * len(zipped.model.weights)


def test_run_all_equals_one_by_one_and_uses_the_group(zipped_pool):
    _, _, runtime, x = zipped_pool
    assert runtime.groups() == {combined.GROUP: ("left", "right")}
    assert list(runtime._execution_plan({"left": x, "right": x})) == [combined.GROUP]
    together = runtime.run_all({"left": x, "right": x})
    apart = runtime.run_all({"left": x, "right": x.copy()})
    for name in ("left", "right"):
        np.testing.assert_allclose(together[name], runtime.run(name, x), atol=1e-5)
        np.testing.assert_allclose(apart[name], runtime.run(name, x), atol=1e-5)


def test_savedmodel_loads_without_the_project(zipped_pool, tmp_path):
    _, _, runtime, x = zipped_pool
    out = str(tmp_path / "export")
    info = export.export_savedmodel(runtime, out)
    assert export.variable_bytes(out) == runtime.page_pool.numpy().nbytes
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, json, numpy as np, tensorflow as tf\n"
        "assert 'mtz' not in sys.modules and 'nwv' not in sys.modules\n"
        f"m = tf.saved_model.load({out!r}); x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "print(json.dumps({'left': m.left(x).numpy().tolist(),"
        " 'all': {k: v.numpy().tolist() for k, v in m.all_tasks(x, x).items()},"
        " 'group': {k: v.numpy().tolist() for k, v in m.zipped_all(x).items()}}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["left"], runtime.run("left", x), atol=1e-5)
    np.testing.assert_allclose(result["all"]["right"], runtime.run("right", x), atol=1e-5)
    np.testing.assert_allclose(result["group"]["left"], runtime.run("left", x), atol=1e-5)
    assert info["endpoints"] == ["left", "right", "all_tasks", combined.GROUP]


def test_members_carry_a_real_fisher_and_a_teacher(zipped_pool):
    zipped, pool_dir, _, x = zipped_pool
    loaded = state.load_state(pool_dir, with_teachers=True)
    for name in ("left", "right"):
        record = loaded.networks[name]
        assert record.fisher.shape == (record.page_table.size, 16)
        assert record.fisher.sum() > 0 and record.fisher_source.startswith("computed:expected")
    group = loaded.networks[combined.GROUP]
    assert group.outputs == ("left", "right") and group.fisher.sum() == 0
    # "left" learns from the separate network it was zipped from, "right" from itself.
    back = VirtualizedNetworks.load(pool_dir, for_training=True)
    assert loaded.networks["left"].teacher_asset == "left.teacher.json"
    np.testing.assert_allclose(back.spec("left").teacher(x), small_cnn(0)(x), atol=1e-6)
    assert loaded.networks["right"].teacher_asset is None
    np.testing.assert_allclose(back.spec("right").teacher(x), back.run("right", x), atol=1e-5)


def test_existing_pool_is_refused(zipped_pool):
    zipped, pool_dir, _, _ = zipped_pool
    with pytest.raises(ValueError, match="already holds a pool"):
        combined.save_zipped(pool_dir, zipped)


def test_tflite_conversion_of_one_endpoint(zipped_pool, tmp_path):
    import tensorflow as tf
    _, _, runtime, x = zipped_pool
    out = str(tmp_path / "export")
    export.export_savedmodel(runtime, out)
    blob = tf.lite.TFLiteConverter.from_saved_model(out, signature_keys=["right"]).convert()
    runner = tf.lite.Interpreter(model_content=blob).get_signature_runner("right")
    (logits,) = runner(right=x).values()
    np.testing.assert_allclose(logits, runtime.run("right", x), atol=1e-4)


def test_a_ram_budget_below_the_group_runs_the_members(zipped_pool):
    _, pool_dir, runtime, x = zipped_pool
    full = VirtualizedNetworks.load(pool_dir)
    page_bytes = full.stored_bytes() // full.pool_array().shape[0]
    largest = max(full.layout(n).n_pages for n in full.task_names)
    group = full.layout("zipped_all").n_pages
    assert largest < group                    # the group reads both members' pages
    small = VirtualizedNetworks.load(pool_dir, resident_bytes=largest * page_bytes)
    assert small.names == full.task_names
    for name in ("right", "left", "right"):
        np.testing.assert_array_equal(small.run(name, x).numpy(), full.run(name, x).numpy())
    with pytest.raises(KeyError, match="not available under a RAM budget"):
        small.run("zipped_all", x)


def test_a_member_of_a_group_is_not_removed_before_the_group(zipped_pool, tmp_path):
    import shutil

    import nwv
    _, pool_dir, _, x = zipped_pool
    folder = str(tmp_path / "pool")
    shutil.copytree(pool_dir, folder)
    before = {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
              if os.path.isfile(os.path.join(folder, n))}
    with pytest.raises(ValueError, match="member of the zipped group 'zipped_all'"):
        nwv.remove_network(folder, "left")
    assert before == {n: open(os.path.join(folder, n), "rb").read() for n in before}
    right = VirtualizedNetworks.load(folder).run("right", x).numpy()
    nwv.remove_network(folder, "zipped_all")
    after = VirtualizedNetworks.load(folder)
    assert after.names == ["left", "right"]
    np.testing.assert_array_equal(after.run("right", x).numpy(), right)
