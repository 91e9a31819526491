"""`ZipState`: which neurons of which networks are shared, and every network's weights.

Each layer has *slots*, numbered by ids that are never reused. A slot is one
neuron (dense unit or conv kernel) of the zipped network and is *owned* by the
set of tasks that use it: a task-specific neuron has one owner, a shared neuron
several. Each task keeps its own kernel [taps, cin, cout] and bias [cout] in
its ORIGINAL neuron order, with `out_ids[t][l]` naming the slot of each of its
neurons. The inputs of layer l are the slots of its source space
(`Chain.sources[l]`: the previous weighted layer in a chain, or the input
channels). The sharing invariant: the weight from input slot i to slot j is
one value for every task owning both i and j (TMC Sec. 2.3: merged weights
from shared inputs to shared neurons, task-specific weights elsewhere).
Keeping each task's weights in its original order makes `task_weights(t)` a
plain model's weights, and the multi-task Keras model stores each shared block
once.

Residual additions tie layers into one slot space (`mtz.structure`): tied
layers share ONE owners dict and, per task, ONE `out_ids` array (the same
objects as their representative's), so pairing the representative's neurons
moves the tied layers' neurons into the same slots; their kernels stay per
layer and are merged by `write_merged` (`mtz.zipper.zip_tied`).

Input domains: the state works on the joint input (`mtz.domains`): `chains`
are padded to it, `domains[t]` is task t's own input shape, and all input
channels are owned by every task.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mtz.structure import Chain


@dataclasses.dataclass
class ZipState:
    """Mutable sharing state of a zip in progress (see module docstring).

    Attributes:
      tasks: task names, index = task id.
      chains: each task's parsed chain on the joint input (its weights are the originals).
      domains: each task's own input shape (without batch axis).
      owners: per layer, {slot id: frozenset of task ids} (tied layers: one shared dict).
      out_ids: per task, per layer, int array [cout_t] of slot ids.
      kernels, biases: per task, per layer, float64 [taps, cin_t, cout_t], [cout_t].
      input_ids: per task, int array [cin] of input-channel slot ids (the joint
        input's channels, all shared).
      ties, sources, output_layer: the graph of the networks (`structure.Chain`).
    """

    _: dataclasses.KW_ONLY
    tasks: list = dataclasses.field(default_factory=list)
    chains: list = dataclasses.field(default_factory=list)
    owners: list = dataclasses.field(default_factory=list)
    out_ids: list = dataclasses.field(default_factory=list)
    kernels: list = dataclasses.field(default_factory=list)
    biases: list = dataclasses.field(default_factory=list)
    input_owners: dict = dataclasses.field(default_factory=dict)
    input_ids: list = dataclasses.field(default_factory=list)
    next_id: list = dataclasses.field(default_factory=list)
    domains: list = dataclasses.field(default_factory=list)
    ties: tuple = ()
    sources: tuple = ()
    output_layer: int = -1

    @property
    def num_layers(self) -> int:
        return len(self.owners)

    def add_task(self, name: str, chain: Chain, domain=None) -> int:
        """Adds a network with all its neurons task-specific; returns its task id.

        Args:
          chain: the network on the joint input (`mtz.domains.pad_chain`).
          domain: its own input shape (default: chain.input_shape).
        """
        t = len(self.tasks)
        if not self.tasks:
            n_layers = len(chain.weights)
            self.ties, self.sources = tuple(chain.ties), tuple(chain.sources)
            self.output_layer = chain.output_layer
            spaces = {r: {} for r in set(self.ties)}
            self.owners = [spaces[self.ties[l]] for l in range(n_layers)]
            self.next_id = [0] * n_layers
        elif len(chain.weights) != self.num_layers or tuple(chain.ties) != self.ties:
            raise ValueError(f"network {name!r} has {len(chain.weights)} weighted layers "
                             f"and ties {chain.ties}, the zipped network {self.num_layers} "
                             f"and {self.ties}")
        self.tasks.append(name)
        self.chains.append(chain)
        self.domains.append(tuple(domain or chain.input_shape))
        cin = chain.input_shape[-1]
        for c in range(cin):
            self.input_owners[c] = self.input_owners.get(c, frozenset()) | {t}
        self.input_ids.append(np.arange(cin))
        ids, kernels, biases = [], [], []
        for l, (kernel, bias) in enumerate(chain.weights):
            rep = self.ties[l]
            if rep != l:  # tied: the representative's slots, the same array object
                ids.append(ids[rep])
            else:
                cout = kernel.shape[-1]
                ids.append(np.arange(self.next_id[l], self.next_id[l] + cout))
                self.next_id[l] += cout
                for j in ids[-1]:
                    self.owners[l][int(j)] = frozenset({t})
            kernels.append(np.array(kernel, np.float64))
            biases.append(np.array(bias, np.float64))
        self.out_ids.append(ids)
        self.kernels.append(kernels)
        self.biases.append(biases)
        return t

    def in_ids(self, t: int, l: int) -> np.ndarray:
        """Slot ids of the inputs of task t's layer l, in its kernel's row order."""
        return self.input_ids[t] if self.sources[l] < 0 else self.out_ids[t][self.sources[l]]

    def in_owners(self, l: int) -> dict:
        return self.input_owners if self.sources[l] < 0 else self.owners[self.sources[l]]

    def shared_inputs(self, l: int, t: int) -> np.ndarray:
        """Sorted input slot ids of layer l owned by task t and at least one other task."""
        owners = self.in_owners(l)
        return np.asarray(sorted(i for i in self.in_ids(t, l)
                                 if t in owners[int(i)] and len(owners[int(i)]) > 1), np.int64)

    def vectors(self, t: int, l: int, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Task t's incoming weight vectors of `columns` (slot ids of layer l) from the
        input slots `rows`, bias last: [taps * len(rows) + 1, len(columns)].

        An input or neuron the task does not own contributes zeros.
        """
        kernel, bias = self.kernels[t][l], self.biases[t][l]
        row_pos = positions(self.in_ids(t, l), rows)
        col_pos = positions(self.out_ids[t][l], columns)
        taps = kernel.shape[0]
        out = np.zeros((taps, len(rows) + 0, len(columns)))
        r_ok, c_ok = row_pos >= 0, col_pos >= 0
        block = kernel[:, row_pos[r_ok]][:, :, col_pos[c_ok]]
        out[np.ix_(np.arange(taps), np.flatnonzero(r_ok), np.flatnonzero(c_ok))] = block
        b = np.zeros(len(columns))
        b[c_ok] = bias[col_pos[c_ok]]
        return np.concatenate([out.reshape(taps * len(rows), len(columns)), b[None]], 0)

    def zipped_vectors(self, tasks, l: int, rows: np.ndarray, columns: np.ndarray):
        """Weight vectors of slots `columns` seen by the zipped network `tasks`: each
        entry from any task owning both its input and its slot (all agree)."""
        out = np.zeros((self.kernels[tasks[0]][l].shape[0] * len(rows) + 1,
                        len(columns)))
        for t in tasks:
            v = self.vectors(t, l, rows, columns)
            out = np.where(v != 0, v, out)
        return out

    def share(self, l: int, t: int, *, slots: np.ndarray, neurons: np.ndarray,
              rows: np.ndarray, merged: np.ndarray) -> None:
        """Merges task t's neurons (slot ids `neurons`, owned by t alone) into the
        zipped slots `slots` of layer l, with merged incoming weights from `rows`.

        Args:
          slots, neurons: [k] slot ids, paired position by position.
          rows: [r] shared input slot ids the merged vectors span.
          merged: [taps * r + 1, k] merged weights, bias last (TMC Eq. 2.16).
        """
        for j, k in zip(slots.tolist(), neurons.tolist()):
            if self.owners[l][k] != frozenset({t}) or t in self.owners[l][j]:
                raise ValueError(f"layer {l}: slot {k} is not task {t}'s alone or slot "
                                 f"{j} already holds task {t}")
            self.owners[l][j] = self.owners[l][j] | {t}
            del self.owners[l][k]
            _replace(self.out_ids[t][l], k, j)  # layers reading l follow (in_ids)
        self.write_merged(l, slots, rows, merged)

    def write_merged(self, l: int, slots: np.ndarray, rows: np.ndarray,
                     merged: np.ndarray) -> None:
        """Writes merged incoming weights of slots `slots` of layer l from input
        slots `rows` into every owner's kernel and bias.

        Args:
          slots: [k] slot ids; rows: [r] input slot ids;
          merged: [taps * r + 1, k] weights, bias last (TMC Eq. 2.12-2.13).
        """
        taps = self.kernels[0][l].shape[0]
        weights = merged[:-1].reshape(taps, len(rows), len(slots))
        for u in self.owners_of(l, slots):
            rpos = positions(self.in_ids(u, l), rows)
            cpos = positions(self.out_ids[u][l], slots)
            ok = rpos >= 0
            for c, col in enumerate(cpos):
                if col < 0:
                    continue
                self.kernels[u][l][:, rpos[ok], col] = weights[:, ok, c]
                self.biases[u][l][col] = merged[-1, c]

    def owners_of(self, l: int, slots) -> list[int]:
        found = set()
        for j in np.asarray(slots).tolist():
            found |= self.owners[l][j]
        return sorted(found)

    def groups(self, l: int, tasks=None) -> list[tuple[frozenset, np.ndarray]]:
        """Slots of layer l (l = -1: inputs) grouped by owner set, in a canonical
        order: most owners first, then by owner tuple; slot ids ascending."""
        owners = self.input_owners if l < 0 else self.owners[l]
        by = {}
        for j, o in owners.items():
            by.setdefault(o, []).append(j)
        keys = sorted(by, key=lambda o: (-len(o), sorted(o)))
        return [(o, np.asarray(sorted(by[o]), np.int64)) for o in keys]

    def shared_counts(self) -> list[int]:
        """Number of slots with two or more owners, per layer."""
        return [sum(len(o) > 1 for o in owners.values()) for owners in self.owners]


def positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each `wanted` id in `ids`, -1 where absent.

    Args:
      ids: [n] slot ids (unique).
      wanted: [k] slot ids to look up.
    Returns:
      [k] int64 positions into `ids`.
    """
    lookup = {int(v): i for i, v in enumerate(np.asarray(ids).tolist())}
    return np.asarray([lookup.get(int(w), -1) for w in np.asarray(wanted).tolist()],
                      np.int64)


def _replace(ids: np.ndarray, old: int, new: int) -> None:
    ids[ids == old] = new
