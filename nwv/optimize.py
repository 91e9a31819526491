"""Joint optimisation of virtualized networks on their shared page pool.

After matching, shared pages hold a compromise between the networks that use
them; NWV (Lee & Nirjon 2020, §3.3) then trains the networks on the pool. Three
modes (`OptimizationMode`), in rounds of `steps` optimizer steps:

  * `joint`: each step takes one batch of every network's task and minimises
    the summed loss Σ_n L_n(pool) with ONE optimizer step on the pool variable.
  * `round_robin` (the original): the networks take turns; during n's turn
                  L_n(pool) + λ Σ_{o≠n} Σ_k F_o,k (pool_k − a_o,k)²
    where F_o is network o's Fisher placed on its pool pages and a_o the pool as
    network o left it at the end of its last turn (the matched pool before its
    first turn): the weights o was last trained with, so shared pages are
    pulled back where o needs them, by as much as o cares (EWC-style; the
    original code uses λ = 10).
  * `sequential`: turns as round_robin without the penalty (λ = 0): the
    forgetting baseline.

Every round: each network is evaluated on its VALIDATION split (never test);
the pool with the best mean validation accuracy so far is kept (the matched
pool, round 0, is a candidate); a checkpoint (`optimize_checkpoint.npz`) and
`history.json` are written atomically. Adam restarts at every round (and every
turn), and the data order of round r is seeded by (seed, r, network index), so
the checkpoint is the whole training state: `resume=True` continues from the
last completed round and gives bit-identical pools. Non-finite losses,
gradients or weights stop the run with `NonFiniteError` naming the network,
round and step; the pool is restored to the start of that round and nothing
non-finite is ever written.

Example (`tests/test_nwv_optimize.py` runs it on tiny data):

    cfg = OptimizeConfig(mode="joint", rounds=5, steps=200, seed=1)
    optimize_pool("runs/pool", cfg, data_dir="../shared/datasets")
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import data
from models import artifacts, training
from nwv import runtime as nwv_runtime
from nwv import state
from models.choices import Choice

__all__ = ["OptimizationMode", "OptimizeConfig", "NonFiniteError", "optimize_runtime",
           "optimize_pool", "CHECKPOINT", "HISTORY"]

CHECKPOINT, HISTORY = "optimize_checkpoint.npz", "history.json"


class OptimizationMode(Choice):
    """How the networks are trained on the shared pool (a string is accepted)."""
    JOINT = "joint"
    ROUND_ROBIN = "round_robin"
    SEQUENTIAL = "sequential"

    @classmethod
    def _label(cls) -> str:
        return "mode"


class NonFiniteError(RuntimeError):
    """A loss, gradient or weight became NaN/inf during optimisation."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    """Settings of `optimize` (validated; `get_config`/`from_config` round-trip).

    Attributes:
      mode: OptimizationMode. rounds: R ≥ 1. steps: optimizer steps per network
        per round (joint: steps over all networks at once).
      learning_rate: Adam step size. batch_size: examples per batch and task.
      lambda_: round-robin penalty weight λ ≥ 0 (ignored by other modes).
      seed: seeds TF and the data order. augment: train-time augmentation.
      limit: use at most this many examples per split (quick runs, tests).
    """
    mode: OptimizationMode = OptimizationMode.JOINT
    rounds: int = 10
    steps: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 64
    lambda_: float = 10.0
    seed: int = 0
    augment: bool = False
    limit: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "mode", OptimizationMode.parse(self.mode))
        for key in ("rounds", "steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {key} to be an integer >= 1, received {value!r}")
        if not self.learning_rate > 0 or not np.isfinite(self.learning_rate):
            raise ValueError(f"expected learning_rate > 0, received {self.learning_rate!r}")
        if not self.lambda_ >= 0 or not np.isfinite(self.lambda_):
            raise ValueError(f"expected lambda_ >= 0, received {self.lambda_!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"expected limit >= 1 or None, received {self.limit!r}")

    def get_config(self) -> dict:
        config = dataclasses.asdict(self)
        config["mode"] = self.mode.value
        return config

    @classmethod
    def from_config(cls, config: dict) -> "OptimizeConfig":
        return cls(**config)


def _seed(seed: int, round_index: int, net_index: int) -> int:
    """Data-order seed of a network in a round, from (seed, round, network)."""
    return int(np.random.SeedSequence([seed, round_index, net_index]).generate_state(1)[0])


def _restore_if_nonfinite(finite, name, round_index, step, pool, snapshot):
    if not bool(finite):
        pool.assign(snapshot)
        raise NonFiniteError(
            f"non-finite loss, gradient or weights in network {name} at round {round_index}"
            f" step {step}: stopped; the pool was restored to the start of the round and "
            f"nothing non-finite was written (lower --learning_rate or check the data)")


def optimize_runtime(rt: nwv_runtime.VirtualizedNetworks, config: OptimizeConfig, *,
             data_dir: str | None = None, tasks: dict | None = None,
             checkpoint_dir: str | None = None, resume: bool = False, log=print) -> dict:
    """Trains the networks of `rt` on its shared pool; leaves the best pool in `rt`.

    Args:
      rt: the runtime; its `page_pool` variable is trained in place; round_robin
        (λ > 0) needs every network's Fisher pages (`NetworkSpec.fisher`).
      config: OptimizeConfig.
      data_dir: data folder (None: TFDS).
      tasks: {name: task}; default the tasks the runtime knows.
      checkpoint_dir: where the checkpoint and history.json go (None: nowhere).
      resume: continue from the checkpoint in `checkpoint_dir` if there is one.
      log: callable taking one line per round (None: silent).

    Returns:
      {"history": [per-round dicts], "best_round", "best_val_accuracy", "rounds"}.

    Raises:
      NonFiniteError naming the network and step; ValueError for missing tasks or
      Fisher, or a checkpoint written with other settings.
    """
    log = log or (lambda line: None)
    training.set_seed(config.seed)
    names = rt.task_names
    tasks = {n: (tasks or {}).get(n) or rt.task(n) for n in names}
    if not all(tasks.values()):
        raise ValueError(f"expected a task for every network, received {tasks}")
    penalised = config.mode is OptimizationMode.ROUND_ROBIN and config.lambda_ > 0
    fisher = {n: rt.spec(n).fisher for n in names if rt.spec(n).fisher is not None}
    if penalised and set(fisher) < set(names):
        raise ValueError("round_robin needs every network's Fisher pages (NetworkSpec."
                         "fisher), received them for " + repr(sorted(fisher)))
    pool = rt.page_pool
    losses = {n: training.loss_and_metric(tasks[n])[0] for n in names}
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = keras.optimizers.Adam(config.learning_rate)
        optimizer.build([pool])
    fresh = [v.numpy() for v in optimizer.variables]

    def reset_optimizer():
        for variable, value in zip(optimizer.variables, fresh):
            variable.assign(value)

    on_pool = {}
    if penalised:
        for n in names:
            on_pool[n] = np.zeros(pool.shape, np.float64)
            np.add.at(on_pool[n], rt.page_table(n), np.asarray(fisher[n], np.float64))
    steps = {n: _single_step(rt, n, losses[n], optimizer, penalised, config.lambda_)
             for n in names}
    joint = _joint_step(rt, losses, optimizer)
    meta_key = _meta_key(rt, config)

    ckpt = os.path.join(checkpoint_dir, CHECKPOINT) if checkpoint_dir else None
    if resume and ckpt and os.path.exists(ckpt):
        history, best, best_round, anchors = _load_checkpoint(ckpt, meta_key, pool, names)
        log(f"resuming after round {history[-1]['round']} from {ckpt}")
    else:
        history = [_evaluate(rt, tasks, data_dir, config, 0, {}, {}, 0.0)]
        best, best_round = pool.numpy().copy(), 0
        anchors = {n: pool.numpy().copy() for n in names}
        _save_checkpoint(ckpt, meta_key, pool, best, best_round, anchors, history, config)
        log(json.dumps(history[-1]))
    best_score = history[best_round]["mean_val_accuracy"]

    for r in range(history[-1]["round"] + 1, config.rounds + 1):
        start, snapshot = time.time(), pool.numpy().copy()
        train_loss, penalty = {}, {}
        if config.mode is OptimizationMode.JOINT:
            reset_optimizer()
            its = {n: _batches(tasks[n], data_dir, config, r, i) for i, n in enumerate(names)}
            sums = dict.fromkeys(names, 0.0)
            for s in range(1, config.steps + 1):
                batch = {n: next(its[n]) for n in names}
                per, finite, grad_finite = strategy.run(joint, args=(batch,))
                for n in names:
                    _restore_if_nonfinite(finite[n], repr(n), r, s, pool, snapshot)
                    sums[n] += float(per[n])
                _restore_if_nonfinite(grad_finite, f"{names} (joint gradient)", r, s, pool, snapshot)
            train_loss = {n: sums[n] / config.steps for n in names}
        else:
            for i, n in enumerate(names):
                reset_optimizer()
                args = _penalty_target(n, names, on_pool, anchors, pool) if penalised else ()
                it = _batches(tasks[n], data_dir, config, r, i)
                total_loss = total_pen = 0.0
                for s in range(1, config.steps + 1):
                    x, y = next(it)
                    loss, pen, finite = strategy.run(steps[n], args=(x, y) + args)
                    _restore_if_nonfinite(finite, repr(n), r, s, pool, snapshot)
                    total_loss, total_pen = total_loss + float(loss), total_pen + float(pen)
                train_loss[n] = total_loss / config.steps
                penalty[n] = total_pen / config.steps
                anchors[n] = pool.numpy().copy()
        entry = _evaluate(rt, tasks, data_dir, config, r, train_loss, penalty,
                          time.time() - start)
        history.append(entry)
        if entry["mean_val_accuracy"] > best_score:
            best, best_round, best_score = pool.numpy().copy(), r, entry["mean_val_accuracy"]
        _save_checkpoint(ckpt, meta_key, pool, best, best_round, anchors, history, config)
        log(json.dumps(entry))
    pool.assign(best)
    return {"history": history, "best_round": best_round,
            "best_val_accuracy": best_score, "rounds": history[-1]["round"]}


def _single_step(rt, name, loss_fn, optimizer, penalised, lam):
    """tf.function step of one network: loss (+ λ Σ F (pool − target)² + const);
    returns (loss, penalty, finite: loss, gradient and the network's pages)."""
    pool, table = rt.page_pool, tf.constant(rt.page_table(name))

    @tf.function(reduce_retracing=True)
    def step(x, y, f_other=None, target=None, const=None):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, rt.forward(name, x, pool, training=True))
            pen = tf.constant(0.0)
            if penalised:
                pen = lam * (tf.reduce_sum(f_other * tf.square(pool - target)) + const)
            total = loss + pen
        grad = tf.convert_to_tensor(tape.gradient(total, pool))
        optimizer.apply_gradients([(grad, pool)])
        finite = tf.math.is_finite(total) & tf.reduce_all(tf.math.is_finite(grad)) & \
            tf.reduce_all(tf.math.is_finite(tf.gather(pool, table)))
        return loss, pen, finite
    return step


def _joint_step(rt, loss_fns, optimizer):
    """tf.function step on {name: (x, y)}: Σ_n L_n, one optimizer step on the pool;
    returns (losses, finite per network (loss and its pages), finite gradient)."""
    pool = rt.page_pool
    tables = {n: tf.constant(rt.page_table(n)) for n in rt.task_names}

    @tf.function(reduce_retracing=True)
    def step(batch):
        with tf.GradientTape() as tape:
            per = {n: loss_fns[n](y, rt.forward(n, x, pool, training=True))
                   for n, (x, y) in batch.items()}
            total = tf.add_n(list(per.values()))
        grad = tf.convert_to_tensor(tape.gradient(total, pool))
        optimizer.apply_gradients([(grad, pool)])
        finite = {n: tf.math.is_finite(per[n]) & tf.reduce_all(
            tf.math.is_finite(tf.gather(pool, tables[n]))) for n in per}
        return per, finite, tf.reduce_all(tf.math.is_finite(grad))
    return step


def _penalty_target(name, names, on_pool, anchors, pool):
    """(F = Σ_o F_o, target = Σ_o F_o a_o / F, const = Σ_o F_o (a_o − target)²) so that
    Σ_o F_o (w − a_o)² = Σ F (w − target)² + const for the other networks o."""
    others = [o for o in names if o != name]
    f = sum((on_pool[o] for o in others), np.zeros(pool.shape))
    weighted = sum((on_pool[o] * anchors[o] for o in others), np.zeros(pool.shape))
    target = np.where(f > 0, weighted / np.where(f > 0, f, 1.0), pool.numpy())
    const = sum(float(np.sum(on_pool[o] * (anchors[o] - target) ** 2)) for o in others)
    return (tf.constant(f, tf.float32), tf.constant(target, tf.float32),
            tf.constant(const, tf.float32))


def _batches(task, data_dir, config, round_index, net_index):
    ds = data.load(task, "train", data_dir, config.batch_size,
                   seed=_seed(config.seed, round_index, net_index), shuffle=True,
                   augment=config.augment, limit=config.limit)
    return iter(ds.repeat())


def _evaluate(rt, tasks, data_dir, config, round_index, train_loss, penalty, seconds):
    val = {n: training.evaluate(lambda x, n=n: rt.run(n, x), tasks[n], "validation",
                                data_dir=data_dir, limit=config.limit) for n in rt.task_names}
    return {"round": round_index, "mode": config.mode.value,
            "train_loss": train_loss, "penalty": penalty,
            "val_accuracy": {n: v["accuracy"] for n, v in val.items()},
            "val_loss": {n: v["loss"] for n, v in val.items()},
            "mean_val_accuracy": float(np.mean([v["accuracy"] for v in val.values()])),
            "seconds": round(seconds, 3)}


def _meta_key(rt, config) -> dict:
    """What a checkpoint must agree on to be resumed (all settings but `rounds`)."""
    key = config.get_config()
    key.pop("rounds")
    key["networks"] = {n: rt.page_table(n).tolist() for n in rt.task_names}
    key["pool_shape"] = list(rt.page_pool.shape)
    return key


def _save_checkpoint(path, meta_key, pool, best, best_round, anchors, history, config):
    if path is None:
        return
    current = pool.numpy()
    if not (np.all(np.isfinite(current)) and np.all(np.isfinite(best))):
        raise NonFiniteError(f"refusing to write a non-finite pool to {path}")
    meta = {"key": meta_key, "best_round": best_round, "history": history,
            "config": config.get_config()}
    arrays = {"pool": current, "best_pool": best,
              "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    arrays.update({f"anchor/{n}": a for n, a in anchors.items()})
    artifacts.atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    artifacts.write_json(os.path.join(os.path.dirname(path), HISTORY),
                         {"config": config.get_config(), "best_round": best_round,
                          "history": history})


def _load_checkpoint(path, meta_key, pool, names):
    try:
        with np.load(path) as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(arrays["meta"].tobytes().decode())
    except Exception as err:  # zip / JSON / key errors
        raise ValueError(f"{path}: unreadable optimisation checkpoint: {err}") from err
    if meta["key"] != meta_key:
        diff = sorted(k for k in set(meta["key"]) | set(meta_key)
                      if meta["key"].get(k) != meta_key.get(k))
        raise ValueError(f"{path} was written with other settings or networks (differs "
                         f"in {diff}); rerun without --resume to start over")
    for key in ["pool", "best_pool"] + [f"anchor/{n}" for n in names]:
        if not np.all(np.isfinite(arrays[key])):
            raise ValueError(f"{path}: array {key!r} holds NaN/inf values")
    pool.assign(arrays["pool"])
    anchors = {n: arrays[f"anchor/{n}"] for n in names}
    return meta["history"], arrays["best_pool"], meta["best_round"], anchors


def optimize_pool(pool_dir: str, config: OptimizeConfig, *, data_dir: str | None = None,
                  resume: bool = False, log=print) -> dict:
    """`optimize_runtime` on a pool directory: checkpoints and history.json go into it, and
    the best pool (by mean validation accuracy) is saved into it atomically.

    Args:
      pool_dir: the pool directory; config: `OptimizeConfig`.
      data_dir: data folder (None: TFDS); resume, log: as `optimize_runtime`.
    Returns:
      The result of `optimize_runtime`.
    Raises:
      ValueError: an empty pool; errors of `optimize_runtime` and `nwv.state`.
    """
    loaded = state.load_state(pool_dir, with_teachers=True)
    if not loaded.networks:
        raise ValueError(f"{pool_dir} holds no networks to optimise")
    with tf.distribute.get_strategy().scope():
        rt = nwv_runtime.VirtualizedNetworks.from_state(loaded, pool_dir=pool_dir)
    result = optimize_runtime(rt, config, data_dir=data_dir, checkpoint_dir=pool_dir,
                      resume=resume, log=log)
    loaded.pool = rt.pool_array()
    state.save_state(pool_dir, loaded)
    return result
