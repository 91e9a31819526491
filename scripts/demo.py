"""The main job: train, zip two networks, virtualize all, switch, export.

    python scripts/demo.py --data_dir=../shared/datasets --out=demo_out

Default tasks: mnist and mnist_parity (one architecture, zipped with MTZ),
cifar10 and tts_commands (virtualized into the same page pool with NWV). Prints
per-task test accuracy before/after, memory, switching latency (in-memory vs
reload from disk) and writes summary.json, accuracy.png, switching.png, the pool
and a SavedModel under --out. About 8 minutes on 2 CPU cores; `--quick` runs
the same path on 64 examples per split in about a minute. Without --data_dir
the data come from TensorFlow Datasets (needs network; tts_commands is local only,
so pass --other_tasks=cifar10 there).
"""
import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Local data folder or tarballs; default TFDS.")
flags.DEFINE_string("out", "demo_out", "Output folder.")
flags.DEFINE_bool("quick", False, "One-minute run on few examples (tests, Colab).")
flags.DEFINE_list("zip_tasks", ["mnist", "mnist_parity"], "Two tasks of one architecture.")
flags.DEFINE_list("other_tasks", ["cifar10", "tts_commands"], "Tasks to virtualize.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from _demo import DemoConfig, run_demo
    del argv
    kwargs = dict(zip_tasks=tuple(FLAGS.zip_tasks), other_tasks=tuple(FLAGS.other_tasks),
                  seed=FLAGS.seed)
    config = DemoConfig.quick(**kwargs) if FLAGS.quick else DemoConfig(**kwargs)
    s = run_demo(FLAGS.out, FLAGS.data_dir, config)
    print(f"\n{'task':<16}{'separate':>10}{'pooled':>10}")
    for t in s["tasks"]:
        print(f"{t:<16}{s['accuracy_before'][t]:>10.4f}{s['accuracy_after'][t]:>10.4f}")
    m, w = s["memory"], s["switching"]
    print(f"memory: {m['separate_weights']} weights -> {m['pool_weights']} in the pool "
          f"({m['ratio']:.2f}x); SavedModel variables {m['savedmodel_variable_bytes']} bytes")
    print(f"switch + inference: in-memory {w['in_memory_ms']:.2f} ms vs reload "
          f"{w['reload_ms']:.2f} ms ({w['ratio']:.0f}x); outputs in {FLAGS.out}")


if __name__ == "__main__":
    _cli.run(main)
