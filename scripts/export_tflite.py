r"""Export any page pool as ONE TFLite file (phones, Linux boards) or TFLite Micro file.

    python scripts/export_tflite.py --weights=runs/pool --out=runs/pool.tflite
    python scripts/export_tflite.py --weights=runs/pool --out=runs/pool_micro.tflite \
        --target=micro --quantize=int8

`--target=tflite`: one signature per network (`runner = interpreter.get_signature_runner(
"mnist"); runner(x=x)["logits"]`), one per zipped group, `set_pool` and `set_pages`;
the pool is stored once. `--target=micro`: one entry point `run(task, x)` for TensorFlow
Lite Micro, the pool a constant in flash; the smallest arena for the whole file and for
each network alone (a file holding it only) is measured with the `tflite-micro`
interpreter when it is installed (`pip install -e ".[micro]"`). `--quantize=int8`
stores int8 pages with one scale per page; `--float_pages=K` keeps the K pages whose
rounding costs the networks most (Fisher-weighted) float32 beside them. Prints a summary, then one JSON line: the
signatures, file bytes, pool bytes (and for micro the arena bytes). Takes seconds per
network (one conversion each).
"""
import json

import _cli
from absl import flags


FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "Pool directory.", required=True)
flags.DEFINE_string("out", None, "The .tflite file to write.", required=True)
flags.DEFINE_enum("quantize", None, ["int8"], "int8: int8 pages, one float32 scale per "
                  "page (default: as the pool is stored, float32).")
flags.DEFINE_integer("float_pages", 0, "With --quantize=int8: pages kept float32, those "
                     "with the largest Fisher-weighted rounding error.", lower_bound=0)
flags.DEFINE_enum("target", "tflite", ["tflite", "micro"],
                  "tflite: signatures per network; micro: TensorFlow Lite Micro.")
flags.DEFINE_list("networks", None, "Networks (or zipped groups) to export (default: all).")
flags.DEFINE_bool("all_tasks", False, "tflite: also an all_tasks signature (every network "
                  "in one call).")
flags.DEFINE_enum("gather", None, ["auto", "layer", "variable", "network"], "Pages "
                  "gathered at once: per layer, per variable, or the whole network "
                  "(default auto for tflite: network, but layer for zipped networks in "
                  "float files; layer for micro).")
flags.DEFINE_integer("dense_tile_bytes", None, "Dense kernels above this many bytes run in "
                     "blocks of rows read just before use (default: 16 kB for micro, off "
                     "for tflite; 0: off).")
flags.DEFINE_bool("arena", True, "micro: measure the arena bytes (needs tflite-micro).")
flags.DEFINE_integer("seed", 0, "Random seed (unused: export is deterministic).")
flags.register_multi_flags_validator(
    ["float_pages", "quantize"], lambda f: not f["float_pages"] or f["quantize"] == "int8",
    "--float_pages needs --quantize=int8")



def _micro_arenas(runtime, info):
    """{"all": bytes, name: bytes of a file holding that network alone}, or None
    without tflite-micro."""
    from nwv import tflite
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return None
    return tflite.micro_arenas(runtime, info, quantize=FLAGS.quantize, gather=FLAGS.gather,
                               dense_tile_bytes=FLAGS.dense_tile_bytes)


def main(argv):
    # The library (and TensorFlow) is imported here, not at the top: --help is instant.
    from nwv import tflite
    from nwv.runtime import VirtualizedNetworks
    del argv
    if FLAGS.quantize == "int8":   # scales and float pages chosen on load, with the Fisher
        runtime = VirtualizedNetworks.load(FLAGS.weights, None, storage="int8",
                                           float_pages=FLAGS.float_pages or 0)
    else:
        runtime = VirtualizedNetworks.load(FLAGS.weights, None)
    info = tflite.export_tflite(runtime, FLAGS.out, quantize=FLAGS.quantize,
                                target=FLAGS.target, names=FLAGS.networks,
                                all_tasks=FLAGS.all_tasks, gather=FLAGS.gather,
                                dense_tile_bytes=FLAGS.dense_tile_bytes)
    overhead = info["file_bytes"] - info["pool_bytes"]
    print(f"{FLAGS.target} file {FLAGS.out}: {info['file_bytes']} bytes = pool "
          f"{info['pool_bytes']} ({info['storage']}) + {overhead} (tables "
          f"{info['table_bytes']}, graphs); signatures {info['signatures']}")
    if FLAGS.target == "micro":
        print(f"entry point {tflite.MICRO_ENTRY}({', '.join(info['inputs'])}): task index "
              f"in {info['tasks']}, x float32 [1, {info['input_size']}], logits "
              f"[1, {info['output_size']}]")
        arenas = _micro_arenas(runtime, info) if FLAGS.arena else None
        sram, flash = tflite.BOARD_SRAM_BYTES, tflite.BOARD_FLASH_BYTES
        info["arena_bytes"] = arenas
        if arenas is None:
            print("arena not measured (pip install tflite-micro)")
        else:
            print(f"TFLM arena: {arenas['all']} bytes for the file; alone: "
                  + ", ".join(f"{n} {arenas[n]}" for n in info["tasks"])
                  + f"; a {sram // 1024} kB SRAM / {flash // 1024} kB flash board: arena "
                  f"{'fits' if arenas['all'] <= sram else 'does not fit'}, flash "
                  f"{'fits' if info['file_bytes'] <= flash else 'does not fit'}")
    print(json.dumps(info))


if __name__ == "__main__":
    _cli.run(main)
