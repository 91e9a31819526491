"""Store a zipped multi-task model (scripts/zip.py output) in a new NWV page pool.

    python scripts/add_zipped.py --zipped=runs/zipped --pool=runs/pool --page_size=100

Shared blocks get pages that every member's page table points to (stored once);
each member becomes a pool network named like the member, plus `zipped_all`, the
whole multi-task model (shared layers computed once by `run_all`). More networks
can then be added with scripts/add_dnn.py and the pool exported with
scripts/export_savedmodel.py. Takes a few seconds.
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("zipped", None, "Zipped model folder (zip.py --out).", required=True)
flags.DEFINE_string("pool", None, "New pool directory.", required=True)
flags.DEFINE_integer("page_size", 100, "Weights per page.")
flags.DEFINE_string("data_dir", None, "Local data for the members' Fisher; default TFDS.")
flags.DEFINE_integer("fisher_samples", 256, "Train examples per member for its Fisher.")
flags.DEFINE_bool("wait", False, "If another process is writing the pool, wait for it "
                  "instead of failing at once.")
flags.DEFINE_integer("seed", 0, "Random seed (the Fisher's example order).")


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    import mtz
    from nwv import combined, state
    del argv
    zipped = mtz.ZippedModel.load(FLAGS.zipped)
    runtime = combined.save_zipped(FLAGS.pool, zipped, page_size=FLAGS.page_size,
                                   data_dir=FLAGS.data_dir, fisher_samples=FLAGS.fisher_samples,
                                   seed=FLAGS.seed, wait=FLAGS.wait)
    counts = combined.stored_weights(state.load_state(FLAGS.pool, with_fisher=False))
    print(f"{len(zipped.tasks)} members in {FLAGS.pool}: networks {runtime.names}; "
          f"{counts['networks_weights']} member weights stored in {counts['pool_weights']} "
          f"pool weights ({counts['ratio']:.2f}x)")
    print(json.dumps({"pool": FLAGS.pool, "networks": runtime.names, **counts}))


if __name__ == "__main__":
    _cli.run(main)
