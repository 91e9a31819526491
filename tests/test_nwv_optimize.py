"""nwv.optimize on tiny generated data: joint training lowers the loss, resume is
bit-identical, non-finite values stop the run naming the network."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

import models
from models import artifacts, training
from nwv import api, optimize, state
from nwv.optimize import NonFiniteError, OptimizationMode, OptimizeConfig
from nwv.runtime import NetworkSpec, VirtualizedNetworks

NETS = {"digits": ("mnist", "nwv_mnist"), "objects": ("cifar10", "nwv_cifar10")}


@pytest.fixture(scope="module")
def pool_dir(tiny_data, tmp_path_factory):
    """A pool of two randomly initialised networks on the tiny mnist and cifar10 data."""
    root = tmp_path_factory.mktemp("opt")
    for i, (name, (task, model_name)) in enumerate(NETS.items()):
        artifacts.save_model(models.build(model_name), str(root / f"{name}.keras"))
        weights = str(root / f"{name}.keras")
        api.add_network(str(root / "pool"), weights, name=name, task=task,
                        model_name=model_name, data_dir=tiny_data, page_size=100,
                        fisher_samples=16, seed=i)
    return str(root / "pool")


def _copy(pool_dir, tmp_path, name):
    target = str(tmp_path / name)
    shutil.copytree(pool_dir, target)
    return target


def test_config_validation_and_round_trip():
    config = OptimizeConfig(mode="round_robin", rounds=2, steps=3, lambda_=0.5, limit=8)
    assert config.mode is OptimizationMode.ROUND_ROBIN
    assert OptimizeConfig.from_config(config.get_config()) == config
    with pytest.raises(ValueError, match="expected a mode in"):
        OptimizeConfig(mode="together")
    with pytest.raises(ValueError, match="expected steps to be an integer >= 1"):
        OptimizeConfig(steps=0)
    with pytest.raises(ValueError, match="expected lambda_ >= 0"):
        OptimizeConfig(lambda_=-1.0)


def test_joint_lowers_the_summed_loss(pool_dir, tiny_data, tmp_path):
    folder = _copy(pool_dir, tmp_path, "joint")
    config = OptimizeConfig(mode="joint", rounds=1, steps=12, batch_size=16,
                            learning_rate=3e-3, limit=48, seed=0)
    def train_loss():
        rt = VirtualizedNetworks.load(folder)
        return sum(training.evaluate(lambda x, n=n: rt.run(n, x), NETS[n][0], "train",
                                     data_dir=tiny_data, limit=48)["loss"] for n in NETS)

    start = train_loss()
    result = optimize.optimize_pool(folder, config, data_dir=tiny_data, log=None)
    before, after = result["history"]
    assert train_loss() < start
    assert sum(after["val_loss"].values()) < sum(before["val_loss"].values())
    history = json.load(open(os.path.join(folder, optimize.HISTORY)))
    assert [h["round"] for h in history["history"]] == [0, 1]
    assert set(history["history"][1]["val_accuracy"]) == set(NETS)
    saved = state.load_state(folder).pool                 # the best pool, saved atomically
    best = result["history"][result["best_round"]]
    assert best["mean_val_accuracy"] == max(h["mean_val_accuracy"] for h in result["history"])
    ckpt = np.load(os.path.join(folder, optimize.CHECKPOINT))
    assert saved.tobytes() == ckpt["best_pool"].tobytes()


class _Crash(Exception):
    pass


def _crash_after(round_index):
    """A log callback that kills the run once `round_index` is written (a crash)."""
    def log(line):
        if line.startswith("{") and json.loads(line)["round"] == round_index:
            raise _Crash()
    return log


@pytest.mark.parametrize("mode", ["round_robin", "joint"])
def test_resume_after_a_crash_is_bit_identical(mode, pool_dir, tiny_data, tmp_path):
    """Optimizer moments and the schedule persist: a run killed after round 1 and
    resumed ends with the same pools, moments and history as an uninterrupted one."""
    config = OptimizeConfig(mode=mode, rounds=3, steps=3, batch_size=16, limit=32, seed=5,
                            lambda_=10.0, distill=0.5, sync_every=2, warmup=0.2)
    straight = _copy(pool_dir, tmp_path, "straight")
    optimize.optimize_pool(straight, config, data_dir=tiny_data, log=None)
    resumed = _copy(pool_dir, tmp_path, "resumed")
    with pytest.raises(_Crash):
        optimize.optimize_pool(resumed, config, data_dir=tiny_data, log=_crash_after(1))
    lines = []
    optimize.optimize_pool(resumed, config, data_dir=tiny_data, resume=True, log=lines.append)
    assert lines[0].startswith("resuming after round 1")
    a = np.load(os.path.join(straight, optimize.CHECKPOINT))
    b = np.load(os.path.join(resumed, optimize.CHECKPOINT))
    assert any(k.startswith("optimizer/") for k in a.files)
    for key in a.files:
        if key != "meta":
            assert a[key].tobytes() == b[key].tobytes(), key
    ha = json.load(open(os.path.join(straight, optimize.HISTORY)))["history"]
    hb = json.load(open(os.path.join(resumed, optimize.HISTORY)))["history"]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ha]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in hb]
    assert state.load_state(straight).pool.tobytes() == state.load_state(resumed).pool.tobytes()
    if mode == "round_robin":
        assert ha[1]["penalty"]["objects"] > 0 or ha[1]["penalty"]["digits"] > 0
    # One schedule over the run: warm-up, then cosine decay to 0 at the last step.
    rates = [h["learning_rate"] for h in ha]
    assert rates[0] == 0.0 and rates[1] > 0 and rates[-1] == pytest.approx(0.0, abs=1e-9)
    other = OptimizeConfig.from_config({**config.get_config(), "learning_rate": 0.1})
    with pytest.raises(ValueError, match="differs in \\['learning_rate'\\]"):
        optimize.optimize_pool(resumed, other, data_dir=tiny_data, resume=True, log=None)


def test_patience_stops_early_and_keeps_the_best_pool(pool_dir, tiny_data, tmp_path):
    folder = _copy(pool_dir, tmp_path, "patience")
    config = OptimizeConfig(rounds=6, steps=1, batch_size=8, limit=16, learning_rate=1e-9,
                            schedule="constant", patience=2)
    lines = []
    result = optimize.optimize_pool(folder, config, data_dir=tiny_data, log=lines.append)
    # A learning rate of 1e-9 changes nothing: no round beats round 0.
    assert result["stopped_early"] and result["rounds"] == 2 and result["best_round"] == 0
    assert any(line.startswith("stopping early") for line in lines)


def test_non_finite_weights_stop_naming_the_network(pool_dir, tiny_data):
    loaded = state.load_state(pool_dir, with_fisher=False)
    tables = {n: r.page_table for n, r in loaded.networks.items()}
    pool = loaded.pool.copy()
    objects = set(tables["objects"].tolist())
    only_digits = [p for p in tables["digits"] if p not in objects]
    pool[only_digits[0], 0] = np.nan                      # poison a page only digits uses
    order = ["objects", "digits"]                         # digits trains second
    rt = VirtualizedNetworks(np.nan_to_num(pool), {
        n: NetworkSpec(models.build(NETS[n][1]), tables[n], task=NETS[n][0]) for n in order})
    rt.page_pool.assign(pool)
    for mode in ("sequential", "joint"):
        config = OptimizeConfig(mode=mode, rounds=1, steps=2, batch_size=8, limit=16)
        with pytest.raises(NonFiniteError, match="network 'digits' at round 1 step 1"):
            optimize.optimize_runtime(rt, config, data_dir=tiny_data, log=None)
        assert np.isnan(rt.pool_array()[only_digits[0], 0])   # restored, not trained on
    with pytest.raises(ValueError, match="round_robin needs every network's Fisher"):
        optimize.optimize_runtime(rt, OptimizeConfig(mode="round_robin"), data_dir=tiny_data, log=None)


def test_quantization_aware_run_selects_the_pool_for_its_int8_pages(pool_dir, tiny_data,
                                                                     tmp_path):
    folder = _copy(pool_dir, tmp_path, "qat")
    config = OptimizeConfig(mode="joint", rounds=2, steps=6, batch_size=16,
                            learning_rate=3e-3, limit=48, seed=0, quantize="int8")
    assert OptimizeConfig.from_config(config.get_config()) == config
    with pytest.raises(ValueError, match="expected quantize in"):
        OptimizeConfig(quantize="int4")
    before = state.load_state(folder).pool
    result = optimize.optimize_pool(folder, config, data_dir=tiny_data, log=None)
    assert result["best_round"] > 0 and not np.array_equal(state.load_state(folder).pool,
                                                           before)
    best = result["history"][result["best_round"]]
    int8 = VirtualizedNetworks.load(folder, storage="int8")   # what export_tflite stores
    for name, (task, _) in NETS.items():
        measured = training.evaluate(lambda x, n=name: int8.run(n, x), task, "validation",
                                     data_dir=tiny_data, limit=48)
        assert measured["accuracy"] == pytest.approx(best["val_accuracy"][name], abs=1e-9)
        assert measured["loss"] == pytest.approx(best["val_loss"][name], rel=1e-5)
    rt = VirtualizedNetworks.load(folder)
    optimize.optimize_runtime(rt, dataclasses.replace(config, rounds=1, steps=1),
                              data_dir=tiny_data, log=None)
    assert rt.fake_quant is False                              # the runtime's own setting


def test_balance_weights_each_round_by_the_validation_gap(pool_dir, tiny_data, tmp_path):
    folder = _copy(pool_dir, tmp_path, "balance")
    config = OptimizeConfig(mode="joint", rounds=2, steps=3, batch_size=16, limit=48, seed=0,
                            balance=0.5)
    history = optimize.optimize_pool(folder, config, data_dir=tiny_data, log=None)["history"]
    reference = history[0]["reference_val_accuracy"]          # the teachers, once
    assert set(reference) == set(NETS) and "loss_weights" not in history[0]
    for before, entry in zip(history, history[1:]):
        weights = optimize.balance_weights(reference, before["val_accuracy"], 0.5)
        assert entry["loss_weights"] == pytest.approx(weights)
        assert sum(weights.values()) == pytest.approx(len(NETS))
        gap = {n: reference[n] - before["val_accuracy"][n] for n in NETS}
        behind = max(gap, key=gap.get)
        assert weights[behind] >= max(weights.values()) - 1e-9
    with pytest.raises(ValueError, match="balance weights the networks' losses in one joint"):
        OptimizeConfig(mode="round_robin", balance=0.5)
    with pytest.raises(ValueError, match="expected balance >= 0"):
        OptimizeConfig(balance=-1.0)


def test_a_zero_loss_weight_leaves_the_network_s_own_pages_alone(pool_dir, tiny_data):
    config = OptimizeConfig(mode="joint", rounds=1, steps=3, batch_size=8, limit=16,
                            learning_rate=1e-2, balance=1.0)
    changed = {}
    for weight in (0.0, 2.0):
        rt = VirtualizedNetworks.load(pool_dir)
        own = sorted(set(rt.page_table("digits")) - set(rt.page_table("objects")))
        assert own                       # pages only digits reads
        trainer = optimize._Trainer(rt, config, tiny_data, {n: NETS[n][0] for n in NETS})
        before = rt.page_pool.numpy().copy()
        trainer.joint_round(1, {"digits": weight, "objects": 2.0 - weight})
        changed[weight] = not np.array_equal(rt.page_pool.numpy()[own], before[own])
    assert changed == {0.0: False, 2.0: True}
