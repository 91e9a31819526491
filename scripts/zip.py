r"""Zip trained networks with MTZ and report accuracy before / after zipping / after retraining.

    python scripts/zip.py --models=runs/lenet_a,runs/lenet_b --tasks=mnist,mnist \
        --share=1.0 --retrain_steps=275 --out=runs/zipped --data_dir=../shared/datasets

Writes the zipped multi-task model (`model.keras`, `zip.json`) and `report.json`
(per task validation/test accuracy at each stage, parameters, per-layer neurons
shared, ΔE and retraining steps). Two LeNet-300-100 take about a minute on 2 cores.
Evaluate one member with
`python scripts/evaluate.py --weights=runs/zipped --member=1 --task=mnist ...`.
"""
import os

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Trained model folders (train.py outputs) or .keras files.",
                  required=True)
flags.DEFINE_list("tasks", None, "One task per model.", required=True)
flags.DEFINE_string("share", "1.0", "Neurons to share: fraction ('1.0'), counts per layer "
                    "('300,100') or threshold ('eps=0.01').")
flags.DEFINE_enum("method", "greedy", ["greedy", "optimal", "random", "optimal_k"],
                  "Pairing (optimal_k: the old name of optimal).")
flags.DEFINE_integer("retrain_steps", 100, "Joint retraining steps after each zipped layer.")
flags.DEFINE_integer("batch_size", 64, "Retraining batch size per task.")
flags.DEFINE_float("learning_rate", 3e-4, "Retraining Adam learning rate.")
flags.DEFINE_integer("hessian_samples", 1000, "Training examples per task for the Hessians.")
flags.DEFINE_float("distill", 0.0, "Retraining: weight beta of distillation from the "
                   "separate networks (0: labels only).")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature T.")
flags.DEFINE_string("out", None, "Output folder.", required=True)
flags.DEFINE_string("data_dir", None, "Local data folder or tarball(s); default TFDS.")
flags.DEFINE_integer("eval_limit", None, "Evaluate on at most this many examples per split.")
flags.DEFINE_integer("seed", 0, "Random seed.")
_cli.define_strategy_flags()


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    import mtz
    from models import artifacts, training
    del argv
    if len(FLAGS.models) != len(FLAGS.tasks):
        raise ValueError(f"expected one task per model, received {len(FLAGS.models)} models "
                         f"and {len(FLAGS.tasks)} tasks")
    config = mtz.ZipConfig(share=FLAGS.share, method=FLAGS.method,
                           hessian_samples=FLAGS.hessian_samples, seed=FLAGS.seed)
    # Hessians and retraining on every replica; the strategy comes first, since
    # --cpu_replicas must split the CPU before TensorFlow runs anything
    with _cli.strategy_scope():
        training.set_seed(FLAGS.seed)
        nets = [artifacts.load_model(path) for path in FLAGS.models]
        zipped, report = mtz.zip_trained(
            nets, FLAGS.tasks, data_dir=FLAGS.data_dir, config=config,
            retrain_steps=FLAGS.retrain_steps, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate, distill=FLAGS.distill,
            temperature=FLAGS.temperature, eval_limit=FLAGS.eval_limit)
    zipped.save(FLAGS.out)
    artifacts.write_json(os.path.join(FLAGS.out, "report.json"), report)
    for name, stages in zip(report["members"], zip(report["before"].values(),
                                             report.get("after_zip", report["before"]).values(),
                                             report["after_retrain"].values())):
        before, plain, after = (s["test"] for s in stages)
        print(f"{name}: test accuracy {before:.4f} -> zipped {plain:.4f} -> retrained {after:.4f}")
    p = report["parameters"]
    print(f"parameters {p['separate']} -> {p['zipped']} ({p['ratio']:.2f}x); "
          f"{report['retrain_iterations']} retraining iterations; {report['seconds']} s")


if __name__ == "__main__":
    _cli.run(main)
