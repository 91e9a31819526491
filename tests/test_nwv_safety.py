"""Nothing lost: pool locking, refusing overflowing networks, undoing an add."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import models
from models import artifacts
from nwv import api, locking, state
from tests.conftest import REPO
from tests.test_scripts import run_script


@pytest.fixture()
def pool_with_digits(tiny_data, tmp_path):
    digits = models.build("nwv_mnist")
    pool = str(tmp_path / "pool")
    api.add_network(pool, digits, name="digits", task="mnist", model_name="nwv_mnist",
                    data_dir=tiny_data, fisher_samples=8)
    return pool


def _files(pool):
    return {f: open(os.path.join(pool, f), "rb").read() for f in sorted(os.listdir(pool))
            if not f.endswith(".lock")}


def test_a_second_writer_fails_at_once_or_waits(pool_with_digits, tiny_data, tmp_path):
    weights = str(tmp_path / "parity.keras")
    artifacts.save_model(models.build("nwv_mnist", num_classes=2), weights)
    args = ["add_dnn.py", f"--pool={pool_with_digits}", "--name=parity", "--task=mnist_parity",
            "--model=nwv_mnist", '--model_overrides={"num_classes": 2}',
            f"--weights={weights}", f"--data_dir={tiny_data}", "--fisher_samples=8"]
    with locking.writer(pool_with_digits):
        busy = run_script(*args, check=False)
    assert busy.returncode == 2
    assert f"is being written by process {os.getpid()}" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert [n["name"] for n in api.list_networks(pool_with_digits)] == ["digits"]
    # --wait: the second writer waits for the first and then adds its network.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log = tmp_path / "waiting.log"
    with locking.writer(pool_with_digits), open(log, "w") as handle:
        waiting = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", args[0]),
                                    *args[1:], "--wait"], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, text=True)
        # Hold the lock until it says it waits (starting TensorFlow takes its time on a
        # loaded machine), then a little longer: it must still be waiting.
        deadline = time.time() + 300
        while "waiting for pool" not in log.read_text() and waiting.poll() is None:
            assert time.time() < deadline, "the second writer never reached the lock"
            time.sleep(0.2)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=2)                 # still waiting while we hold the lock
    assert waiting.wait(timeout=300) == 0, log.read_text()[-2000:]
    assert "waiting for pool" in log.read_text()
    assert [n["name"] for n in api.list_networks(pool_with_digits)] == ["digits", "parity"]


def test_concurrent_read_modify_write_loses_nothing(pool_with_digits):
    """Two processes each add 1 to a pool value 15 times under the writer lock."""
    script = textwrap.dedent(f"""
        from nwv import locking, state
        for _ in range(15):
            with locking.writer({pool_with_digits!r}, wait=True, log=None):
                current = state.load_state({pool_with_digits!r}, with_teachers=True)
                current.pool[0, 0] += 1.0
                state.save_state({pool_with_digits!r}, current)
            state.load_state({pool_with_digits!r})       # readers never see half a save
    """)
    start = float(state.load_state(pool_with_digits).pool[0, 0])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert float(state.load_state(pool_with_digits).pool[0, 0]) == pytest.approx(start + 30)


def test_overflowing_weights_are_refused_and_change_nothing(pool_with_digits, tiny_data):
    before = _files(pool_with_digits)
    huge = models.build("nwv_mnist")
    huge.set_weights([w * 1e19 for w in huge.get_weights()])
    fisher = [np.full(v.shape, 1e-3, np.float32) for v in huge.trainable_variables]
    with pytest.raises(ValueError, match="overflow float32 in the matching cost"):
        api.add_network(pool_with_digits, huge, name="huge", task="mnist", fisher=fisher,
                        data_dir=tiny_data)
    assert _files(pool_with_digits) == before
    with pytest.raises(ValueError, match="overflow float32"):
        api.virtualize({"huge": huge}, fisher={"huge": fisher})


def test_removing_a_network_restores_the_pages_it_changed(pool_with_digits, tiny_data):
    before = state.load_state(pool_with_digits, with_teachers=True)
    other = models.build("nwv_mnist")
    other.set_weights([w * 50 for w in other.get_weights()])   # finite, but far away
    added = api.add_network(pool_with_digits, other, name="other", task="mnist",
                            model_name="nwv_mnist", data_dir=tiny_data, fisher_samples=8)
    assert added["shared_pages"] > 0
    assert state.load_state(pool_with_digits).pool.tobytes() != before.pool.tobytes()
    removed = api.remove_network(pool_with_digits, "other")
    assert removed["restored"] == "exact" and removed["restored_pages"] == added["shared_pages"]
    after = state.load_state(pool_with_digits, with_teachers=True)
    assert after.pool.tobytes() == before.pool.tobytes()              # bit for bit
    assert after.networks["digits"].page_table.tobytes() == \
        before.networks["digits"].page_table.tobytes()


def test_removal_after_the_pages_changed_rebuilds_them_from_teachers(pool_with_digits,
                                                                    tiny_data):
    digits = state.load_state(pool_with_digits, with_teachers=True).networks["digits"]
    other = models.build("nwv_mnist")
    api.add_network(pool_with_digits, other, name="other", task="mnist",
                    model_name="nwv_mnist", data_dir=tiny_data, fisher_samples=8)
    with locking.writer(pool_with_digits):         # as if optimised: every page moves
        current = state.load_state(pool_with_digits, with_teachers=True)
        current.pool += 0.5
        state.save_state(pool_with_digits, current)
    removed = api.remove_network(pool_with_digits, "other")
    assert removed["restored"] == "from teachers"
    after = state.load_state(pool_with_digits)
    record = after.networks["digits"]
    weights = np.concatenate([w.ravel() for w in state_weights(after, record)])
    np.testing.assert_array_equal(weights, digits.teacher)   # digits alone: its own weights


def state_weights(pool_state, record):
    from nwv import pages
    return pages.gather_weights(pool_state.pool, record.page_table,
                                record.layout(pool_state.page_size))


def test_pool_files_respect_the_umask(pool_with_digits):
    old = os.umask(0o022)
    os.umask(old)
    for file in _files(pool_with_digits):
        mode = os.stat(os.path.join(pool_with_digits, file)).st_mode & 0o777
        assert mode == 0o666 & ~old, (file, oct(mode))


def test_a_pool_path_that_is_a_file_is_refused(tmp_path, tiny_data):
    path = tmp_path / "not_a_dir"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a pool directory"):
        api.add_network(str(path), models.build("nwv_mnist"), name="a", task="mnist",
                        fisher=[np.zeros(v.shape) for v in
                                models.build("nwv_mnist").trainable_variables])
    with pytest.raises(ValueError, match="is a file, not a pool directory"):
        state.load_state(str(path))
    assert path.read_text() == "x"


def test_bad_manifest_entry_and_file_export_target_are_clear(pool_with_digits, tmp_path):
    import json

    from nwv import export
    from nwv.runtime import VirtualizedNetworks
    runtime = VirtualizedNetworks.load(pool_with_digits)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export.export_savedmodel(runtime, str(target))
    manifest = os.path.join(pool_with_digits, state.MANIFEST)
    with open(manifest) as handle:
        content = json.load(handle)
    content["networks"]["digits"] = ["not", "an", "object"]
    with open(manifest, "w") as handle:
        json.dump(content, handle)
    with pytest.raises(ValueError, match="the entry of network 'digits' is not an object"):
        state.load_state(pool_with_digits)


@pytest.mark.parametrize("bad", ["class", "two-words"])
def test_names_that_cannot_be_endpoints_are_refused_by_both_exports(bad, tmp_path):
    import keras

    import nwv
    from nwv import export
    from nwv.runtime import VirtualizedNetworks
    inp = keras.Input((28, 28, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    pool = str(tmp_path / "pool")
    api.add_network(pool, model, name=bad, task="mnist",
                    fisher=[np.ones(v.shape, np.float32) for v in model.trainable_variables],
                    page_size=64)
    runtime = VirtualizedNetworks.load(pool)
    with pytest.raises(ValueError, match=f"network name '{bad}' cannot name a SavedModel"):
        export.export_savedmodel(runtime, str(tmp_path / "sm"))
    with pytest.raises(ValueError, match=f"network name '{bad}' cannot name a TFLite"):
        nwv.export_tflite(runtime, str(tmp_path / "pool.tflite"))
    assert not os.path.exists(tmp_path / "sm") and not os.path.exists(tmp_path / "pool.tflite")
