"""MTZ vs NWV vs both on two ResNet-28 (the analogue of the MTZ paper's Table 2.4).

    /work/venv/bin/python scripts/bench_zip_vs_nwv.py --seed=0 \
        --data_dir=../shared/datasets --work_dir=runs/bench_zip_vs_nwv \
        --out=results/bench_zip_vs_nwv.json

Two post-activation Wide-ResNet-28-1 with batch norm (`models.resnet28`, k=1, base 4:
channels 4/8/16, 24,450 parameters with BN, 23,442 after folding) are trained on two
tasks of one input domain, `cifar10` (10 classes) and `cifar10_animals` (6 classes),
from the shared CIFAR-10 tarball (`--epochs` epochs each, Adam with cosine decay, the
epoch with the best validation accuracy kept; cached in `--work_dir` by
`_bench.trained`). Then the same
two networks are made to live together three ways, every way with the SAME joint
training budget (`--budget` iterations; one iteration = one Adam step on the summed
loss of one batch of each task; same learning rate, batch size and augmentation):

  (a) NWV alone: batch norms folded exactly into their convolutions
      (`mtz.fold_batch_norms`: a plain Conv2D/Dense model, outputs equal to the BN
      network's), diagonal Fisher of each (`nwv.network_fisher`, expected,
      `--fisher_samples` train examples), Fisher page matching (`nwv.virtualize`,
      optimal) into one pool the size of the larger network (every page of the
      smaller one shared), joint optimisation (`nwv.optimize_runtime`, mode joint,
      `--rounds` rounds of budget/rounds steps; the pool with the best mean
      VALIDATION accuracy over rounds 0..R kept).
  (b) MTZ alone: `mtz.zip_models` with share "1.0" (every neuron shared except the
      classifiers), light joint retraining after each zipped layer
      (`mtz.Retrainer`, budget/15 steps per layer for the 15 layers that are paired;
      residual-tied layers follow their representative). No selection stage (the
      MTZ schedule is fixed), so nothing is chosen on validation or test.
  (c) Both, two variants with the same total budget:
      (c1) the same MTZ zip (share "1.0") WITHOUT per-layer retraining;
      (c2) the same MTZ zip with per-layer retraining using half the budget;
      each stored in a page pool with `nwv.zipped_pool_state` (page-aligned blocks,
      one table per task and one for the whole multi-task group; each member's
      diagonal Fisher computed on its task's train split, `--fisher_samples`
      examples); then NWV page matching of the remaining task-specific pages (the
      blocks `ZippedModel.block_owners` gives one owner) onto each other: the pages
      of the cifar10_animals classifier blocks are matched (Fisher cost, optimal
      assignment, `nwv.matching.match_network`) onto the pages of the cifar10
      classifier blocks and merged Fisher-weighted, the freed pages are removed from
      the pool and every table is remapped (`nwv.compaction.merge_pages`); the pool
      directory is saved and reloaded (`nwv.state`, all checks) and optimised jointly
      as in (a) with the rest of the budget. The variant with the better mean
      VALIDATION accuracy is the one held against the targets (both are reported).
      `nwv.add_network` is not used: the page matching here is between the
      task-specific pages of one zipped pool, not a new network against the pool.

Reported per method: test-carve accuracy per task (selection on validation only),
stored weights and bytes (float32 weights incl. page padding + int32 page tables;
the MTZ model has no tables), the wall time of the whole method (Fisher, matching,
zipping, retraining/optimisation; evaluation excluded) and the joint iterations.
Targets (Table 2.4's question): (c) at least as accurate as the better of (a) and (b)
(mean test accuracy; per task also reported) at less memory (bytes) than either.
Test carves: 5,000 (cifar10) and 3,000 (cifar10_animals) examples: the standard error
of one accuracy is about 0.7 / 0.9 points (reported), so differences below about 2
points between methods are not significant. No evaluation limit is used: every
validation (selection, after each NWV round) and test evaluation reads the whole split.
Depth 28 is kept (3 groups of 4 blocks); the width is cut (k=1, base 4) for the CPU.

Run time on the 2 shared CPU cores (load average 2-7 from other jobs): 10-14 minutes
with the two networks cached in --work_dir (measured 627 s and 829 s); a first run
trains them before (about 6 minutes for cifar10, 2-3 for cifar10_animals), so 19-23
minutes in all. Results are deterministic (op determinism); wall times are not.
Nearly half of MTZ's time is re-tracing the retraining step after every zipped layer.
Writes --out and a PNG beside it (accuracy vs stored bytes); the pools go to --work_dir.
"""
import json
import os
import shutil
import time

import _cli
import numpy as np
from absl import flags

import _bench as bench
import data
import mtz
import nwv
from models import artifacts, training
from mtz.graph import parse_chain
from nwv import combined, compaction, matching, state

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Folder of the task tarballs.")
flags.DEFINE_string("work_dir", "runs/bench_zip_vs_nwv", "Cache of trained nets and pools.")
flags.DEFINE_string("out", "results/bench_zip_vs_nwv.json", "Result JSON (PNG beside it).")
flags.DEFINE_list("tasks", ["cifar10", "cifar10_animals"], "Two tasks of one input domain.")
flags.DEFINE_integer("depth", 28, "WRN depth (6n + 4).")
flags.DEFINE_integer("k", 1, "WRN widening factor.")
flags.DEFINE_integer("base", 4, "WRN base width (channels base*k, 2*base*k, 4*base*k).")
flags.DEFINE_integer("epochs", 5, "Training epochs per network.")
flags.DEFINE_float("train_lr", 2e-3, "Training learning rate (Adam, cosine decay).")
flags.DEFINE_integer("budget", 600, "Joint training iterations of every method.")
flags.DEFINE_integer("rounds", 4, "NWV optimisation rounds (validation after each).")
flags.DEFINE_float("learning_rate", 5e-4, "Adam step size of all joint training.")
flags.DEFINE_integer("batch_size", 64, "Examples per task and iteration.")
flags.DEFINE_bool("augment", True, "Train-time augmentation in all joint training.")
flags.DEFINE_integer("page_size", 100, "NWV page size P (weights per page).")
flags.DEFINE_integer("fisher_samples", 256, "Train examples per diagonal Fisher.")
flags.DEFINE_integer("hessian_samples", 300, "Train examples per MTZ layer Hessian.")
flags.DEFINE_string("share", "1.0", "MTZ share schedule of (b) and (c).")
flags.DEFINE_integer("seed", 0, "Random seed (training, data order, Fisher samples).")

TRAIN_BATCH = 128


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def trained_network(task):
    """(BN network, its training metrics), trained once and cached in --work_dir."""
    folder = bench.trained(
        task, "resnet28", data_dir=FLAGS.data_dir, cache_dir=FLAGS.work_dir,
        epochs=FLAGS.epochs, seed=FLAGS.seed, learning_rate=FLAGS.train_lr,
        batch_size=TRAIN_BATCH, tag=f"wrn{FLAGS.depth}-{FLAGS.k}-b{FLAGS.base}", log=log,
        overrides=dict(k=FLAGS.k, base=FLAGS.base, depth=FLAGS.depth,
                       num_classes=data.get(task).num_classes))
    with open(os.path.join(folder, "metrics.json")) as handle:
        metrics = json.load(handle)
    return artifacts.load_model(folder), metrics


def accuracy(model, task, split):
    """`models.training.evaluate` accuracy on the whole split (no limit)."""
    return bench.accuracy(model, task, split, FLAGS.data_dir)


def on_runtime(rt, name):
    return lambda x: rt.run(name, x)


def joint_config(iterations):
    """Joint NWV optimisation of `iterations` steps in rounds of budget/--rounds steps."""
    rounds = max(1, round(iterations / (FLAGS.budget / FLAGS.rounds)))
    return nwv.OptimizeConfig(mode="joint", rounds=rounds, steps=max(1, iterations // rounds),
                              learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size,
                              seed=FLAGS.seed, augment=FLAGS.augment)


def zip_config():
    return mtz.ZipConfig(share=FLAGS.share, hessian_samples=FLAGS.hessian_samples,
                         seed=FLAGS.seed)


def runtime_memory(rt, names):
    """Stored weights (pool incl. padding), the pool positions some network reads
    (payload, without padding) and page-table entries of a runtime."""
    weights = int(np.prod(rt.page_pool.shape))
    tables = int(sum(rt.page_table(n).size for n in names))
    used = np.zeros(rt.page_pool.shape, bool)
    for n in names:
        layout, table = rt.layout(n), rt.page_table(n)
        for o, s in zip(layout.offsets, layout.sizes):
            flat = np.arange(o, o + s)
            used[table[flat // rt.page_size], flat % rt.page_size] = True
    return {"stored_weights": weights, "payload_weights": int(used.sum()),
            "page_table_entries": tables, "bytes": 4 * weights + 4 * tables}


def optimisation_summary(result):
    history = result["history"]
    return {"best_round": result["best_round"],
            "best_mean_val_accuracy": result["best_val_accuracy"],
            "val_accuracy_round0": history[0]["val_accuracy"],
            "val_accuracy_per_round": [h["val_accuracy"] for h in history],
            "train_loss_per_round": [h["train_loss"] for h in history[1:]]}


def method_a(plain, tasks):
    """NWV alone: Fisher, page matching into one pool, joint optimisation."""
    start = time.time()
    fishers = {t: nwv.network_fisher(plain[t], t, data_dir=FLAGS.data_dir, source="computed",
                                     num_samples=FLAGS.fisher_samples, definition="expected",
                                     seed=FLAGS.seed)[0] for t in tasks}
    fisher_s = time.time() - start
    rt = nwv.virtualize({t: plain[t] for t in tasks}, tasks={t: t for t in tasks},
                        fisher=fishers, page_size=FLAGS.page_size, matching="optimal")
    match_s = time.time() - start - fisher_s
    pool_pages = rt.page_pool.shape[0]
    pages_per_net = {t: int(rt.page_table(t).size) for t in tasks}
    shared = {t: int(np.sum(np.bincount(np.concatenate([rt.page_table(n) for n in tasks]),
                                        minlength=pool_pages)[rt.page_table(t)] > 1))
              for t in tasks}
    log(f"(a) NWV: pool {pool_pages} pages of {FLAGS.page_size}; pages {pages_per_net}, "
        f"shared {shared}; optimising")
    opt_start = time.time()
    result = nwv.optimize_runtime(rt, joint_config(FLAGS.budget), data_dir=FLAGS.data_dir,
                                  log=lambda line: log("  " + line))
    opt_s = time.time() - opt_start
    seconds = time.time() - start
    test = {t: accuracy(on_runtime(rt, t), t, "test") for t in tasks}
    return {"method": "NWV alone", "test_accuracy": test,
            "memory": runtime_memory(rt, tasks),
            "pool_pages": int(pool_pages), "pages_per_network": pages_per_net,
            "shared_pages_per_network": shared,
            "joint_iterations": FLAGS.budget, "optimisation": optimisation_summary(result),
            "seconds": {"fisher": round(fisher_s, 1), "matching": round(match_s, 1),
                        "joint_optimisation": round(opt_s, 1),
                        "total": round(seconds, 1)},
            "load_average_after": os.getloadavg()}


def zip_inputs(tasks):
    return [mtz.hessian_inputs(t, FLAGS.data_dir, samples=FLAGS.hessian_samples,
                               seed=FLAGS.seed) for t in tasks]


def paired_layers(net):
    """Layers MTZ pairs (representatives of tied spaces, classifier excluded): one
    retraining stage each, so the iteration budget is split over them."""
    chain = parse_chain(net)
    return sum(1 for l in range(len(chain.weights))
               if chain.ties[l] == l and l != chain.output_layer)


def retrainer_for(tasks, per_layer):
    """`mtz.Retrainer` of `per_layer` joint steps per zipped layer (None for 0)."""
    if per_layer <= 0:
        return None
    datasets = [data.load(t, "train", FLAGS.data_dir, FLAGS.batch_size, seed=FLAGS.seed + i,
                          augment=FLAGS.augment) for i, t in enumerate(tasks)]
    return mtz.Retrainer(datasets, steps=per_layer, learning_rate=FLAGS.learning_rate)


def method_b(nets, tasks, inputs):
    """MTZ alone: share all but the classifiers, light joint retraining per layer."""
    start = time.time()
    paired = paired_layers(nets[0])
    per_layer = max(1, FLAGS.budget // paired)
    retrainer = retrainer_for(tasks, per_layer)
    log(f"(b) MTZ: zipping with {per_layer} retraining steps after each of {paired} "
        f"paired layers")
    zipped = mtz.zip_models(nets, inputs, names=tasks, config=zip_config(), retrain=retrainer)
    seconds = time.time() - start
    members = {t: zipped.member(i) for i, t in enumerate(tasks)}
    counts = zipped.parameter_counts()
    records = [r for r in zipped.records if "tied_to" not in r]
    return {
        "method": "MTZ alone", "share": FLAGS.share,
        "test_accuracy": {t: accuracy(members[t], t, "test") for t in tasks},
        "val_accuracy": {t: accuracy(members[t], t, "validation") for t in tasks},
        "memory": {"stored_weights": counts["zipped"], "payload_weights": counts["zipped"],
                   "page_table_entries": 0,
                   "bytes": 4 * counts["zipped"]},
        "parameters": counts, "paired_layers": paired,
        "retrain_steps_per_layer": per_layer, "joint_iterations": retrainer.total_steps,
        "shared_neurons": {r["layer"]: [r["shared"], r["candidates"]] for r in records},
        "seconds": {"zip_and_retrain": round(seconds, 1), "total": round(seconds, 1)},
        "load_average_after": os.getloadavg()}


def task_specific_pages(pool_state, zipped):
    """{member: pool pages of the blocks only that member uses} of a zipped pool
    (`ZippedModel.block_owners`; a member's variables are named as in its model)."""
    owners, page_size = zipped.block_owners(), pool_state.page_size
    own = {}
    for name in zipped.tasks:
        record = pool_state.networks[name]
        layout = record.layout(page_size)
        own[name] = np.concatenate([np.zeros(0, np.int64)] + [
            record.page_table[o // page_size:o // page_size + -(-s // page_size)]
            for v, o, s in zip(record.variable_names, layout.offsets, layout.sizes)
            if owners.get(v) == (name,)]).astype(np.int64)
    return own


def match_specific_pages(pool_state, zipped):
    """Matches the pages only the second member uses onto the pages only the first
    uses (Fisher cost, optimal assignment: `nwv.matching.match_network`), merges them
    Fisher-weighted and drops the freed pages, renumbering every table
    (`nwv.compaction.merge_pages`); `pool_state` is updated in place. Returns a report."""
    first, second = zipped.tasks[:2]
    own = task_specific_pages(pool_state, zipped)
    a_pages, b_pages = own[first], own[second]
    report = {"task_specific_pages": {first: int(a_pages.size), second: int(b_pages.size)}}
    if a_pages.size == 0 or b_pages.size == 0:
        return {**report, "matched_pages": 0, "freed_pages": 0, "cost": 0.0}
    pool, fisher = pool_state.pool, pool_state.pool_state().fisher   # Σ members' Fisher
    onto_a = matching.PoolState(pool[a_pages], fisher[a_pages],
                                np.ones(a_pages.size, np.int64))
    table, _, cost = matching.match_network(onto_a, pool[b_pages], fisher[b_pages],
                                            "optimal")
    onto = table < a_pages.size                      # B pages now stored in A's pages
    pool_state.pool, _, tables, freed = compaction.merge_pages(
        pool, fisher, {n: r.page_table for n, r in pool_state.networks.items()},
        sources=b_pages[onto], targets=a_pages[table[onto]])
    for name, new_table in tables.items():
        pool_state.networks[name].page_table = new_table
    return {**report, "matched_pages": int(onto.sum()), "freed_pages": int(freed),
            "cost": float(cost)}


def matched_pool(zipped, tasks, pool_dir):
    """The zipped model in a page pool (`nwv.zipped_pool_state`, each member's Fisher on
    its task's train split), task-specific pages matched onto each other, saved afresh
    as `pool_dir`: (pool state, its size before matching, the matching report)."""
    pool_state = nwv.zipped_pool_state(
        zipped, page_size=FLAGS.page_size, tasks=tasks, data_dir=FLAGS.data_dir,
        fisher_samples=FLAGS.fisher_samples, fisher_definition="expected", seed=FLAGS.seed)
    before = {"pool_pages": int(pool_state.pool.shape[0]),
              "pool_weights": int(pool_state.pool.size)}
    matched = match_specific_pages(pool_state, zipped)
    shutil.rmtree(pool_dir, ignore_errors=True)
    state.save_state(pool_dir, pool_state)
    return pool_state, before, matched


def method_c(nets, tasks, inputs, retrain_fraction, key):
    """Both: MTZ zip (per-layer retraining with `retrain_fraction` of the budget) in a
    page pool, task-specific pages matched onto each other (NWV), joint optimisation
    of the pool (NWV) with the rest of the budget."""
    start = time.time()
    paired = paired_layers(nets[0])
    per_layer = int(FLAGS.budget * retrain_fraction) // paired
    retrainer = retrainer_for(tasks, per_layer)
    log(f"(c{key}) both: zipping (share {FLAGS.share}, {per_layer} retraining steps after "
        f"each of {paired} paired layers)")
    zipped = mtz.zip_models(nets, inputs, names=tasks, config=zip_config(), retrain=retrainer)
    zip_s = time.time() - start
    val_zipped = {t: accuracy(zipped.member(i), t, "validation") for i, t in enumerate(tasks)}
    eval_s = time.time() - start - zip_s
    pool_dir = os.path.join(bench.resolve(FLAGS.work_dir), f"pool_c{key}")
    pool_state, before, matched = matched_pool(zipped, tasks, pool_dir)
    rt = nwv.VirtualizedNetworks.load(pool_dir)
    names = list(pool_state.networks)
    mtz_steps = retrainer.total_steps if retrainer else 0
    nwv_steps = FLAGS.budget - mtz_steps
    log(f"(c{key}) pool {before['pool_pages']} -> {rt.page_pool.shape[0]} pages after "
        f"matching {matched}; optimising {nwv_steps} iterations")
    opt_start = time.time()
    result = nwv.optimize_runtime(rt, joint_config(nwv_steps), data_dir=FLAGS.data_dir,
                                  log=lambda line: log("  " + line))
    opt_s = time.time() - opt_start
    seconds = time.time() - start - eval_s
    pool_state.pool = rt.pool_array()
    state.save_state(pool_dir, pool_state)
    test = {t: accuracy(on_runtime(rt, t), t, "test") for t in tasks}
    memory = runtime_memory(rt, names)
    group_entries = int(rt.page_table(combined.GROUP).size)
    memory["bytes_without_group_table"] = memory["bytes"] - 4 * group_entries
    memory["pool_dir_bytes"] = int(sum(os.path.getsize(os.path.join(pool_dir, f))
                                       for f in os.listdir(pool_dir)
                                       if not f.startswith(".")))     # not the lock files
    return {"method": f"MTZ + NWV (c{key})", "share": FLAGS.share, "test_accuracy": test,
            "val_accuracy_after_zip": val_zipped, "memory": memory,
            "mtz_retrain_steps_per_layer": per_layer, "mtz_iterations": mtz_steps,
            "nwv_iterations": nwv_steps, "joint_iterations": mtz_steps + nwv_steps,
            "pool_before_matching": before, "page_matching": matched,
            "pool_after_matching_pages": int(rt.page_pool.shape[0]),
            "tables": {n: int(rt.page_table(n).size) for n in names},
            "pool_dir": pool_dir, "optimisation": optimisation_summary(result),
            "seconds": {"zip": round(zip_s, 1), "joint_optimisation": round(opt_s, 1),
                        "total": round(seconds, 1)},
            "load_average_after": os.getloadavg()}


def separate_networks(trained, tasks):
    """The trained BN networks ({task: (network, metrics)}) evaluated and with their
    batch norms folded (`mtz.fold_batch_norms`): ({task: BN network}, {task: folded
    plain network}, per-task figures, max |logit diff| of the folding)."""
    nets = {t: trained[t][0] for t in tasks}
    log("evaluating the separate networks")
    separate = {t: {"val": accuracy(nets[t], t, "validation"),
                    "test": accuracy(nets[t], t, "test"),
                    "epochs": trained[t][1]["epochs"],
                    "best_epoch": trained[t][1]["best_epoch"],
                    "parameters_with_bn": int(nets[t].count_params())}
                for t in tasks}
    plain = {t: mtz.fold_batch_norms(nets[t], name=f"{t}_folded") for t in tasks}
    x = mtz.hessian_inputs(tasks[0], FLAGS.data_dir, samples=64, seed=FLAGS.seed)
    fold_error = max(float(np.max(np.abs(nets[t](x, training=False).numpy()
                                         - plain[t](x).numpy()))) for t in tasks)
    for t in tasks:
        separate[t]["parameters_folded"] = int(plain[t].count_params())
    log(f"separate: {json.dumps(separate)}; BN folding max |logit diff| {fold_error:.2e}")
    return nets, plain, separate, fold_error


def run_methods(nets, plain, tasks):
    """(a), (b), (c1), (c2), each from the same seed; {key: method result}."""
    training.set_seed(FLAGS.seed)
    a = method_a(plain, tasks)
    log(f"(a) done: {a['test_accuracy']} in {a['seconds']['total']} s")
    inputs = zip_inputs(tasks)
    training.set_seed(FLAGS.seed)
    b = method_b([nets[t] for t in tasks], tasks, inputs)
    log(f"(b) done: {b['test_accuracy']} in {b['seconds']['total']} s")
    methods = {"a_nwv": a, "b_mtz": b}
    for key, fraction in (("1", 0.0), ("2", 0.5)):
        training.set_seed(FLAGS.seed)
        c = methods[f"c{key}_both"] = method_c([nets[t] for t in tasks], tasks, inputs,
                                               fraction, key)
        log(f"(c{key}) done: {c['test_accuracy']} in {c['seconds']['total']} s")
    test_n = {t: data.num_examples(t, "test", FLAGS.data_dir) for t in tasks}
    for m in methods.values():
        acc = m["test_accuracy"]
        m["mean_test_accuracy"] = float(np.mean([acc[t] for t in tasks]))
        m["test_standard_error_points"] = {
            t: round(100 * float(np.sqrt(acc[t] * (1 - acc[t]) / test_n[t])), 2) for t in tasks}
        m["test_error_percent"] = {t: round(100 * (1 - acc[t]), 2) for t in tasks}
    return methods


def targets_and_memory(methods, separate, tasks):
    """(chosen combination key, targets, memory analysis). The combination held
    against the targets is the variant of the best mean VALIDATION accuracy (its
    selected pool), never chosen on test."""
    variants = {"1": methods["c1_both"], "2": methods["c2_both"]}
    chosen = max(variants, key=lambda k: variants[k]["optimisation"]["best_mean_val_accuracy"])
    a, b, c = methods["a_nwv"], methods["b_mtz"], variants[chosen]
    best_ab = max(a["mean_test_accuracy"], b["mean_test_accuracy"])
    targets = {
        "combination": f"c{chosen} (chosen on validation)",
        "accuracy_mean": {"c": c["mean_test_accuracy"], "best_of_a_b": best_ab,
                          "met": c["mean_test_accuracy"] >= best_ab},
        "accuracy_per_task": {t: {"c": c["test_accuracy"][t],
                                  "best_of_a_b": max(a["test_accuracy"][t],
                                                     b["test_accuracy"][t]),
                                  "met": c["test_accuracy"][t] >= max(
                                      a["test_accuracy"][t], b["test_accuracy"][t])}
                              for t in tasks},
        "memory_bytes": {"c": c["memory"]["bytes"], "a": a["memory"]["bytes"],
                         "b": b["memory"]["bytes"],
                         "met": c["memory"]["bytes"] < min(a["memory"]["bytes"],
                                                           b["memory"]["bytes"])},
        "memory_weights": {"c": c["memory"]["stored_weights"],
                           "a": a["memory"]["stored_weights"],
                           "b": b["memory"]["stored_weights"],
                           "met": c["memory"]["stored_weights"] < min(
                               a["memory"]["stored_weights"], b["memory"]["stored_weights"])},
    }
    largest = max(separate[t]["parameters_folded"] for t in tasks)
    floor_pages = -(-largest // FLAGS.page_size)
    memory_analysis = {
        "largest_network_weights": largest,
        "injective_table_floor": {
            "pool_pages": floor_pages, "pool_weights": floor_pages * FLAGS.page_size,
            "note": "NWV page tables are injective, so a pool holding a network has at "
                    "least that network's pages; NWV alone (a) already sits at this floor, "
                    "so a combination can at best tie (a) in stored weights"},
        "c_padding_weights": c["memory"]["stored_weights"] - c["memory"]["payload_weights"],
        "c_payload_weights": c["memory"]["payload_weights"],
        "b_extra_over_largest": b["memory"]["stored_weights"] - largest,
        "a_table_bytes": 4 * a["memory"]["page_table_entries"],
        "note": "(c) is stored with nwv.combined's page-aligned layout: every block "
                "variable (here 58, many of 4-16 weights) starts on a page, hence the "
                "padding; MTZ alone needs no page tables, and its only extra weights over "
                "one network are the second classifier",
    }
    return chosen, targets, memory_analysis


def make_report(tasks, separate, fold_error, methods, chosen, targets, memory_analysis,
                seconds):
    folded_weights = sum(separate[t]["parameters_folded"] for t in tasks)
    return {
        "tasks": tasks, "seed": FLAGS.seed,
        "combination_variants": {
            "c1": "MTZ zip share 1.0 without per-layer retraining -> nwv.combined pool -> "
                  "classifier pages of task 2 matched onto task 1's -> NWV joint "
                  "optimisation with the whole budget",
            "c2": "MTZ zip share 1.0 with per-layer retraining using half the budget -> "
                  "nwv.combined pool -> classifier pages matched -> NWV joint "
                  "optimisation with the other half",
            "chosen_for_targets": f"c{chosen}",
            "chosen_by": "best mean validation accuracy of the selected pool"},
        "network": {"model": "resnet28", "depth": FLAGS.depth, "k": FLAGS.k,
                    "base": FLAGS.base, "post_activation_bn": True,
                    "depth_note": "full depth 28 (3 groups of 4 blocks), narrow: base 4, "
                                  "k=1 (channels 4/8/16) to fit the CPU budget"},
        "training": {"epochs": FLAGS.epochs, "learning_rate": FLAGS.train_lr,
                     "batch_size": TRAIN_BATCH, "selection": "best validation epoch"},
        "joint_training": {"iterations_per_method": FLAGS.budget,
                           "learning_rate": FLAGS.learning_rate,
                           "batch_size_per_task": FLAGS.batch_size,
                           "augment": FLAGS.augment, "optimizer": "Adam",
                           "nwv_rounds": FLAGS.rounds,
                           "nwv_steps_per_round": FLAGS.budget // FLAGS.rounds},
        "page_size": FLAGS.page_size, "fisher_samples": FLAGS.fisher_samples,
        "hessian_samples": FLAGS.hessian_samples,
        "evaluation": {"limit": None, "selection_split": "validation",
                       "report_split": "test",
                       "examples": {t: {s: data.num_examples(t, s, FLAGS.data_dir)
                                        for s in ("validation", "test")} for t in tasks}},
        "bn_fold_max_abs_logit_diff": fold_error,
        "separate": {**separate,
                     "mean_test_accuracy": float(np.mean([separate[t]["test"]
                                                          for t in tasks])),
                     "weights_folded": folded_weights, "bytes_folded": 4 * folded_weights},
        "methods": methods, "targets": targets, "memory_analysis": memory_analysis,
        "paper_table_2_4_error_percent": {"NWV": {"GTSRB": 7.04, "SVHN": 7.65},
                                          "MTZ": {"GTSRB": 1.05, "SVHN": 6.86}},
        "seconds": seconds,
        "load_average": os.getloadavg(),
    }


def figure(result, path):
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, colour in (("a_nwv", "#37c"), ("b_mtz", "#c44"), ("c1_both", "#3a7"),
                        ("c2_both", "#8c4")):
        m = result["methods"][key]
        ax.scatter(m["memory"]["bytes"] / 1024, 100 * m["mean_test_accuracy"], s=60,
                   color=colour, label=m["method"])
    sep = result["separate"]
    ax.scatter(sep["bytes_folded"] / 1024, 100 * sep["mean_test_accuracy"], s=60,
               color="#888", marker="s", label="separate (BN folded)")
    ax.set_xlabel("stored bytes (KiB; weights + page tables)")
    ax.set_ylabel("mean test accuracy (%)")
    ax.set_title(" + ".join(result["tasks"]) + f", WRN-{FLAGS.depth}-{FLAGS.k}")
    ax.legend(fontsize=8)
    bench.save_figure(fig, path)
    plt.close(fig)


def print_table(result):
    tasks, separate, targets = result["tasks"], result["separate"], result["targets"]
    folded_weights = separate["weights_folded"]
    print()
    head = " | ".join(f"{t} test" for t in tasks)
    print(f"| method | {head} | mean | stored weights | bytes | joint iterations | wall s |")
    print("|---|" + "---|" * (len(tasks) + 5))
    print(f"| separate (2 nets, BN folded) | "
          + " | ".join(f"{100 * separate[t]['test']:.2f}" for t in tasks)
          + f" | {100 * separate['mean_test_accuracy']:.2f} | {folded_weights} | "
            f"{4 * folded_weights} | - | - |")
    for m in result["methods"].values():
        print(f"| {m['method']} | " + " | ".join(f"{100 * m['test_accuracy'][t]:.2f}"
                                                 for t in tasks)
              + f" | {100 * m['mean_test_accuracy']:.2f} | {m['memory']['stored_weights']} | "
                f"{m['memory']['bytes']} | {m['joint_iterations']} | "
                f"{m['seconds']['total']} |")
    word = {True: "met", False: "missed"}
    print(f"targets for {targets['combination']}: accuracy (mean) "
          f"{word[targets['accuracy_mean']['met']]}, memory (bytes) "
          f"{word[targets['memory_bytes']['met']]}, memory (weights) "
          f"{word[targets['memory_weights']['met']]}; total "
          f"{result['seconds']['total_run']:.0f} s")


def main(argv):
    del argv
    run_start = time.time()
    tasks = list(FLAGS.tasks)
    if len(tasks) != 2:
        raise ValueError(f"expected two tasks, received {tasks}")
    shapes = {data.get(t).input_shape for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"expected tasks of one input domain, received shapes {shapes}")
    training.set_seed(FLAGS.seed)
    trained = {t: trained_network(t) for t in tasks}
    train_s = time.time() - run_start
    nets, plain, separate, fold_error = separate_networks(trained, tasks)
    methods = run_methods(nets, plain, tasks)
    chosen, targets, memory_analysis = targets_and_memory(methods, separate, tasks)
    result = make_report(tasks, separate, fold_error, methods, chosen, targets,
                         memory_analysis, {"training_this_run": round(train_s, 1),
                                           "total_run": round(time.time() - run_start, 1)})
    out = bench.write_result(FLAGS.out, result)
    figure(result, os.path.splitext(out)[0] + ".png")
    print_table(result)


if __name__ == "__main__":
    _cli.run(main)
