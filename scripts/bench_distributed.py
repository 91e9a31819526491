r"""Joint optimisation of the ten-network set under tf.distribute: steps/s and time per round.

    python scripts/bench_distributed.py --data_dir=../shared/datasets \
        --work_dir=runs/ten_networks --seed=0

The networks are the ones bench_ten_networks.py trained separately
(`<work_dir>/separate/<name>`, read only; `MEMBERS` of that script, selected by
--families or --networks). Networks not trained yet (no metrics.json) are left out
and named in the result; nothing is trained here.

Each configuration runs in a fresh process, since the CPU must be split into
logical devices before TensorFlow starts:
  * `cpu:mirrored:N` for N in --cpu_replicas: MirroredStrategy over N logical CPU
    devices of this machine's CPU (GPUs hidden);
  * `cpu:default:1` with --default_strategy: no tf.distribute at all;
  * `gpu:mirrored:N` for N in --gpu_replicas: MirroredStrategy over the first N
    GPUs, when TensorFlow sees that many (`tf.config.list_physical_devices("GPU")`
    in that process; otherwise reported as skipped).
In each process the networks are loaded, their Fisher is computed on the CPU
(--fisher_samples train examples, --seed) and `nwv.virtualize` packs them into one
pool in memory (the same pool in every configuration: its SHA-1 is recorded);
`nwv.optimize_runtime` then runs 1 + --rounds joint rounds of --steps steps
(--batch_size examples per network and step over all replicas, distillation
--distill, augmentation, --sync_every steps per compiled call). Round 1 is the
warm-up (tracing, first reads) and is excluded; the next --rounds rounds are timed
by the optimiser itself: a round's time is its training (making its input
pipelines included), not the validation that follows it.

Reported per configuration: replicas and their devices, seconds per round (median
and each), steps/s and examples/s over the timed rounds, speed-up against the
first one-replica CPU configuration, the load average before and after, peak RSS;
and where it ran: CPU model (/proc/cpuinfo), usable cores, GPU names, TensorFlow
version. Logical CPU devices share the same cores: on a machine of 2 cores (shared
with other jobs here) two replicas add an all-reduce and more scheduling but no
compute, so expect little or no gain; --cpu_replicas exists to test the
distributed path. JSON: results/bench_distributed.json (--out).

Quick check (three digit networks, a few steps, about 2 minutes on 2 cores):
    python scripts/bench_distributed.py --families=digits --steps=4 --rounds=1 \
        --limit=256 --out=/tmp/bench_distributed.json
"""
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import _cli
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets", "Data folder (relative: repo root).")
flags.DEFINE_string("work_dir", "runs/ten_networks", "bench_ten_networks.py's folder: the "
                    "networks are read from <work_dir>/separate/<name> (relative: repo root).")
flags.DEFINE_string("out", "results/bench_distributed.json", "Result JSON.")
flags.DEFINE_list("families", ["digits", "objects", "keywords"], "Families of the ten "
                  "networks to use.")
flags.DEFINE_list("networks", [], "Networks to use (names of bench_ten_networks.MEMBERS); "
                  "overrides --families.")
flags.DEFINE_list("cpu_replicas", ["1", "2"], "Mirrored over this many logical CPU devices, "
                  "one configuration each.")
flags.DEFINE_list("gpu_replicas", ["1"], "Mirrored over the first N GPUs, one configuration "
                  "each, when TensorFlow sees N GPUs (empty: no GPU configuration).")
flags.DEFINE_bool("default_strategy", False, "Also time the default strategy (no "
                  "tf.distribute) on the CPU.")
flags.DEFINE_integer("rounds", 2, "Timed rounds, after one warm-up round.")
flags.DEFINE_integer("steps", 100, "Joint steps per round (one batch of every network each).")
flags.DEFINE_integer("batch_size", 32, "Examples per network and step, over all replicas.")
flags.DEFINE_integer("sync_every", 25, "Steps per compiled call.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak Adam learning rate.")
flags.DEFINE_float("distill", 0.7, "Distillation weight beta (bench_ten_networks' setting).")
flags.DEFINE_bool("augment", True, "Train-time augmentation (bench_ten_networks' setting).")
flags.DEFINE_integer("fisher_samples", 64, "Train examples per network for its Fisher "
                     "(page matching only: it does not change the timing).")
flags.DEFINE_integer("page_size", 100, "Weights per page.")
flags.DEFINE_integer("limit", None, "At most this many examples per split (quick runs; "
                     "then examples are decoded while training instead of once).")
flags.DEFINE_integer("seed", 0, "Random seed (Fisher samples, data order).")
flags.DEFINE_string("only", None, "Internal: measure this one configuration "
                    "(device:strategy:replicas) in this process.")
flags.DEFINE_string("part_out", None, "Internal: where --only writes its JSON.")

FORWARDED = ("data_dir", "work_dir", "rounds", "steps", "batch_size", "sync_every",
             "learning_rate", "distill", "augment", "fisher_samples", "page_size", "limit",
             "seed")
TEN_NETWORKS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "bench_ten_networks.py")


# --- the networks ------------------------------------------------------------------
def ten_members() -> list:
    """[(name, family)] of `bench_ten_networks.MEMBERS`, read from that script's source:
    importing it would define its flags (the same names as these) a second time."""
    with open(TEN_NETWORKS) as handle:
        tree = ast.parse(handle.read(), TEN_NETWORKS)
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None)
                                             for t in node.targets] == ["MEMBERS"]:
            return [(ast.literal_eval(call.args[0]), ast.literal_eval(call.args[2]))
                    for call in node.value.elts]
    raise RuntimeError(f"{TEN_NETWORKS}: no MEMBERS table found")


def selected() -> list:
    """Names of the networks --networks (else --families) selects, in MEMBERS order."""
    members = ten_members()
    names = [name for name, _ in members]
    if FLAGS.networks:
        unknown = sorted(set(FLAGS.networks) - set(names))
        if unknown:
            raise ValueError(f"unknown networks {unknown}; expected some of {names}")
        return [n for n in names if n in FLAGS.networks]
    families = {family for _, family in members}
    unknown = sorted(set(FLAGS.families) - families)
    if unknown:
        raise ValueError(f"unknown families {unknown}; expected some of {sorted(families)}")
    return [name for name, family in members if family in FLAGS.families]


def separate(name: str, *parts) -> str:
    """A path in the network's folder `<work_dir>/separate/<name>`."""
    import _bench as bench
    return os.path.join(bench.resolve(FLAGS.work_dir), "separate", name, *parts)


def found() -> tuple:
    """(present, missing): selected networks with and without a finished training run."""
    names = selected()
    present = [n for n in names if os.path.exists(separate(n, "metrics.json"))]
    return present, [n for n in names if n not in present]


def configurations() -> list:
    """The configurations to time, as "device:strategy:replicas"."""
    counts = {}
    for key in ("cpu_replicas", "gpu_replicas"):
        try:
            counts[key] = [int(n) for n in FLAGS[key].value]
        except ValueError:
            raise ValueError(f"expected integers in --{key}, received "
                             f"{FLAGS[key].value}") from None
        bad = [n for n in counts[key] if n < 1 or FLAGS.batch_size % n]
        if bad:
            raise ValueError(f"--{key}: {bad} must be >= 1 and divide --batch_size="
                             f"{FLAGS.batch_size}")
    return ((["cpu:default:1"] if FLAGS.default_strategy else [])
            + [f"cpu:mirrored:{n}" for n in counts["cpu_replicas"]]
            + [f"gpu:mirrored:{n}" for n in counts["gpu_replicas"]])


# --- one configuration, in its own process -------------------------------------------
def start_devices(device: str, strategy_name: str, replicas: int):
    """Selects the devices and makes the strategy before TensorFlow starts.
    Returns (strategy, GPU names) or (None, why the configuration is skipped)."""
    import tensorflow as tf
    from models import distribute
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
        return distribute.make_strategy(
            strategy_name, cpu_replicas=replicas if strategy_name == "mirrored" else None), []
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < replicas:
        return None, f"TensorFlow sees {len(gpus)} GPU(s); this configuration needs {replicas}"
    gpus = gpus[:replicas]
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
             for g in gpus]
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.set_visible_devices(gpus, "GPU")
    return distribute.make_strategy(strategy_name), names


def virtualized(strategy) -> tuple:
    """(runtime under `strategy`, pool summary) of the --networks."""
    import hashlib

    import _bench as bench
    import tensorflow as tf

    import nwv
    from models import artifacts
    start = time.perf_counter()
    nets, tasks = {}, {}
    for name in FLAGS.networks:
        with open(separate(name, "metrics.json")) as handle:
            tasks[name] = json.load(handle)["task"]
        nets[name] = artifacts.load_model(separate(name))
    with tf.device("/CPU:0"):           # the same Fisher, so the same pool, everywhere
        fisher = {n: nwv.network_fisher(nets[n], tasks[n], data_dir=bench.resolve(
            FLAGS.data_dir), source="computed", num_samples=FLAGS.fisher_samples,
            seed=FLAGS.seed)[0] for n in nets}
    with strategy.scope():
        rt = nwv.virtualize(nets, tasks=tasks, fisher=fisher, page_size=FLAGS.page_size)
    weights = sum(int(net.count_params()) for net in nets.values())
    pool = rt.pool_array()
    return rt, {"networks": tasks, "weights": weights, "pool_pages": int(pool.shape[0]),
                "compression": weights / pool.size,
                "sha1": hashlib.sha1(pool.tobytes()).hexdigest()[:16],
                "seconds": round(time.perf_counter() - start, 1)}


def optimise(rt, strategy, config_name: str) -> list:
    """The optimiser's per-round history: round 0 (validation of the matched pool),
    round 1 (warm-up), then the timed rounds."""
    import _bench as bench

    import nwv
    config = nwv.OptimizeConfig(
        mode="joint", rounds=1 + FLAGS.rounds, steps=FLAGS.steps,
        learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size,
        distill=FLAGS.distill, sync_every=FLAGS.sync_every, seed=FLAGS.seed,
        augment=FLAGS.augment, limit=FLAGS.limit)
    with strategy.scope():
        result = nwv.optimize_runtime(rt, config, data_dir=bench.resolve(FLAGS.data_dir),
                                      log=lambda line: bench.log(f"({config_name}) "
                                                                 f"{line[:140]}"))
    return result["history"]


def replica_devices(strategy, rt) -> list:
    """The devices the replicas run on."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:                 # the default strategy: where the pool lives
        return [rt.page_pool.device]


def measure(config_name: str) -> dict:
    """Times one configuration in this (fresh) process."""
    device, strategy_name, replicas = config_name.split(":")
    strategy, gpus = start_devices(device, strategy_name, int(replicas))
    if strategy is None:
        return {"config": config_name, "skipped": gpus}
    import _bench as bench
    import tensorflow as tf
    start, load = time.time(), bench.load_average()
    rt, pool = virtualized(strategy)
    history = optimise(rt, strategy, config_name)
    timed = [h["seconds"] for h in history[2:]]
    steps = FLAGS.steps * len(timed)
    per_second = steps / sum(timed)
    return {"config": config_name, "device": device, "strategy": strategy_name,
            "replicas": int(strategy.num_replicas_in_sync),
            "devices": replica_devices(strategy, rt), "gpus": gpus,
            "tensorflow": tf.__version__, "pool": pool,
            "warmup_round_seconds": history[1]["seconds"], "round_seconds": timed,
            "seconds_per_round": statistics.median(timed), "steps_per_round": FLAGS.steps,
            "timed_steps": steps, "steps_per_second": per_second,
            "examples_per_second": per_second * FLAGS.batch_size * len(FLAGS.networks),
            "train_loss_last_round": history[-1]["train_loss"],
            "mean_val_accuracy": [h["mean_val_accuracy"] for h in history],
            "load_average_start": load, "load_average_end": bench.load_average(),
            "peak_rss_mb": bench.peak_rss_mb(), "seconds": round(time.time() - start, 1)}


# --- the parent: one process per configuration ------------------------------------------
def run_part(config_name: str, networks: list, scratch: str) -> dict:
    """`measure(config_name)` in a fresh process; its result, or why it failed."""
    import _bench as bench
    path = os.path.join(scratch, config_name.replace(":", "_") + ".json")
    args = ([sys.executable, os.path.abspath(__file__), f"--only={config_name}",
             f"--part_out={path}", f"--networks={','.join(networks)}"]
            + [f"--{k}={FLAGS[k].value}" for k in FORWARDED if FLAGS[k].value is not None])
    bench.log(f"{config_name}: a fresh process")
    code = subprocess.run(args, cwd=bench.REPO).returncode
    if code or not os.path.exists(path):
        bench.log(f"{config_name}: failed (exit status {code})")
        return {"config": config_name, "error": f"exit status {code} (see its output)"}
    with open(path) as handle:
        return json.load(handle)


def machine() -> dict:
    """Where it ran: CPU model and SIMD, cores, platform (TensorFlow and GPUs: from the
    runs)."""
    import _bench as bench
    where = bench.machine()
    return {"cpu_model": where["cpu"], "simd": where["simd"], "logical_cpus": where["cores"],
            "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version()}


def speedups(runs: dict) -> dict:
    """steps/s of every run over the first one-replica CPU run's."""
    done = [r for r in runs.values() if "steps_per_second" in r]
    base = next((r for r in done if r["device"] == "cpu" and r["replicas"] == 1), None)
    if base is None:
        return {}
    return {"baseline": base["config"],
            **{r["config"]: r["steps_per_second"] / base["steps_per_second"] for r in done}}


def compute() -> dict:
    import _bench as bench
    start = time.time()
    present, missing = found()
    if not present:
        raise ValueError(f"no trained networks in {separate('<name>')} (train them with "
                         f"scripts/bench_ten_networks.py --stages=separate)")
    if missing:
        bench.log(f"not trained yet (no metrics.json), left out: {missing}; timing the "
                  f"{len(present)} present")
    report = {"command": "scripts/bench_distributed.py", "flags": bench.script_flags(),
              "networks": present, "missing_networks": missing, "machine": machine(),
              "load_average_start": bench.load_average()}
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as scratch:
        report["runs"] = {c: run_part(c, present, scratch) for c in configurations()}
    versions = {r["tensorflow"] for r in report["runs"].values() if "tensorflow" in r}
    report["machine"].update(tensorflow=sorted(versions), gpus=sorted(
        {g for r in report["runs"].values() for g in r.get("gpus", [])}))
    report["speedup"] = speedups(report["runs"])
    report["same_pool"] = len({r["pool"]["sha1"] for r in report["runs"].values()
                               if "pool" in r}) <= 1
    report["load_average_end"] = bench.load_average()
    report["seconds"] = round(time.time() - start, 1)
    return report


def print_report(report) -> None:
    m = report["machine"]
    print(f"\n{len(report['networks'])} networks ({', '.join(report['networks'])}); "
          f"{m['cpu_model']}, {m['usable_cpus']} usable cores, GPUs {m['gpus'] or 'none'}, "
          f"TensorFlow {', '.join(m['tensorflow'])}")
    if report["missing_networks"]:
        print(f"left out (not trained yet): {', '.join(report['missing_networks'])}")
    print(f"{'configuration':<16}{'replicas':>9}{'s/round':>9}{'steps/s':>9}"
          f"{'examples/s':>12}{'speed-up':>9}  load average  devices")
    for name, r in report["runs"].items():
        if "steps_per_second" not in r:
            print(f"{name:<16}  {r.get('skipped') or r.get('error')}")
            continue
        print(f"{name:<16}{r['replicas']:>9}{r['seconds_per_round']:>9.2f}"
              f"{r['steps_per_second']:>9.2f}{r['examples_per_second']:>12.0f}"
              f"{report['speedup'].get(name, float('nan')):>8.2f}x  "
              f"{r['load_average_start'][0]:>5.2f}-{r['load_average_end'][0]:<5.2f}  "
              f"{', '.join(d.split('/')[-1] for d in r['devices'])}")
    print(f"{report['flags']['steps']} steps per round, {report['flags']['rounds']} timed "
          f"round(s) after a warm-up round, the same pool everywhere: "
          f"{'yes' if report['same_pool'] else 'NO'}; logical CPU devices share the same "
          f"{m['usable_cpus']} cores (and this machine's load): replicas on one CPU test the "
          f"distributed path rather than add compute")


def main(argv):
    del argv
    if FLAGS.only:                       # a child: one configuration
        import _bench as bench
        if not FLAGS.part_out:
            raise ValueError("--only needs --part_out")
        bench.write_result(FLAGS.part_out, measure(FLAGS.only))
        return
    import _bench as bench
    report = compute()
    path = bench.write_result(FLAGS.out, report)
    print_report(report)
    print(f"-> {path} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    _cli.run(main)
