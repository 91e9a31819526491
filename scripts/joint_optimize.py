r"""Optimise the networks of an NWV pool on their shared pages; prints a JSON summary.

    python scripts/joint_optimize.py --pool=runs/pool --data_dir=../shared/datasets \
        --mode=joint --rounds=10 --steps=200 --seed=0

Modes: joint (summed loss of all networks, one step on the pool), round_robin (the
original: turns with a Fisher penalty λ·Σ F_other (w − w_other)²), sequential (turns,
no penalty). Each round evaluates every network on its validation split, keeps the
pool with the best mean validation accuracy, writes `optimize_checkpoint.npz` and
`history.json` into the pool; `--resume` continues after the last completed round with
identical results (Adam's moments and the one learning-rate schedule of the run are in
the checkpoint). `--distill=B` adds distillation from each network's original weights;
`--quantize=int8` trains and selects the pool for its int8 pages (straight-through);
`--balance=ETA` weights the networks' losses towards those furthest below their original.
The best pool is saved into the pool directory at the end. Under
`--strategy=mirrored --cpu_replicas=2` (or several GPUs, or `multi_worker` with
TF_CONFIG) every step runs on every replica; only the chief writes. The LAST printed
line is
{"pool": ..., "best_round": 2, "best_val_accuracy": 0.76, "val_accuracy": {...}}.
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("pool", None, "Pool directory.", required=True)
flags.DEFINE_string("data_dir", None, "Local data folder or tarball; default TFDS.")
flags.DEFINE_enum("mode", "joint", ["joint", "round_robin", "sequential"],
                  "Optimisation mode.")
flags.DEFINE_integer("rounds", 10, "Rounds (validation + checkpoint after each).")
flags.DEFINE_integer("steps", 100, "Optimizer steps per network per round.")
flags.DEFINE_bool("resume", False, "Continue from the pool's checkpoint.")
flags.DEFINE_float("lambda_", 10.0, "round_robin penalty weight λ.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak Adam learning rate.")
flags.DEFINE_enum("schedule", "cosine", ["cosine", "constant"], "Learning-rate schedule over "
                  "the whole run: warm-up then cosine decay, or constant.")
flags.DEFINE_float("warmup", 0.05, "Share of all steps spent warming up.")
flags.DEFINE_float("distill", 0.0, "Weight beta of distillation from each network's "
                   "original weights (0: labels only).")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature T.")
flags.DEFINE_float("balance", 0.0, "joint: weight each network's loss by exp(balance x its "
                   "validation gap in points to its original weights), capped (0: equal).")
flags.DEFINE_integer("patience", None, "Stop after this many rounds without a better mean "
                     "validation accuracy.")
flags.DEFINE_integer("sync_every", 25, "Steps per compiled call (one host sync).")
flags.DEFINE_integer("batch_size", 64, "Batch size per task, over all replicas.")
flags.DEFINE_bool("augment", False, "Train-time augmentation of the tasks.")
flags.DEFINE_enum("quantize", None, ["int8"], "Quantisation-aware optimisation: train and "
                  "select the pool for its int8 pages (straight-through estimator).")
flags.DEFINE_integer("limit", None, "Use at most this many examples per split (quick runs).")
flags.DEFINE_bool("wait", False, "If another process is writing the pool, wait for it "
                  "instead of failing at once.")
flags.DEFINE_integer("seed", 0, "Random seed (data order of round r: (seed, r)).")
_cli.define_strategy_flags()


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from nwv import optimize
    del argv
    config = optimize.OptimizeConfig(
        mode=FLAGS.mode, rounds=FLAGS.rounds, steps=FLAGS.steps,
        learning_rate=FLAGS.learning_rate, schedule=FLAGS.schedule, warmup=FLAGS.warmup,
        batch_size=FLAGS.batch_size, lambda_=FLAGS.lambda_, distill=FLAGS.distill,
        temperature=FLAGS.temperature, patience=FLAGS.patience, sync_every=FLAGS.sync_every,
        seed=FLAGS.seed, augment=FLAGS.augment, limit=FLAGS.limit,
        quantize=FLAGS.quantize, balance=FLAGS.balance)
    with _cli.strategy_scope():
        result = optimize.optimize_pool(FLAGS.pool, config, data_dir=FLAGS.data_dir,
                                        resume=FLAGS.resume, wait=FLAGS.wait)
    best = result["history"][result["best_round"]]
    print(json.dumps({"pool": FLAGS.pool, "mode": config.mode.value,
                      "rounds": result["rounds"], "best_round": result["best_round"],
                      "best_val_accuracy": result["best_val_accuracy"],
                      "val_accuracy": best["val_accuracy"]}))


if __name__ == "__main__":
    _cli.run(main)
