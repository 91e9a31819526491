"""Fisher information per layer of the five reference NWV networks (a figure).

    python scripts/plot_fisher.py --reference_dir=../shared/reference/nwv

Reads the diagonal Fisher stored beside each reference network's weights and
plots, per weighted layer, the mean Fisher information per weight (log scale):
where the page matching must be careful. Writes results/nwv_fisher.png and
results/nwv_fisher.json. Takes a few seconds.
"""
import os

import _cli
import numpy as np
from absl import flags

import models
from models import artifacts

FLAGS = flags.FLAGS
flags.DEFINE_string("reference_dir", "../shared/reference/nwv", "Reference .npz folder.")
flags.DEFINE_string("out", "results/nwv_fisher.png", "Figure path (JSON beside it).")
flags.DEFINE_integer("seed", 0, "Random seed (unused: deterministic).")


def main(argv):
    del argv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = {}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name in models.available("nwv_*"):
        ref = models.info(name).reference_weights
        if not ref:
            continue
        fisher = models.load_reference_fisher(os.path.join(FLAGS.reference_dir, ref))
        layers = [l.name for l in models.build(name).layers
                  if getattr(l, "kernel", None) is not None]
        per_layer = {layer: float(np.mean(np.concatenate([fisher[2 * i].ravel(),
                                                           fisher[2 * i + 1].ravel()])))
                     for i, layer in enumerate(layers)}
        stats[name] = per_layer
        ax.plot(range(len(layers)), list(per_layer.values()), marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("weighted layer (conv1, ..., logits)")
    ax.set_ylabel("mean Fisher information per weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    fig.savefig(FLAGS.out, dpi=120)
    artifacts.write_json(os.path.splitext(FLAGS.out)[0] + ".json", stats)
    for name, per_layer in stats.items():
        print(name, {k: f"{v:.3g}" for k, v in per_layer.items()})


if __name__ == "__main__":
    _cli.run(main)
