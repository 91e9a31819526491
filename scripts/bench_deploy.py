r"""Deployment: what the files that run on the device hold, against one file per network.

    python scripts/bench_deploy.py --data_dir=../shared/datasets \
        --pools=demo=runs/demo_out/pool,ten_nwv=runs/ten_networks/pools/nwv,ten_mtz_nwv=runs/ten_networks/pools/mtz_nwv

For every pool directory (name=path; missing ones are skipped with a message):

  * phone / Linux board (`nwv.export_tflite`, target "tflite"), float32 and int8
    pages: file bytes = pool + page tables + the rest (graphs, signatures; the
    issue bounds it at 64 kB), against the sum of one stock TFLite file per
    network (each network's Keras model converted alone, weights as constants;
    also with TFLite's dynamic-range int8 weights). Test-carve accuracy of every
    network through the stock interpreter (`tf.lite.Interpreter`, one signature
    per network) against the pool runtime (float32 and int8 pages), and the
    largest logit difference on the first batch; a zipped group's signature
    is checked against its members'.
  * microcontroller (target "micro", TensorFlow Lite Micro's host interpreter
    from `tflite-micro`), float32 and int8 pages: flash bytes (the file), the
    weight bytes it stores (pool with its scales, and the page tables as stored:
    an int8 plane and 2-bit high digits, `nwv.tflite`) and their compression
    against the networks' float32 weights
    stored separately, the
    smallest arena for the file and for each network alone, whether they fit a
    typical 256 kB SRAM / 1 MB flash board, and for --micro_examples test
    examples per network the largest logit difference and the argmax agreement
    with the pool runtime (batch 1: the entry point `run(task, x)`).

Both targets also get a third file where --float_pages_from (bench_int8's result)
chose a float-page budget K > 0 for the pool on validation: int8 pages with the K
pages whose rounding costs most (Fisher-weighted) kept float32, against the int8
runtime with the same float pages.

Results: results/bench_deploy.json (RESULTS.md via scripts/make_results.py).
Takes a few minutes per pool on 2 CPU cores (one conversion per file and per
network for the arenas).
"""
import contextlib
import io
import os
import time

import _bench as bench
import _cli
import numpy as np
from absl import flags

import data
import nwv
from models import training
from nwv import state, tflite

FLAGS = flags.FLAGS
flags.DEFINE_list("pools", ["demo=runs/demo_out/pool", "ten_nwv=runs/ten_networks/pools/nwv",
                            "ten_mtz_nwv=runs/ten_networks/pools/mtz_nwv"],
                  "name=pool directory pairs (relative: repo root).")
flags.DEFINE_string("data_dir", "../shared/datasets", "Data folder (relative: repo root).")
flags.DEFINE_string("work_dir", "runs/deploy", "Exported files (relative: repo root).")
flags.DEFINE_integer("limit", None, "At most this many test examples per network "
                     "(default: the whole test carve).")
flags.DEFINE_integer("micro_examples", 100, "Test examples per network run through TFLM.")
flags.DEFINE_string("float_pages_from", "results/bench_int8.json", "bench_int8.py's result: "
                    "a pool of the same name and directory there with a float-page budget "
                    "K > 0 (chosen on validation) is also exported as int8 + K float pages "
                    "(empty: skip).")
flags.DEFINE_integer("seed", 0, "Random seed (unused: export and evaluation are deterministic).")
flags.DEFINE_string("out", "results/bench_deploy.json", "Result JSON.")

SLACK = 64 * 1024                       # the bound on a file's overhead


def pools() -> dict:
    out = {}
    for item in FLAGS.pools:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--pools: expected name=path, received {item!r}")
        path = bench.resolve(path)
        if state.exists(path):
            out[name] = path
        else:
            print(f"skipping {name}: no pool at {path}")
    if not out:
        raise ValueError(f"none of --pools={FLAGS.pools} exists; run scripts/demo.py or "
                         f"scripts/bench_ten_networks.py first")
    return out


def float_page_budget(name, pool_dir) -> int:
    """The float-page budget bench_int8 chose for this pool (0: none or not found)."""
    import json
    if not FLAGS.float_pages_from:
        return 0
    path = bench.resolve(FLAGS.float_pages_from)
    if not os.path.exists(path):
        print(f"{name}: no {path}, so no float-page file")
        return 0
    with open(path) as handle:
        chosen, why = bench.float_page_choice(json.load(handle), name, pool_dir)
    if why:
        print(f"{name}: {path}: {why}; no float-page file")
    return chosen


LABELS = ("float32", "int8", "int8_float_pages")


def stock_tflite(model, dynamic_int8: bool) -> bytes:
    """One network alone as stock TFLite converts it (weights as constants)."""
    import tensorflow as tf

    def convert(converter) -> bytes:
        if dynamic_int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        with contextlib.redirect_stdout(io.StringIO()):     # Keras's "Saved artifact" lines
            return converter.convert()

    try:
        return convert(tf.lite.TFLiteConverter.from_keras_model(model))
    except TypeError:
        # zipped members (block-structured layers) fail the Keras path: trace the call
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec((1, *model.input_shape[1:]), tf.float32))
        return convert(tf.lite.TFLiteConverter.from_concrete_functions([fn], model))


def run_stock(blob, x) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def separate_files(rt, folder) -> dict:
    """Bytes of one stock TFLite file per network (float32, and dynamic-range int8);
    each float32 file is checked to compute its network (to 1e-4)."""
    sizes = {"float32": 0, "dynamic_int8": 0}
    for name in rt.task_names:          # a zipped group's members are its files
        model = rt.to_keras(name)
        x = np.random.default_rng(0).random((1, *model.input_shape[1:]), np.float32)
        for kind in sizes:
            blob = stock_tflite(model, kind == "dynamic_int8")
            if kind == "float32":
                np.testing.assert_allclose(run_stock(blob, x), model(x).numpy(), rtol=1e-4,
                                           atol=1e-4)
            sizes[kind] += len(blob)
            with open(os.path.join(folder, f"separate_{name}_{kind}.tflite"), "wb") as handle:
                handle.write(blob)
    return sizes


def tflite_report(rt, reference, path, quantize) -> dict:
    """One tflite file: bytes, and every network's accuracy through the interpreter."""
    import tensorflow as tf

    info = nwv.export_tflite(rt, path, quantize=quantize)
    interpreter = tf.lite.Interpreter(model_path=path)
    networks = {}
    for name in reference.task_names:
        runner = interpreter.get_signature_runner(name)
        call = lambda x, r=runner: r(x=np.asarray(x, np.float32))["logits"]  # noqa: E731
        x, _ = next(iter(data.load(reference.task(name), "test", bench.resolve(FLAGS.data_dir),
                                   64, shuffle=False)))
        diff = float(np.max(np.abs(call(x) - reference.run(name, x).numpy())))
        networks[name] = {
            "accuracy": training.evaluate(call, reference.task(name), "test",
                                          data_dir=bench.resolve(FLAGS.data_dir),
                                          limit=FLAGS.limit)["accuracy"],
            "max_abs_logit_diff_first_batch": diff}
    groups = {}
    for group, members in reference.groups().items():
        x, _ = next(iter(data.load(reference.task(members[0]), "test",
                                   bench.resolve(FLAGS.data_dir), 16, shuffle=False)))
        out = interpreter.get_signature_runner(group)(x=np.asarray(x, np.float32))
        groups[group] = float(max(np.max(np.abs(out[m] - reference.run(m, x).numpy()))
                                  for m in members))
    overhead = info["file_bytes"] - info["pool_bytes"] - info["table_bytes"]
    return {"file_bytes": info["file_bytes"], "pool_bytes": info["pool_bytes"],
            "table_bytes": info["table_bytes"], "other_bytes": overhead,
            "within_pool_tables_plus_64kB": overhead <= SLACK,
            "signatures": info["signatures"], "networks": networks,
            "group_max_abs_logit_diff": groups}


def micro_report(rt, reference, path, quantize) -> dict:
    """One micro file: flash, arenas, and TFLM logits against the pool runtime."""
    from tflite_micro.python.tflite_micro import runtime as micro

    info = nwv.export_tflite(rt, path, quantize=quantize, target="micro")
    arenas = tflite.micro_arenas(rt, info, quantize=quantize)
    with open(path, "rb") as handle:
        interpreter = micro.Interpreter.from_bytes(handle.read(), arena_size=arenas["all"])
    groups = reference.groups()
    agreement = {}
    for task, name in enumerate(info["tasks"]):
        members = groups.get(name, [name])
        width = sum(info["networks"][name]["classes"])
        diffs, same = [], 0
        for x, _ in data.load(reference.task(members[0]), "test", bench.resolve(FLAGS.data_dir),
                              1, shuffle=False, limit=FLAGS.micro_examples):
            got = tflite.run_micro(interpreter, info, task, x)[:, :width]
            want = np.concatenate([reference.run(m, x).numpy() for m in members], axis=-1)
            diffs.append(float(np.max(np.abs(got - want))))
            same += int(np.argmax(got) == np.argmax(want))
        agreement[name] = {"examples": len(diffs), "max_abs_logit_diff": max(diffs),
                           "argmax_agreement": same / len(diffs)}
    return {"flash_bytes": info["file_bytes"], "pool_bytes": info["pool_bytes"],
            "table_bytes": info["table_bytes"],
            "weight_bytes": info["pool_bytes"] + info["table_bytes"],
            "arena_bytes": arenas, "tasks": info["tasks"],
            "fits_256kB_sram": arenas["all"] <= tflite.BOARD_SRAM_BYTES, "fits_1MB_flash":
                info["file_bytes"] <= tflite.BOARD_FLASH_BYTES, "against_pool_runtime": agreement}


def pool_report(name, pool_dir) -> dict:
    folder = os.path.join(bench.resolve(FLAGS.work_dir), name)
    os.makedirs(folder, exist_ok=True)
    rt = nwv.VirtualizedNetworks.load(pool_dir)
    int8 = nwv.VirtualizedNetworks.load(pool_dir, storage="int8")
    bench.log(f"{name}: {len(rt.task_names)} networks, pool {4 * rt.page_pool.shape.num_elements()} "
              f"bytes")
    # (label, runtime exported, quantize, runtime it must match)
    files = [("float32", rt, None, rt), ("int8", rt, "int8", int8)]
    budget = float_page_budget(name, pool_dir)
    if budget:
        mixed = nwv.VirtualizedNetworks.load(pool_dir, storage="int8", float_pages=budget)
        files.append(("int8_float_pages", mixed, "int8", mixed))
    runtime_accuracy = {}
    for label, _, _, runtime in files:
        runtime_accuracy[label] = {n: training.evaluate(
            lambda x, r=runtime, n=n: r.run(n, x), runtime.task(n), "test",
            data_dir=bench.resolve(FLAGS.data_dir), limit=FLAGS.limit)["accuracy"]
            for n in rt.task_names}
    report = {"pool_dir": pool_dir, "networks": rt.task_names, "groups": rt.groups(),
              "float_pages": budget, "int8_scales": int8.int8_scales,
              "separate_float32_weight_bytes": int(sum(4 * rt.layout(n).n_weights
                                                       for n in rt.task_names)),
              "runtime_accuracy": runtime_accuracy,
              "separate_tflite_bytes": separate_files(rt, folder)}
    for label, source, quantize, reference in files:
        bench.log(f"{name}: tflite {label}")
        report[f"tflite_{label}"] = tflite_report(
            source, reference, os.path.join(folder, f"pool_{label}.tflite"), quantize)
        try:
            import tflite_micro  # noqa: F401
        except ImportError:
            report[f"micro_{label}"] = None
            print("tflite-micro missing (pip install -e \".[micro]\"): micro not measured")
            continue
        bench.log(f"{name}: micro {label}")
        micro = report[f"micro_{label}"] = micro_report(
            source, reference, os.path.join(folder, f"pool_{label}_micro.tflite"), quantize)
        micro["compression"] = report["separate_float32_weight_bytes"] / micro["weight_bytes"]
    return report


def print_summary(report):
    for name, r in report["pools"].items():
        sep = r["separate_tflite_bytes"]
        print(f"\n{name}: {len(r['networks'])} networks; separate TFLite files "
              f"{sep['float32'] / 1e3:.0f} kB float32, {sep['dynamic_int8'] / 1e3:.0f} kB "
              f"dynamic-range int8")
        for label in [lb for lb in LABELS if f"tflite_{lb}" in r]:
            t = r[f"tflite_{label}"]
            print(f"  tflite {label:<7} {t['file_bytes'] / 1e3:7.0f} kB = pool "
                  f"{t['pool_bytes'] / 1e3:.0f} + tables {t['table_bytes'] / 1e3:.1f} + other "
                  f"{t['other_bytes'] / 1e3:.1f} kB (separate float32 files / this: "
                  f"{sep['float32'] / t['file_bytes']:.2f}x)")
            for n, v in t["networks"].items():
                print(f"    {n:<18} accuracy {100 * v['accuracy']:6.2f}% (pool runtime "
                      f"{100 * r['runtime_accuracy'][label][n]:6.2f}%), max |dlogit| "
                      f"{v['max_abs_logit_diff_first_batch']:.1e}")
        for label in [lb for lb in LABELS if f"micro_{lb}" in r]:
            m = r[f"micro_{label}"]
            if m:
                worst = max(a["max_abs_logit_diff"] for a in m["against_pool_runtime"].values())
                print(f"  micro  {label:<7} flash {m['flash_bytes'] / 1e3:.0f} kB (weights "
                      f"{m['weight_bytes'] / 1e3:.1f} kB: {m['compression']:.2f}x less than "
                      f"separate float32), arena "
                      f"{m['arena_bytes']['all'] / 1e3:.0f} kB (alone: "
                      + ", ".join(f"{n} {v / 1e3:.0f}" for n, v in m["arena_bytes"].items()
                                  if n != "all")
                      + f" kB); 256 kB SRAM {'fits' if m['fits_256kB_sram'] else 'NO'}, "
                      f"1 MB flash {'fits' if m['fits_1MB_flash'] else 'NO'}; max |dlogit| "
                      f"vs pool runtime {worst:.1e}")


def main(argv):
    del argv
    start = time.time()
    report = {"command": "scripts/bench_deploy.py", "flags": bench.script_flags(),
              "board": {"sram_bytes": tflite.BOARD_SRAM_BYTES,
                        "flash_bytes": tflite.BOARD_FLASH_BYTES},
              "pools": {name: pool_report(name, path) for name, path in pools().items()}}
    report["seconds"] = time.time() - start
    print_summary(report)
    print(f"-> {bench.write_result(FLAGS.out, report)}")


if __name__ == "__main__":
    _cli.run(main)
