r"""Evaluate an artifact on a task split; the LAST printed line is one JSON object.

    python scripts/evaluate.py --task=mnist --model=nwv_mnist \
        --weights=../shared/reference/nwv/mnist.npz --data_dir=../shared/datasets --split=test

`--weights` is a folder written by train.py, a `.keras` file, a reference
`.npz` together with `--model`, a zipped model (zip.py) with `--member=K`, or an NWV
pool directory (add_dnn.py) with `--network=N`, run from the shared pool. Prints e.g.
{"task": "mnist", "split": "test", "accuracy": 0.99, "loss": 0.03, "examples": 5999, ...}
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("task", None, "Task to evaluate on.", required=True)
flags.DEFINE_string("weights", None, "Artifact: train.py folder, .keras or .npz.",
                    required=True)
flags.DEFINE_string("model", None, "Registered model name (needed for a .npz).")
flags.DEFINE_string("member", None, "For a zipped model (zip.py output): the member to "
                    "evaluate, by index or name.")
flags.DEFINE_string("network", None, "For an NWV pool directory (add_dnn.py output): the "
                    "network to evaluate, executed from the shared page pool.")
flags.DEFINE_string("data_dir", None, "Local data folder or tarball; default TFDS.")
flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_integer("limit", None, "Evaluate at most this many examples.")
flags.DEFINE_integer("seed", 0, "Random seed (evaluation is deterministic; kept for "
                     "uniformity).")


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    import data
    import mtz
    from models import artifacts, training
    del argv
    data.get(FLAGS.task)  # unknown task: fail before loading anything
    if FLAGS.network is not None:
        from nwv import runtime
        pool = runtime.VirtualizedNetworks.load(FLAGS.weights, [FLAGS.network])
        model = pool.model(FLAGS.network)
        training.check_compatible(model, FLAGS.task)
        result = training.evaluate(lambda x: pool.run(FLAGS.network, x), FLAGS.task,
                                   FLAGS.split, data_dir=FLAGS.data_dir,
                                   batch_size=FLAGS.batch_size, limit=FLAGS.limit)
        result.update(weights=FLAGS.weights, model=model.name, network=FLAGS.network)
        print(json.dumps(result))
        return
    if FLAGS.member is not None:
        zipped = mtz.ZippedModel.load(FLAGS.weights)
        member = int(FLAGS.member) if FLAGS.member.isdigit() else FLAGS.member
        model = zipped.member(member)
    else:
        model = artifacts.load_model(FLAGS.weights, FLAGS.model)
    training.check_compatible(model, FLAGS.task)
    result = training.evaluate(model, FLAGS.task, FLAGS.split, data_dir=FLAGS.data_dir,
                               batch_size=FLAGS.batch_size, limit=FLAGS.limit)
    result.update(weights=FLAGS.weights, model=model.name)
    print(json.dumps(result))


if __name__ == "__main__":
    _cli.run(main)
