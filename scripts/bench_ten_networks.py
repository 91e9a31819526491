"""Ten networks in three families: NWV alone against MTZ + NWV, at equal bytes and budget.

    python scripts/bench_ten_networks.py --data_dir=../shared/datasets --work_dir=runs/ten
    # the control (after the run above: it reads the saved pools)
    python scripts/bench_ten_networks.py --data_dir=../shared/datasets --work_dir=runs/ten \
        --stages=equal_budget --out=results/bench_ten_networks_equal_budget.json

The ten networks, trained separately from ../shared/datasets (batches of 32,
validation-selected epoch, cached in `<work_dir>/separate/<name>`, each a train.py
artifact whose metrics.json names its task):
  digits:   mnist, mnist_parity, mnist_lowhigh                  (nwv_mnist)
  objects:  cifar10, cifar10_vehicles, cifar10_animals, cifar10_b (nwv_cifar10;
            cifar10_b is a second cifar10 network, another seed)
  keywords: tts_commands, tts_directions, tts_control           (nwv_tts)

Two ways to make them live together, at the same stored bytes (float32 pool plus
int32 page tables of every network, groups included) and the same joint
optimisation (same rounds x steps, labels only by default (--distill: beta of
distillation from each network's separate self), losses balanced towards the
networks furthest below their separate self on validation (--balance),
checkpoint selected on the mean VALIDATION accuracy):
  (a) NWV alone: the ten networks matched into one pool (`nwv.virtualize`).
  (b) MTZ + NWV: each family of --zip_families (default: digits) zipped with
      MTZ (--share of the hidden neurons, by default all but the classifiers,
      Hessian-merged weights, --zip_retrain_steps of distilled retraining after
      each zipped layer, on top of the joint budget) into one multi-task group
      (shared input, shared layers computed once), the groups matched into one
      pool (`nwv.combined.virtualize_pools`), with the networks of the other
      families as leftovers (NWV). Zipping the objects or keywords too gave a
      lower mean VALIDATION accuracy in the ablations (results/RESULTS.md), so
      the default zips the digits only; --zip_families=digits,objects,keywords
      zips every family.
A pool larger than the byte target is shrunk by merging its cheapest page pairs
(`PoolDirState.shrink`: pages may then be read twice by one network), which is
how both go below NWV's floor, the largest network.

Reported, per task: test-carve accuracy of the separate network and of each
method at the >= 8x point (keyword tasks also on their noisy, shifted variant),
stored bytes and compression; per family the time of all members in ONE call
(`run_all`, the group's shared layers once) against one at a time; a compression
curve (c) of mean and worst accuracy drop against stored bytes for both methods;
the same pools with int8 pages (post-training, per-page scales chosen by the
Fisher; compression against ten float32 networks); labels-only against
distillation at equal budget for (b) (stage compare_distill); each network alone trained on from its separate
weights with the joint run's budget and recipe, the control for what the extra
training rather than sharing gives (stage equal_budget); wall time of every stage.
`<work_dir>/pools/nwv` and `<work_dir>/pools/mtz_nwv` keep the >= 8x pools
(networks named as in separate/), which `scripts/evaluate.py --weights=POOL
--network=NAME --task=TASK` reads (equal_budget: `<work_dir>/pools/alone/<name>`).
Results: results/bench_ten_networks.json, .png; RESULTS.md via scripts/make_results.py.
"""
import dataclasses
import json
import os
import shutil
import time

import _bench as bench
import _cli
import numpy as np
from absl import flags

import data
import mtz
import nwv
from models import artifacts, training
from nwv import combined, state

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Data folder (relative: repo root).")
flags.DEFINE_string("work_dir", "runs/ten_networks",
                    "Artifacts: separate/<name>, pools/nwv, pools/mtz_nwv (relative: repo root).")
flags.DEFINE_string("out", "results/bench_ten_networks.json", "Result JSON.")
flags.DEFINE_list("families", ["digits", "objects", "keywords"], "Families to include.")
STAGES = ("separate", "methods", "curve", "int8", "compare_distill", "equal_budget")
flags.DEFINE_list("stages", ["separate", "methods", "curve", "int8"],
                  "Stages to run (methods: the >= 8x point of (a) and (b); compare_distill: "
                  "(b) again with --compare_distill as beta, at equal budget; equal_budget: "
                  "each network alone trained on with the joint budget and recipe, and the "
                  "saved pools' drops against those).")
flags.DEFINE_float("compression", 8.0, "Compression of the main point (separate float32 "
                   "bytes / stored bytes). 8.25 makes MTZ + NWV's int8 microcontroller file "
                   ">= 30x smaller, but on one of two sets of separate networks cost a network "
                   "more than half a point (results/RESULTS.md).")
flags.DEFINE_list("curve", ["4", "16"], "Further compressions of the curve.")
flags.DEFINE_integer("page_size", 100, "Weights per page.")
flags.DEFINE_integer("rounds", 24, "Joint optimisation rounds (main point).")
flags.DEFINE_integer("steps", 400, "Joint optimisation steps per round (main point).")
flags.DEFINE_float("curve_budget", 0.25, "Share of the main point's steps each curve point "
                   "gets, as that share of its rounds (of --steps each: every round ends "
                   "in a validation pass and new data iterators, a fixed cost of about 3 s "
                   "for ten networks).")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate of the joint optimisation.")
flags.DEFINE_integer("batch_size", 32, "Examples per network and step.")
flags.DEFINE_float("distill", 0.0, "Distillation weight beta of the joint optimisation (0: "
                   "labels only; at the default budget labels only validated better than 0.7, "
                   "results/RESULTS.md).")
flags.DEFINE_float("compare_distill", 0.7, "Beta of the compare_distill stage.")
flags.DEFINE_float("zip_distill", 0.7, "(b): distillation weight beta of the MTZ retraining "
                   "after each zipped layer.")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature T.")
flags.DEFINE_float("balance", 0.5, "Joint optimisation balance eta (nwv.OptimizeConfig."
                   "balance): loss weights grow by exp(eta) per point a network's validation "
                   "accuracy is below its separate network's, capped (0: equal weights).")
flags.DEFINE_integer("fisher_samples", 256, "Train examples per network for its Fisher.")
flags.DEFINE_integer("hessian_samples", 500, "Train examples per network for MTZ Hessians.")
flags.DEFINE_integer("limit", None, "At most this many examples per split (quick runs).")
flags.DEFINE_float("epochs_scale", 1.0, "Multiplies every network's epochs (quick runs).")
flags.DEFINE_string("share", "1.0", "(b): MTZ share of every family's hidden neurons "
                    "(1.0: all but the classifiers).")
flags.DEFINE_list("zip_families", ["digits"], "(b): the families zipped with MTZ (the "
                  "default keeps those of --families); the networks of the others are paged "
                  "with the zipped groups as leftovers (NWV). Zipping objects or keywords "
                  "validated worse (results/RESULTS.md, ablations).")
flags.DEFINE_integer("zip_retrain_steps", 100, "(b): MTZ joint retraining steps after each "
                     "zipped layer (distilled with --zip_distill; 0: none). These steps come on "
                     "top of the joint optimisation budget and are reported.")
flags.DEFINE_list("methods", ["nwv", "mtz_nwv"], "Methods of the methods stage: nwv (a), "
                  "mtz_nwv (b).")
flags.DEFINE_string("pools_name", "", "Suffix of the saved pool folders (pools/<method>"
                    "<suffix>), so an ablation keeps the main run's pools.")
flags.DEFINE_bool("update", False, "Merge into the existing --out: the stages run here "
                  "replace theirs and the rest is kept (e.g. --stages=int8 after a change "
                  "to int8 storage, on the saved pools); refused unless --out's separate "
                  "networks measure the same now.")
flags.DEFINE_integer("seed", 0, "Random seed.")


@dataclasses.dataclass(frozen=True)
class Member:
    """One of the ten networks: its task, family, architecture and training settings."""
    name: str
    task: str
    family: str
    model: str
    epochs: int
    learning_rate: float = 1e-3
    seed: int = 0
    batch_size: int = 32


# Cosine decay to 0 over all epochs, batches of 32 (the joint optimisation's recipe).
# With batches of 128 (and 2e-3 for the keyword networks) the same epochs left
# every network short of convergence: trained on alone with the joint run's budget
# (stage equal_budget) cifar10 gained 1.7 points and tts_commands 3.7 on test, so
# the pooled networks' "gains" over them were the extra training, not sharing.
MEMBERS = (
    Member("mnist", "mnist", "digits", "nwv_mnist", 15),
    Member("mnist_parity", "mnist_parity", "digits", "nwv_mnist", 15),
    Member("mnist_lowhigh", "mnist_lowhigh", "digits", "nwv_mnist", 15),
    Member("cifar10", "cifar10", "objects", "nwv_cifar10", 30),
    Member("cifar10_vehicles", "cifar10_vehicles", "objects", "nwv_cifar10", 30),
    Member("cifar10_animals", "cifar10_animals", "objects", "nwv_cifar10", 30),
    Member("cifar10_b", "cifar10", "objects", "nwv_cifar10", 30, seed=1),
    Member("tts_commands", "tts_commands", "keywords", "nwv_tts", 80),
    Member("tts_directions", "tts_directions", "keywords", "nwv_tts", 80),
    Member("tts_control", "tts_control", "keywords", "nwv_tts", 80),
)
NOISY = {"tts_commands": "tts_commands_noisy", "tts_directions": "tts_directions_noisy",
         "tts_control": "tts_control_noisy"}


def members():
    unknown = sorted(set(FLAGS.families) - {m.family for m in MEMBERS})
    if unknown:
        raise ValueError(f"unknown families {unknown}; expected some of digits, objects, "
                         f"keywords")
    return [m for m in MEMBERS if m.family in FLAGS.families]


def data_dir() -> str:
    return bench.resolve(FLAGS.data_dir)


def work(*parts) -> str:
    return os.path.join(bench.resolve(FLAGS.work_dir), *parts)


# --- stage 1: the separate networks ------------------------------------------------
def train_separate() -> dict:
    """Trains (or reuses) the networks; returns {name: Keras model}."""
    nets = {}
    for member in members():
        folder = bench.trained(
            member.task, member.model, data_dir=data_dir(), cache_dir="",
            epochs=max(1, round(member.epochs * FLAGS.epochs_scale)), seed=member.seed,
            learning_rate=member.learning_rate, batch_size=member.batch_size,
            limit=FLAGS.limit,
            overrides=bench.class_overrides(member.model, member.task),
            folder=work("separate", member.name), log=bench.log)
        nets[member.name] = artifacts.load_model(folder)
    return nets


def member_accuracies(call_for, split="test") -> dict:
    """{name: accuracy} (keyword networks also "<name>_noisy") of callables x -> logits."""
    out = {}
    for member in members():
        call = call_for(member.name)
        out[member.name] = training.evaluate(call, member.task, split, data_dir=data_dir(),
                                             limit=FLAGS.limit)["accuracy"]
        if split == "test" and member.name in NOISY:
            out[f"{member.name}_noisy"] = training.evaluate(
                call, NOISY[member.name], "test", data_dir=data_dir(),
                limit=FLAGS.limit)["accuracy"]
    return out


def add_tests(report, tests) -> None:
    """Puts `member_accuracies` into report[name] as "test_accuracy" (and
    "test_noisy" for the keyword networks' noisy variants)."""
    for name, value in tests.items():
        key = name[:-len("_noisy")] if name.endswith("_noisy") else name
        report[key]["test_noisy" if name.endswith("_noisy") else "test_accuracy"] = value


def separate_report(nets) -> dict:
    report = {}
    for member in members():
        with open(work("separate", member.name, "metrics.json")) as handle:
            metrics = json.load(handle)
        report[member.name] = {
            "task": member.task, "family": member.family, "model": member.model,
            "weights": int(nets[member.name].count_params()), "epochs": metrics["epochs"],
            "best_epoch": metrics["best_epoch"], "val_accuracy": metrics["val_accuracy"],
            "train_seconds": metrics["train_seconds"],
            "val_accuracy_last_epochs": metrics["history"]["val_accuracy"][-3:]}
    add_tests(report, member_accuracies(lambda name: nets[name]))
    return report


# --- building the pools ---------------------------------------------------------------
def nwv_state(nets, fishers, *, pool_pages=None) -> state.PoolDirState:
    """(a): the networks matched into one pool."""
    rt = nwv.virtualize(nets, tasks={m.name: m.task for m in members()}, fisher=fishers,
                        page_size=FLAGS.page_size, pool_pages=pool_pages)
    return rt.to_state()


def zip_families() -> list:
    """The families (b) zips: --zip_families (its default: those of them in --families)."""
    families = list(dict.fromkeys(m.family for m in members()))
    if not FLAGS["zip_families"].present:
        return [f for f in families if f in FLAGS.zip_families]
    unknown = sorted(set(FLAGS.zip_families) - set(families))
    if unknown:
        raise ValueError(f"--zip_families: unknown families {unknown}; expected some of "
                         f"{families}")
    return [f for f in families if f in FLAGS.zip_families]


def zipped_groups(nets) -> tuple:
    """({family: ZippedModel} of every family of `zip_families()` (MTZ; retrained
    with distillation after each layer when --zip_retrain_steps > 0), {family: {"steps":
    the retraining steps run, "val_accuracy": {member: validation accuracy of the
    zipped group before it is paged}}})."""
    zipped, steps = {}, {}
    for family in zip_families():
        group = [m for m in members() if m.family == family]
        inputs = [mtz.hessian_inputs(m.task, data_dir(), samples=FLAGS.hessian_samples,
                                     seed=FLAGS.seed) for m in group]
        retrain = None
        if FLAGS.zip_retrain_steps > 0:
            retrain = mtz.task_retrainer(
                [nets[m.name] for m in group], [m.task for m in group], data_dir=data_dir(),
                steps=FLAGS.zip_retrain_steps, batch_size=FLAGS.batch_size,
                distill=FLAGS.zip_distill, temperature=FLAGS.temperature, seed=FLAGS.seed,
                limit=FLAGS.limit)
        zipped[family] = mtz.zip_models([nets[m.name] for m in group], inputs,
                                        names=[m.name for m in group], share=FLAGS.share,
                                        hessian_samples=FLAGS.hessian_samples,
                                        seed=FLAGS.seed, retrain=retrain)
        steps[family] = {
            "steps": retrain.total_steps if retrain else 0,
            "val_accuracy": {m.name: training.evaluate(
                zipped[family].member_model(m.name), m.task, "validation",
                data_dir=data_dir(), limit=FLAGS.limit)["accuracy"] for m in group}}
        bench.log(f"(zip {family}) {steps[family]}")
    return zipped, steps


def mtz_nwv_state(nets, fishers, zipped, *, pool_pages=None) -> state.PoolDirState:
    """(b): each zipped family's group in a pool, the networks of the families not
    zipped (leftovers) matched into one more pool (NWV), all matched into one pool."""
    leftovers = [m for m in members() if m.family not in zipped]
    states = []
    if leftovers:
        states.append(nwv.virtualize({m.name: nets[m.name] for m in leftovers},
                                     tasks={m.name: m.task for m in leftovers},
                                     fisher={m.name: fishers[m.name] for m in leftovers},
                                     page_size=FLAGS.page_size).to_state())
    for family, model in zipped.items():
        group = [m for m in members() if m.family == family]
        states.append(combined.zipped_pool_state(
            model, page_size=FLAGS.page_size, tasks=[m.task for m in group],
            data_dir=data_dir(), fisher_samples=FLAGS.fisher_samples, seed=FLAGS.seed,
            teachers={m.name: nets[m.name] for m in group}, group=family))
    return combined.virtualize_pools(states, pool_pages=pool_pages)


def fit_bytes(pool_state, target_bytes) -> dict:
    """Shrinks the pool until stored bytes <= target; returns what was done."""
    tables = pool_state.stored_bytes() - 4 * pool_state.pool.size
    pages = int((target_bytes - tables) // (4 * FLAGS.page_size))
    natural = int(pool_state.pool.shape[0])
    merged = pool_state.shrink(pages) if pages < natural else 0
    return {"natural_pool_pages": natural, "pool_pages": int(pool_state.pool.shape[0]),
            "merged_pages": int(merged), "table_bytes": int(tables),
            "stored_bytes": pool_state.stored_bytes()}


def pages_for(target_bytes, pool_state) -> int:
    tables = pool_state.stored_bytes() - 4 * pool_state.pool.size
    return int((target_bytes - tables) // (4 * FLAGS.page_size))


def pool_at(build, target_bytes) -> tuple:
    """(pool state, `fit_bytes` report) of `build(pool_pages=None | n)` at the byte
    target: rebuilt with more pages when the natural pool leaves room to share less,
    shrunk when it is too large."""
    pool_state = build()
    pages = pages_for(target_bytes, pool_state)
    if pages > pool_state.pool.shape[0]:                  # room to share less
        pool_state = build(pool_pages=pages)
    return pool_state, fit_bytes(pool_state, target_bytes)


def pool_builders(nets, fishers, zipped) -> dict:
    """{method: build(pool_pages=None) -> PoolDirState} of (a) and (b)."""
    return {"nwv": lambda **kw: nwv_state(nets, fishers, **kw),
            "mtz_nwv": lambda **kw: mtz_nwv_state(nets, fishers, zipped, **kw)}


# --- joint optimisation and evaluation -----------------------------------------------
def optimise(pool_state, *, budget=1.0, distill=None, log_prefix="") -> tuple:
    """(runtime with the best pool, optimisation summary) of a pool state, trained
    for `budget` x --rounds rounds of --steps steps."""
    rt = nwv.VirtualizedNetworks.from_state(pool_state)
    config = nwv.OptimizeConfig(
        mode="joint", rounds=max(1, round(FLAGS.rounds * budget)), steps=FLAGS.steps,
        learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size,
        distill=FLAGS.distill if distill is None else distill, temperature=FLAGS.temperature,
        seed=FLAGS.seed, limit=FLAGS.limit, augment=True, balance=FLAGS.balance)
    start = time.time()
    result = nwv.optimize_runtime(rt, config, data_dir=data_dir(),
                                  log=lambda line: bench.log(f"{log_prefix}{line[:160]}"))
    history = result["history"]
    return rt, {"config": config.get_config(), "best_round": result["best_round"],
                "mean_val_accuracy_per_round": [h["mean_val_accuracy"] for h in history],
                "val_accuracy": history[result["best_round"]]["val_accuracy"],
                "seconds": round(time.time() - start, 1)}


def evaluate_runtime(rt) -> dict:
    return member_accuracies(lambda name: (lambda x: rt.run(name, x)))


def drops(separate, pooled) -> dict:
    """Accuracy drops in points (separate − pooled) of the plain (not noisy) tasks."""
    values = {m.name: round(100 * (separate[m.name]["test_accuracy"] - pooled[m.name]), 2)
              for m in members()}
    return {"per_network": values, "mean": round(float(np.mean(list(values.values()))), 3),
            "worst": max(values.values())}


def family_timing(rt, repeats=30) -> dict:
    """Per family: all members in one call (the group) vs one at a time, batch 64."""
    timing = {}
    for family in rt.groups():
        names = [m.name for m in members() if m.family == family]
        task = next(m.task for m in members() if m.family == family)
        x = next(iter(data.load(task, "test", data_dir(), 64)))[0]
        together = {n: x for n in names}
        rt.run_all(together)
        for n in names:
            rt.run(n, x)
        one_call, apart = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            [v.numpy() for v in rt.run_all(together).values()]
            one_call.append(time.perf_counter() - start)
            start = time.perf_counter()
            [rt.run(n, x).numpy() for n in names]
            apart.append(time.perf_counter() - start)
        timing[family] = {"members": names, "one_call_ms": 1e3 * float(np.median(one_call)),
                          "one_at_a_time_ms": 1e3 * float(np.median(apart)),
                          "speedup": float(np.median(apart) / np.median(one_call))}
    return timing


def save_pool(rt, name) -> str:
    folder = work("pools", name)
    shutil.rmtree(folder, ignore_errors=True)
    rt.save(folder)
    return folder


# --- the stages ------------------------------------------------------------------------
def run_methods(nets, fishers, zipped, separate_bytes, separate) -> dict:
    target = separate_bytes / FLAGS.compression
    out = {}
    builders = pool_builders(nets, fishers, zipped)
    unknown = sorted(set(FLAGS.methods) - set(builders))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {list(builders)}")
    for key, build in ((k, builders[k]) for k in FLAGS.methods):
        start = time.time()
        pool_state, fitted = pool_at(build, target)
        bench.log(f"({key}) pool {fitted}; optimising")
        rt, summary = optimise(pool_state, log_prefix=f"({key}) ")
        test = evaluate_runtime(rt)
        folder = save_pool(rt, key + FLAGS.pools_name)
        out[key] = {"pool": fitted, "compression": separate_bytes / fitted["stored_bytes"],
                    "test_accuracy": test, "drops": drops(separate, test),
                    "optimisation": summary, "pool_dir": folder,
                    "seconds": round(time.time() - start, 1)}
        if rt.groups():
            out[key]["family_timing"] = family_timing(rt)
        bench.log(f"({key}) {out[key]['compression']:.2f}x, drops {out[key]['drops']}")
    return out


def run_curve(nets, fishers, zipped, separate_bytes, separate) -> list:
    points = []
    builders = pool_builders(nets, fishers, zipped)
    for factor in [float(c) for c in FLAGS.curve]:
        target = separate_bytes / factor
        for key in ("nwv", "mtz_nwv"):
            start = time.time()
            pool_state, fitted = pool_at(builders[key], target)
            rt, summary = optimise(pool_state, budget=FLAGS.curve_budget,
                                   log_prefix=f"(curve {key} {factor:g}x) ")
            test = evaluate_runtime(rt)
            points.append({"method": key, "target_compression": factor,
                           "compression": separate_bytes / fitted["stored_bytes"],
                           "pool": fitted, "test_accuracy": test,
                           "drops": drops(separate, test),
                           "optimisation_steps": summary["config"]["rounds"] *
                           summary["config"]["steps"],
                           "seconds": round(time.time() - start, 1)})
            bench.log(f"(curve {key} {factor:g}x) {points[-1]['compression']:.2f}x, "
                      f"drops {points[-1]['drops']}")
    return points


def run_int8(separate_bytes, separate) -> dict:
    out = {}
    for key in ("nwv", "mtz_nwv"):
        folder = work("pools", key + FLAGS.pools_name)
        if not state.exists(folder):
            continue
        rt = nwv.VirtualizedNetworks.load(folder, storage="int8")
        stored = rt.stored_bytes() + rt.table_bytes()
        test = member_accuracies(lambda name, rt=rt: (lambda x: rt.run(name, x)))
        out[key] = {"stored_bytes": int(stored), "compression": separate_bytes / stored,
                    "int8_scales": rt.int8_scales,
                    "test_accuracy": test, "drops": drops(separate, test)}
        bench.log(f"(int8 {key}) {out[key]['compression']:.2f}x, drops {out[key]['drops']}")
    return out


def run_compare_distill(nets, fishers, zipped, separate_bytes, separate) -> dict:
    """(b) at the main point, budget and pool again, with beta = --compare_distill."""
    pool_state, fitted = pool_at(pool_builders(nets, fishers, zipped)["mtz_nwv"],
                                 separate_bytes / FLAGS.compression)   # as run_methods
    beta = FLAGS.compare_distill
    rt, summary = optimise(pool_state, distill=beta, log_prefix=f"(beta {beta:g}) ")
    test = evaluate_runtime(rt)
    return {"method": "mtz_nwv", "distill": beta, "pool": fitted, "test_accuracy": test,
            "drops": drops(separate, test), "optimisation": summary}


def run_equal_budget(nets, fishers, separate) -> dict:
    """Each network alone, trained on from its separate weights with the joint run's
    budget and recipe (its own one-network pool, nothing shared: same rounds x steps,
    batch, schedule, augmentation and labels-only loss, its best round selected on its
    own VALIDATION accuracy): the control that tells what the pooled networks gain from
    the extra training rather than from sharing. Also the saved pools' drops against
    these equal-budget networks."""
    runtimes, networks = {}, {}
    for member in members():
        single = nwv.virtualize({member.name: nets[member.name]},
                                tasks={member.name: member.task},
                                fisher={member.name: fishers[member.name]},
                                page_size=FLAGS.page_size)
        runtimes[member.name], summary = optimise(single.to_state(),
                                                  log_prefix=f"(alone {member.name}) ")
        networks[member.name] = {
            "best_round": summary["best_round"],
            "val_accuracy": summary["val_accuracy"][member.name], "seconds": summary["seconds"]}
        save_pool(runtimes[member.name], os.path.join("alone", member.name))
    add_tests(networks, member_accuracies(lambda name: (lambda x: runtimes[name].run(name, x))))
    bench.log(f"(alone) {networks}")
    out = {"networks": networks, "pools": {},   # drops: alone - separate, as the pools'
           "separate_drops": drops(networks, {m.name: separate[m.name]["test_accuracy"]
                                              for m in members()})}
    for key in ("nwv", "mtz_nwv"):
        folder = work("pools", key + FLAGS.pools_name)
        if state.exists(folder):
            test = evaluate_runtime(nwv.VirtualizedNetworks.load(folder))
            out["pools"][key] = {"test_accuracy": test, "drops": drops(networks, test)}
            bench.log(f"({key} against alone) drops {out['pools'][key]['drops']}")
    return out


def compute() -> dict:
    start = time.time()
    zip_families()                                        # bad flags fail before training
    unknown = sorted(set(FLAGS.stages) - set(STAGES))
    if unknown:
        raise ValueError(f"--stages: unknown stages {unknown}; expected some of {STAGES}")
    nets = train_separate()
    report = {"flags": bench.script_flags(), "load_average_start": bench.load_average()}
    if FLAGS.stages == ["separate"]:
        return report
    separate = separate_report(nets)
    separate_bytes = 4 * sum(v["weights"] for v in separate.values())
    report.update(separate=separate, separate_bytes=separate_bytes)
    t = time.time()
    fishers = {m.name: nwv.network_fisher(nets[m.name], m.task, data_dir=data_dir(),
                                          source="computed", num_samples=FLAGS.fisher_samples,
                                          seed=FLAGS.seed)[0] for m in members()}
    zipped = {}
    if {"methods", "curve", "compare_distill"} & set(FLAGS.stages):
        zipped, report["zipped_groups"] = zipped_groups(nets)
    report["seconds_fisher_and_zip"] = round(time.time() - t, 1)
    if "methods" in FLAGS.stages:
        report["methods"] = run_methods(nets, fishers, zipped, separate_bytes, separate)
    if "curve" in FLAGS.stages:
        report["curve"] = run_curve(nets, fishers, zipped, separate_bytes, separate)
    if "int8" in FLAGS.stages:
        report["int8"] = run_int8(separate_bytes, separate)
    if "compare_distill" in FLAGS.stages:
        report["compare_distill"] = run_compare_distill(nets, fishers, zipped, separate_bytes,
                                                        separate)
    if "equal_budget" in FLAGS.stages:
        report["equal_budget"] = run_equal_budget(nets, fishers, separate)
    report["seconds"] = round(time.time() - start, 1)
    report["load_average_end"] = bench.load_average()
    return report


def print_report(report) -> None:
    if "methods" not in report:
        return
    methods = report["methods"]
    labels = {"nwv": "NWV", "mtz_nwv": "MTZ+NWV"}
    print(f"\n{'network':<18}{'separate':>10}" + "".join(f"{labels[k]:>9}" for k in methods))
    for name, sep in report["separate"].items():
        row = f"{name:<18}{100 * sep['test_accuracy']:>9.2f}%"
        for key in methods:
            row += f"{100 * methods[key]['test_accuracy'][name]:>8.2f}%"
        print(row)
    for key in methods:
        m = methods[key]
        print(f"{key}: {m['compression']:.2f}x ({m['pool']['stored_bytes']} bytes), mean drop "
              f"{m['drops']['mean']} pt, worst {m['drops']['worst']} pt")


def plot(report, path) -> None:
    if not report.get("curve") or not report.get("methods"):
        return
    plt = bench.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, colour, label in (("nwv", "#37c", "NWV alone"), ("mtz_nwv", "#3a7", "MTZ + NWV")):
        if key not in report["methods"]:
            continue
        pts = sorted([p for p in report["curve"] if p["method"] == key] +
                     [{**report["methods"][key], "compression": report["methods"][key][
                         "compression"]}], key=lambda p: p["compression"])
        x = [p["compression"] for p in pts]
        ax.plot(x, [p["drops"]["mean"] for p in pts], "-o", color=colour,
                label=f"{label}: mean drop")
        ax.plot(x, [p["drops"]["worst"] for p in pts], "--^", color=colour,
                label=f"{label}: worst drop")
    ax.axhline(0.5, color="#999", lw=0.8)
    ax.set_xlabel("compression (ten float32 networks / pool + page tables)")
    ax.set_ylabel("test accuracy drop (points)")
    ax.legend(fontsize=8)
    bench.save_figure(fig, path)
    plt.close(fig)


def merged(report) -> dict:
    """The report at --out with the stages of `report` in place of its own, and a
    record of the update (--update)."""
    path = bench.resolve(FLAGS.out)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--update: no report at {path} to update")
    with open(path) as f:
        old = json.load(f)
    now = {n: v["test_accuracy"] for n, v in report["separate"].items()}
    before = {n: v["test_accuracy"] for n, v in old.get("separate", {}).items()}
    if now != before:
        raise ValueError(f"--update: {path} was measured on other separate networks (test "
                         f"accuracies {before}, now {now}); rerun it whole")
    stages = [s for s in FLAGS.stages if s != "separate"]
    out = {**old, **{s: report[s] for s in stages if s in report}}
    out["updates"] = old.get("updates", []) + [{
        "stages": stages, "flags": report["flags"], "seconds": report["seconds"],
        "machine": bench.machine()}]
    return out


def main(argv):
    del argv
    report = compute()
    if FLAGS.stages == ["separate"]:
        return
    if FLAGS.update:
        report = merged(report)
    path = bench.write_result(FLAGS.out, report)
    plot(report, os.path.splitext(FLAGS.out)[0] + ".png")
    print_report(report)
    print(f"-> {path} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    _cli.run(main)
