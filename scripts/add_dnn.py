r"""Add a trained network to an NWV page pool (created if missing); prints a JSON summary.

    python scripts/add_dnn.py --pool=runs/pool --name=mnist --task=mnist --model=nwv_mnist \
        --weights=../shared/reference/nwv/mnist.npz --data_dir=../shared/datasets --seed=0

Pages the network's weights and Fisher (the reference `.npz` Fisher when the weights
come with one, else computed on `--fisher_samples` train examples), matches the pages
onto the shared pool (cost Σ(F₁+F₂)(w₁−w₂)², `--matching=optimal|greedy`) and saves the
pool directory atomically. On 2 CPU cores a reference network (npz Fisher) takes about
3 s; a computed Fisher (256 samples, expectation over 10 classes) about 10 s for the
45k-weight nwv_mnist. The LAST printed line is e.g.
{"name": "cifar10", "pages": 455, "pool_pages": 458, "shared_pages": 455, "cost": ..., ...}.
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("pool", None, "Pool directory (created if missing).", required=True)
flags.DEFINE_string("name", None, "Network name in the pool.", required=True)
flags.DEFINE_string("task", None, "Task the network solves.", required=True)
flags.DEFINE_string("model", None, "Registered model name of its architecture (needed for a "
                    ".npz; without it the architecture is stored in the pool as Keras JSON).")
flags.DEFINE_string("weights", None, "train.py folder, .keras file or reference .npz.",
                    required=True)
flags.DEFINE_string("data_dir", None, "Local data folder or tarball; default TFDS.")
flags.DEFINE_integer("page_size", 100, "Weights per page (must match an existing pool).")
flags.DEFINE_enum("matching", "optimal", ["optimal", "greedy"], "Page matching method.")
flags.DEFINE_integer("fisher_samples", 256, "Train examples for a computed Fisher.")
flags.DEFINE_enum("fisher_source", "auto", ["auto", "reference", "computed"],
                  "auto: the reference npz Fisher when present, else computed.")
flags.DEFINE_enum("fisher_definition", "expected", ["expected", "predicted"],
                  "Computed Fisher: expectation over p(y|x), or the predicted class only.")
flags.DEFINE_string("model_overrides", "{}", "JSON keyword arguments for models.build.")
flags.DEFINE_bool("wait", False, "If another process is writing the pool, wait for it "
                  "instead of failing at once.")
flags.DEFINE_integer("seed", 0, "Random seed (Fisher example order).")
_cli.define_strategy_flags()


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from nwv import api
    del argv
    try:
        overrides = json.loads(FLAGS.model_overrides)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model_overrides: expected a JSON object, received "
                         f"{FLAGS.model_overrides!r} ({err})") from err
    if not isinstance(overrides, dict):
        raise ValueError(f"--model_overrides: expected a JSON object, received "
                         f"{FLAGS.model_overrides!r}")
    with _cli.strategy_scope():          # the Fisher on every replica
        summary = api.add_network(
            FLAGS.pool, FLAGS.weights, name=FLAGS.name, task=FLAGS.task, model_name=FLAGS.model,
            model_overrides=overrides, data_dir=FLAGS.data_dir, page_size=FLAGS.page_size,
            matching=FLAGS.matching, fisher_samples=FLAGS.fisher_samples, seed=FLAGS.seed,
            fisher_source=FLAGS.fisher_source, fisher_definition=FLAGS.fisher_definition,
            wait=FLAGS.wait)
    print(json.dumps(summary))


if __name__ == "__main__":
    _cli.run(main)
