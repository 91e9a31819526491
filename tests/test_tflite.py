"""One TFLite file for every network of a pool (pool stored once), int8 pages,
set_pages, the TensorFlow Lite Micro entry point, and scripts/export_tflite.py."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtz
import nwv
from nwv import combined, quantize, tflite
from nwv.runtime import VirtualizedNetworks
from tests.conftest import REPO
from tests.test_mtz_zip import inputs_for, permuted_copy, small_cnn, small_mlp

SLACK = 64 * 1024   # graphs, signatures and metadata on top of the pool and tables
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def _digits(seed=3, classes=10):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten(name="flatten")(h)
    return keras.Model(inp, keras.layers.Dense(classes, name="logits")(h), name="digits")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A zipped pair (left, right and their group zipped_all, 12x12x2 inputs, 4
    classes) plus a virtualized network of another input shape (digits, 28x28x1)."""
    a = small_cnn(0)
    b, _ = permuted_copy(small_cnn(1), 2)
    x = inputs_for(a, n=6)
    zipped = mtz.zip_models([a, b], [x, x], share="0.75", names=["left", "right"])
    pool_dir = str(tmp_path_factory.mktemp("pool"))
    combined.save_zipped(pool_dir, zipped, page_size=16,
                         fisher_inputs={"left": x, "right": x}, fisher_samples=8)
    digits = _digits()
    fisher = [np.ones(v.shape, np.float32) for v in digits.trainable_variables]
    nwv.add_network(pool_dir, digits, name="digits", task="mnist", fisher=fisher,
                    page_size=16)
    runtime = VirtualizedNetworks.load(pool_dir)
    x_digits = np.random.default_rng(1).random((3, 28, 28, 1), np.float32)
    inputs = {"left": x, "right": x, combined.GROUP: x, "digits": x_digits}
    return pool_dir, runtime, inputs


def _expected(runtime, name, x):
    group = runtime.groups().get(name)
    if group:
        return {member: runtime.run(member, x).numpy() for member in group}
    return {"logits": runtime.run(name, x).numpy()}


def _model(blob):
    from tensorflow.lite.tools import flatbuffer_utils
    return flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))


def _run_fresh(tmp_path, path, calls):
    """{signature: {output: array}} from a fresh `python -I` that imports TensorFlow
    only; calls: {signature: {input: array}}."""
    arrays = {f"{s}__{k}": v for s, inputs in calls.items() for k, v in inputs.items()}
    np.savez(tmp_path / "inputs.npz", **arrays)
    script = (
        "import sys, json, numpy as np, tensorflow as tf\n"
        "assert 'mtz' not in sys.modules and 'nwv' not in sys.modules\n"
        f"it = tf.lite.Interpreter(model_path={str(path)!r})\n"
        f"data = np.load({str(tmp_path / 'inputs.npz')!r})\n"
        f"calls = {json.dumps({s: list(i) for s, i in calls.items()})}\n"
        "out = {s: {k: v.tolist() for k, v in it.get_signature_runner(s)(\n"
        "    **{n: data[s + '__' + n] for n in names}).items()} for s, names in calls.items()}\n"
        "print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_file_holds_every_network_with_the_pool_once(pool, tmp_path):
    _, runtime, inputs = pool
    path = tmp_path / "pool.tflite"
    info = nwv.export_tflite(runtime, str(path), all_tasks=True)
    names = ["left", "right", "digits", combined.GROUP]
    assert info["signatures"] == sorted(names + ["all_tasks", "set_pool", "set_pages"])
    pool_bytes = runtime.page_pool.numpy().nbytes
    assert info["pool_bytes"] == pool_bytes
    assert info["file_bytes"] == path.stat().st_size
    assert info["file_bytes"] <= pool_bytes + info["table_bytes"] + SLACK
    # the pool is ONE buffer (the variable's initial value); no per-network copy of it
    blob = path.read_bytes()
    (largest, users), (second, _) = tflite.largest_buffers(blob, 2)
    assert largest == pool_bytes and len(users) == 1 and users[0][3] == [
        *runtime.page_pool.shape]
    assert second <= max(4 * runtime.page_table(n).size for n in runtime.names)
    assert blob.count(runtime.page_pool.numpy().tobytes()) == 1
    model = _model(blob)
    assert sum(buffer.data is not None and len(buffer.data) >= pool_bytes // 4
               for buffer in model.buffers) == 1
    ops = {op for sub in model.subgraphs for op in tflite_ops(model, sub)}
    assert {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "GATHER"} <= ops
    # gather="auto": a plain network gathers its pages at once; with zipped networks
    # a file (float or int8) is also built with their gathers per layer, the smaller kept
    gathers = {sub.name.decode(): tflite_ops(model, sub).count("GATHER")
               for sub in model.subgraphs}
    assert gathers["digits"] == 1
    sizes = {g: nwv.export_tflite(runtime, str(tmp_path / f"{g}.tflite"), gather=g,
                                  all_tasks=True)
             for g in ("network", "layer")}
    assert info["gather"] == "network"        # these tiny tables cost less than the ops
    assert info["file_bytes"] == sizes["network"]["file_bytes"] < sizes["layer"]["file_bytes"]
    assert "BATCH_MATMUL" not in ops and not any(op.startswith("CUSTOM") for op in ops)
    # one buffer per distinct constant, activations on the empty buffer 0, and every
    # layer's gathered bias folded into the layer (no ADD reads a layer's output)
    contents = [bytes(np.asarray(b.data, np.uint8)) for b in model.buffers[1:]]
    assert all(contents) and len(set(contents)) == len(contents)
    for sub in model.subgraphs:
        names_here = tflite_ops(model, sub)
        made_by = {int(t): name for op, name in zip(sub.operators or [], names_here)
                   for t in op.outputs}
        for op, name in zip(sub.operators or [], names_here):
            if name == "ADD":
                assert not {made_by.get(int(t)) for t in op.inputs} & {
                    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    # every signature in a fresh process without the project equals the pool runtime
    calls = {n: {"x": inputs[n]} for n in names}
    calls["all_tasks"] = {n: inputs[n] for n in ["left", "right", "digits"]}
    result = _run_fresh(tmp_path, path, calls)
    for name in names:
        for key, value in _expected(runtime, name, inputs[name]).items():
            np.testing.assert_allclose(result[name][key], value, atol=1e-4)
    for name in ["left", "right", "digits"]:
        np.testing.assert_allclose(result["all_tasks"][name],
                                   runtime.run(name, inputs[name]), atol=1e-4)


def tflite_ops(model, subgraph):
    from tensorflow.lite.tools import flatbuffer_utils
    names = {v: k for k, v in vars(flatbuffer_utils.schema_fb.BuiltinOperator).items()
             if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [names.get(codes[op.opcodeIndex], "CUSTOM") for op in subgraph.operators or []]


def test_int8_pages_match_the_int8_runtime(pool, tmp_path):
    pool_dir, runtime, inputs = pool
    path = tmp_path / "int8.tflite"
    info = nwv.export_tflite(runtime, str(path), quantize="int8")
    int8 = VirtualizedNetworks.load(pool_dir, storage="int8")
    assert info["storage"] == "int8" and info["pool_bytes"] == int8.stored_bytes()
    assert info["file_bytes"] <= int8.stored_bytes() + info["table_bytes"] + SLACK
    blob = path.read_bytes()
    (largest, users), = tflite.largest_buffers(blob, 1)
    assert largest == int8.page_codes.numpy().nbytes and users[0][2] == 9  # INT8 variable
    assert blob.count(int8.page_codes.numpy().tobytes()) == 1
    # dequantized once per network (one gather of its pages), not once per layer:
    # the int8 graphs are as small as the float ones
    model = _model(blob)
    casts = [tflite_ops(model, sub).count("CAST") for sub in model.subgraphs]
    assert max(casts) == 1 and sum(casts) == len(info["networks"])
    per_layer = nwv.export_tflite(runtime, str(tmp_path / "layer.tflite"), quantize="int8",
                                  gather="layer")
    assert per_layer["file_bytes"] > info["file_bytes"]
    interpreter = tf.lite.Interpreter(model_content=blob)
    for name in ["left", "digits", combined.GROUP]:
        out = interpreter.get_signature_runner(name)(x=inputs[name])
        for key, value in _expected(int8, name, inputs[name]).items():
            np.testing.assert_allclose(out[key], value, atol=1e-4)
    # the same file from an int8 runtime, quantize=None
    again = nwv.export_tflite(int8, str(tmp_path / "again.tflite"))
    assert again["storage"] == "int8" and again["pool_bytes"] == info["pool_bytes"]


def test_float_pages_beside_int8_pages_match_the_mixed_runtime(pool, tmp_path):
    """Float pages (the costliest to round, Fisher-weighted) stay float32 in the file,
    read exactly by the tflite and micro targets; an update makes a page int8."""
    pool_dir, runtime, inputs = pool
    with pytest.raises(ValueError, match="no network has one"):
        nwv.export_tflite(runtime, str(tmp_path / "x.tflite"), quantize="int8",
                          float_pages=2)             # loaded without Fisher
    with pytest.raises(ValueError, match="needs quantize='int8'"):
        nwv.export_tflite(runtime, str(tmp_path / "x.tflite"), float_pages=2)
    mixed = VirtualizedNetworks.load(pool_dir, storage="int8", float_pages=2)
    floats = mixed.float_pages
    assert floats.size == 2
    with pytest.raises(ValueError, match="keeps 2 float pages"):
        nwv.export_tflite(mixed, str(tmp_path / "x.tflite"), float_pages=1)
    path = tmp_path / "mixed.tflite"
    info = nwv.export_tflite(mixed, str(path))
    assert info["storage"] == "int8" and info["float_pages"] == 2
    assert info["pool_bytes"] == mixed.stored_bytes()
    assert info["file_bytes"] <= mixed.stored_bytes() + info["table_bytes"] + SLACK
    blob = path.read_bytes()
    assert blob.count(mixed.float_rows.numpy().tobytes()) == 1
    interpreter = tf.lite.Interpreter(model_content=blob)
    for name in ["left", "digits", combined.GROUP]:
        out = interpreter.get_signature_runner(name)(x=inputs[name])
        for key, value in _expected(mixed, name, inputs[name]).items():
            np.testing.assert_allclose(out[key], value, atol=1e-4)
    # an update of a float page ships int8 codes: that page is int8 from then on
    page = np.array([floats[0]], np.int32)
    changed = mixed.pool_array()
    codes, scales = quantize.quantize_pages(changed)
    interpreter.get_signature_runner("set_pages")(pages=page, codes=codes[page],
                                                   scales=scales[page])
    reference = VirtualizedNetworks.load(pool_dir, storage="int8", float_pages=2)
    for variable, value in ((reference.page_codes, codes[page]),
                            (reference.page_scales, scales[page]),
                            (reference.page_slots, np.zeros(1, np.int8))):
        variable.scatter_nd_update(page[:, None], value)
    assert reference.float_pages.tolist() == floats[1:].tolist()
    assert any(not np.allclose(reference.run(n, inputs[n]), mixed.run(n, inputs[n]),
                               atol=1e-6) for n in ["left", "digits"])   # it did change
    for name in ["left", "digits"]:
        np.testing.assert_allclose(
            interpreter.get_signature_runner(name)(x=inputs[name])["logits"],
            reference.run(name, inputs[name]), atol=1e-4)
    micro = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    micro_path = tmp_path / "mixed_micro.tflite"
    micro_info = nwv.export_tflite(mixed, str(micro_path), target="micro")
    assert micro_info["float_pages"] == 2
    engine = micro.Interpreter.from_bytes(micro_path.read_bytes(), arena_size=1 << 20)
    for task, name in enumerate(micro_info["tasks"]):
        x = inputs[name][:1]
        out = tflite.run_micro(engine, micro_info, task, x)
        want = np.concatenate(list(_expected(mixed, name, x).values()), axis=-1)
        np.testing.assert_allclose(out[:, :want.shape[1]], want, atol=1e-4)


def _touched_pages(runtime):
    """Pages of left only, of digits only, and shared by both."""
    left, digits = set(runtime.page_table("left")), set(runtime.page_table("digits"))
    return sorted(left - digits)[:2] + sorted(left & digits)[:1] + sorted(digits - left)[:1]


@pytest.mark.parametrize("int8", [False, True])
def test_set_pages_changes_exactly_those_pages(pool, tmp_path, int8):
    pool_dir, runtime, inputs = pool
    path = str(tmp_path / "pool.tflite")
    nwv.export_tflite(runtime, path, quantize="int8" if int8 else None)
    interpreter = tf.lite.Interpreter(model_path=path)
    pages = np.array(_touched_pages(runtime), np.int32)
    changed = runtime.pool_array()
    changed[pages] = np.random.default_rng(7).normal(size=(pages.size, runtime.page_size))
    reference = VirtualizedNetworks.load(pool_dir, storage="int8" if int8 else "float32")
    if int8:     # an update ships int8 pages, whatever rule chose their scales
        codes, scales = reference.page_codes.numpy(), reference.page_scales.numpy()
        codes[pages], scales[pages] = quantize.quantize_pages(changed[pages])
        reference.page_codes.assign(codes)
        reference.page_scales.assign(scales)
        result = interpreter.get_signature_runner("set_pages")(
            pages=pages, codes=codes[pages], scales=scales[pages])
    else:
        reference.page_pool.assign(changed)
        result = interpreter.get_signature_runner("set_pages")(pages=pages,
                                                               values=changed[pages])
    assert int(result["pages"]) == pages.size
    for name in ["left", "right", "digits", combined.GROUP]:
        out = interpreter.get_signature_runner(name)(x=inputs[name])
        for key, value in _expected(reference, name, inputs[name]).items():
            np.testing.assert_allclose(out[key], value, atol=1e-4)
    # right uses none of the changed pages unless it shares them with left
    if not set(pages.tolist()) & set(runtime.page_table("right")):
        np.testing.assert_allclose(
            interpreter.get_signature_runner("right")(x=inputs["right"])["logits"],
            runtime.run("right", inputs["right"]), atol=1e-4)
    # set_pool puts the whole pool back
    expected = VirtualizedNetworks.load(pool_dir, storage="int8" if int8 else "float32")
    if int8:               # the stored pages: codes and the Fisher-chosen scales
        codes, scales = expected.page_codes.numpy(), expected.page_scales.numpy()
        interpreter.get_signature_runner("set_pool")(codes=codes, scales=scales)
    else:
        interpreter.get_signature_runner("set_pool")(pool=runtime.pool_array())
    back = interpreter.get_signature_runner("left")(x=inputs["left"])["logits"]
    np.testing.assert_allclose(back, expected.run("left", inputs["left"]), atol=1e-4)
    with pytest.raises(RuntimeError, match="out of bounds"):   # a page outside the pool
        bad = np.array([runtime.pool_array().shape[0]], np.int32)
        if int8:
            interpreter.get_signature_runner("set_pages")(
                pages=bad, codes=codes[:1], scales=scales[:1])
        else:
            interpreter.get_signature_runner("set_pages")(pages=bad,
                                                          values=changed[:1])


def test_names_that_cannot_be_signatures_are_refused(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(inp))
    fisher = {"bad-name": [np.ones(v.shape, np.float32) for v in model.trainable_variables]}
    runtime = nwv.virtualize({"bad-name": model}, fisher=fisher, page_size=4)
    with pytest.raises(ValueError, match="cannot name a TFLite signature"):
        nwv.export_tflite(runtime, str(tmp_path / "x.tflite"))
    with pytest.raises(ValueError, match="expected target"):
        nwv.export_tflite(runtime, str(tmp_path / "x.tflite"), target="gpu")
    with pytest.raises(ValueError, match="expected quantize"):
        nwv.export_tflite(runtime, str(tmp_path / "x.tflite"), quantize="int4")


@pytest.mark.parametrize("int8,packed", [(False, True), (True, True), (False, False)])
def test_micro_entry_point_runs_every_network(pool, tmp_path, monkeypatch, int8, packed):
    micro = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    pool_dir, runtime, inputs = pool
    if not packed:     # a pool past PACKED_MAX pages: the high plane a byte an entry
        monkeypatch.setattr(tflite, "PACKED_MAX", -1)
    reference = VirtualizedNetworks.load(pool_dir, storage="int8") if int8 else runtime
    path = tmp_path / "micro.tflite"
    info = nwv.export_tflite(runtime, str(path), target="micro",
                             quantize="int8" if int8 else None)
    assert info["tasks"] == ["left", "right", "digits", combined.GROUP]
    assert sorted(info["inputs"]) == ["task", "x"] and info["signatures"] == ["run"]
    blob = path.read_bytes()
    main = reference.page_codes.numpy() if int8 else runtime.page_pool.numpy()
    # the pool is one constant buffer (flash) shared by every branch, at pool_offset:
    # the zipped networks run their group's branch and keep their columns; digits
    # (conv -> Dense) a body branch and a classifier branch
    assert sorted(map(sorted, info["branches"])) == [["digits"],
                                                     ["left", "right", combined.GROUP]]
    assert info["classifiers"] == [["digits"]]
    (largest, users), = tflite.largest_buffers(blob, 1)
    assert largest == main.nbytes and len({u[0] for u in users}) == 3
    assert blob.count(main.tobytes()) == 1 and info["pool_offset"] % 16 == 0
    assert blob[info["pool_offset"]:info["pool_offset"] + main.nbytes] == main.tobytes()
    # stored: the pages (int8: and a float32 scale a page); the tables of digits and
    # the group (its members read the group's) as two int8 planes, no padding
    assert info["pool_bytes"] == main.nbytes + (4 * main.shape[0] if int8 else 0)
    if int8:           # the float32 scales are one constant of the file, stored once
        assert blob.count(reference.page_scales.numpy().tobytes()) == 1
    sizes = sorted(runtime.page_table(n).size for n in ("digits", combined.GROUP))
    if packed:         # tables start at multiples of 4; 2-bit high digits, four a byte
        entries = sum(n + -n % 4 for n in sizes[:-1]) + sizes[-1]
        assert info["table_bytes"] == entries + -(-entries // 4) + 8 * len(info["tasks"])
    else:
        assert info["table_bytes"] == 2 * sum(sizes) + 4 * len(info["tasks"])
    model = _model(blob)
    for subgraph in model.subgraphs:   # no IF operand (copied into the arena) holds it
        names = tflite_ops(model, subgraph)
        assert "VAR_HANDLE" not in names
        for op, name in zip(subgraph.operators or [], names):
            if name == "IF":
                assert all(np.prod(subgraph.tensors[t].shape) < main.size // 4
                           for t in op.inputs)
    interpreter = micro.Interpreter.from_bytes(blob, arena_size=1 << 20)
    widths = {n: sum(c) for n, c in ((n, info["networks"][n]["classes"])
                                     for n in info["tasks"])}
    for task, name in enumerate(info["tasks"]):
        x = inputs[name][:1]
        out = tflite.run_micro(interpreter, info, task, x)
        assert out.shape == (1, info["output_size"])
        expected = np.concatenate(list(_expected(reference, name, x).values()), axis=-1)
        np.testing.assert_allclose(out[:, :widths[name]], expected, atol=1e-4)
        assert np.all(out[:, widths[name]:] == tflite.PAD_LOGIT)
    for bad in (len(info["tasks"]), -1):
        assert np.all(np.isnan(tflite.run_micro(interpreter, info, bad, x)))
    arena = tflite.micro_arena_bytes(blob)
    assert 0 < arena < 1 << 20
    micro.Interpreter.from_bytes(blob, arena_size=arena)     # the measured arena works
    with pytest.raises(RuntimeError):
        micro.Interpreter.from_bytes(blob, arena_size=arena - 1024)


def test_micro_dense_blocks_lower_the_arena(pool, tmp_path):
    pytest.importorskip("tflite_micro")
    _, runtime, _ = pool      # digits: a 676 x 10 kernel (27 kB), above 16 kB
    arenas = {}
    for tile in (0, None):
        path = tmp_path / f"digits{tile}.tflite"
        nwv.export_tflite(runtime, str(path), target="micro", names=["digits"],
                          dense_tile_bytes=tile)
        arenas[tile] = tflite.micro_arena_bytes(path.read_bytes())
    assert arenas[None] < arenas[0] - 10_000


def test_micro_zipped_dense_blocks_read_in_tiles_give_the_same_logits(pool, tmp_path):
    micro = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    _, runtime, inputs = pool   # fc1 of the zipped pair: shared and own blocks, 72 rows
    names = ["left", combined.GROUP]
    counts = {}
    for tile in (0, 256):       # 256 bytes: several tiles of rows per block
        path = tmp_path / f"zipped{tile}.tflite"
        info = nwv.export_tflite(runtime, str(path), target="micro", names=names,
                                 dense_tile_bytes=tile)
        blob = path.read_bytes()
        model = _model(blob)
        counts[tile] = sum(tflite_ops(model, sub).count("FULLY_CONNECTED")
                           for sub in model.subgraphs)
        interpreter = micro.Interpreter.from_bytes(blob, arena_size=1 << 20)
        for task, name in enumerate(info["tasks"]):
            x = inputs[name][:1]
            width = sum(info["networks"][name]["classes"])
            expected = np.concatenate(list(_expected(runtime, name, x).values()), axis=-1)
            np.testing.assert_allclose(tflite.run_micro(interpreter, info, task, x)[:, :width],
                                       expected, atol=1e-4)
    assert counts[256] > counts[0] + 4         # the blocks were multiplied tile by tile


def test_micro_zipped_group_reads_its_shared_weights_again_for_each_task(tmp_path,
                                                                        monkeypatch):
    """The shared dense blocks of a zipped pair (55 kB kernels, read in 16 kB tiles)
    are read again from the pool for task 1 instead of staying in RAM from task 0's
    layer to task 1's: a smaller arena and the same logits."""
    micro = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    a, b = (small_mlp(seed, units=(96, 48), inputs=(12, 12, 1)) for seed in (0, 1))
    x = inputs_for(a, n=6)
    zipped = mtz.zip_models([a, b], [x, x], share="0.75", names=["left", "right"])
    combined.save_zipped(str(tmp_path), zipped, page_size=16,
                         fisher_inputs={"left": x, "right": x}, fisher_samples=8)
    runtime = VirtualizedNetworks.load(str(tmp_path))
    arenas, gathers = {}, {}
    for remat in (True, False):
        if not remat:
            monkeypatch.setattr(tflite, "REMAT_MIN_BYTES", 1 << 40)   # never pays
        path = tmp_path / f"group{remat}.tflite"
        info = nwv.export_tflite(runtime, str(path), target="micro", names=[combined.GROUP])
        blob = path.read_bytes()
        model = _model(blob)
        gathers[remat] = sum(tflite_ops(model, sub).count("GATHER") for sub in model.subgraphs)
        arenas[remat] = tflite.micro_arena_bytes(blob)
        interpreter = micro.Interpreter.from_bytes(blob, arena_size=1 << 20)
        expected = np.concatenate(list(_expected(runtime, combined.GROUP, x[:1]).values()),
                                  axis=-1)
        np.testing.assert_allclose(tflite.run_micro(interpreter, info, 0, x[:1])[:, :10],
                                   expected, atol=1e-4)
    assert gathers[True] > gathers[False]
    assert arenas[True] <= arenas[False] - 4096


def test_micro_networks_of_one_architecture_share_a_branch(tmp_path):
    micro = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    nets = {"a": _digits(3), "b": _digits(4), "c": small_cnn(0), "d": _digits(5, classes=2)}
    runtime = nwv.virtualize(nets, fisher={n: [np.ones(v.shape, np.float32)
                                               for v in m.trainable_variables]
                                           for n, m in nets.items()}, page_size=16)
    path = tmp_path / "micro.tflite"
    info = nwv.export_tflite(runtime, str(path), target="micro")
    # d differs from a and b in its classifier only (2 classes): it shares their body
    assert sorted(map(sorted, info["branches"])) == [["a", "b", "d"], ["c"]]
    assert sorted(map(sorted, info["classifiers"])) == [["a", "b"], ["c"], ["d"]]
    blob = path.read_bytes()   # one IF per body and per classifier
    assert tflite_ops(_model(blob), _model(blob).subgraphs[0]).count("IF") == 5
    interpreter = micro.Interpreter.from_bytes(blob, arena_size=1 << 20)
    rng = np.random.default_rng(0)
    for task, name in enumerate(info["tasks"]):  # a and b differ: each reads its own table
        x = rng.random((1, *runtime.spec(name).model.input_shape[1:]), np.float32)
        width = sum(info["networks"][name]["classes"])
        np.testing.assert_allclose(tflite.run_micro(interpreter, info, task, x)[:, :width],
                                   runtime.run(name, x).numpy(), atol=1e-4)
    arenas = {}
    for names in (["a", "c"], ["a", "b", "c"], ["a", "b", "c", "d"]):
        path = tmp_path / f"{''.join(names)}.tflite"
        nwv.export_tflite(runtime, str(path), target="micro", names=names)
        arenas["".join(names)] = tflite.micro_arena_bytes(path.read_bytes())
    # a second network of a's architecture adds its table row, not a branch's records
    # (c's own branch costs about 8 kB of op and tensor records here); d only the
    # records of its classifier branch
    assert arenas["abc"] - arenas["ac"] <= 1024
    assert arenas["abcd"] - arenas["abc"] <= 3072


def _script(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "export_tflite.py"),
                           *args], capture_output=True, text=True, env=env, timeout=600)


def test_script_end_to_end(pool, tmp_path):
    pool_dir, runtime, inputs = pool
    out = tmp_path / "pool.tflite"
    proc = _script(f"--weights={pool_dir}", f"--out={out}", "--quantize=int8",
                   "--networks=left,digits", "--seed=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["signatures"] == ["digits", "left", "set_pages", "set_pool"]
    assert info["file_bytes"] == out.stat().st_size and info["storage"] == "int8"
    int8 = VirtualizedNetworks.load(pool_dir, storage="int8")
    logits = tf.lite.Interpreter(model_path=str(out)).get_signature_runner("digits")(
        x=inputs["digits"])["logits"]
    np.testing.assert_allclose(logits, int8.run("digits", inputs["digits"]), atol=1e-4)
    proc = _script(f"--weights={pool_dir}", f"--out={out}", "--networks=nope")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: no network 'nope'")
    proc = _script(f"--weights={pool_dir}", f"--out={out}", "--float_pages=1")
    assert proc.returncode != 0 and "--float_pages needs --quantize=int8" in proc.stderr
    proc = _script(f"--weights={pool_dir}", f"--out={out}", "--quantize=int8",
                   "--float_pages=1", "--networks=digits")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["float_pages"] == 1
    mixed = VirtualizedNetworks.load(pool_dir, storage="int8", float_pages=1)
    logits = tf.lite.Interpreter(model_path=str(out)).get_signature_runner("digits")(
        x=inputs["digits"])["logits"]
    np.testing.assert_allclose(logits, mixed.run("digits", inputs["digits"]), atol=1e-4)


def test_script_micro_reports_arena_bytes(pool, tmp_path):
    pytest.importorskip("tflite_micro")
    pool_dir, _, _ = pool
    out = tmp_path / "micro.tflite"
    proc = _script(f"--weights={pool_dir}", f"--out={out}", "--target=micro",
                   "--networks=digits", "--quantize=int8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["tasks"] == ["digits"] and info["file_bytes"] == out.stat().st_size
    arenas = info["arena_bytes"]
    assert set(arenas) == {"all", "digits"} and 0 < arenas["digits"] <= arenas["all"]
    assert "TFLM arena:" in proc.stdout
