"""The MTZ procedure: zip networks layer by layer, with light joint retraining.

For each new network t and each layer l below the output (TMC Sec. 2.3):
  1. rows R = inputs of layer l that t shares with the zipped network;
  2. layer-wise Hessians over R (+ bias) from one forward pass through the
     *current, partly zipped* networks: H_t from t's data, H_Z the mean of the
     zipped tasks' Hessians (the joint network's Hessian, reused for >2 nets);
  3. costs d for every (zipped neuron, neuron of t) pair (Eq. 2.14-2.16), the
     cheapest pairs per the share schedule (greedy, optimal or random);
  4. merged weights (H_Z + H_t)^-1 (H_Z w_Z + H_t w_t) (Eq. 2.12-2.13), the next
     layer's inputs follow the new sharing (slot ids, `mtz.state`);
  5. optional joint retraining of all tasks for a few steps.
The output layer is never shared.

Residual blocks (TMC Sec. 3: "the addition copies the sharing pattern of the
block's last conv"): layers tied by an Add share one slot space. Only its
representative (the first in topological order, e.g. the stem conv or a
block's 1x1 projection) is paired by steps 1-4; every tied layer t's neurons
follow the same pairs (`zip_tied`): their weights are merged for these
forced pairs with the same formula, over the tied layer's own shared rows,
and ΔE is recorded. A tied layer whose inputs are not zipped yet when its
representative is (a block's last conv) first gets only its biases merged
(the Hessian of the bias alone is 1: the mean), which keeps the state
consistent, and is merged fully right after its input layer is zipped.
Per-layer share schedules index all weighted layers; tied layers ignore theirs.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from mtz import hessian, pairing, probes
from mtz.keras_build import multitask_model, read_back, task_model
from mtz.state import ZipState, positions
from mtz.structure import Chain


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZipConfig:
    """How to zip (validated; strings are accepted for `share` and `method`).

    Attributes:
      share: `ShareSchedule` or its string: "1.0" all neurons, "0.5" half,
        "300,100" counts per layer, "eps=0.01" a cost threshold.
      method: `PairingMethod` ("greedy", "optimal" or "random").
      alpha: weight of the zipped network's error (TMC Eq. 2.7-2.8).
      damping: relative Hessian damping (`mtz.hessian.add_damping`). 1e-3 keeps the
        merged weights w* = (H_A + H_B)^-1 (H_A a + H_B b) near a and b in the
        directions few inputs excite: with 1e-6, three keyword networks zipped at
        share 1.0 got kernels up to 155 (the separate ones: at most 0.7), logits
        in the hundreds and chance accuracy even after retraining. Chosen on
        validation (keywords and digits, share 1.0, 100 distilled steps per
        layer): 1e-3 mean 89.1 / 96.9 %, 1e-2 88.8 / 96.8 %, 1e-1 88.1 / - %.
      hessian_samples: examples per task for the layer-wise Hessians.
      sparse: keep zero weights at zero (pairs keep the mask with more non-zeros).
      per_tap: per-tap Hessian approximation for convolutions.
      seed: seed of the random pairing.
    """

    share: pairing.ShareSchedule = dataclasses.field(
        default_factory=lambda: pairing.ShareSchedule.parse("1.0"))
    method: pairing.PairingMethod = pairing.PairingMethod.GREEDY
    alpha: float = 0.5
    damping: float = 1e-3
    hessian_samples: int = 1000
    sparse: bool = False
    per_tap: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "method", pairing.PairingMethod.parse(self.method))
        hessian.check_alpha(self.alpha)
        if isinstance(self.share, str):
            object.__setattr__(self, "share", pairing.ShareSchedule.parse(self.share))
        elif not isinstance(self.share, pairing.ShareSchedule):
            raise ValueError(f"expected share as a ShareSchedule or a string like '1.0', "
                             f"received {self.share!r}")
        if self.hessian_samples < 1:
            raise ValueError(f"expected hessian_samples >= 1, received {self.hessian_samples}")


def _hessian(state, u, l, inputs, rows, config):
    """Task u's layer-l Hessian over the input slots `rows` (zeros where u lacks one) and
    the bias (TMC Eq. 2.6), from input moments reduced over replicas (`mtz.probes`)."""
    step = state.chains[u].weighted[l]
    per_tap = config.per_tap and step.kind == "conv"
    taps = state.kernels[u][l].shape[0]
    geometry = probes.LayerGeometry(
        step.kind, taps, positions(state.in_ids(u, l), rows),
        kernel_size=tuple(step.config.get("kernel_size", (1, 1))),
        strides=tuple(step.config.get("strides", (1, 1))),
        padding=step.config.get("padding", "valid"), per_tap=per_tap)
    moments = probes.layer_moments(task_model(state, u, joint=True), step.name, inputs,
                                   geometry)
    if per_tap:
        channel = hessian.HessianAccumulator(len(rows), bias=False).add_moments(*moments)
        return hessian.add_damping(hessian.per_tap_hessian(channel.result(0.0), taps),
                                   config.damping)
    acc = hessian.HessianAccumulator(geometry.dim).add_moments(*moments)
    return acc.result(config.damping)


def _hessians(state, l, t, rows, inputs, config):
    """(H_t, H_Z) over rows + bias for layer l: task t's, and the mean of the
    zipped tasks' 0..t-1 (the joint network's Hessian)."""
    h = [_hessian(state, u, l, inputs[u], rows, config) for u in range(t + 1)]
    return h[t], np.mean(h[:t], axis=0)


def _merge(state, l, t, zipped, slots_z, slots_t, rows, h_z, h_t, config):
    """Merged weights and per-pair ΔE of zipped slots with task t's (Eq. 2.12-2.16)."""
    w_z = state.zipped_vectors(zipped, l, rows, slots_z)
    w_t = state.vectors(t, l, rows, slots_t)
    masks = dict(mask_a=w_z != 0, mask_b=w_t != 0) if config.sparse else {}
    return pairing.merged_weights(w_z, w_t, h_z, h_t, alpha=config.alpha, return_costs=True,
                                  **masks)


def zip_layer(state: ZipState, l: int, t: int, *, inputs: dict, config: ZipConfig) -> dict:
    """Zips layer l of task t into the other tasks' network (steps 1-4 above).

    Args:
      state: the zip in progress (modified in place).
      l: weighted-layer index (a representative, not the classifier).
      t: the task being zipped into tasks 0..t-1.
      inputs: {task id: examples [n, *input_shape]} for the Hessians.
      config: `ZipConfig`.
    Returns:
      A record {"layer", "rows", "candidates", "shared", "delta_e", "seconds"}.
    """
    start = time.time()
    step = state.chains[0].weighted[l]
    zipped = list(range(t))
    rows = state.shared_inputs(l, t)
    cand_z = np.asarray(sorted(j for j, o in state.owners[l].items() if max(o) < t), np.int64)
    cand_t = np.asarray(sorted(j for j in state.out_ids[t][l].tolist()
                               if state.owners[l][j] == frozenset({t})), np.int64)
    spec = config.share.for_layer(l, len(cand_z), len(cand_t))
    record = {"layer": step.name, "rows": int(len(rows)), "candidates": [len(cand_z), len(cand_t)]}
    if len(rows) == 0 or (spec.get("count") == 0):
        return {**record, "shared": 0, "delta_e": 0.0, "seconds": time.time() - start}
    h_t, h_z = _hessians(state, l, t, rows, inputs, config)
    w_z = state.zipped_vectors(zipped, l, rows, cand_z)
    w_t = state.vectors(t, l, rows, cand_t)
    costs = pairing.pair_costs(w_z, w_t, h_z, h_t, alpha=config.alpha)
    ia, ib = pairing.select_pairs(costs, method=config.method,
                                  seed=np.random.default_rng([config.seed, l, t]), **spec)
    merged, delta = _merge(state, l, t, zipped, cand_z[ia], cand_t[ib], rows, h_z, h_t,
                           config)
    state.share(l, t, slots=cand_z[ia], neurons=cand_t[ib], rows=rows, merged=merged)
    return {**record, "shared": int(len(ia)), "delta_e": float(np.sum(delta)),
            "seconds": round(time.time() - start, 3)}


def zip_tied(state: ZipState, l: int, t: int, *, inputs: dict, config: ZipConfig) -> dict:
    """Merges tied layer l of task t for the pairs its representative chose.

    The forced pairs are the slots of l that t owns with other tasks (t joined
    them when the representative was zipped; its neurons moved with the shared
    `out_ids`). Their incoming weights from the shared rows of l and biases
    are merged by TMC Eq. 2.12-2.13 with the Hessians of l's own inputs; with
    no shared rows yet, only the biases (Hessian 1 each: their α-weighted mean).

    Args:
      state, l, t, inputs, config: as `zip_layer` (l a tied layer).
    Returns:
      A record {"layer", "tied_to", "rows", "shared", "delta_e", "seconds"}.
    """
    start = time.time()
    step = state.chains[0].weighted[l]
    slots = np.asarray(sorted(j for j in state.out_ids[t][l].tolist()
                              if len(state.owners[l][j]) > 1), np.int64)
    rows = state.shared_inputs(l, t)
    record = {"layer": step.name, "tied_to": state.chains[0].weighted[state.ties[l]].name,
              "rows": int(len(rows)), "shared": int(len(slots))}
    if len(slots) == 0:
        return {**record, "delta_e": 0.0, "seconds": round(time.time() - start, 3)}
    zipped = list(range(t))
    if len(rows):
        h_t, h_z = _hessians(state, l, t, rows, inputs, config)
    else:
        h_z = h_t = np.ones((1, 1))
    merged, delta = _merge(state, l, t, zipped, slots, slots, rows, h_z, h_t, config)
    state.write_merged(l, slots, rows, merged)
    return {**record, "delta_e": float(np.sum(delta)), "seconds": round(time.time() - start, 3)}


def new_state(chains: list[Chain], names: list[str], domains=None) -> ZipState:
    """A `ZipState` of networks on the joint input, nothing shared yet.

    Args:
      chains: parsed networks on the joint input (`mtz.domains.pad_chain`).
      names: task names.
      domains: each network's own input shape (default: the chain's).
    Returns:
      The new `ZipState`.
    """
    state = ZipState()
    for i, (chain, name) in enumerate(zip(chains, names)):
        state.add_task(name, chain, domains[i] if domains else None)
    return state


def _zip_step(state, l, t, inputs, config, pending, done) -> list[dict]:
    """Zips representative l for task t, then every tied layer it can merge:
    those tied to l, and pending ones whose input space is l (see module doc)."""
    records = [zip_layer(state, l, t, inputs=inputs, config=config)]
    done.add(l)
    for m in range(state.num_layers):
        if m != l and (state.ties[m] == l or (m in pending and state.sources[m] == l)):
            records.append(zip_tied(state, m, t, inputs=inputs, config=config))
            if state.sources[m] in done:
                pending.discard(m)
            else:
                pending.add(m)
    return records


def zip_state(state: ZipState, inputs: dict, *, config: ZipConfig, retrain=None,
              progress=None) -> list[dict]:
    """Zips task 1 into task 0, task 2 into their zipped network, ..., layer by layer.

    Round t pairs task t's neurons only with slots of tasks 0..t-1, so when a
    later round shares an input slot, no slot reading it is shared with the new
    task yet (sharing it with a task still to come would leave two values for
    one weight once that task's inputs are zipped).

    Layers go in topological order; tied layers are merged with their
    representative or right after their input layer (module docstring).

    Args:
      state: the `ZipState` (zipped in place).
      inputs: {task id: examples} for Hessians (at most `config.hessian_samples` used).
      config: `ZipConfig`.
      retrain: optional callable(model, state) -> dict run after each zipped layer
        (with the tied layers merged at that point), given the multi-task Keras
        model; its variables are read back afterwards.
      progress: optional callable(message) for progress reporting.
    Returns:
      One record per (task, layer): shared count, ΔE, rows, retraining record;
      tied layers' records also name the layer they are tied to ("tied_to").
    """
    inputs = {t: np.asarray(x)[:config.hessian_samples] for t, x in inputs.items()}
    records = []
    for t in range(1, len(state.tasks)):
        pending, done = set(), {-1}
        for l in range(state.num_layers):
            if l == state.output_layer or state.ties[l] != l:
                continue
            step = _zip_step(state, l, t, inputs, config, pending, done)
            for record in step:
                record["task"] = state.tasks[t]
            if retrain is not None and any(r["shared"] for r in step):
                model = multitask_model(state)
                step[0]["retrain"] = retrain(model, state)
                read_back(state, model)
            records.extend(step)
            if progress:
                for record in step:
                    progress(f"{state.tasks[t]} {record['layer']}: shared {record['shared']}, "
                             f"ΔE {record['delta_e']:.4g}")
    return records
