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
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from mtz import hessian, pairing
from mtz.keras_build import layer_inputs, multitask_model, read_back, task_model
from mtz.state import ZipState, _positions
from mtz.structure import Chain


@dataclasses.dataclass(frozen=True)
class ZipConfig:
    """How to zip: share schedule, pairing method, α, Hessian damping and samples.

    method: "greedy", "optimal", "optimal_k" (`pairing.PairingMethod`) or "random".
    sparse: keep zero weights at zero (pairs keep the mask with more non-zeros).
    per_tap: per-tap Hessian approximation for convolutions.
    """

    share: pairing.ShareSchedule = dataclasses.field(
        default_factory=lambda: pairing.ShareSchedule.parse("1.0"))
    method: str = "greedy"
    alpha: float = 0.5
    damping: float = 1e-6
    hessian_samples: int = 1000
    sparse: bool = False
    per_tap: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.method != "random":
            pairing.PairingMethod(self.method)
        hessian.check_alpha(self.alpha)
        if isinstance(self.share, str):
            object.__setattr__(self, "share", pairing.ShareSchedule.parse(self.share))


def _restricted_inputs(state, t, l, x_layer, rows):
    """Task t's layer-l inputs on channels `rows` (zeros where t lacks one)."""
    step = state.chains[0].weighted[l]
    pos = _positions(state.in_ids(t, l), rows)
    if step.kind == "conv":
        out = np.zeros((*x_layer.shape[:-1], len(rows)), np.float32)
        out[..., pos >= 0] = x_layer[..., pos[pos >= 0]]
        return out
    x = x_layer.reshape(len(x_layer), step.taps, -1)
    out = np.zeros((len(x), step.taps, len(rows)), np.float32)
    out[:, :, pos >= 0] = x[:, :, pos[pos >= 0]]
    return out.reshape(len(x), -1)


def _hessian(state, t, l, x_layer, rows, config):
    step = state.chains[0].weighted[l]
    x = _restricted_inputs(state, t, l, x_layer, rows)
    if step.kind == "conv":
        return hessian.conv_layer_hessian(x, step.config["kernel_size"], step.config["strides"],
                                          step.config["padding"], damping=config.damping,
                                          per_tap=config.per_tap)
    return hessian.layer_hessian(x, damping=config.damping)


def zip_layer(state: ZipState, l: int, t: int, inputs: dict, config: ZipConfig) -> dict:
    """Zips layer l of task t into the other tasks' network; returns a record.

    Args:
      inputs: {task id: examples [n, *input_shape]} for the Hessians.
    """
    start = time.time()
    step = state.chains[0].weighted[l]
    zipped = [u for u in range(len(state.tasks)) if u != t]
    rows = state.shared_inputs(l, t)
    cand_z = np.asarray(sorted(j for j, o in state.owners[l].items() if t not in o), np.int64)
    cand_t = np.asarray(sorted(j for j in state.out_ids[t][l].tolist()
                               if state.owners[l][j] == frozenset({t})), np.int64)
    spec = config.share.for_layer(l, len(cand_z), len(cand_t))
    record = {"layer": step.name, "rows": int(len(rows)), "candidates": [len(cand_z), len(cand_t)]}
    if len(rows) == 0 or (spec.get("count") == 0):
        return {**record, "shared": 0, "delta_e": 0.0, "seconds": time.time() - start}
    h = {}
    for u in zipped + [t]:
        x_layer = layer_inputs(task_model(state, u), step.name, inputs[u])
        h[u] = _hessian(state, u, l, x_layer, rows, config)
    h_z = np.mean([h[u] for u in zipped], axis=0)
    w_z = state.zipped_vectors(zipped, l, rows, cand_z)
    w_t = state.vectors(t, l, rows, cand_t)
    if config.method == "random":
        count = spec.get("count")
        if count is None:
            raise ValueError("random pairing needs a count or fraction, not a threshold")
        ia, ib = pairing.random_pairs(len(cand_z), len(cand_t), count,
                                      np.random.default_rng([config.seed, l, t]))
    else:
        costs = pairing.pair_costs(w_z, w_t, h_z, h[t], config.alpha)
        ia, ib = pairing.select_pairs(costs, method=config.method, **spec)
    masks = {}
    if config.sparse:
        masks = dict(mask_a=w_z[:, ia] != 0, mask_b=w_t[:, ib] != 0)
    merged, delta = pairing.merged_weights(w_z[:, ia], w_t[:, ib], h_z, h[t], config.alpha,
                                           return_costs=True, **masks)
    state.share(l, t, cand_z[ia], cand_t[ib], rows, merged)
    return {**record, "shared": int(len(ia)), "delta_e": float(np.sum(delta)),
            "seconds": round(time.time() - start, 3)}


def new_state(chains: list[Chain], names: list[str]) -> ZipState:
    state = ZipState()
    for chain, name in zip(chains, names):
        state.add_task(name, chain)
    return state


def zip_state(state: ZipState, inputs: dict, config: ZipConfig, retrain=None,
              progress=None) -> list[dict]:
    """Zips tasks 1, 2, ... one at a time into task 0 (and each other), layer by layer.

    Args:
      inputs: {task id: examples} for Hessians (at most `config.hessian_samples` used).
      retrain: optional callable(model, state) -> dict run after each zipped layer,
        given the multi-task Keras model; its variables are read back afterwards.
      progress: optional callable(message) for progress reporting.
    Returns:
      One record per (task, layer): shared count, ΔE, rows, retraining record.
    """
    inputs = {t: np.asarray(x)[:config.hessian_samples] for t, x in inputs.items()}
    records = []
    for t in range(1, len(state.tasks)):
        for l in range(state.num_layers - 1):
            record = zip_layer(state, l, t, inputs, config)
            record["task"] = state.tasks[t]
            if retrain is not None and record["shared"]:
                model = multitask_model(state)
                record["retrain"] = retrain(model, state)
                read_back(state, model)
            records.append(record)
            if progress:
                progress(f"{state.tasks[t]} {record['layer']}: shared {record['shared']}, "
                         f"ΔE {record['delta_e']:.4g}")
    return records
