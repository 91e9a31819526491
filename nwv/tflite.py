"""TFLite export of a page pool: ONE flatbuffer holding every network, the pool stored once.

`export_tflite(runtime, path, target="tflite")` (phones, Linux boards) writes one
`.tflite` file with a signature per network, run with the stock interpreter and
TensorFlow alone:

    interpreter = tf.lite.Interpreter(model_path="pool.tflite")
    logits = interpreter.get_signature_runner("mnist")(x=x)["logits"]
    both = interpreter.get_signature_runner("zipped_all")(x=x)     # {member: logits}

  * `<network>(x) -> {"logits"}`: one per network (x: float32 [batch, *input]).
  * `<group>(x) -> {member: logits}`: a zipped group (`nwv.combined`) whose
    members share one input: every member in one call, shared layers once.
  * `all_tasks(<network>=x, ...) -> {network: logits}` with `all_tasks=True`.
  * `set_pool(pool) -> {"pages"}` replaces the whole pool; `set_pages(pages,
    values) -> {"pages"}` replaces the given (distinct) pages only, for
    over-the-air updates that ship the changed pages: pages int32 [k], values
    float32 [k, P]. With int8 pages: `set_pool(codes, scales)`, `set_pages(pages,
    codes, scales)` (codes int8, scales float32 one per page).

The pool is ONE resource variable read by every signature through its page
tables (int32 constants): the converter cannot constant-fold a gather from a
variable that `set_pool` assigns, so the file holds the pool once (as the
initial value of the variable, assigned by a CALL_ONCE initializer) plus the
tables and the graphs, whatever the number of networks. Switching network is
calling another signature runner: no reload; the pool (and its updates) is
shared by all runners of one interpreter. TFLite's READ_VARIABLE copies the
variable into a dynamic tensor at each call (one pool-sized buffer per
signature that has run; the C++ option
`InterpreterOptions::SetEnsureDynamicTensorsAreReleased()` frees it after each
call).

`quantize="int8"` stores the pool as int8 codes [m, P] and one float32 scale per
page (`nwv.quantize`, exactly what a runtime with `storage="int8"` holds); the
graphs gather codes and scales through the table and dequantize after the
gather. TFLite resource variables hold int8, so the codes stay a variable.
`float_pages=k` keeps the k pages whose rounding costs the networks most
(Fisher-weighted) float32: one int8 slot a page and k + 1 float rows, read by
two more GATHERs, a CAST and an ADD wherever pages are read. An update through
`set_pool` / `set_pages` ships int8 pages: a float page it replaces is int8 from
then on.

`target="micro"` writes a file for TensorFlow Lite Micro, which runs subgraph 0
only and has no signatures: ONE entry point

    run(task: int32 [1], x: float32 [1, max_input]) -> logits: float32 [1, max_classes]

where `task` indexes `info["tasks"]` (networks, then groups with a shared input),
x holds the network's input flattened (C order) in its first prod(input_shape)
entries (the rest is ignored) and the logits are padded with `PAD_LOGIT` (the
lowest float32, so argmax and softmax over the whole row are those of the
network); a group's row is its members' logits concatenated; a task index
outside [0, tasks) returns NaN logits. The graph slices the task's page table
from the tables stored one after the other (entry = 256 high + low, low an int8
plane, a byte an entry, as TFLM's SLICE and CAST read int8 but not int16; high,
for pools of at most `PACKED_MAX` + 1 = 896 pages, 2-bit digits four to a byte,
each table padded to start at a multiple of 4 and decoded in float, as TFLM's
FLOOR_DIV and FLOOR_MOD read no int32: 1.25 bytes an entry; up to 32,640 pages an
int8 plane, 2 bytes an entry; else int32) at the task's offset, and runs the
task's branch: one IF op per architecture in sequence, each branch
a subgraph shared by the tasks of that architecture (networks with the same
Keras configuration and page layout differ only in the table they read;
`info["branches"]` lists them). A network whose last layer is a Dense
classifier on flat features runs as two branches, its body (every layer
but the classifier) and its classifier, so networks that differ only in the
number of classes (mnist and mnist_parity) share the body branch and each
runs its small classifier branch (`info["classifiers"]`); this halved the
arena of the ten-network pool. A zipped network exported with its group runs
the group's branch with the group's table and keeps its own columns of the
group's row (moved to the front, the rest `PAD_LOGIT`), so a group and its
members cost one branch (ten-network MTZ + NWV pool, int8: arena 271 -> 159 kB,
float 217 -> 136 kB). TFLM plans each branch in its own scope, so
their activation buffers share the arena; what grows with the branches is
their op and tensor records (tens of kB per branch for the NWV reference
CNNs), so `micro_arena_bytes` is the largest network's need plus those. The pool
is a CONSTANT (flash, never copied into RAM): each branch gathers from it
through the SELECTED table, which depends on the `task` input, so the
converter cannot constant-fold per-network copies of the weights, and the one
constant buffer is shared by all branches. Batch 1, no variables: the pool
bytes sit at `info["pool_offset"]` in the file (page j at pool_offset + j * P *
bytes per weight), so an update can patch them in flash. int8 pages keep a
float32 scale a page: one int8 exponent a page (the scales are on a grid,
`nwv.quantize`) with the scales computed in the graph was measured on the ten-network pools
and gained nothing (1.7 kB fewer weight bytes, as many more graph bytes, 2.4 kB
more arena, and it stopped `_rematerialize` from seeing the zipped branch's
weight reads: the demo's arena went from 179 to 306 kB); so did one int8 code a
page into a float32 table of the grid points spanned (GATHER, CAST, ADD, GATHER;
exact): on the 8.25x MTZ + NWV pool 1.4 kB fewer weight bytes, 10 kB more flash
and a 191 kB arena instead of 159 kB. Likewise float pages stored as their k
indices instead of a slot byte a page (read as EQUAL of the table against them,
CAST, FULLY_CONNECTED with the float rows, ADD): with 4 float pages 1.0 kB fewer
weight bytes, 2 kB more flash and a 216 kB arena instead of 200 kB. The packed
high digits of the tables were kept: on the 8x MTZ + NWV pool 3.0 kB fewer
weight bytes and 2 kB less flash, for a 162 kB arena instead of 159 kB.

The micro target gathers pool pages per Keras layer (`gather="layer"`, its
default): one GATHER of the layer's pages, one SPLIT_V into its variables. The
tflite target (`gather="auto"`) gathers a network's pages at once (`"network"`:
one GATHER, one SPLIT_V per network; with int8 pages one CAST, one GATHER of
the scales and one MUL per network instead of per layer, which keeps an int8
file's graphs as small as a float file's; the price is one network's float
weights in the interpreter's arena, a few hundred kB for these networks). A
file with zipped networks (float or int8 pages) is also converted with zipped
groups and their members gathering per layer, and the smaller file kept: their shared layers
read the same pages, so each shared layer's slice of the page tables is then
one constant stored once (per network, every member's whole table is stored:
the ten-network MTZ + NWV file held 28 kB of index constants instead of 8 kB),
at the price of a few operators per layer (more than the tables save in small
networks). After conversion
the operators are reordered so each layer's gather runs right before the layer
(the converter puts every gather first) and the tensors renumbered so TFLM's
greedy planner alternates the copies of a layer's weights between two slots:
only one layer's weights are in RAM at a time, about twice (the gathered copy
and the transposed copy the CONV_2D / FULLY_CONNECTED kernel reads). "network"
(one gather for all) needs a larger arena than "layer" (every weight at once);
"variable" the same arena as "layer" with more operators. Dense layers
run as TRANSPOSE + FULLY_CONNECTED (TFLM's BATCH_MATMUL would keep a persistent
transposed copy of every kernel). For the micro target, plain Dense layers
whose kernel exceeds `dense_tile_bytes` (16 kB) run as a sum over blocks of
kernel rows, each block gathered right before its FULLY_CONNECTED: RAM holds one
block, not the kernel; dense layers of a zipped network (`mtz.ZippedLayer`)
likewise multiply each of their shared and own weight blocks tile by tile,
never assembling a task's kernel (measured arenas: results/bench_deploy.json). A
zipped group's branch runs its tasks one after the other, and the converter
reads a shared layer's weights once for all of them: those reads are given to
each task again (`_rematerialize`, kept where the estimated peak drops by
`REMAT_MIN_BYTES`), so a shared kernel is not held from task 0's layer to task
1's (the demo's zipped MNIST pair: arena 286 -> 160 kB float). Tensor names
other than inputs and outputs are dropped (a third of the graph bytes).
`micro_arena_bytes(blob)` finds the smallest TFLM arena that runs a micro file.
"""
from __future__ import annotations

import contextlib
import copy as copy_module
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from mtz import ZippedLayer
from nwv.export import check_endpoint_name
from nwv.runtime import VirtualizedNetworks

__all__ = ["TARGETS", "GATHERS", "DEFAULT_GATHER", "RESERVED", "MICRO_ENTRY", "PAD_LOGIT",
           "export_tflite", "micro_arena_bytes", "micro_arenas", "micro_inputs", "run_micro",
           "largest_buffers"]

TARGETS = ("tflite", "micro")
GATHERS = ("auto", "layer", "variable", "network")
DEFAULT_GATHER = {"tflite": "auto", "micro": "layer"}
ALL_TASKS, SET_POOL, SET_PAGES = "all_tasks", "set_pool", "set_pages"
RESERVED = (ALL_TASKS, SET_POOL, SET_PAGES)
MICRO_ENTRY = "run"
PAD_LOGIT = float(np.finfo(np.float32).min)
MICRO_TILE_BYTES = 16 * 1024
# a typical microcontroller board, to report what fits (e.g. Cortex-M4/M7 parts)
BOARD_SRAM_BYTES, BOARD_FLASH_BYTES = 256 * 1024, 1024 * 1024
PACKED_MAX = 3 * 256 + 127   # largest page index a 2-bit high digit reaches


# --- reading pages --------------------------------------------------------------
class _Pages:
    """Rows of the pool [k, P] float32 for a table slice: float pages or int8 codes
    and [m, 1] scales, dequantized after the gather (with float pages: plus the
    float row of each page's int8 slot, `nwv.quantize.quantize_mixed`)."""

    def __init__(self, pool=None, codes=None, scales=None, slots=None, float_rows=None):
        self.pool, self.codes, self.scales = pool, codes, scales
        self.slots, self.float_rows = slots, float_rows

    def rows(self, table):
        if self.pool is not None:
            return tf.gather(self.pool, table)
        rows = tf.cast(tf.gather(self.codes, table), tf.float32) * tf.gather(self.scales, table)
        if self.float_rows is None:
            return rows
        slots = tf.cast(tf.gather(self.slots, table), tf.int32)
        return rows + tf.gather(self.float_rows, slots)


def _groups(model, granularity):
    """Lists of consecutive variable indices gathered together."""
    variables = model.trainable_variables
    if granularity == "network":
        return [list(range(len(variables)))]
    if granularity == "variable":
        return [[i] for i in range(len(variables))]
    groups, owner = [], None
    for i, v in enumerate(variables):
        here = v.path.rsplit("/", 1)[0]
        if groups and here == owner:
            groups[-1].append(i)
        else:
            groups.append([i])
        owner = here
    return groups


def _read(pages, table, spans, size):
    """Tensors for spans [(offset, count, shape)] of a network's flat weight vector
    (consecutive, in order): ONE gather of the pages they cover, then ONE split (or
    slice) into them, so the gathered rows die before a layer runs."""
    first = spans[0][0] // size
    last = (spans[-1][0] + spans[-1][1] - 1) // size
    rows = pages.rows(table[first:last + 1] if isinstance(table, tf.Tensor)
                      else tf.constant(table[first:last + 1], tf.int32))
    flat = tf.reshape(rows, [-1])
    sizes, owners, at = [], [], 0
    for k, (offset, count, _) in enumerate(spans):
        begin = offset - first * size
        if begin > at:
            sizes.append(begin - at)
            owners.append(None)
        sizes.append(count)
        owners.append(k)
        at = begin + count
    if (last + 1 - first) * size > at:
        sizes.append((last + 1 - first) * size - at)
        owners.append(None)
    if len(sizes) == 1:
        pieces = [flat]
    elif len(spans) == 1:
        owners = [0]
        pieces = [tf.slice(flat, [spans[0][0] - first * size], [spans[0][1]])]
    else:
        pieces = tf.split(flat, sizes)
    out = [None] * len(spans)
    for k, piece in zip(owners, pieces):
        if k is not None:
            shape = tuple(spans[k][2])
            out[k] = piece if shape == (spans[k][1],) else tf.reshape(piece, shape)
    return out


class _TiledDense(keras.layers.Dense):
    """A Dense layer whose kernel is read from the pool in blocks of rows,
    y = sum_b x[:, rows_b] @ W[rows_b] (+ bias), so only one block of the kernel
    is in RAM at a time (TFLM: one gather, transpose and FULLY_CONNECTED per block)."""

    def __init__(self, *, tile_rows, blocks, **config):
        super().__init__(**config)
        self.tile_rows = int(tile_rows)
        self._blocks = blocks            # {"read": (variable, r0, r1) -> [r1 - r0, units]}

    def call(self, inputs, training=None):
        depth = int(inputs.shape[-1])
        y = None
        for r0 in range(0, depth, self.tile_rows):
            r1 = min(depth, r0 + self.tile_rows)
            part = tf.matmul(inputs[:, r0:r1], self._blocks["read"](self.kernel, r0, r1))
            y = part if y is None else y + part
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y


class _TiledZipped(ZippedLayer):
    """A dense `mtz.ZippedLayer` that never assembles a task's kernel: task t's output
    group h is sum_g x_g @ block[g, h] over t's input groups g (+ bias_h), each
    block read from the pool in tiles of about `tile_bytes` of rows. Conv layers
    run as `ZippedLayer`."""

    def __init__(self, *, tile_bytes, blocks, **config):
        super().__init__(**config)
        self.tile_bytes = int(tile_bytes)
        self._blocks = blocks            # {"read": (variable, r0, r1) -> [r1 - r0, units]}

    def call_task(self, t, x):
        if self.kind != "dense":
            return super().call_task(t, x)
        mine = [(g, n) for g, (owners, n) in enumerate(self.in_groups) if t in owners]
        cin = sum(n for _, n in mine)
        pieces, start = {}, 0
        for g, n in mine:          # x [N, taps * cin] in (tap, channel) order
            pieces[g] = x if len(mine) == 1 else tf.reshape(
                tf.reshape(x, [-1, self.taps, cin])[:, :, start:start + n],
                [-1, self.taps * n])
            start += n
        outs = []
        for h, (owners, units) in enumerate(self.out_groups):
            if t not in owners:
                continue
            rows = max(1, self.tile_bytes // (4 * units))
            y = None
            for g, n in mine:
                for r0 in range(0, self.taps * n, rows):
                    r1 = min(self.taps * n, r0 + rows)
                    part = tf.matmul(pieces[g][:, r0:r1],
                                     self._blocks["read"](self.blocks[g, h], r0, r1))
                    y = part if y is None else y + part
            outs.append(y + self.block_biases[h])
        y = outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)
        return self.activation(y)


def _tiled_skeleton(model, tile_bytes, blocks):
    """A clone of the skeleton whose plain Dense layers with a kernel above
    `tile_bytes` are `_TiledDense`, and dense `ZippedLayer`s whose blocks together
    are above it `_TiledZipped` (None when there is none, or the clone's variables
    differ)."""
    def flat_input(layer):
        try:
            return len(layer.input.shape) == 2
        except (AttributeError, ValueError):  # no single input known
            return False

    def big(layer):
        if type(layer) is ZippedLayer:
            return layer.kind == "dense" and 4 * sum(
                int(np.prod(v.shape)) for v in layer.blocks.values()) > tile_bytes
        return (type(layer) is keras.layers.Dense and len(layer.kernel.shape) == 2
                and flat_input(layer) and not getattr(layer, "lora_enabled", False)
                and getattr(layer, "quantization_mode", None) is None
                and 4 * int(np.prod(layer.kernel.shape)) > tile_bytes)

    if not any(big(layer) for layer in model.layers):
        return None

    def clone(layer):
        if not big(layer):
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, ZippedLayer):
            return _TiledZipped(tile_bytes=tile_bytes, blocks=blocks, **layer.get_config())
        rows = max(1, tile_bytes // (4 * int(layer.kernel.shape[1])))
        return _TiledDense(tile_rows=rows, blocks=blocks, **layer.get_config())

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except (TypeError, ValueError):  # a layer that does not clone: keep whole kernels
        return None
    if [tuple(v.shape) for v in copy.trainable_variables] != \
            [tuple(v.shape) for v in model.trainable_variables]:
        return None
    return copy


def _classifier_split(model):
    """The number k of the model's trainable variables before its classifier, when
    the model is `body -> Dense` (the Dense layer last, the model's one output, on
    a [batch, features] input, its variables the last ones): the body
    (`keras.Model(inputs, classifier.input)`) reads variables [0, k), the classifier
    [k, n). None when the model is not of that form (zipped layers, several
    outputs, a classifier on a non-flat input)."""
    try:
        last = model.layers[-1]
        if (type(last) not in (keras.layers.Dense, _TiledDense) or len(model.outputs) != 1
                or model.outputs[0] is not last.output or len(last.input.shape) != 2):
            return None
        variables, own = model.trainable_variables, last.trainable_variables
        k = len(variables) - len(own)
        if k <= 0 or [id(v) for v in variables[k:]] != [id(v) for v in own]:
            return None
        body = keras.Model(model.inputs, last.input)
        if [id(v) for v in body.trainable_variables] != [id(v) for v in variables[:k]]:
            return None
        return k
    except (AttributeError, ValueError, TypeError, IndexError):
        return None


def _forward(runtime, name, x, pages, table, granularity, *, tile_bytes=0, skeletons=None,
             part=None):
    """The network's outputs on x, its weights gathered from `pages` through `table`
    (numpy: constant slices of it; a tensor: slices of that tensor): one gather and
    one split per group of variables (`_groups`); with `tile_bytes`, plain Dense
    kernels above it are read and multiplied in blocks of rows (`_TiledDense`).
    `part`: None (the whole network), "body" (the features [1, F] its classifier
    reads; `_classifier_split`) or "classifier" (x: those features)."""
    model, layout = runtime.model(name), runtime.layout(name)
    size = layout.page_size
    blocks = {}
    skeleton = None
    if tile_bytes:
        cache = skeletons if skeletons is not None else {}
        if name not in cache:
            cache[name] = _tiled_skeleton(model, tile_bytes, blocks)
        skeleton = cache[name]
    tiled = {}
    if skeleton is not None:
        model = skeleton
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        for layer in model.layers:
            if isinstance(layer, _TiledDense):
                tiled[index[id(layer.kernel)]] = layer
            elif isinstance(layer, _TiledZipped) and layer.kind == "dense":
                tiled.update((index[id(v)], layer) for v in layer.blocks.values())
    values = [None] * len(layout.shapes)
    split = _classifier_split(model) if part else None
    if part and split is None:
        raise ValueError(f"network {name!r} has no body -> classifier split")
    wanted = (range(len(values)) if part is None else
              range(split) if part == "body" else range(split, len(values)))
    for group in _groups(model, granularity):
        spans = []
        for i in group:
            if i not in wanted:
                continue
            if i in tiled:
                values[i] = tf.zeros(layout.shapes[i], tf.float32)   # unused: pruned
            elif layout.sizes[i] == 0:
                values[i] = tf.zeros(layout.shapes[i], tf.float32)
            else:
                spans.append(i)
        if spans:
            read = _read(pages, table, [(layout.offsets[i], layout.sizes[i], layout.shapes[i])
                                        for i in spans], size)
            for i, value in zip(spans, read):
                values[i] = value
    if tiled:
        def read_rows(variable, r0, r1):
            """Rows r0:r1 of a tiled kernel seen as [rows, units] (units its last axis)."""
            i = index[id(variable)]
            units = int(layout.shapes[i][-1])
            return _read(pages, table, [(layout.offsets[i] + r0 * units, (r1 - r0) * units,
                                         (r1 - r0, units))], size)[0]
        for layer in set(tiled.values()):
            layer._blocks["read"] = read_rows
    if part == "body":
        body = keras.Model(model.inputs, model.layers[-1].input)
        return body.stateless_call(values[:split], [], x, training=False)[0]
    if part == "classifier":
        return model.layers[-1].stateless_call(values[split:], [], x, training=False)[0]
    if len(model.inputs) > 1:
        x = [x] * len(model.inputs)
    outputs, _ = model.stateless_call(values, [], x, training=False)
    return outputs


# --- what to export -------------------------------------------------------------
def _check_name(name, signature):
    if signature:
        check_endpoint_name(name, reserved=RESERVED, kind="TFLite signature",
                            hint="; rename the network in the pool or leave it out with "
                                 "names= (or export target='micro', which has no signatures)")
    return name


def _entries(runtime, names, signatures):
    """[(name, members or None, input shape)]: networks, then groups with one input shape."""
    groups = runtime.groups()
    chosen = list(dict.fromkeys(names)) if names else runtime.names
    for name in chosen:
        runtime.model(name)  # KeyError for an unknown network
    entries = []
    for name in chosen:
        if name in groups:
            continue
        entries.append((_check_name(name, signatures), None,
                        tuple(runtime.model(name).inputs[0].shape[1:])))
    for name in chosen:
        if name not in groups:
            continue
        shapes = {tuple(i.shape[1:]) for i in runtime.model(name).inputs}
        if len(shapes) == 1:  # tasks of different input domains: no shared input
            entries.append((_check_name(name, signatures), tuple(groups[name]), shapes.pop()))
    if not entries:
        raise ValueError(f"nothing to export among {chosen}")
    for name, _, shape in entries:
        if any(d is None for d in shape):
            raise ValueError(f"network {name!r} has an unknown input dimension {shape}; "
                             f"TFLite needs fixed input shapes")
    return entries


def _pool_arrays(runtime, quantize, float_pages=None):
    """{"pool": [m, P]} or {"codes": [m, P] int8, "scales": [m] float32}, with float
    pages also {"slots": [m] int8, "float_rows": [k + 1, P] float32}."""
    if quantize not in (None, "int8"):
        raise ValueError(f"expected quantize=None (the runtime's storage) or 'int8', "
                         f"received {quantize!r}")
    if runtime.storage == "int8":
        held = len(runtime.float_pages)
        if float_pages is not None and int(float_pages) != held:
            raise ValueError(f"this int8 runtime keeps {held} float pages, and "
                             f"float_pages={float_pages} was asked; load it with "
                             f"float_pages={float_pages} (or pass None)")
        arrays = {"codes": runtime.page_codes.numpy(), "scales": runtime.page_scales.numpy()}
        if held:
            arrays.update(slots=runtime.page_slots.numpy(),
                          float_rows=runtime.float_rows.numpy())
        return arrays
    pool = runtime.page_pool.numpy()
    if quantize == "int8" or runtime.fake_quant:
        codes, scales, slots, rows = runtime.quantize_pool(pool, float_pages or 0)
        arrays = {"codes": codes, "scales": scales}
        if float_pages:
            arrays.update(slots=slots, float_rows=rows)
        return arrays
    if float_pages:
        raise ValueError(f"float_pages={float_pages} keeps pages float beside int8 ones; "
                         f"it needs quantize='int8' (this runtime stores float32 pages)")
    return {"pool": pool}


def _pool_bytes(arrays):
    return int(sum(a.nbytes for a in arrays.values()))


def _classes(runtime, name, members):
    if members:
        return [int(runtime.model(m).outputs[0].shape[-1]) for m in members]
    return [int(runtime.model(name).outputs[0].shape[-1])]


# --- conversion -----------------------------------------------------------------
def _convert(module, signatures, *, resource_variables):
    with tempfile.TemporaryDirectory(prefix="nwv-tflite-") as folder:
        tf.saved_model.save(module, folder, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder,
                                                             signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = resource_variables
        # a matmul by a gathered (non-constant) kernel: TRANSPOSE + FULLY_CONNECTED, not
        # BATCH_MATMUL, which in TFLM keeps a persistent transposed copy of the kernel
        converter.unfold_batchmatmul = True
        return converter.convert()


def _zipped_names(runtime) -> set:
    """The zipped groups of `runtime` and their members."""
    return {n for group, members in runtime.groups().items() for n in (group, *members)}


def _tflite_module(runtime, entries, arrays, granularity, all_tasks, tile_bytes):
    module = tf.Module()
    skeletons = {}
    int8 = "codes" in arrays
    m, size = int(next(iter(arrays.values())).shape[0]), runtime.page_size
    mixed = "float_rows" in arrays
    if int8:
        module.page_codes = tf.Variable(arrays["codes"], name="page_codes")
        module.page_scales = tf.Variable(arrays["scales"][:, None], name="page_scales")
        if mixed:
            module.page_slots = tf.Variable(arrays["slots"], name="page_slots")
            module.float_rows = tf.Variable(arrays["float_rows"], name="float_rows")
    else:
        module.page_pool = tf.Variable(arrays["pool"], name="page_pool")

    def pages():  # one read of the variables per signature
        if int8:
            extra = {}
            if mixed:
                extra = dict(slots=tf.convert_to_tensor(module.page_slots),
                             float_rows=tf.convert_to_tensor(module.float_rows))
            return _Pages(codes=tf.convert_to_tensor(module.page_codes),
                          scales=tf.convert_to_tensor(module.page_scales), **extra)
        return _Pages(pool=tf.convert_to_tensor(module.page_pool))

    zipped = _zipped_names(runtime)

    def gather_of(name):
        """The granularity of one network's gathers ("auto": see the module doc)."""
        if granularity != "auto":
            return granularity
        return "layer" if name in zipped else "network"

    def network_fn(name, members):
        table = runtime.page_table(name)

        def fn(x):
            out = _forward(runtime, name, x, pages(), table, gather_of(name),
                           tile_bytes=tile_bytes, skeletons=skeletons)
            return dict(zip(members, out)) if members else {"logits": out}
        return fn

    signatures = {}
    for name, members, shape in entries:
        spec = tf.TensorSpec((None, *shape), tf.float32, name="x")
        signatures[name] = tf.function(network_fn(name, members), input_signature=[spec],
                                       autograph=False).get_concrete_function()
    tasks = [(n, s) for n, members, s in entries if not members]
    if all_tasks and tasks:
        def run_all(*xs):
            read = pages()
            return {n: _forward(runtime, n, x, read, runtime.page_table(n), gather_of(n),
                                tile_bytes=tile_bytes, skeletons=skeletons)
                    for (n, _), x in zip(tasks, xs)}
        specs = [tf.TensorSpec((None, *s), tf.float32, name=n) for n, s in tasks]
        signatures[ALL_TASKS] = tf.function(run_all, input_signature=specs,
                                            autograph=False).get_concrete_function()

    def replace(rows, pages_, new):
        """rows [m, ...] with rows `pages_` replaced by `new` (builtin ops only)."""
        index = tf.reshape(pages_, [-1, 1])
        hit = tf.scatter_nd(index, tf.ones_like(pages_), [m]) > 0
        placed = tf.scatter_nd(index, new, tf.shape(rows))
        return tf.where(tf.reshape(hit, [m] + [1] * (rows.shape.rank - 1)), placed, rows)

    count = lambda p: {"pages": tf.shape(p)[0]}  # noqa: E731
    if int8:
        # an update ships int8 pages: a float page it replaces is int8 from then on
        def set_pool(codes, scales):
            module.page_codes.assign(codes)
            module.page_scales.assign(tf.reshape(scales, [-1, 1]))
            if mixed:
                module.page_slots.assign(tf.zeros_like(module.page_slots))
            return count(scales)

        def set_pages(pages_, codes, scales):
            module.page_codes.assign(replace(tf.convert_to_tensor(module.page_codes), pages_,
                                             codes))
            module.page_scales.assign(replace(tf.convert_to_tensor(module.page_scales),
                                              pages_, tf.reshape(scales, [-1, 1])))
            if mixed:
                module.page_slots.assign(replace(
                    tf.convert_to_tensor(module.page_slots), pages_,
                    tf.zeros(tf.shape(pages_), tf.int8)))
            return count(pages_)
        pool_specs = [tf.TensorSpec((m, size), tf.int8, name="codes"),
                      tf.TensorSpec((m,), tf.float32, name="scales")]
        page_specs = [tf.TensorSpec((None,), tf.int32, name="pages"),
                      tf.TensorSpec((None, size), tf.int8, name="codes"),
                      tf.TensorSpec((None,), tf.float32, name="scales")]
    else:
        def set_pool(pool):
            module.page_pool.assign(pool)
            return count(pool)

        def set_pages(pages_, values):
            module.page_pool.assign(replace(tf.convert_to_tensor(module.page_pool), pages_,
                                            values))
            return count(pages_)
        pool_specs = [tf.TensorSpec((m, size), tf.float32, name="pool")]
        page_specs = [tf.TensorSpec((None,), tf.int32, name="pages"),
                      tf.TensorSpec((None, size), tf.float32, name="values")]
    signatures[SET_POOL] = tf.function(set_pool, input_signature=pool_specs,
                                       autograph=False).get_concrete_function()
    signatures[SET_PAGES] = tf.function(set_pages, input_signature=page_specs,
                                        autograph=False).get_concrete_function()
    return module, signatures


def _micro_module(runtime, entries, arrays, granularity, tile_bytes):
    """One entry point `run(task, x)`; see the module docstring."""
    shapes = [s for _, _, s in entries]
    inputs = [int(np.prod(s)) for s in shapes]
    widths = [sum(_classes(runtime, n, members)) for n, members, _ in entries]
    max_in, max_out = max(inputs), max(widths)
    # a zipped network whose group is exported runs the group's branch with the
    # group's table, then keeps its own columns (`_task_columns`): no branch of its own
    group_of, column_offset = _routed_members(entries, runtime)
    own = [i for i in range(len(entries)) if i not in group_of]
    tables = {i: runtime.page_table(entries[i][0]) for i in own}
    max_pages = max(t.size for t in tables.values())
    # the tables one after the other, the longest last (a row of max_pages from any
    # offset stays inside), a task's row starting at its offset
    layout = sorted(own, key=lambda i: tables[i].size)
    # entries <= PACKED_MAX: the high plane holds 2 bits an entry, four to a byte, and
    # each table starts at a multiple of 4 (padded) so its bytes start with it
    packed = max(int(t.max(initial=0)) for t in tables.values()) <= PACKED_MAX
    stored = {i: tables[i] if not packed or i == layout[-1] else
              np.pad(tables[i], (0, -tables[i].size % 4)) for i in layout}
    starts = dict(zip(layout, np.cumsum([0] + [stored[i].size for i in layout[:-1]])))
    offsets = [int(starts[group_of.get(i, i)]) for i in range(len(entries))]
    flat = np.concatenate([stored[i] for i in layout]).astype(np.int32)
    planes = _table_planes(flat)
    if packed:
        planes = (_pack_quarters(planes[0]), planes[1])
    skeletons = {}

    def branch_pages():
        # constants made inside a branch belong to it (never an IF operand, which
        # TFLM would copy into the arena); the converter shares their buffer.
        return _Pages(**{k: tf.constant(v[:, None] if k == "scales" else v)
                         for k, v in arrays.items()})

    def task_input(x, i):
        return tf.reshape(tf.slice(x, [0, 0], [1, inputs[i]]), (1, *entries[i][2]))

    def branch(i):
        name, members, _ = entries[i]

        def fn(x, row):
            out = _forward(runtime, name, task_input(x, i), branch_pages(), row, granularity,
                           tile_bytes=tile_bytes, skeletons=skeletons)
            out = tf.concat(list(out), axis=-1) if members else out
            return _pad_columns(out, max_out, PAD_LOGIT)
        return fn

    def body(i):
        def fn(x, row):
            out = _forward(runtime, entries[i][0], task_input(x, i), branch_pages(), row,
                           granularity, tile_bytes=tile_bytes, skeletons=skeletons,
                           part="body")
            return _pad_columns(out, max_features, 0.0)
        return fn

    def classifier(i):
        def fn(features, row):
            out = _forward(runtime, entries[i][0], features[:, :features_of[i]],
                           branch_pages(), row, granularity, tile_bytes=tile_bytes,
                           skeletons=skeletons, part="classifier")
            return _pad_columns(out, max_out, PAD_LOGIT)
        return fn

    # tasks of one architecture share a branch: only the selected table differs;
    # networks that differ only in their classifier (body -> Dense, e.g. 10 and 2
    # classes) share a body branch, then run their classifier's branch
    branches, bodies, classifiers, features_of = {}, {}, {}, {}
    for i, (name, members, shape) in enumerate(entries):
        if i in group_of:
            continue
        split = None if members else _classifier_split(runtime.model(name))
        if split is None:
            branches.setdefault(_architecture(runtime, name, members, shape), []).append(i)
            continue
        key = _architecture(runtime, name, members, shape, body_only=split)
        bodies.setdefault(key, []).append(i)
        classifiers.setdefault((key, _architecture(runtime, name, members, shape,
                                                   classifier_only=split)), []).append(i)
        features_of[i] = int(runtime.layout(name).shapes[split][0])
    for i, g in group_of.items():               # after the group: tasks[0] is the group
        next(tasks for tasks in branches.values() if tasks[0] == g).append(i)
    branches, bodies, classifiers = (list(d.values()) for d in (branches, bodies,
                                                                  classifiers))
    max_features = max(features_of.values(), default=0)

    def chosen_of(index, tasks):
        chosen = tf.equal(index, tasks[0])
        for other in tasks[1:]:
            chosen = tf.logical_or(chosen, tf.equal(index, other))
        return chosen

    def run(task, x):
        index = tf.reshape(task, [])
        # the task's page table: a SLICE of the tables (TFLM's GATHER reads no int32)
        # from the task's offset (members read their group's); the task index is
        # clamped, a task outside [0, tasks) leaves NaN logits
        start = tf.slice(tf.constant(offsets, tf.int32),
                         tf.clip_by_value(task, 0, len(entries) - 1), [1])
        if planes is None:
            row = tf.slice(tf.constant(flat), start, [max_pages])
        elif packed:       # entry = 256 high + low, high: 2-bit digits, four to a byte
            quarter = tf.slice(tf.constant([o // 4 for o in offsets], tf.int32),
                               tf.clip_by_value(task, 0, len(entries) - 1), [1])
            count = -(-max_pages // 4)
            byte = tf.math.floormod(tf.cast(tf.slice(tf.constant(planes[0]), quarter,
                                                     [count]), tf.float32), 256.0)
            digits = tf.math.floormod(tf.floor(byte[:, None] / tf.constant(
                [[1.0, 4.0, 16.0, 64.0]])), 4.0)    # float: TFLM's FLOOR_DIV reads no int32
            high = tf.cast(tf.reshape(digits, [-1])[:max_pages], tf.int32)
            row = high * 256 + tf.cast(tf.slice(tf.constant(planes[1]), start, [max_pages]),
                                       tf.int32)
        else:                                   # entry = 256 high + low (int8 planes)
            high, low = (tf.cast(tf.slice(tf.constant(p), start, [max_pages]), tf.int32)
                         for p in planes)
            row = high * 256 + low
        # one IF per architecture in sequence, each passing its input on when not
        # its tasks: TFLM plans each branch in its own scope, so their buffers share
        # memory (each branch's op and tensor records stay in the arena)
        logits = tf.fill([1, max_out], float("nan"))
        if bodies:
            features = tf.zeros([1, max_features])
            for tasks in bodies:
                features = tf.cond(chosen_of(index, tasks),
                                   (lambda i: lambda: body(i)(x, row))(tasks[0]),
                                   (lambda held: lambda: tf.identity(held))(features))
            for tasks in classifiers:
                logits = tf.cond(chosen_of(index, tasks),
                                 (lambda i: lambda: classifier(i)(features, row))(tasks[0]),
                                 (lambda held: lambda: tf.identity(held))(logits))
        for tasks in branches:
            logits = tf.cond(chosen_of(index, tasks),
                             (lambda i: lambda: branch(i)(x, row))(tasks[0]),
                             (lambda held: lambda: tf.identity(held))(logits))
        if group_of:
            logits = _task_columns(logits, task, [column_offset.get(i, 0)
                                                  for i in range(len(entries))], widths)
        return {"logits": logits}

    specs = [tf.TensorSpec((1,), tf.int32, name="task"),
             tf.TensorSpec((1, max_in), tf.float32, name="x")]
    signatures = {MICRO_ENTRY: tf.function(run, input_signature=specs,
                                           autograph=False).get_concrete_function()}
    return tf.Module(), signatures, {
        "input_size": max_in, "output_size": max_out,
        "table_bytes": int(sum(p.nbytes for p in planes or [flat])
                           + 4 * len(offsets) * (2 if packed else 1)),
        "branches": [[entries[i][0] for i in tasks] for tasks in bodies + branches],
        "classifiers": [[entries[i][0] for i in tasks] for tasks in classifiers]}


def _table_planes(flat):
    """Page tables [n] (entries 0..32639) as two int8 planes (high, low) with
    entry = 256 * high + low, low in [-128, 127]: two bytes an entry where TFLM
    reads int8 but no int16 (SLICE, CAST); None for larger entries.

    >>> high, low = _table_planes(np.array([0, 127, 128, 300, 32639]))
    >>> (256 * high.astype(int) + low).tolist(), high.dtype, low.dtype
    ([0, 127, 128, 300, 32639], dtype('int8'), dtype('int8'))
    """
    flat = np.asarray(flat, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > 127 * 256 + 127):
        return None
    high = (flat + 128) // 256
    return high.astype(np.int8), (flat - 256 * high).astype(np.int8)


def _pack_quarters(high):
    """High planes [n] (n a multiple of 4 but for the last table, values 0..3) as
    2-bit digits, four to an int8 byte (the byte's unsigned value is
    Σ_k high[4j + k] · 4^k).

    >>> _pack_quarters(np.array([1, 2, 3, 0, 3], np.int8)).view(np.uint8).tolist()
    [57, 3]
    """
    digits = np.pad(np.asarray(high, np.int64), (0, -len(high) % 4)).reshape(-1, 4)
    return (digits * np.array([1, 4, 16, 64])).sum(axis=1).astype(np.uint8).view(np.int8)


def _routed_members(entries, runtime):
    """({member's entry index: its group's}, {member's entry index: its first column in
    the group's logits}) for the zipped networks exported with their group."""
    index = {name: i for i, (name, _, _) in enumerate(entries)}
    group_of, offset = {}, {}
    for g, (_, members, _) in enumerate(entries):
        if not members:
            continue
        starts = np.cumsum([0, *_classes(runtime, None, members)])
        for member, start in zip(members, starts):
            if member in index:
                group_of[index[member]], offset[index[member]] = g, int(start)
    return group_of, offset


def _task_columns(logits, task, offsets, widths):
    """logits [1, W] -> [1, W]: columns offsets[task] .. + widths[task] moved to the
    front, the others `PAD_LOGIT` (a zipped network's logits within its group's
    row); a task outside [0, tasks) keeps its (NaN) row. TFLM ops: SLICE of
    constants by the task, CONCATENATION, SLICE, SELECT_V2."""
    width = int(logits.shape[-1])
    # index 0 and tasks + 1: a task out of range (offset 0, every column kept)
    pick = tf.clip_by_value(task, -1, len(offsets)) + 1
    offset = tf.slice(tf.constant([0, *offsets, 0], tf.int32), pick, [1])
    keep = tf.slice(tf.constant([width, *widths, width], tf.int32), pick, [1])
    wide = tf.concat([logits, tf.fill([1, width], PAD_LOGIT)], axis=-1)
    moved = tf.slice(wide, tf.concat([tf.zeros([1], tf.int32), offset], 0), [1, width])
    return tf.where(tf.range(width)[tf.newaxis] < keep, moved, PAD_LOGIT)


def _pad_columns(values, width, fill):
    """values [1, w] padded with `fill` to [1, width]."""
    missing = width - int(values.shape[-1])
    if missing <= 0:
        return values
    return tf.concat([values, tf.fill([1, missing], fill)], axis=-1)


def _architecture(runtime, name, members, shape, *, body_only=None,
                  classifier_only=None) -> str:
    """A key equal for networks that compute the same function of (pages, table):
    the same Keras configuration (but the model's name) and the same page layout;
    a group is its own. `body_only=k`: of the network but its classifier (the
    last layer, variables from k on); `classifier_only=k`: of that classifier."""
    if members:
        return f"group:{name}"
    model = runtime.model(name)
    # layer names (input_layer_1, dense_7, ...) say nothing about the function:
    # every reference to a layer's name becomes its index, and "name" keys go
    index = {layer.name: i for i, layer in enumerate(model.layers)}

    def canonical(value):
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items() if k != "name"}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        if isinstance(value, str) and value in index:
            return index[value]
        return value

    layout = runtime.layout(name)
    config, shapes = canonical(model.get_config()), [list(s) for s in layout.shapes]
    offsets = [int(o) for o in layout.offsets]
    if body_only is not None:      # the classifier's entry keeps its class and links
        config["layers"][-1] = {k: v for k, v in config["layers"][-1].items()
                                if k not in ("config", "build_config")}
        shapes, offsets = shapes[:body_only], offsets[:body_only]
    if classifier_only is not None:
        config = config["layers"][-1]
        shapes, offsets = shapes[classifier_only:], offsets[classifier_only:]
    return json.dumps([config, list(shape), shapes, offsets, layout.page_size,
                       layout.aligned], sort_keys=True, default=str)


def export_tflite(runtime: VirtualizedNetworks, path: str, *, quantize: str | None = None,
                  float_pages: int | None = None,
                  target: str = "tflite", names=None, all_tasks: bool = False,
                  gather: str | None = None, dense_tile_bytes: int | None = None) -> dict:
    """Writes ONE TFLite flatbuffer holding the runtime's networks, the pool stored once.

    Args:
      runtime: the pool and page tables (`VirtualizedNetworks`).
      path: the `.tflite` file to write (its folder is created).
      quantize: None: pages as the runtime stores them (int8 for `storage="int8"`
        or `fake_quant`, else float32); "int8": int8 codes and one float32 scale
        per page (`nwv.quantize`), dequantized after the gather.
      float_pages: int8 pages: keep this many pages float32 beside them, those
        with the largest Fisher-weighted rounding error
        (`nwv.quantize.choose_float_pages`; needs the networks' Fisher). None:
        the runtime's (an int8 runtime's `float_pages`, else none).
      target: "tflite" (one signature per network and zipped group, `set_pool`,
        `set_pages`; the pool a resource variable) or "micro" (TensorFlow Lite
        Micro: one entry point `run(task, x)`, the pool a constant in flash).
      names: networks (or groups) to export (default: all, in the runtime's order).
      all_tasks: also write an `all_tasks` signature (tflite target): every
        network in one call, one input per network.
      gather: "layer", "variable" or "network": how many pool pages a gather
        reads at once (peak memory vs number of operators), or "auto". None:
        `DEFAULT_GATHER` of the target: "auto" for tflite ("network": a phone
        holds one network's float weights easily, and each layer of an int8 file
        would otherwise cost three more operators: gather of scales, cast,
        multiply; a file with zipped networks is converted a second time
        with "layer" for zipped groups and their members, whose per-layer table
        slices are shared, and the smaller file kept), "layer" for micro (one
        layer's weights in RAM at a time; "auto" means "layer" there).
      dense_tile_bytes: plain Dense layers whose kernel (zipped dense layers
        whose weight blocks together) are larger run as a sum
        of products by blocks of kernel rows of about this many bytes, each
        block read from the pool just before it is used (RAM: one block instead
        of the whole kernel, twice). None: 16 kB for target "micro", off (0)
        for "tflite".
    Returns:
      {"path", "target", "storage" ("float32"|"int8"), "signatures" (tflite: the
      signature keys; micro: [MICRO_ENTRY]), "networks" {name: {"input_shape",
      "classes" (a list: one per output), "members" (groups)}}, "file_bytes",
      "float_pages" (pages kept float32 beside int8 ones),
      "pool_bytes" (pages, with their scales, slots and float rows), "table_bytes" (the page tables
      as stored in the file), "page_size", "pool_pages", "gather" (the one
      used: "network", "layer", "variable" or "layer for zipped networks")};
      micro adds "tasks"
      (the networks in the order of the `task` index), "inputs" (the entry
      point's input names in input-index order), "input_size", "output_size",
      "pool_offset" (byte offset of the pool constant in the file), "branches"
      (lists of tasks that share one branch: the same architecture, or the same
      body before their classifiers), "classifiers" (lists of tasks that share
      one classifier branch after their body's).
    Raises:
      ValueError: (tflite target) a network name that is not a Python identifier
        or is reserved, an unknown target / quantize / gather, an input shape
        with unknown dimensions, nothing to export, `path` a folder, a runtime
        under a RAM budget (`resident_bytes`); KeyError: an unknown network;
        RuntimeError: the converter failed.
    """
    if target not in TARGETS:
        raise ValueError(f"expected target in {list(TARGETS)}, received {target!r}")
    if target in TARGETS and gather is None:
        gather = DEFAULT_GATHER[target]
    if gather not in GATHERS:
        raise ValueError(f"expected gather in {list(GATHERS)}, received {gather!r}")
    if os.path.isdir(path):
        raise ValueError(f"export target {path!r} is a folder, not a file")
    if getattr(runtime, "resident_plan", None) is not None:
        raise ValueError("a runtime under a RAM budget (resident_bytes) holds part of the "
                         "pool; export a runtime loaded without resident_bytes")
    arrays = _pool_arrays(runtime, quantize, float_pages)
    entries = _entries(runtime, names, signatures=target == "tflite")
    extra = {}
    if target == "tflite":
        choices = [gather]
        if gather == "auto":
            zipped = _zipped_names(runtime)
            any_zipped = any(n in zipped for n, _, _ in entries)
            choices = ["network", "auto"] if any_zipped else ["network"]
        blobs = {}
        for choice in choices:     # "auto": the smaller file of these
            module, signatures = _tflite_module(runtime, entries, arrays, choice, all_tasks,
                                                int(dense_tile_bytes or 0))
            blobs[choice] = _converted(module, signatures, resource_variables=True)
        gather = min(blobs, key=lambda c: len(blobs[c]))
        blob = blobs[gather]
        table_bytes = int(sum(4 * runtime.page_table(n).size for n, _, _ in entries))
    else:
        gather = "layer" if gather == "auto" else gather
        tile = MICRO_TILE_BYTES if dense_tile_bytes is None else int(dense_tile_bytes)
        module, signatures, extra = _micro_module(runtime, entries, arrays, gather, tile)
        table_bytes = extra.pop("table_bytes")
        blob = _converted(module, signatures, resource_variables=False, rematerialize=True)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(blob)
    info = {
        "path": path, "target": target, "storage": "int8" if "codes" in arrays else "float32",
        "float_pages": int(arrays["float_rows"].shape[0] - 1) if "float_rows" in arrays else 0,
        "signatures": sorted(signatures),
        "networks": {n: {"input_shape": list(s), "classes": _classes(runtime, n, members),
                         **({"members": list(members)} if members else {})}
                     for n, members, s in entries},
        "file_bytes": len(blob), "pool_bytes": _pool_bytes(arrays),
        "table_bytes": table_bytes, "page_size": runtime.page_size,
        "pool_pages": int(next(iter(arrays.values())).shape[0]),
        "gather": "layer for zipped networks" if gather == "auto" else gather}
    if target == "micro":
        main = arrays.get("pool", arrays.get("codes"))
        info.update(tasks=[n for n, _, _ in entries], inputs=_input_order(blob, MICRO_ENTRY),
                    pool_offset=_buffer_offset(blob, main.tobytes()), **extra)
    return info


def _converted(module, signatures, *, resource_variables, rematerialize=False) -> bytes:
    try:
        return _finish(_convert(module, signatures, resource_variables=resource_variables),
                       reorder=True, rematerialize=rematerialize)
    except Exception as err:  # the converter raises ConverterError and others
        raise RuntimeError(f"TFLite conversion failed: {err}") from err


# --- the flatbuffer after conversion -----------------------------------------------
_KEEP_ORDER = ("ASSIGN_VARIABLE",)   # subgraphs that write state keep the converter's order
_ALIGN = 16                           # TFLite/TFLM buffer alignment (schema force_align)


def _opcode_names(model, schema):
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM")
            for c in model.operatorCodes]


def _ints(values):
    """A flatbuffer int vector (None, list or numpy array) as a list of ints."""
    return [] if values is None else [int(v) for v in values]


def _memory_order(subgraph):
    """Operator order for a low peak memory: depth first from the outputs, each
    operator right after what its inputs need, inputs in operand order. A layer's
    weights are then gathered right before the layer (after its input activation)
    instead of all at the start, where the converter's topological order puts them;
    the interpreters' arena planners free a tensor after its last use."""
    ops = subgraph.operators or []
    producer = {t: i for i, op in enumerate(ops) for t in _ints(op.outputs)}
    order, done = [], set()
    pinned = [i for i, op in enumerate(ops) if not _ints(op.outputs)]  # CALL_ONCE
    for i in pinned:
        done.add(i)
        order.append(i)

    def visit(root):
        stack = [(root, 0)]
        while stack:
            i, k = stack.pop()
            if i in done:
                continue
            inputs = _ints(ops[i].inputs)
            if k < len(inputs):
                stack.append((i, k + 1))
                p = producer.get(inputs[k])
                if p is not None and p not in done:
                    stack.append((p, 0))
            else:
                done.add(i)
                order.append(i)

    for t in _ints(subgraph.outputs):
        if t in producer:
            visit(producer[t])
    for i in range(len(ops)):  # operators no output needs, in their order
        if i not in done:
            visit(i)
    return [ops[i] for i in order]


_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 11: 16, 16: 4}
_NO_REMAT = ("IF", "WHILE", "CALL_ONCE")   # control flow: never given private copies
REMAT_MIN_BYTES = 4096


def _tensor_bytes(tensor) -> int:
    return int(np.prod(_ints(tensor.shape))) * _TYPE_BYTES.get(tensor.type, 4)


def _peak_bytes(subgraph, constant) -> int:
    """Estimated activation memory of a subgraph in `_memory_order`: the largest sum
    of the bytes of the tensors alive at once (inputs and results from their
    producer, or the start, to their last reader; constants excluded)."""
    ops = _memory_order(subgraph)
    tensors = subgraph.tensors or []
    last = {}
    for k, op in enumerate(ops):
        for t in _ints(op.inputs) + _ints(op.outputs):
            last[t] = k
    for t in _ints(subgraph.outputs):
        last[t] = len(ops)
    live = {t for t in _ints(subgraph.inputs) if t not in constant}
    peak = 0
    for k, op in enumerate(ops):
        live.update(t for t in _ints(op.outputs) if t not in constant)
        peak = max(peak, sum(_tensor_bytes(tensors[t]) for t in live))
        live = {t for t in live if last.get(t, -1) > k}
    return peak


def _rematerialize(model, subgraph, opnames) -> bool:
    """Gives a layer its own copy of weight reads it shares with an earlier layer
    where that lowers the subgraph's estimated peak memory (`_peak_bytes`) by
    `REMAT_MIN_BYTES` or more (True if any).

    Weight reads are the operators computed from constants and integer subgraph
    inputs only (the page-table row): gathers of pool pages, their reshapes,
    slices, concatenations, transposes, dequantization. The converter computes a
    read once for all its readers (common subexpressions), so the shared layers
    of a zipped group, read for task 0 and again for task 1, kept every shared
    kernel in RAM from task 0's layer to task 1's (the demo's zipped MNIST pair:
    251 kB of arena). Reading the pages again from flash costs a few operators
    and the copy's own transient buffers, so each copy is kept only where the
    estimate says it pays (rematerialization, greedily, reader by reader)."""
    ops = list(subgraph.operators or [])
    tensors = list(subgraph.tensors or [])
    producer = {t: k for k, op in enumerate(ops) for t in _ints(op.outputs)}
    constant = {t for t, tensor in enumerate(tensors)
                if model.buffers[tensor.buffer].data is not None
                and len(model.buffers[tensor.buffer].data) > 0}
    roots = constant | {t for t in _ints(subgraph.inputs) if tensors[t].type == 2}  # int32
    static, static_ops = set(roots), set()
    for k, op in enumerate(ops):             # the converter's order is topological
        outputs = _ints(op.outputs)
        if outputs and opnames[op.opcodeIndex] not in _NO_REMAT and all(
                t in static for t in _ints(op.inputs) if t >= 0):
            static_ops.add(k)
            static.update(outputs)

    def cone(k):
        """The weight-read operators k needs (upward closed)."""
        seen, stack = set(), [k]
        while stack:
            for t in _ints(ops[stack.pop()].inputs):
                p = producer.get(t)
                if t >= 0 and t not in roots and p in static_ops and p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def peak():
        subgraph.operators, subgraph.tensors = ops, tensors
        return _peak_bytes(subgraph, constant)

    best, claimed, changed = None, set(), False
    for k in range(len(ops)):              # the original operators (copies are appended)
        if k in static_ops or opnames[ops[k].opcodeIndex] in _NO_REMAT:
            continue
        mine = cone(k)
        shared = mine & claimed
        claimed |= mine
        if not shared:
            continue
        best = peak() if best is None else best
        readers = [k] + sorted(mine - shared)
        saved = [(r, ops[r].inputs) for r in readers]
        size = (len(ops), len(tensors))
        fresh = {}
        for p in sorted(shared):             # topological: inputs are copied first
            clone = copy_module.deepcopy(ops[p])
            clone.inputs = [fresh.get(t, t) for t in _ints(clone.inputs)]
            outputs = []
            for t in _ints(ops[p].outputs):
                fresh[t] = len(tensors)
                tensors.append(copy_module.deepcopy(tensors[t]))
                outputs.append(fresh[t])
            clone.outputs = outputs
            ops.append(clone)
        for r in readers:
            ops[r].inputs = [fresh.get(t, t) for t in _ints(ops[r].inputs)]
        trial = peak()
        if trial <= best - REMAT_MIN_BYTES:   # keep: the copies are k's weight reads
            copies = range(size[0], len(ops))
            producer.update((t, c) for c in copies for t in _ints(ops[c].outputs))
            static_ops.update(copies)
            claimed.update(copies)
            best, changed = trial, True
            continue
        for r, inputs in saved:              # not worth it: undo
            ops[r].inputs = inputs
        del ops[size[0]:], tensors[size[1]:]
    subgraph.operators, subgraph.tensors = ops, tensors
    return changed


def _renumber(subgraph, index, signatures):
    """Renumbers the tensors of a subgraph, the last produced first. TFLM's greedy
    planner places larger buffers first and, among equal sizes, higher tensor numbers
    first: so a chain of equal-sized copies (gathered pages, their reshape, the
    reshaped variable, its transpose) is placed in execution order, alternating
    between two slots, instead of fragmenting the arena."""
    produced = [t for op in subgraph.operators or [] for t in _ints(op.outputs)]
    seen = set(produced)
    _take_tensors(subgraph, index, signatures, produced[::-1] + [
        t for t in range(len(subgraph.tensors or [])) if t not in seen])


def _drop_unused_tensors(subgraph, index, signatures) -> None:
    """Removes the tensors no operator, subgraph input or output refers to (keeping
    the others' order)."""
    used = set(_ints(subgraph.inputs) + _ints(subgraph.outputs))
    for op in subgraph.operators or []:
        used.update(_ints(op.inputs) + _ints(op.outputs) + _ints(op.intermediates))
    _take_tensors(subgraph, index, signatures,
                  [t for t in range(len(subgraph.tensors or [])) if t in used])


def _take_tensors(subgraph, index, signatures, order) -> None:
    """Keeps the tensors `order` (old indices) in that order and renumbers every
    reference to them: operators, the subgraph's inputs and outputs, signatures."""
    new = {old: i for i, old in enumerate(order)}
    subgraph.tensors = [subgraph.tensors[t] for t in order]
    remap = lambda values: None if values is None else [  # noqa: E731
        new[v] if v >= 0 else v for v in _ints(values)]
    for op in subgraph.operators or []:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)
    subgraph.inputs, subgraph.outputs = remap(subgraph.inputs), remap(subgraph.outputs)
    for signature in signatures or []:
        if signature.subgraphIndex == index:
            for tensor_map in list(signature.inputs or []) + list(signature.outputs or []):
                tensor_map.tensorIndex = new[int(tensor_map.tensorIndex)]


def _finish(blob: bytes, *, reorder: bool, rematerialize: bool = False) -> bytes:
    """The converter's flatbuffer with (1) operators in a low-memory order (`reorder`;
    with `rematerialize`, weight reads shared by distant readers copied first:
    `_rematerialize`),
    (2) the names of tensors other than the subgraphs' inputs and outputs removed
    (about a third of the graph bytes; signatures name their tensors themselves),
    (3) a bias ADD after a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED without bias
    folded into the layer (the converter keeps it apart when the bias is not a
    constant, as for gathered pages): one operator and tensor fewer per layer,
    (4) one buffer per distinct constant (the converter writes one per tensor, empty
    for every activation: they all point to the empty buffer 0 instead) and no
    empty quantization records (together about a fifth of the graph bytes),
    (5) every buffer 16-byte aligned, as the converter writes them."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    schema = flatbuffer_utils.schema_fb
    opnames = _opcode_names(model, schema)
    meta = {(m.name or b"").decode() for m in (model.metadata or [])}
    for index, subgraph in enumerate(model.subgraphs):
        ops = subgraph.operators or []
        if reorder and "model_control_dependencies" not in meta and not any(
                opnames[op.opcodeIndex] in _KEEP_ORDER for op in ops):
            if rematerialize:
                _rematerialize(model, subgraph, opnames)
            subgraph.operators = _memory_order(subgraph)
            _renumber(subgraph, index, model.signatureDefs)
        if _fuse_bias_adds(model, subgraph, opnames):
            _drop_unused_tensors(subgraph, index, model.signatureDefs)
        kept = set(_ints(subgraph.inputs) + _ints(subgraph.outputs))
        for i, tensor in enumerate(subgraph.tensors or []):
            if i not in kept:
                tensor.name = None
            if _empty_quantization(tensor.quantization):
                tensor.quantization = None
    _share_buffers(model)

    base = type(model.buffers[0])

    class Aligned(base):
        def Pack(self, builder):
            if self.data is not None and len(self.data):
                builder.Prep(_ALIGN, len(self.data))
            return super().Pack(builder)

    for buffer in model.buffers:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.asarray(buffer.data, np.uint8)
        buffer.__class__ = Aligned
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


_BIASED = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}  # filter's channel axis


def _fuse_bias_adds(model, subgraph, opnames) -> bool:
    """Folds `ADD(layer(x), bias)` into `layer(x, bias)`, run where the ADD was, where
    the layer (see `_BIASED`) has no bias (none, or a zero constant) and no
    activation, its output feeds that ADD only, and the bias is a vector over the
    layer's output channels of the output's type; the ADD's activation moves into
    the layer. True if any."""
    ops, tensors = list(subgraph.operators or []), subgraph.tensors or []
    readers = {}
    for k, op in enumerate(ops):
        for t in _ints(op.inputs):
            readers.setdefault(t, []).append(k)
    outputs = set(_ints(subgraph.outputs))
    removed = set()
    for k, op in enumerate(ops):
        name = opnames[op.opcodeIndex]
        inputs = _ints(op.inputs)
        if name not in _BIASED or len(inputs) < 2 or op.builtinOptions is None \
                or op.builtinOptions.fusedActivationFunction != 0:
            continue
        if len(inputs) > 2 and inputs[2] >= 0:
            data = model.buffers[tensors[inputs[2]].buffer].data
            if data is None or len(data) == 0 or np.any(np.asarray(data, np.uint8)):
                continue
        out = _ints(op.outputs)[0]
        use = readers.get(out, [])
        if out in outputs or len(use) != 1 or opnames[ops[use[0]].opcodeIndex] != "ADD":
            continue
        add = ops[use[0]]
        bias = [t for t in _ints(add.inputs) if t != out]
        filt = tensors[inputs[1]]
        if len(bias) != 1 or filt.shape is None or add.builtinOptions is None:
            continue
        channels = int(_ints(filt.shape)[_BIASED[name]])
        b = tensors[bias[0]]
        if _ints(b.shape) != [channels] or b.type != tensors[out].type:
            continue
        op.inputs = inputs[:2] + bias
        op.outputs = _ints(add.outputs)
        op.builtinOptions.fusedActivationFunction = add.builtinOptions.fusedActivationFunction
        ops[use[0]] = op        # in the ADD's place: after the bias is made (e.g. a concat)
        removed.add(k)
    if removed:
        subgraph.operators = [op for k, op in enumerate(ops) if k not in removed]
    return bool(removed)


def _empty_quantization(params) -> bool:
    return params is not None and all(
        getattr(params, field) is None or len(getattr(params, field)) == 0
        for field in ("min", "max", "scale", "zeroPoint")) and not params.detailsType


def _share_buffers(model) -> None:
    """Points every tensor (and metadata entry) at one buffer per distinct content,
    buffer 0 (the schema's empty sentinel) for no content, and drops the rest."""
    first, kept, new = {}, [model.buffers[0]], {0: 0}
    for i, buffer in enumerate(model.buffers[1:], start=1):
        if (buffer.offset or 0) > 1:        # data outside the flatbuffer: kept as is
            new[i] = len(kept)
            kept.append(buffer)
            continue
        data = b"" if buffer.data is None else bytes(np.asarray(buffer.data, np.uint8))
        if not data:
            new[i] = 0
            continue
        if data not in first:
            first[data] = len(kept)
            kept.append(buffer)
        new[i] = first[data]
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            tensor.buffer = new[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new[entry.buffer]
    model.buffers = kept


def _input_order(blob: bytes, key: str) -> list:
    """The names of a signature's inputs in the order of its subgraph's input tensors
    (the index `set_input(value, index)` of TFLM takes)."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    for signature in model.signatureDefs or []:
        if signature.signatureKey.decode() == key:
            inputs = _ints(model.subgraphs[signature.subgraphIndex].inputs)
            return [m.name.decode() for m in sorted(
                signature.inputs, key=lambda m: inputs.index(int(m.tensorIndex)))]
    raise ValueError(f"no signature {key!r} in the flatbuffer")


def _buffer_offset(blob: bytes, data: bytes) -> int:
    """The byte offset in the file of the constant buffer holding exactly `data`."""
    from tensorflow.lite.tools import flatbuffer_utils
    blob = bytes(blob)
    model = flatbuffer_utils.schema_fb.Model.GetRootAsModel(blob, 0)
    base = np.frombuffer(blob, np.uint8).__array_interface__["data"][0]
    for i in range(model.BuffersLength()):
        values = model.Buffers(i).DataAsNumpy()
        if isinstance(values, np.ndarray) and values.nbytes == len(data) \
                and values.tobytes() == data:
            return int(values.__array_interface__["data"][0] - base)
    raise ValueError("no buffer of the flatbuffer holds the pool")


# --- inspection -----------------------------------------------------------------
def largest_buffers(blob: bytes, count: int = 5) -> list:
    """The largest constant buffers of a TFLite flatbuffer, largest first.

    Args:
      blob: the file's bytes.
      count: how many.
    Returns:
      [(bytes, [(subgraph, tensor name, dtype code, shape) of the tensors using it])].
    Raises:
      ValueError: not a TFLite flatbuffer.
    """
    from tensorflow.lite.tools import flatbuffer_utils
    try:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    except Exception as err:  # flatbuffers raises plain errors on garbage
        raise ValueError(f"not a TFLite flatbuffer: {err}") from err
    users = {}
    for s, subgraph in enumerate(model.subgraphs):
        for tensor in subgraph.tensors:
            users.setdefault(tensor.buffer, []).append(
                (s, (tensor.name or b"").decode(), int(tensor.type),
                 [int(d) for d in (tensor.shape if tensor.shape is not None else [])]))
    sizes = sorted(((len(b.data) if b.data is not None else 0, i)
                    for i, b in enumerate(model.buffers)), reverse=True)
    return [(n, users.get(i, [])) for n, i in sizes[:count] if n]


def micro_arena_bytes(blob: bytes, *, upper: int = 1 << 24, step: int = 64) -> int:
    """The smallest TensorFlow Lite Micro arena (bytes, to `step`) that loads a micro
    file (doubling from 64 kB, then bisection over `arena_size`): TFLM plans the
    whole arena, every branch included, when it loads.

    Args:
      blob: a micro file's bytes (`export_tflite(..., target="micro")`).
      upper: the largest arena tried.
      step: the resolution.
    Returns:
      Arena bytes.
    Raises:
      ImportError: `tflite-micro` is not installed (`pip install zipvirt[micro]`).
      RuntimeError: the file does not run even with `upper` bytes.
    """
    from tflite_micro.python.tflite_micro import runtime as micro

    def works(size):
        try:
            with _quiet_stderr():
                micro.Interpreter.from_bytes(bytes(blob), arena_size=size)
            return True
        except RuntimeError:
            return False

    high = 1 << 16
    while not works(high):
        if high >= upper:
            raise RuntimeError(f"the micro file does not run in an arena of {upper} bytes")
        high = min(2 * high, upper)
    low = high // 2 if high > 1 << 16 else 0
    while high - low > step:
        mid = (low + high) // 2
        low, high = (low, mid) if works(mid) else (mid, high)
    return high


def micro_arenas(runtime: VirtualizedNetworks, info: dict, **export_options) -> dict:
    """The arena of a micro file and of each of its networks alone.

    Args:
      runtime: the runtime the file was exported from.
      info: `export_tflite(runtime, path, target="micro", ...)`'s result.
      **export_options: the options of that export (quantize, gather,
        dense_tile_bytes), used to write one file per network in a temporary folder.
    Returns:
      {"all": bytes of the file's arena, network: bytes of a file holding it alone}.
    Raises:
      ImportError: `tflite-micro` is not installed.
    """
    with open(info["path"], "rb") as handle:
        arenas = {"all": micro_arena_bytes(handle.read())}
    with tempfile.TemporaryDirectory(prefix="nwv-micro-") as folder:
        for name in info["tasks"]:
            path = os.path.join(folder, f"{name}.tflite")
            export_tflite(runtime, path, target="micro", names=[name], **export_options)
            with open(path, "rb") as handle:
                arenas[name] = micro_arena_bytes(handle.read())
    return arenas


def micro_inputs(info: dict, task: int, x) -> tuple:
    """The micro entry point's inputs for one example, in `info["inputs"]` order.

    Args:
      info: `export_tflite(..., target="micro")`'s result.
      task: index into `info["tasks"]`.
      x: [1, *input_shape] float32.
    Returns:
      A tuple of arrays: task int32 [1] and x float32 [1, input_size] (x flattened
      in C order, zero padded), ordered as the file's inputs.

    >>> [a.tolist() for a in micro_inputs({"inputs": ["task", "x"], "input_size": 3},
    ...                                   1, np.ones((1, 2)))]
    [[1], [[1.0, 1.0, 0.0]]]
    """
    x = np.asarray(x, np.float32)
    if x.shape[0] != 1 or x[0].size > info["input_size"]:
        raise ValueError(f"expected one example of at most {info['input_size']} values, "
                         f"received shape {list(x.shape)}")
    flat = np.zeros((1, info["input_size"]), np.float32)
    flat[0, :x[0].size] = x[0].ravel()
    given = {"task": np.array([task], np.int32), "x": flat}
    return tuple(given[name] for name in info["inputs"])


def run_micro(interpreter, info: dict, task: int, x) -> np.ndarray:
    """Logits [1, output_size] of one example through a TFLM interpreter of a micro
    file (`tflite_micro.python.tflite_micro.runtime.Interpreter`); a network's
    logits are the first sum(classes) entries, the rest `PAD_LOGIT`."""
    for index, value in enumerate(micro_inputs(info, task, x)):
        interpreter.set_input(value, index)
    interpreter.invoke()
    return interpreter.get_output(0)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences what C++ writes to stderr (TFLM's failed allocations) meanwhile."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
