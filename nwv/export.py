"""SavedModel export of a page pool: one endpoint per network and one for all of them.

Built on `keras.export.ExportArchive`: every endpoint reads its weights from the
same `page_pool` variable through its page table (a constant in the graph), so
the SavedModel's variables are the pool, stored once, whatever the number of
networks (int8 storage: the codes and per-page scales, dequantized after the
gather, and with `float_pages` the page slots and float rows). A fresh process loads it with TensorFlow alone:

    served = tf.saved_model.load("export_dir")
    logits = served.mnist(x)                         # one network
    all_logits = served.all_tasks(x_mnist, x_cifar)  # every network, one call

Endpoint names are the network names (Python identifiers); `all_tasks` takes one
input per network, in the order of `networks.json`, and returns a dict of logits;
a zipped group (`nwv.combined`) with one shared input gets its own endpoint
(e.g. `zipped_all(x)`) that computes the shared layers once. The same
endpoints are also written as serving signatures (`serving_default` = first).
"""
from __future__ import annotations

import json
import keyword
import os
import re

import keras
import tensorflow as tf

from nwv.runtime import VirtualizedNetworks

ALL_ENDPOINT = "all_tasks"


def check_endpoint_name(name: str, *, reserved=(), kind: str = "SavedModel endpoint",
                        hint: str = "") -> str:
    """`name` if it can name an endpoint of an export, else ValueError.

    The one rule of both exports (SavedModel endpoints, TFLite signatures): an ASCII
    Python identifier that is not a keyword (`served.<name>(x)` must be valid
    Python; C and Java runtimes look signatures up by ASCII key) and not in
    `reserved` (the export's own endpoints).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or keyword.iskeyword(name) \
            or name in reserved:
        raise ValueError(f"network name {name!r} cannot name a {kind}: expected an ASCII "
                         f"Python identifier (not a keyword) other than {list(reserved)}"
                         f"{hint}")
    return name


def _endpoint_name(name: str) -> str:
    return check_endpoint_name(name, reserved=(ALL_ENDPOINT,))


def export_savedmodel(runtime: VirtualizedNetworks, out_dir: str, *, names=None) -> dict:
    """Writes a SavedModel of `runtime`'s networks to `out_dir`.

    Args:
      runtime: the in-memory pool and page tables (`VirtualizedNetworks`).
      out_dir: destination folder (created; must not hold another SavedModel).
      names: networks to export (default: all, in the runtime's order).
    Returns:
      {"endpoints": [...], "networks": {name: input shape}, "storage", "pool_bytes"}
    Raises:
      ValueError: a network name that is not a Python identifier, or `out_dir` a file.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"export target {out_dir!r} is a file, not a folder")
    if runtime.resident_plan is not None:
        raise ValueError("a runtime under a RAM budget (resident_bytes) holds part of the "
                         "pool; export a runtime loaded without resident_bytes")
    groups = runtime.groups()
    names = [n for n in (names or runtime.names) if n not in groups]
    archive = keras.export.ExportArchive()
    shapes = {}
    for name in names:
        shape = tuple(runtime.model(name).input_shape[1:])
        shapes[name] = list(shape)
        spec = tf.TensorSpec((None, *shape), tf.float32, name=name)
        archive.add_endpoint(_endpoint_name(name),
                             (lambda n: (lambda x: runtime.forward(n, x)))(name),
                             input_signature=[spec])
    specs = [tf.TensorSpec((None, *shapes[n]), tf.float32, name=n) for n in names]

    def all_tasks(*xs):
        return {n: runtime.forward(n, x) for n, x in zip(names, xs)}

    archive.add_endpoint(ALL_ENDPOINT, all_tasks, input_signature=specs)
    endpoints = names + [ALL_ENDPOINT]
    for group, outputs in groups.items():  # zipped model: shared layers computed once
        input_shapes = {tuple(i.shape[1:]) for i in runtime.model(group).inputs}
        if len(input_shapes) != 1:  # tasks of different input domains: no shared input
            continue
        shape = input_shapes.pop()
        fn = (lambda g, outs: (lambda x: dict(zip(outs, runtime.forward(g, x)))))(group, outputs)
        archive.add_endpoint(_endpoint_name(group), fn,
                             input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
        endpoints.append(group)
    pool_variables = ([runtime.page_codes, runtime.page_scales] if runtime.storage == "int8"
                      else [runtime.page_pool])
    if runtime.float_rows is not None:       # int8 pages with float pages beside them
        pool_variables += [runtime.page_slots, runtime.float_rows]
    archive.add_variable_collection("page_pool", pool_variables)
    archive.write_out(out_dir, verbose=False)
    info = {"endpoints": endpoints, "networks": shapes, "storage": runtime.storage,
            "pool_bytes": runtime.stored_bytes()}
    with open(os.path.join(out_dir, "networks.json"), "w") as handle:
        json.dump(info, handle, indent=2)
    return info


def variable_bytes(saved_model_dir: str) -> int:
    """Bytes of the variables a SavedModel's checkpoint stores (float32 assumed 4 bytes).

    Read from `variables/variables` with `tf.train.load_checkpoint`, so variables
    saved twice would count twice.
    """
    reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    total = 0
    for name, shape in reader.get_variable_to_shape_map().items():
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        count = 1
        for dim in shape:
            count *= dim
        total += count * dtypes[name].size
    return int(total)
