r"""int8 pages: post-training quantisation against quantisation-aware joint optimisation.

    python scripts/bench_int8.py --data_dir=../shared/datasets \
        --pools=runs/demo_out/pool,runs/ten_networks/pools/nwv,\
runs/ten_networks/pools/mtz_nwv --labels=demo,ten_nwv,ten_mtz_nwv --seed=0

For every pool directory of --pools (named by --labels) and every network in it,
test-carve accuracy (keyword tasks also on their noisy, shifted variant) of:

  * the float32 pool as it is;
  * its int8 pages after post-training quantisation with max |w| / 127 scales
    (`VirtualizedNetworks.load(pool, storage="int8", int8_scales="max")`, the
    library's rule before the Fisher-chosen scales), for comparison;
  * its int8 pages after post-training quantisation (symmetric, one scale per
    page, the grid point of least Fisher-weighted rounding error:
    `VirtualizedNetworks.load(pool, storage="int8")`);
  * its int8 pages with float pages beside them (`VirtualizedNetworks.load(pool,
    storage="int8", float_pages=K)`: the K pages whose rounding costs the networks
    most, Fisher-weighted, stay float32), K the smallest of --float_pages whose
    every network is within the tolerance of the float pool on the validation
    split, each network's joined with its carves of --fresh_data_dir when given
    (else the one with the smallest worst drop there);
  * its int8 pages after --qat_rounds x --qat_steps steps of quantisation-aware
    joint optimisation of a copy of the pool in --work_dir
    (`OptimizeConfig(quantize="int8")`: every step and every validation reads the
    pages through int8 rounding, straight-through gradient; distilled from each
    network's stored teacher; the best round, the post-training pool included,
    selected on the validation split under int8).

For each int8 variant also the test predictions that differ from the float pool's
(`changed_predictions`): a finer measure of what rounding does than the accuracy
difference, in which changes in both directions cancel.

A test carve of 300 keyword clips moves 0.33 points a clip, coarser than the
0.3-point tolerance. --fresh_data_dir adds held-out data that the pool never saw:
every carve of a folder made after the networks were trained, e.g. 3,000 new
clips (about a minute with espeak-ng installed):

    python ../shared/tools/make_tts_commands.py runs/fresh/tts_commands_train.tar.gz \
        300 train 33 clean
    python scripts/bench_int8.py ... --fresh_data_dir=runs/fresh

Every variant is measured on it too (report["fresh"]: accuracies, points lost,
changed predictions), and the float pages are chosen on each network's validation
carve joined with its fresh carves: that choice then uses the fresh data, and the
test carves stay the held-out measure of the chosen pool.

Stored bytes of the int8 pool: codes + per-page scales + int32 page tables (with
float pages: + a slot byte a page + the float rows);
compression against the pool's networks stored separately in float32 (their
teachers' weights). Target (issue 11): every network's int8 accuracy within
0.3 points of the float pool on its test carve (`within_tolerance_task_carves`;
`within_tolerance` also counts the keyword networks' noisy variants). Results:
results/bench_int8.json; RESULTS.md via scripts/make_results.py. Run time on 2 CPU cores: about a minute per ten-network
pool with the defaults (2.5 minutes for the three pools above).
"""
import functools
import os
import shutil
import time

import _bench as bench
import _cli
import numpy as np
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list("pools", ["runs/ten_networks/pools/nwv", "runs/ten_networks/pools/mtz_nwv"],
                  "Pool directories (relative: repo root).")
flags.DEFINE_list("labels", None, "A name per pool (default: the folder names).")
flags.DEFINE_string("data_dir", "../shared/datasets", "Data folder (relative: repo root).")
flags.DEFINE_string("work_dir", "runs/int8", "Where the quantisation-aware copies go: "
                    "<work_dir>/<label> (relative: repo root).")
flags.DEFINE_list("float_pages", ["0", "1", "2", "4", "8"], "Float-page budgets K tried "
                  "beside the int8 pages, smallest first; the first within the tolerance on "
                  "validation is reported, else the one with the smallest worst drop there "
                  "(empty: skip).")
flags.DEFINE_integer("qat_rounds", 2, "Quantisation-aware rounds (0: post-training only).")
flags.DEFINE_integer("qat_steps", 100, "Joint steps per quantisation-aware round.")
flags.DEFINE_float("learning_rate", 2e-4, "Peak learning rate of the quantisation-aware "
                   "optimisation (warm-up, cosine decay).")
flags.DEFINE_integer("batch_size", 32, "Examples per network and step.")
flags.DEFINE_float("distill", 0.7, "Distillation weight beta (0: labels only).")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature T.")
flags.DEFINE_string("fresh_data_dir", None, "A data folder with fresh examples of some of "
                    "the pools' tasks, made after every network was trained (keyword clips: "
                    "python ../shared/tools/make_tts_commands.py "
                    "runs/fresh/tts_commands_train.tar.gz 300 train SEED clean): every carve "
                    "of it (train, validation, test) is held-out data, measured beside the "
                    "test carves and used with validation to choose the float pages "
                    "(relative: repo root; empty: none).")
flags.DEFINE_integer("limit", None, "At most this many examples per split (quick runs).")
flags.DEFINE_integer("seed", 0, "Random seed (data order).")
flags.DEFINE_string("out", "results/bench_int8.json", "Result JSON.")

TOLERANCE = 0.3      # points: int8 against the float pool (issue 11)


def variants(task: str) -> dict:
    """{key suffix: task}: the task, and its noisy, shifted variant when one is registered."""
    import data
    out = {"": task}
    if f"{task}_noisy" in data.available():
        out["_noisy"] = f"{task}_noisy"
    return out


SPLITS = ("train", "validation", "test")


@functools.lru_cache(maxsize=None)
def _batches(task: str, split: str, data_dir: str):
    """A split's (x, y) batches, preprocessed once for every runtime measured."""
    from models import training
    return training.evaluation_batches(task, split, data_dir=data_dir, limit=FLAGS.limit)


def _carves(rt, noisy: bool):
    """(key, network, task): every task network, with its noisy, shifted variant."""
    import data
    for name in rt.task_names:
        tasks = variants(rt.task(name)) if noisy else {"": rt.task(name)}
        for suffix, task in tasks.items():
            if data.get(task).multilabel:
                raise ValueError(f"{task}: bench_int8 compares single-label predictions")
            yield name + suffix, name, task


def _predict(rt, name: str, batches) -> tuple:
    predicted, labels = [], []
    for x, y in batches:
        predicted.append(np.argmax(rt.run(name, x), axis=-1))
        labels.append(np.asarray(y).reshape(-1))
    return np.concatenate(predicted), np.concatenate(labels)


def carve_predictions(rt, split: str = "test", noisy: bool = True) -> dict:
    """{network (or network_noisy): (predicted classes [n], labels [n])} on `split` of
    every task network of a runtime (noisy: also the keyword tasks' noisy, shifted
    variants); single-label tasks."""
    data_dir = bench.resolve(FLAGS.data_dir)
    return {key: _predict(rt, name, _batches(task, split, data_dir))
            for key, name, task in _carves(rt, noisy)}


def fresh_predictions(rt, noisy: bool = True) -> dict:
    """`carve_predictions` on every split of --fresh_data_dir, concatenated, for the
    networks whose task it holds ({} without --fresh_data_dir, or if it holds none)."""
    if not FLAGS.fresh_data_dir:
        return {}
    data_dir = bench.resolve(FLAGS.fresh_data_dir)
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"--fresh_data_dir {data_dir!r} does not exist")
    out = {}
    for key, name, task in _carves(rt, noisy):
        try:
            parts = [_predict(rt, name, _batches(task, split, data_dir)) for split in SPLITS]
        except FileNotFoundError:        # a task that folder does not hold
            continue
        out[key] = tuple(np.concatenate(p) for p in zip(*parts))
    return out


def accuracies_of(predictions: dict) -> dict:
    """{key: accuracy} of `carve_predictions`."""
    return {k: float(np.mean(p == y)) for k, (p, y) in predictions.items()}


def changed(reference: dict, other: dict) -> dict:
    """Predictions that differ between two `carve_predictions` of the same carves: per
    carve (of how many examples) and in all."""
    per = {k: int(np.sum(reference[k][0] != other[k][0])) for k in reference}
    return {"per_network": per, "examples": {k: int(reference[k][1].size) for k in reference},
            "total": int(sum(per.values()))}


def carve_accuracies(rt, split: str = "test", noisy: bool = True) -> dict:
    """{network (or network_noisy): accuracy on `split`} (see `carve_predictions`)."""
    return accuracies_of(carve_predictions(rt, split, noisy))


def differences(reference: dict, other: dict) -> dict:
    """Points lost against the float pool, per network and variant, with the worst (of
    all carves, and of the networks' own task carves, the noisy variants left out)."""
    lost = {k: round(100 * (reference[k] - other[k]), 2) for k in reference}
    own = [v for k, v in lost.items() if not k.endswith("_noisy")]
    return {"per_network": lost, "worst": max(lost.values()),
            "mean": round(float(np.mean(list(lost.values()))), 3),
            "within_tolerance": all(v <= TOLERANCE for v in lost.values()),
            "worst_task_carves": max(own),
            "within_tolerance_task_carves": all(v <= TOLERANCE for v in own)}


def selection_predictions(rt) -> tuple:
    """(validation, fresh, joined) predictions without noisy variants
    (`carve_predictions`, `fresh_predictions`): joined is each network's validation
    carve with its --fresh_data_dir carves appended (a finer resolution than one
    keyword carve's 0.33 points a clip); without fresh data fresh is {} and joined
    is validation."""
    validation = carve_predictions(rt, "validation", noisy=False)
    fresh = fresh_predictions(rt, noisy=False)
    joined = {k: tuple(np.concatenate(pair) for pair in zip(v, fresh[k])) if k in fresh
              else v for k, v in validation.items()}
    return validation, fresh, joined


def float_page_budget(pool_dir: str, label: str, as_float, separate_bytes) -> tuple:
    """(summary, runtime) of the int8 pool with the smallest float-page budget of
    --float_pages that keeps every network within the tolerance of the float pool on
    validation (each network's validation carve joined with its --fresh_data_dir
    carves, when given); its bytes and pages."""
    import nwv
    references = [accuracies_of(p) for p in selection_predictions(as_float)]
    tried, runtimes, chosen = {}, {}, None
    for k in sorted({int(k) for k in FLAGS.float_pages}):
        rt = runtimes[k] = nwv.VirtualizedNetworks.load(pool_dir, storage="int8",
                                                        float_pages=k)
        validation, fresh, joined = (differences(r, accuracies_of(p)) if r else None
                                     for r, p in zip(references, selection_predictions(rt)))
        tried[k] = {"validation_lost": validation, "pages": rt.float_pages.tolist(),
                    "stored_bytes": rt.stored_bytes() + rt.table_bytes()}
        if fresh:
            tried[k].update(fresh_lost=fresh, selection_lost=joined)
        bench.log(f"({label}) {k} float pages: validation worst {validation['worst']} pt"
                  + (f", fresh worst {fresh['worst']} pt, joined worst {joined['worst']} pt"
                     if fresh else ""))
        if joined["within_tolerance"]:
            chosen = k
            break
    if chosen is None:     # none within: the smallest worst drop, then the fewest pages
        chosen = min(tried, key=lambda k: (tried[k].get("selection_lost",
                                                        tried[k]["validation_lost"])["worst"], k))
    stored = tried[chosen]["stored_bytes"]
    summary = {"tried": {str(k): v for k, v in tried.items()}, "chosen": chosen,
               "selected_on": "validation" + (" joined with the fresh data"
                                              if references[1] else ""),
               "pages": tried[chosen]["pages"], "stored_bytes": stored,
               "compression": separate_bytes / stored if separate_bytes else None}
    return summary, runtimes[chosen]


def quantization_aware(pool_dir: str, label: str) -> tuple:
    """(int8 runtime after quantisation-aware optimisation, summary) of a copy of the pool."""
    import nwv
    copy = os.path.join(bench.resolve(FLAGS.work_dir), label)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(pool_dir, copy, ignore=shutil.ignore_patterns(
        "optimize_checkpoint.npz", "history.json", "*.lock"))
    config = nwv.OptimizeConfig(
        mode="joint", rounds=FLAGS.qat_rounds, steps=FLAGS.qat_steps,
        learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size,
        distill=FLAGS.distill, temperature=FLAGS.temperature, seed=FLAGS.seed,
        limit=FLAGS.limit, augment=True, quantize="int8")
    start = time.time()
    result = nwv.optimize_pool(copy, config, data_dir=bench.resolve(FLAGS.data_dir),
                               log=lambda line: bench.log(f"({label} qat) {line[:150]}"))
    summary = {"pool": copy, "config": config.get_config(), "best_round": result["best_round"],
               "mean_val_accuracy_per_round": [h["mean_val_accuracy"]
                                               for h in result["history"]],
               "seconds": round(time.time() - start, 1)}
    return (nwv.VirtualizedNetworks.load(copy, storage="int8"),
            nwv.VirtualizedNetworks.load(copy), summary)


def pool_report(pool_dir: str, label: str) -> dict:
    import nwv
    from nwv import state
    loaded = state.load_state(pool_dir, with_fisher=False, with_teachers=True)
    teachers = [r.teacher for r in loaded.networks.values() if not r.outputs]
    separate_bytes = (4 * sum(int(t.size) for t in teachers)
                      if teachers and all(t is not None for t in teachers) else None)
    as_float = nwv.VirtualizedNetworks.load(pool_dir)
    int8 = nwv.VirtualizedNetworks.load(pool_dir, storage="int8")
    stored = int8.stored_bytes() + int8.table_bytes()
    report = {"pool": pool_dir, "pool_fingerprint": bench.pool_fingerprint(pool_dir),
              "networks": as_float.task_names,
              "float_stored_bytes": as_float.stored_bytes() + as_float.table_bytes(),
              "int8_stored_bytes": stored, "separate_bytes": separate_bytes,
              "int8_compression": separate_bytes / stored if separate_bytes else None}
    report["changed_predictions"] = {}

    def measure(key, rt, lost_key) -> dict:
        """Test accuracies of an int8 variant; report[lost_key] gets its points lost
        against the float pool, changed_predictions[key] its predictions that differ
        (and report["fresh"] the same on --fresh_data_dir)."""
        got = carve_predictions(rt)
        accuracy = accuracies_of(got)
        report[lost_key] = differences(report["float"], accuracy)
        report["changed_predictions"][key] = changed(reference, got)
        line = (f"({label}) {key}: worst {report[lost_key]['worst']} pt, "
                f"{report['changed_predictions'][key]['total']} predictions changed")
        if fresh_reference:
            fresh = fresh_predictions(rt)
            report["fresh"][key] = accuracies_of(fresh)
            report["fresh"][lost_key] = differences(report["fresh"]["float"],
                                                    report["fresh"][key])
            report["fresh"]["changed_predictions"][key] = changed(fresh_reference, fresh)
            line += (f"; fresh data: worst {report['fresh'][lost_key]['worst']} pt, "
                     f"{report['fresh']['changed_predictions'][key]['total']} changed")
        bench.log(line)
        return accuracy

    bench.log(f"({label}) float pool")
    reference = carve_predictions(as_float)
    report["float"] = accuracies_of(reference)
    fresh_reference = fresh_predictions(as_float)
    if fresh_reference:       # every carve of the fresh folder, for every variant
        report["fresh"] = {"data_dir": FLAGS.fresh_data_dir, "splits": list(SPLITS),
                           "examples": {k: int(y.size) for k, (_, y) in
                                        fresh_reference.items()},
                           "float": accuracies_of(fresh_reference), "changed_predictions": {}}
    # the max |w| scales (the library's rule before the Fisher-chosen ones), for comparison
    report["int8_max_scales"] = measure(
        "int8_max_scales", nwv.VirtualizedNetworks.load(pool_dir, storage="int8",
                                                        int8_scales="max"), "max_scales_lost")
    report["int8_post_training"] = measure("int8_post_training", int8, "post_training_lost")
    if FLAGS.float_pages:
        report["float_pages"], chosen = float_page_budget(pool_dir, label, as_float,
                                                          separate_bytes)
        report["float_pages"]["test"] = measure("int8_float_pages", chosen,
                                                "float_pages_lost")
    if FLAGS.qat_rounds:
        qat_int8, qat_float, report["qat"] = quantization_aware(pool_dir, label)
        report["int8_qat"] = measure("int8_qat", qat_int8, "qat_lost")
        report["qat_float_pool"] = carve_accuracies(qat_float)
    return report


def main(argv):
    del argv
    start = time.time()
    pools = [bench.resolve(p) for p in FLAGS.pools]
    labels = FLAGS.labels or [os.path.basename(os.path.normpath(p)) for p in pools]
    if len(labels) != len(pools) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels: expected one distinct name per pool ({len(pools)}), "
                         f"received {labels}")
    report = {"command": "scripts/bench_int8.py", "flags": bench.script_flags(),
              "tolerance_points": TOLERANCE, "pools": {}}
    for pool_dir, label in zip(pools, labels):
        report["pools"][label] = pool_report(pool_dir, label)
    report["seconds"] = round(time.time() - start, 1)
    path = bench.write_result(FLAGS.out, report)
    for label, entry in report["pools"].items():
        lines = [f"{label}: int8 {entry['int8_stored_bytes']} bytes"
                 + (f" ({entry['int8_compression']:.2f}x)" if entry["int8_compression"] else "")]
        if "float_pages" in entry:
            lines.append(f"  float pages: {entry['float_pages']['chosen']} "
                         f"({entry['float_pages']['stored_bytes']} bytes)")
        names = {"max_scales_lost": "int8_max_scales", "post_training_lost":
                 "int8_post_training", "float_pages_lost": "int8_float_pages",
                 "qat_lost": "int8_qat"}
        for key, variant in names.items():
            if key in entry:
                lines.append(f"  {key}: worst {entry[key]['worst']} pt (task carves "
                             f"{entry[key]['worst_task_carves']}), mean {entry[key]['mean']} "
                             f"pt, within {TOLERANCE}: {entry[key]['within_tolerance']} "
                             f"(task carves {entry[key]['within_tolerance_task_carves']}); "
                             f"{entry['changed_predictions'][variant]['total']} test "
                             f"predictions changed")
        fresh = entry.get("fresh")
        for key, variant in names.items() if fresh else ():
            if key in fresh:
                lines.append(f"  fresh data, {key}: worst {fresh[key]['worst']} pt, within "
                             f"{TOLERANCE}: {fresh[key]['within_tolerance']}; "
                             f"{fresh['changed_predictions'][variant]['total']} of "
                             f"{sum(fresh['examples'].values())} predictions changed")
        print("\n".join(lines))
    print(f"-> {path} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    _cli.run(main)
