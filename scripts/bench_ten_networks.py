"""Ten networks in three families: NWV alone against MTZ + NWV at equal bytes and budget.

    python scripts/bench_ten_networks.py --data_dir=../shared/datasets --work_dir=runs/ten

(Stage 1, the ten separate networks; the later stages are being written.)
"""
import dataclasses
import os

import _bench as bench
import _cli
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Data folder (relative: repo root).")
flags.DEFINE_string("work_dir", "runs/ten_networks", "Artifacts: separate/<name>, pools/.")
flags.DEFINE_list("stages", ["separate"], "Stages to run.")
flags.DEFINE_integer("limit", None, "At most this many examples per split (quick runs).")
flags.DEFINE_float("epochs_scale", 1.0, "Multiplies every network's epochs (quick runs).")
flags.DEFINE_integer("seed", 0, "Random seed.")


@dataclasses.dataclass(frozen=True)
class Member:
    """One of the ten networks: its task, family, architecture and training settings."""
    name: str
    task: str
    family: str
    model: str
    epochs: int
    learning_rate: float = 1e-3
    seed: int = 0


# Epochs reach the plateau of validation accuracy (cosine decay to 0 over all epochs).
MEMBERS = (
    Member("mnist", "mnist", "digits", "nwv_mnist", 15),
    Member("mnist_parity", "mnist_parity", "digits", "nwv_mnist", 15),
    Member("mnist_lowhigh", "mnist_lowhigh", "digits", "nwv_mnist", 15),
    Member("cifar10", "cifar10", "objects", "nwv_cifar10", 30),
    Member("cifar10_vehicles", "cifar10_vehicles", "objects", "nwv_cifar10", 30),
    Member("cifar10_animals", "cifar10_animals", "objects", "nwv_cifar10", 30),
    Member("cifar10_b", "cifar10", "objects", "nwv_cifar10", 30, seed=1),
    Member("tts_commands", "tts_commands", "keywords", "nwv_tts", 80, 2e-3),
    Member("tts_directions", "tts_directions", "keywords", "nwv_tts", 80, 2e-3),
    Member("tts_control", "tts_control", "keywords", "nwv_tts", 80, 2e-3),
)


def separate_folder(name: str) -> str:
    return os.path.join(bench.resolve(FLAGS.work_dir), "separate", name)


def train_separate() -> dict:
    """Trains (or reuses) the ten networks; returns {name: folder}."""
    folders = {}
    for member in MEMBERS:
        epochs = max(1, round(member.epochs * FLAGS.epochs_scale))
        folders[member.name] = bench.trained(
            member.task, member.model, data_dir=bench.resolve(FLAGS.data_dir), cache_dir="",
            epochs=epochs, seed=member.seed, learning_rate=member.learning_rate,
            overrides=bench.class_overrides(member.model, member.task), limit=FLAGS.limit,
            folder=separate_folder(member.name), log=bench.log)
    return folders


def main(argv):
    del argv
    if "separate" in FLAGS.stages:
        train_separate()


if __name__ == "__main__":
    _cli.run(main)
