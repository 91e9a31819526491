"""List, inspect or remove the networks of an NWV page pool; the LAST line is JSON.

    python scripts/pool.py --pool=runs/pool --action=list
    python scripts/pool.py --pool=runs/pool --action=inspect
    python scripts/pool.py --pool=runs/pool --action=remove --name=svhn

`inspect` reports the pool size and compression, and per network its pages, pages
shared with each other network and its Fisher mass per layer. Runs in about a second.
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("pool", None, "Pool directory.", required=True)
flags.DEFINE_enum("action", "list", ["list", "inspect", "remove"], "What to do.")
flags.DEFINE_string("name", None, "Network to remove (--action=remove).")
flags.DEFINE_bool("wait", False, "If another process is writing the pool, wait for it "
                  "instead of failing at once.")
flags.DEFINE_integer("seed", 0, "Random seed (unused: kept for uniformity).")


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from nwv import api
    del argv
    if FLAGS.action == "list":
        networks = api.list_networks(FLAGS.pool)
        for net in networks:
            print(f"{net['name']:<16} task={net['task']:<16} model={net['model']:<14} "
                  f"weights={net['weights']:>9} pages={net['pages']}")
        print(json.dumps({"networks": networks}))
    elif FLAGS.action == "inspect":
        print(json.dumps(api.inspect(FLAGS.pool)))
    else:
        if not FLAGS.name:
            raise ValueError("--action=remove needs --name=NETWORK")
        print(json.dumps(api.remove_network(FLAGS.pool, FLAGS.name, wait=FLAGS.wait)))


if __name__ == "__main__":
    _cli.run(main)
