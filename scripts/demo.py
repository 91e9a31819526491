"""The main job: train, zip two networks, virtualize a third, optimise, switch, export.

    python scripts/demo.py --data_dir=../shared/datasets --out=demo_out

Default tasks: mnist and mnist_parity (one architecture, zipped with MTZ) and
cifar10 (virtualized into the same page pool with NWV); all three exist in
TensorFlow Datasets, so without --data_dir the data come from TFDS (on Colab).
Each network is first trained apart to its validation plateau (cached in
--out/nets/<task>, reused only when trained with the same settings); the pool
is optimised jointly with distillation from the separate networks. Prints
per-task test accuracy apart / pooled / pooled with int8 pages, memory,
switching latency (in-memory vs reload from disk) and writes summary.json,
accuracy.png, switching.png, the pool, a SavedModel and one TFLite file under
--out. The committed run (results/demo/) took 7.5 minutes on a 2-core AMD EPYC
after reusing the three networks, whose training took 9.1 (about 17 from scratch);
--quick runs the same path on 64 examples per split in about a minute.
`--other_tasks=cifar10,tts_commands` adds the synthetic keywords (local only:
../shared/datasets; 60 more epochs).
"""
import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Local data folder or tarballs; default TFDS.")
flags.DEFINE_string("out", "demo_out", "Output folder.")
flags.DEFINE_bool("quick", False, "One-minute run on few examples (tests, Colab).")
flags.DEFINE_list("zip_tasks", ["mnist", "mnist_parity"], "Tasks of one architecture.")
flags.DEFINE_list("other_tasks", ["cifar10"], "Tasks to virtualize.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from _demo import DemoConfig, run_demo
    del argv
    kwargs = dict(zip_tasks=tuple(FLAGS.zip_tasks), other_tasks=tuple(FLAGS.other_tasks),
                  seed=FLAGS.seed)
    config = DemoConfig.quick(**kwargs) if FLAGS.quick else DemoConfig(**kwargs)
    s = run_demo(FLAGS.out, FLAGS.data_dir, config)
    print(f"\n{'task':<16}{'separate':>10}{'pooled':>10}{'int8':>10}")
    for t in s["tasks"]:
        print(f"{t:<16}{s['accuracy_before'][t]:>10.4f}{s['accuracy_after'][t]:>10.4f}"
              f"{s['accuracy_after_int8'][t]:>10.4f}")
    m, w = s["memory"], s["switching"]
    print(f"memory: {m['separate_weights']} weights -> {m['pool_weights']} in the pool "
          f"({m['ratio']:.2f}x); stored {m['stored_bytes']} bytes (int8 pages: "
          f"{m['int8_stored_bytes']}); one TFLite file of {m['tflite_bytes']} bytes")
    print(f"switch + inference: in-memory {w['in_memory_ms']:.2f} ms vs reload "
          f"{w['reload_ms']:.2f} ms ({w['ratio']:.0f}x); {s['seconds']:.0f} s; outputs in "
          f"{FLAGS.out}")


if __name__ == "__main__":
    _cli.run(main)
