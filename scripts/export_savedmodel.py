"""Export any page pool (virtualized, zipped or combined) as one SavedModel.

    python scripts/export_savedmodel.py --weights=runs/pool --out=runs/export

One endpoint per network (`served.<name>(x)`), `all_tasks(x_1, ..., x_n)` for all
of them in one call, and for a zipped group `zipped_all(x)`; the variables are the
page pool, stored once. Load with TensorFlow alone: `tf.saved_model.load(dir)`.
Prints the endpoints and the variable bytes; takes a few seconds.
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "Pool directory.", required=True)
flags.DEFINE_string("out", None, "SavedModel output folder.", required=True)
flags.DEFINE_list("networks", None, "Networks to export (default: all).")
flags.DEFINE_integer("seed", 0, "Random seed (unused: export is deterministic).")


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from nwv import export
    from nwv.runtime import VirtualizedNetworks
    del argv
    runtime = VirtualizedNetworks.load(FLAGS.weights, None)
    info = export.export_savedmodel(runtime, FLAGS.out, names=FLAGS.networks)
    info["variable_bytes"] = export.variable_bytes(FLAGS.out)
    print(f"SavedModel in {FLAGS.out}: endpoints {info['endpoints']}; "
          f"{info['variable_bytes']} bytes of variables (pool {info['pool_bytes']})")
    print(json.dumps(info))


if __name__ == "__main__":
    _cli.run(main)
