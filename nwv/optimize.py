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

Each network's loss L_n is its labels' cross-entropy, or with `distill` = β > 0
the distillation loss (1 − β) CE + β T² KL(teacher ‖ network) of
`models.losses`, the teacher being the network's original weights before
matching (`NetworkSpec.teacher`): the network learns to keep computing what it
computed alone.

Quantisation-aware (`quantize="int8"`, the straight-through estimator): the
forward pass and the validation read every gathered page as round(w/s)·s with
the page's int8 scale s = max|w|/127 and the gradient passes straight to the
float pool, so the pool kept is the one whose int8 copy validates best.

Balance (`balance` = η > 0, joint mode): the goal is every network near its
original accuracy, not the best mean, so each round weights the networks'
losses by w_n ∝ exp(η g_n), g_n the network's validation gap in points to its
teacher after the previous round (`balance_weights`; the weights average 1):
networks with slack (above their original) yield shared capacity to those
below it, as in group DRO (Sagawa et al. 2020) with validation gaps.

Schedule: Adam whose state persists across rounds (one optimizer for `joint`,
one per network for the turns), with ONE learning-rate schedule over the whole
run (linear warm-up over `warmup` of the steps, then cosine decay to
`final_lr_fraction` of `learning_rate`). Every round: each network is
evaluated on its VALIDATION split (never test); the pool with the best mean
validation accuracy so far is kept (the matched pool, round 0, is a candidate);
the run stops early after `patience` rounds without improvement; a checkpoint
(`optimize_checkpoint.npz`: pools, anchors, optimizer moments, history) and
`history.json` are written atomically, by the chief only. The data order of
round r is seeded by (seed, r, network index), so the checkpoint is the whole
training state: `resume=True` continues after the last completed round and
gives bit-identical pools, and a crash loses at most the current round.

Distribution: under any `tf.distribute.Strategy` in scope (`models.distribute`)
each step runs on every replica with global batch / replicas examples (each
worker reading its shard), losses scaled for the global batch, gradients
all-reduced by the optimizer; `sync_every` steps run in one compiled call, so
the host reads losses and finiteness once per call. Non-finite losses,
gradients or weights stop the run with `NonFiniteError` naming the network,
round and step; the pool and optimizer are restored to the start of that round
and nothing non-finite is ever written.

Example (`tests/test_nwv_optimize.py` runs it on tiny data):

    cfg = OptimizeConfig(mode="joint", rounds=5, steps=200, distill=0.5, seed=1)
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
from models import artifacts, distribute, losses, training
from models.choices import Choice
from nwv import locking
from nwv import runtime as nwv_runtime
from nwv import state

__all__ = ["OptimizationMode", "OptimizeConfig", "NonFiniteError", "Checkpoint",
           "optimize_runtime", "optimize_pool", "balance_weights", "CHECKPOINT", "HISTORY"]

CHECKPOINT, HISTORY = "optimize_checkpoint.npz", "history.json"
QUANTIZE = (None, "int8")      # OptimizeConfig.quantize: float32, or int8-aware
CHECKPOINT_VERSION = 2
_GRADIENT = "*gradient*"   # not a valid network name (`nwv.state.check_name`)


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


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"expected {name} to be an integer >= {minimum}, received {value!r}")


def _check_range(name, value, low, high, low_open=False):
    ok = np.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        if high == np.inf:
            raise ValueError(f"expected {name} {'>' if low_open else '>='} {low:g}, received "
                             f"{value!r}")
        raise ValueError(f"expected {name} in {'(' if low_open else '['}{low:g}, {high:g}], "
                         f"received {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    """Settings of `optimize_runtime` (validated; `get_config`/`from_config` round-trip).

    Attributes:
      mode: OptimizationMode. rounds: R >= 1. steps: optimizer steps per network
        per round (joint: steps over all networks at once).
      learning_rate: peak Adam step size of the schedule.
      schedule: "cosine" (warm-up, then cosine decay over all planned steps) or
        "constant".
      warmup: fraction of all planned steps spent warming up linearly from 0.
      final_lr_fraction: the cosine schedule ends at this fraction of the peak.
      batch_size: examples per step and task, over all replicas.
      lambda_: round-robin penalty weight λ >= 0 (ignored by other modes).
      distill: β in [0, 1], weight of distillation from each network's teacher
        (0: labels only).
      temperature: T > 0 of the distillation.
      patience: stop after this many rounds without a better mean validation
        accuracy (None: run every round).
      sync_every: steps per compiled call (one host read of losses and finiteness).
      seed: seeds TF and the data order. augment: train-time augmentation.
      limit: use at most this many examples per split (quick runs, tests).
      balance: η >= 0, joint mode: each round weights network n's loss by
        w_n ∝ exp(η g_n) (clipped, `balance_weights`; mean 1), g_n its gap in
        points (its teacher's validation accuracy minus its own after the previous
        round), so networks further below their original get more of the shared
        pages' gradient and those above it less (0: equal weights, Σ_n L_n). The
        teachers' accuracies are measured once, on validation, and kept in the
        history (round 0).
      quantize: None (float32) or "int8": quantisation-aware optimisation; every
        step and every validation reads the pages through int8 rounding with a
        straight-through gradient (`nwv.quantize.fake_quantize`), so the float pool
        is trained, and its best round selected, for its int8 copy (per-page scales,
        as `storage="int8"` and `export_tflite(quantize="int8")` store it).
    """
    mode: OptimizationMode = OptimizationMode.JOINT
    rounds: int = 10
    steps: int = 100
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup: float = 0.05
    final_lr_fraction: float = 0.0
    batch_size: int = 64
    lambda_: float = 10.0
    distill: float = 0.0
    temperature: float = 2.0
    patience: int | None = None
    sync_every: int = 25
    seed: int = 0
    augment: bool = False
    limit: int | None = None
    quantize: str | None = None
    balance: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "mode", OptimizationMode.parse(self.mode))
        for key in ("rounds", "steps", "batch_size", "sync_every"):
            _check_int(key, getattr(self, key), 1)
        _check_range("learning_rate", self.learning_rate, 0.0, np.inf, low_open=True)
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"expected schedule 'cosine' or 'constant', received "
                             f"{self.schedule!r}")
        _check_range("warmup", self.warmup, 0.0, 1.0)
        _check_range("final_lr_fraction", self.final_lr_fraction, 0.0, 1.0)
        _check_range("lambda_", self.lambda_, 0.0, np.inf)
        _check_range("distill", self.distill, 0.0, 1.0)
        _check_range("temperature", self.temperature, 0.0, np.inf, low_open=True)
        _check_range("balance", self.balance, 0.0, np.inf)
        if self.balance and self.mode is not OptimizationMode.JOINT:
            raise ValueError(f"balance weights the networks' losses in one joint step; "
                             f"mode {self.mode.value!r} trains one network at a time "
                             f"(use mode='joint' or balance=0)")
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        if self.limit is not None:
            _check_int("limit", self.limit, 1)
        if self.quantize not in QUANTIZE:
            raise ValueError(f"expected quantize in {list(QUANTIZE)}, received "
                             f"{self.quantize!r}")

    def get_config(self) -> dict:
        """JSON-able dict of the settings."""
        config = dataclasses.asdict(self)
        config["mode"] = self.mode.value
        return config

    @classmethod
    def from_config(cls, config: dict) -> "OptimizeConfig":
        """Inverse of `get_config`."""
        return cls(**config)

    def total_steps(self) -> int:
        """Optimizer steps of one optimizer over the whole run (the schedule's length)."""
        return self.rounds * self.steps

    def learning_rate_schedule(self):
        """The schedule of one optimizer: a float, or warm-up + cosine decay."""
        if self.schedule == "constant":
            return self.learning_rate
        total = self.total_steps()
        warmup = int(round(self.warmup * total))
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else self.learning_rate, max(total - warmup, 1),
            alpha=self.final_lr_fraction, warmup_target=self.learning_rate if warmup else None,
            warmup_steps=warmup)


def _seed(seed: int, round_index: int, net_index: int) -> int:
    """Data-order seed of a network in a round, from (seed, round, network)."""
    return int(np.random.SeedSequence([seed, round_index, net_index]).generate_state(1)[0])


class Checkpoint:
    """The whole training state, written atomically after every round (chief only).

    Holds the current and best pools, the round-robin anchors, every optimizer's
    variables (step counts and Adam moments) and the history; `key` is what a
    checkpoint must agree on to be resumed.

    Args:
      path: the `.npz` file (None: no checkpoint).
      key: JSON-able settings and tables of the run.
    """

    def __init__(self, path: str | None, key: dict):
        self.path, self.key = path, key

    def exists(self) -> bool:
        """True when there is a checkpoint file to resume from."""
        return bool(self.path) and os.path.exists(self.path)

    def save(self, *, pool, best, best_round, anchors, optimizers, history, config):
        """Writes the state (and `history.json` beside it); refuses non-finite pools."""
        if self.path is None or not distribute.is_chief():
            return
        current = pool.numpy()
        if not (np.all(np.isfinite(current)) and np.all(np.isfinite(best))):
            raise NonFiniteError(f"refusing to write a non-finite pool to {self.path}")
        meta = {"version": CHECKPOINT_VERSION, "key": self.key, "best_round": best_round,
                "history": history, "config": config.get_config()}
        arrays = {"pool": current, "best_pool": best,
                  "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        arrays.update({f"anchor/{n}": a for n, a in anchors.items()})
        for name, optimizer in optimizers.items():
            for i, variable in enumerate(optimizer.variables):
                arrays[f"optimizer/{name}/{i}"] = np.asarray(variable.numpy())
        artifacts.atomic_write(self.path, lambda tmp: np.savez(tmp, **arrays))
        artifacts.write_json(os.path.join(os.path.dirname(self.path), HISTORY),
                             {"config": config.get_config(), "best_round": best_round,
                              "history": history})

    def load(self, *, pool, optimizers, names):
        """Restores pool and optimizers; returns (history, best pool, best round, anchors).

        Raises:
          ValueError: an unreadable checkpoint, other settings or networks, NaN/inf.
        """
        try:
            with np.load(self.path) as archive:
                arrays = {k: archive[k] for k in archive.files}
            meta = json.loads(arrays["meta"].tobytes().decode())
        except Exception as err:  # zip / JSON / key errors
            raise ValueError(f"{self.path}: unreadable optimisation checkpoint: {err}") from err
        if meta.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{self.path} was written by another version of the optimiser "
                             f"(checkpoint version {meta.get('version')!r}); rerun without "
                             f"--resume to start over")
        if meta["key"] != self.key:
            diff = sorted(k for k in set(meta["key"]) | set(self.key)
                          if meta["key"].get(k) != self.key.get(k))
            raise ValueError(f"{self.path} was written with other settings or networks "
                             f"(differs in {diff}); rerun without --resume to start over")
        wanted = ["pool", "best_pool"] + [k for k in arrays if k.startswith("anchor/")]
        for key in wanted:
            if not np.all(np.isfinite(arrays[key])):
                raise ValueError(f"{self.path}: array {key!r} holds NaN/inf values")
        pool.assign(arrays["pool"])
        for name, optimizer in optimizers.items():
            for i, variable in enumerate(optimizer.variables):
                variable.assign(arrays[f"optimizer/{name}/{i}"])
        anchors = {n: arrays[f"anchor/{n}"] for n in names if f"anchor/{n}" in arrays}
        return meta["history"], arrays["best_pool"], meta["best_round"], anchors


class _Trainer:
    """The compiled steps of one run: per-network losses, optimizers, teachers."""

    def __init__(self, rt, config, data_dir, tasks):
        self.rt, self.config, self.data_dir, self.tasks = rt, config, data_dir, tasks
        self.names = list(tasks)
        self.strategy = tf.distribute.get_strategy()
        self.replicas = distribute.num_replicas(self.strategy)
        self.multilabel = {n: data.get(tasks[n]).multilabel for n in self.names}
        self.teachers = {}
        if config.distill > 0:
            missing = [n for n in self.names if rt.spec(n).teacher is None]
            if missing:
                raise ValueError(f"distillation (distill={config.distill}) needs every "
                                 f"network's teacher; {missing} have none (pools saved "
                                 f"before teachers were stored: re-add those networks)")
            self.teachers = {n: rt.spec(n).teacher for n in self.names}
        joint = config.mode is OptimizationMode.JOINT
        with self.strategy.scope():
            keys = ["joint"] if joint else self.names
            self.optimizers = {k: keras.optimizers.Adam(config.learning_rate_schedule())
                               for k in keys}
            for optimizer in self.optimizers.values():
                optimizer.build([rt.page_pool])
        self.tables = {n: tf.constant(rt.page_table(n)) for n in self.names}
        self._blocks = {}
        self.loss_weights = None
        if config.balance:
            with self.strategy.scope():
                self.loss_weights = tf.Variable(tf.ones([len(self.names)]), trainable=False,
                                                name="loss_weights")

    # --- losses ---------------------------------------------------------------
    def _loss(self, name, x, y):
        """Per-replica loss of one network, scaled for the global batch."""
        logits = self.rt.forward(name, x, self.rt.page_pool, training=True)
        teacher = (tf.stop_gradient(self.teachers[name](x, training=False))
                   if self.teachers else None)
        per_example = losses.distillation_loss(
            y, logits, teacher, beta=self.config.distill, temperature=self.config.temperature,
            multilabel=self.multilabel[name])
        return tf.nn.compute_average_loss(per_example,
                                          global_batch_size=self.config.batch_size)

    def _pages_finite(self, name):
        return tf.reduce_all(tf.math.is_finite(tf.gather(self.rt.page_pool, self.tables[name])))

    # --- one replica step --------------------------------------------------------
    def _joint_step(self, batches):
        pool, optimizer = self.rt.page_pool, self.optimizers["joint"]
        pages_ok = {n: self._pages_finite(n) for n in self.names}   # the weights it read
        with tf.GradientTape() as tape:
            per = {n: self._loss(n, *batches[n]) for n in self.names}
            if self.loss_weights is None:
                total = tf.add_n(list(per.values()))
            else:
                total = tf.add_n([self.loss_weights[i] * per[n]
                                  for i, n in enumerate(self.names)])
        grad = tf.convert_to_tensor(tape.gradient(total, pool))
        with tf.control_dependencies(list(pages_ok.values())):
            optimizer.apply_gradients([(grad, pool)])
        finite = {n: tf.math.is_finite(per[n]) & pages_ok[n] for n in self.names}
        finite[_GRADIENT] = tf.reduce_all(tf.math.is_finite(grad))
        return per, {n: tf.zeros([]) for n in self.names}, _failures(finite)

    def _turn_step(self, name, batch, target):
        pool, optimizer = self.rt.page_pool, self.optimizers[name]
        pages_ok = self._pages_finite(name)
        with tf.GradientTape() as tape:
            loss = self._loss(name, *batch)
            pen = tf.zeros([])
            if target is not None:
                weight, anchor, const = target
                pen = self.config.lambda_ * (tf.reduce_sum(weight * tf.square(pool - anchor))
                                             + const) / self.replicas
            total = loss + pen
        grad = tf.convert_to_tensor(tape.gradient(total, pool))
        with tf.control_dependencies([pages_ok]):
            optimizer.apply_gradients([(grad, pool)])
        finite = {name: tf.math.is_finite(total) & pages_ok,
                  _GRADIENT: tf.reduce_all(tf.math.is_finite(grad))}
        return {name: loss}, {name: pen}, _failures(finite)

    # --- k steps per compiled call -------------------------------------------------
    def _block(self, key, step_fn, names):
        """A tf.function running k replica steps; returns summed losses, penalties and
        the first non-finite step (-1: none) per network, reduced over replicas."""
        if key in self._blocks:
            return self._blocks[key]
        strategy = self.strategy

        checked = list(names) + [_GRADIENT]

        @tf.function
        def block(iterators, k, target):
            loss_sum, pen_sum = tf.zeros([len(names)]), tf.zeros([len(names)])
            first_bad = -tf.ones([len(checked)], tf.int32)
            for i in tf.range(k):
                batches = {n: next(iterators[n]) for n in names}
                per, pen, failed = strategy.run(step_fn, args=(batches, target))
                loss_sum += tf.stack([strategy.reduce("SUM", per[n], axis=None) for n in names])
                pen_sum += tf.stack([strategy.reduce("SUM", pen[n], axis=None) for n in names])
                bad = tf.stack([strategy.reduce("SUM", failed[n], axis=None) > 0
                                for n in checked])
                first_bad = tf.where((first_bad < 0) & bad, i, first_bad)
            return loss_sum, pen_sum, first_bad

        self._blocks[key] = block
        return block

    def _iterator(self, name, round_index, net_index):
        config, task = self.config, self.tasks[name]

        def make_dataset(batch_size, shard):
            return data.load(task, "train", self.data_dir, batch_size,
                             seed=_seed(config.seed, round_index, net_index), shuffle=True,
                             augment=config.augment, limit=config.limit, repeat=True,
                             shard=shard).with_options(_round_options())

        return distribute.distribute_batches(make_dataset, config.batch_size, self.strategy)

    def _run_steps(self, key, step_fn, names, iterators, target, where):
        """Runs `config.steps` steps in calls of `sync_every`; raises on non-finite."""
        config = self.config
        block = self._block(key, step_fn, names)
        totals = {n: 0.0 for n in names}
        penalties = {n: 0.0 for n in names}
        done = 0
        while done < config.steps:
            k = min(config.sync_every, config.steps - done)
            loss_sum, pen_sum, first_bad = block(iterators, tf.constant(k), target)
            failed = [(bad, n) for n, bad in zip(list(names) + [_GRADIENT],
                                                 first_bad.numpy().tolist()) if bad >= 0]
            if failed:                      # the earliest step, networks before the gradient
                bad, n = min(failed, key=lambda f: (f[0], f[1] == _GRADIENT))
                what = (f"network {n!r}" if n != _GRADIENT else
                        f"the gradient of {names} (shared pages)")
                raise NonFiniteError(f"non-finite loss, gradient or weights in {what} at "
                                     f"{where} step {done + bad + 1}")
            for n, loss, pen in zip(names, loss_sum.numpy(), pen_sum.numpy()):
                totals[n] += float(loss)
                penalties[n] += float(pen)
            done += k
        return ({n: v / config.steps for n, v in totals.items()},
                {n: v / config.steps for n, v in penalties.items()})

    # --- rounds -------------------------------------------------------------------
    def joint_round(self, r, weights=None):
        """One joint round; returns (train loss, penalty) per network. `weights`:
        {name: loss weight} (config.balance), else equal."""
        if self.loss_weights is not None:
            self.loss_weights.assign([weights[n] for n in self.names])
        iterators = {n: self._iterator(n, r, i) for i, n in enumerate(self.names)}
        train, _ = self._run_steps("joint", lambda b, t: self._joint_step(b), self.names,
                                   iterators, None, f"round {r}")
        return train, {}

    def turns_round(self, r, penalty_weights, anchors):
        """One round of turns (round_robin / sequential); updates `anchors` in place."""
        train, penalty = {}, {}
        for i, n in enumerate(self.names):
            target = (_penalty_target(n, self.names, penalty_weights, anchors,
                                      self.rt.page_pool) if penalty_weights else None)
            step = (lambda b, t, n=n: self._turn_step(n, b[n], t))
            out = self._run_steps(f"turn/{n}/{target is not None}", step, [n],
                                  {n: self._iterator(n, r, i)}, target, f"round {r}")
            train[n], penalty[n] = out[0][n], out[1][n]
            anchors[n] = self.rt.page_pool.numpy().copy()
        return train, penalty

    def learning_rate(self) -> float:
        """The current learning rate of the (first) optimizer."""
        optimizer = next(iter(self.optimizers.values()))
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _round_options() -> tf.data.Options:
    """Options of a round's training iterators: tf.data autotuning off. Its model
    thread makes destroying a long-lived iterator wait until its next wake-up (up to
    tens of seconds each, TensorFlow 2.21); the previous round's iterators, one per
    network, are destroyed when the next round starts, which held ten-network
    rounds of 47 s for 90-270 s with the CPU idle. The batches are the same
    (every map is deterministic)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _failures(finite: dict) -> dict:
    """{name: 1 where a check failed, else 0} (int32, summed over replicas)."""
    return {n: tf.cast(tf.logical_not(ok), tf.int32) for n, ok in finite.items()}


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


def _validation_batches(tasks, data_dir, config) -> dict:
    """{task: its validation batches, kept in memory after the first round}."""
    return {t: training.evaluation_batches(t, "validation", data_dir=data_dir,
                                           limit=config.limit) for t in set(tasks.values())}


def _evaluate(rt, tasks, batches, config, round_index, train_loss, penalty, seconds, lr):
    val = {n: training.evaluate(lambda x, n=n: rt.run(n, x), tasks[n], "validation",
                                batches=batches[tasks[n]]) for n in tasks}
    return {"round": round_index, "mode": config.mode.value,
            "train_loss": train_loss, "penalty": penalty,
            "val_accuracy": {n: v["accuracy"] for n, v in val.items()},
            "val_loss": {n: v["loss"] for n, v in val.items()},
            "mean_val_accuracy": float(np.mean([v["accuracy"] for v in val.values()])),
            "learning_rate": lr, "seconds": round(seconds, 3)}


BALANCE_CAP = 4.0   # exp(η g) is clipped to [1/cap, cap]: at most cap² between two networks


def balance_weights(reference: dict, accuracy: dict, eta: float) -> dict:
    """Loss weights {name: w_n}, w_n = N e_n / Σ_m e_m with e_n = exp(η g_n) clipped to
    [1 / BALANCE_CAP, BALANCE_CAP] and the gap g_n = 100 (reference_n − accuracy_n) in
    points (`OptimizeConfig.balance`). The clip keeps the first rounds, when every
    network is far below its original (tens of points after matching), from
    training the single worst one.

    >>> w = balance_weights({"a": 0.9, "b": 0.9}, {"a": 0.9, "b": 0.88}, 0.5)
    >>> round(w["a"], 3), round(w["b"], 3), round(w["a"] + w["b"], 6)
    (0.538, 1.462, 2.0)
    >>> w = balance_weights({"a": 0.9, "b": 0.9, "c": 0.9}, {"a": 0.3, "b": 0.5, "c": 1.0}, 0.5)
    >>> [round(w[n], 3) for n in "abc"]          # a and b both at the cap, c at 1/cap
    [1.455, 1.455, 0.091]
    """
    names = list(reference)
    gaps = np.array([100.0 * (reference[n] - accuracy[n]) for n in names])
    cap = np.log(BALANCE_CAP)
    logits = np.clip(eta * gaps, -cap, cap)
    weights = np.exp(logits - logits.max())
    weights = len(names) * weights / weights.sum()
    return {n: float(w) for n, w in zip(names, weights)}


def _reference_accuracy(rt, tasks, batches, config) -> dict:
    """{name: validation accuracy of the network's teacher (its original weights)} on
    the run's validation batches {task: batches}."""
    missing = [n for n in tasks if rt.spec(n).teacher is None]
    if missing:
        raise ValueError(f"balance={config.balance} compares every network with its "
                         f"original (teacher) accuracy; {missing} have no teacher (pools "
                         f"saved before teachers were stored: re-add those networks)")
    return {n: training.evaluate(lambda x, n=n: rt.spec(n).teacher(x, training=False),
                                 tasks[n], "validation", batches=batches[tasks[n]])["accuracy"]
            for n in tasks}


def _meta_key(rt, config, names) -> dict:
    """What a checkpoint must agree on to be resumed: the settings (but patience, and
    rounds when the learning rate does not depend on them), the tables, the pool shape."""
    key = config.get_config()
    key.pop("patience")
    if not config.balance:       # checkpoints written before balance existed resume
        key.pop("balance")
    if config.schedule == "constant":
        key.pop("rounds")
    key["networks"] = {n: rt.page_table(n).tolist() for n in names}
    key["pool_shape"] = list(rt.page_pool.shape)
    return key


def _stale_rounds(history, best_round) -> int:
    return history[-1]["round"] - history[best_round]["round"]


def optimize_runtime(rt: nwv_runtime.VirtualizedNetworks, config: OptimizeConfig, *,
                     data_dir: str | None = None, tasks: dict | None = None,
                     checkpoint_dir: str | None = None, resume: bool = False,
                     log=print) -> dict:
    """Trains the networks of `rt` on its shared pool; leaves the best pool in `rt`.

    Args:
      rt: the runtime; its `page_pool` variable is trained in place; round_robin
        (λ > 0) needs every network's Fisher pages (`NetworkSpec.fisher`),
        distillation every network's teacher (`NetworkSpec.teacher`).
      config: OptimizeConfig.
      data_dir: data folder (None: TFDS).
      tasks: {name: task}; default the tasks the runtime knows.
      checkpoint_dir: where the checkpoint and history.json go (None: nowhere).
      resume: continue from the checkpoint in `checkpoint_dir` if there is one.
      log: callable taking one line per round (None: silent).
    Returns:
      {"history": [per-round dicts], "best_round", "best_val_accuracy", "rounds",
       "stopped_early"}.
    Raises:
      NonFiniteError naming the network and step; ValueError for missing tasks,
      Fisher or teachers, or a checkpoint written with other settings.

    With `config.quantize="int8"` the runtime runs fake-quantized pages for the
    run (`set_fake_quant`) and returns to its previous setting afterwards.
    """
    if rt.resident_plan is not None or rt.storage != "float32":
        raise ValueError("joint optimisation trains a float32 pool held in memory; load the "
                         "pool without resident_bytes and with storage='float32'")
    previous = rt.fake_quant
    rt.set_fake_quant(config.quantize == "int8")
    try:
        return _optimize_runtime(rt, config, data_dir, tasks, checkpoint_dir, resume,
                                 log or (lambda line: None))
    finally:
        rt.set_fake_quant(previous)


def _optimize_runtime(rt, config, data_dir, tasks, checkpoint_dir, resume, log):
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
    trainer = _Trainer(rt, config, data_dir, tasks)
    validation = _validation_batches(tasks, data_dir, config)
    pool = rt.page_pool
    weights = {}
    if penalised:
        for n in names:
            weights[n] = np.zeros(pool.shape, np.float64)
            np.add.at(weights[n], rt.page_table(n), np.asarray(fisher[n], np.float64))
    checkpoint = Checkpoint(os.path.join(checkpoint_dir, CHECKPOINT) if checkpoint_dir
                            else None, _meta_key(rt, config, names))

    def save():
        checkpoint.save(pool=pool, best=best, best_round=best_round, anchors=anchors,
                        optimizers=trainer.optimizers, history=history, config=config)

    if resume and checkpoint.exists():
        history, best, best_round, anchors = checkpoint.load(
            pool=pool, optimizers=trainer.optimizers, names=names)
        log(f"resuming after round {history[-1]['round']} from {checkpoint.path}")
    else:
        history = [_evaluate(rt, tasks, validation, config, 0, {}, {}, 0.0,
                             trainer.learning_rate())]
        if config.balance:
            history[0]["reference_val_accuracy"] = _reference_accuracy(rt, tasks, validation,
                                                                       config)
        best, best_round = pool.numpy().copy(), 0
        anchors = {n: pool.numpy().copy() for n in names} if penalised else {}
        save()
        log(json.dumps(history[-1]))
    stopped = False
    for r in range(history[-1]["round"] + 1, config.rounds + 1):
        if config.patience and _stale_rounds(history, best_round) >= config.patience:
            stopped = True
            log(f"stopping early: no better mean validation accuracy for {config.patience} "
                f"rounds")
            break
        start = time.time()
        snapshot = pool.numpy().copy()
        moments = {k: [v.numpy() for v in o.variables] for k, o in trainer.optimizers.items()}
        try:
            if config.mode is OptimizationMode.JOINT:
                loss_weights = (balance_weights(history[0]["reference_val_accuracy"],
                                                history[-1]["val_accuracy"], config.balance)
                                if config.balance else None)
                train_loss, penalty = trainer.joint_round(r, loss_weights)
            else:
                train_loss, penalty = trainer.turns_round(r, weights, anchors)
        except NonFiniteError as err:
            pool.assign(snapshot)
            for k, optimizer in trainer.optimizers.items():
                for variable, value in zip(optimizer.variables, moments[k]):
                    variable.assign(value)
            raise NonFiniteError(f"{err}: stopped; the pool was restored to the start of the "
                                 f"round and nothing non-finite was written (lower "
                                 f"--learning_rate or check the data)") from None
        entry = _evaluate(rt, tasks, validation, config, r, train_loss, penalty,
                          time.time() - start, trainer.learning_rate())
        if config.balance:
            entry["loss_weights"] = loss_weights
        history.append(entry)
        if entry["mean_val_accuracy"] > history[best_round]["mean_val_accuracy"]:
            best, best_round = pool.numpy().copy(), len(history) - 1
        save()
        log(json.dumps(entry))
    pool.assign(best)
    return {"history": history, "best_round": history[best_round]["round"],
            "best_val_accuracy": history[best_round]["mean_val_accuracy"],
            "rounds": history[-1]["round"], "stopped_early": stopped}


def optimize_pool(pool_dir: str, config: OptimizeConfig, *, data_dir: str | None = None,
                  resume: bool = False, log=print, wait=False) -> dict:
    """`optimize_runtime` on a pool directory: checkpoints and history.json go into it,
    and the best pool (by mean validation accuracy) is saved into it atomically.

    The pool's writer lock is held for the whole run (`nwv.locking`), so a second
    optimisation or add cannot interleave with it; readers are not blocked.

    Args:
      pool_dir: the pool directory; config: `OptimizeConfig`.
      data_dir: data folder (None: TFDS); resume, log: as `optimize_runtime`.
      wait: if another process writes the pool: False fails at once, True waits,
        a number waits that many seconds.
    Returns:
      The result of `optimize_runtime`.
    Raises:
      ValueError: an empty pool; PoolBusyError; errors of `optimize_runtime` and
      `nwv.state`.
    """
    if not state.exists(pool_dir):
        state.read_manifest(pool_dir)             # the clear "no NWV pool" error
    if not distribute.is_chief():                 # other workers read; the chief writes
        return _optimize_pool(pool_dir, config, data_dir, resume, log)
    with locking.writer(pool_dir, wait=wait, log=log):
        return _optimize_pool(pool_dir, config, data_dir, resume, log)


def _optimize_pool(pool_dir, config, data_dir, resume, log):
    loaded = state.load_state(pool_dir, with_teachers=True)
    if not loaded.networks:
        raise ValueError(f"{pool_dir} holds no networks to optimise")
    with tf.distribute.get_strategy().scope():
        rt = nwv_runtime.VirtualizedNetworks.from_state(loaded, pool_dir=pool_dir)
    result = optimize_runtime(rt, config, data_dir=data_dir, checkpoint_dir=pool_dir,
                              resume=resume, log=log)
    if distribute.is_chief():
        loaded.pool = rt.pool_array()
        state.save_state(pool_dir, loaded)
    return result
