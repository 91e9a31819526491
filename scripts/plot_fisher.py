"""Fisher information per layer of the five reference NWV networks (a figure).

    python scripts/plot_fisher.py --reference_dir=../shared/reference/nwv

Reads the diagonal Fisher stored beside each reference network's weights
(`models.read_npz(path, "fisher_")`) and plots, per weighted layer, the mean
Fisher information per weight (log scale): where the page matching must be
careful. Writes results/nwv_fisher.png and results/nwv_fisher.json (relative
paths: to the repository root). Takes a few seconds.
"""
import os

import _cli
import numpy as np
from absl import flags

import _bench as bench
import models

FLAGS = flags.FLAGS
flags.DEFINE_string("reference_dir", "../shared/reference/nwv", "Reference .npz folder.")
flags.DEFINE_string("out", "results/nwv_fisher.png", "Figure path (JSON beside it).")
flags.DEFINE_integer("seed", 0, "Random seed (unused: deterministic).")


def fisher_per_layer() -> dict:
    """{model: {weighted layer: mean Fisher per weight (kernel and bias)}} of every
    registered NWV model with reference weights."""
    stats = {}
    for name in models.available("nwv_*"):
        ref = models.info(name).reference_weights
        if not ref:
            continue
        fisher = models.read_npz(os.path.join(bench.resolve(FLAGS.reference_dir), ref),
                                 "fisher_")
        layers = [l.name for l in models.build(name).layers
                  if getattr(l, "kernel", None) is not None]
        stats[name] = {layer: float(np.mean(np.concatenate([fisher[2 * i].ravel(),
                                                            fisher[2 * i + 1].ravel()])))
                       for i, layer in enumerate(layers)}
    return stats


def plot(stats):
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, per_layer in stats.items():
        ax.plot(range(len(per_layer)), list(per_layer.values()), marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("weighted layer (conv1, ..., logits)")
    ax.set_ylabel("mean Fisher information per weight")
    ax.legend(fontsize=8)
    path = bench.save_figure(fig, FLAGS.out)
    plt.close(fig)
    return path


def main(argv):
    del argv
    stats = fisher_per_layer()
    plot(stats)
    bench.write_result(os.path.splitext(FLAGS.out)[0] + ".json", stats)
    for name, per_layer in stats.items():
        print(name, {k: f"{v:.3g}" for k, v in per_layer.items()})


if __name__ == "__main__":
    _cli.run(main)
