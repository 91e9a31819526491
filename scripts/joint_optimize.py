"""Optimise the networks of an NWV pool on their shared pages; prints a JSON summary.

    python scripts/joint_optimize.py --pool=runs/pool --data_dir=../shared/datasets \
        --mode=joint --rounds=10 --steps=200 --seed=0

Modes: joint (summed loss of all networks, one step on the pool), round_robin (the
original: turns with a Fisher penalty λ·Σ F_other (w − w_other)²), sequential (turns,
no penalty). Each round evaluates every network on its validation split, keeps the
pool with the best mean validation accuracy, writes `optimize_checkpoint.npz` and
`history.json` into the pool; `--resume` continues after the last completed round with
identical results. The best pool is saved into the pool directory at the end. Measured
on 2 CPU cores with the reference mnist + cifar10 networks in one 458-page pool (2x):
matched, validation 59.4% / 53.3%; after --rounds=2 --steps=100 (joint, about 13 s in
all) 97.8% / 54.4%. The LAST printed line is
{"pool": ..., "best_round": 2, "best_val_accuracy": 0.76, "val_accuracy": {...}}.
"""
import json

import _cli
from absl import flags

from nwv import optimize

FLAGS = flags.FLAGS
flags.DEFINE_string("pool", None, "Pool directory.", required=True)
flags.DEFINE_string("data_dir", None, "Local data folder or tarball; default TFDS.")
flags.DEFINE_enum("mode", "joint", [m.value for m in optimize.OptimizationMode],
                  "Optimisation mode.")
flags.DEFINE_integer("rounds", 10, "Rounds (validation + checkpoint after each).")
flags.DEFINE_integer("steps", 100, "Optimizer steps per network per round.")
flags.DEFINE_bool("resume", False, "Continue from the pool's checkpoint.")
flags.DEFINE_float("lambda_", 10.0, "round_robin penalty weight λ.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("batch_size", 64, "Batch size per task.")
flags.DEFINE_bool("augment", False, "Train-time augmentation of the tasks.")
flags.DEFINE_integer("limit", None, "Use at most this many examples per split (quick runs).")
flags.DEFINE_bool("wait", False, "If another process is writing the pool, wait for it "
                  "instead of failing at once.")
flags.DEFINE_integer("seed", 0, "Random seed (data order of round r: (seed, r)).")


def main(argv):
    del argv
    config = optimize.OptimizeConfig(
        mode=FLAGS.mode, rounds=FLAGS.rounds, steps=FLAGS.steps,
        learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size,
        lambda_=FLAGS.lambda_, seed=FLAGS.seed, augment=FLAGS.augment, limit=FLAGS.limit)
    result = optimize.optimize_pool(FLAGS.pool, config, data_dir=FLAGS.data_dir,
                                    resume=FLAGS.resume, wait=FLAGS.wait)
    best = result["history"][result["best_round"]]
    print(json.dumps({"pool": FLAGS.pool, "mode": config.mode.value,
                      "rounds": result["rounds"], "best_round": result["best_round"],
                      "best_val_accuracy": result["best_val_accuracy"],
                      "val_accuracy": best["val_accuracy"]}))


if __name__ == "__main__":
    _cli.run(main)
