"""The ONE helper module of the benchmarks (`scripts/bench_*.py`, importable as `_bench`).

Everything here is plumbing that benchmarks share and the library does not need:
training a network once and caching it (`trained`; every benchmark keeps its own
cache folder and training settings), the NWV benchmarks' network set (`NetSpec`,
`NETWORKS`), building a pool directory largest network first, the
reload-from-storage baseline of switching benchmarks (`load_from_disk`,
`evict_from_page_cache`, `switch_latency`), peak RSS, the machine's load, JSON
and matplotlib (Agg) output. Relative paths resolve against the repository root.
Accuracies come from `models.training.evaluate`, pool orders from
`nwv.matching.order_for_pooling`, reference files from `models.read_npz`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import time

import _cli  # noqa: F401  (quiets TensorFlow's C++ logs before it loads)
import numpy as np

import data
import models
from models import artifacts, training
from nwv import api, matching, pages, runtime, skeletons, state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve(path: str) -> str:
    """`path` if absolute, else relative to the repository root."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO, path))


def class_overrides(model: str, task: str) -> dict:
    """`models.build` arguments fitting a registered model to a task's class count
    ({} when they agree; e.g. {"num_classes": 2} for lenet_300_100 on mnist_parity)."""
    classes = data.get(task).num_classes
    return {} if classes == models.info(model).num_classes else {"num_classes": classes}


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """One network of a benchmark.

    Attributes:
      name: network name in the pool. task: registered task. model: registered model.
      reference: reference `.npz` file name (None: trained here).
      epochs, seed: training settings of a trained network (part of its cache key).
    """
    name: str
    task: str
    model: str
    reference: str | None = None
    epochs: int = 0
    seed: int = 0

    def overrides(self) -> dict:
        """Builder arguments: the task's class count where it differs from the model's
        (derived tasks have 2 to 6 classes)."""
        return class_overrides(self.model, self.task)

    def build(self):
        return models.build(self.model, **self.overrides())

    def describe(self) -> str:
        if self.reference:
            return f"reference {self.reference}"
        return f"{self.model} trained {self.epochs} epochs, seed {self.seed}"


# The benchmark networks: the two reference nets whose data exist here, the GSC
# architecture trained on the synthetic keywords, derived relabelled tasks trained from
# the reference architectures, and a second, independently trained CIFAR-10 network.
TTS_EPOCHS = 100
DERIVED_EPOCHS = 3
NETWORKS = {
    "mnist": NetSpec("mnist", "mnist", "nwv_mnist", "mnist.npz"),
    "cifar10": NetSpec("cifar10", "cifar10", "nwv_cifar10", "cifar10.npz"),
    "tts_commands": NetSpec("tts_commands", "tts_commands", "nwv_tts", None, TTS_EPOCHS),
    "mnist_parity": NetSpec("mnist_parity", "mnist_parity", "nwv_mnist", None,
                            DERIVED_EPOCHS),
    "cifar10_vehicles": NetSpec("cifar10_vehicles", "cifar10_vehicles", "nwv_cifar10", None,
                                DERIVED_EPOCHS),
    "tts_directions": NetSpec("tts_directions", "tts_directions", "nwv_tts", None,
                              TTS_EPOCHS),
    "mnist_lowhigh": NetSpec("mnist_lowhigh", "mnist_lowhigh", "nwv_mnist", None,
                             DERIVED_EPOCHS),
    "cifar10_animals": NetSpec("cifar10_animals", "cifar10_animals", "nwv_cifar10", None,
                               DERIVED_EPOCHS),
    "tts_control": NetSpec("tts_control", "tts_control", "nwv_tts", None, TTS_EPOCHS),
    "cifar10_b": NetSpec("cifar10_b", "cifar10", "nwv_cifar10", None, DERIVED_EPOCHS, 1),
    "mnist_b": NetSpec("mnist_b", "mnist", "nwv_mnist", None, DERIVED_EPOCHS, 1),
}


def trained(task: str, model: str, *, data_dir: str, cache_dir: str, epochs: int,
            seed: int = 0, overrides: dict | None = None, learning_rate: float = 1e-3,
            batch_size: int = 128, tag: str = "", limit: int | None = None,
            folder: str | None = None, progress: str | None = None, log=print) -> str:
    """Trains a registered model on a task ONCE and caches it; returns its folder.

    The folder `<cache_dir>/<task>-<model>[-<tag>]-e<epochs>-s<seed>` holds the
    `models.training.train` artifact (validation-selected epoch); when it already
    holds a metrics.json nothing is trained. The cache key is every setting that
    changes the result: task, model, tag (e.g. builder overrides), epochs, seed
    (learning rate and batch size when not the defaults). Load the network with
    `models.artifacts.load_model(folder)`; its training metrics are in
    `<folder>/metrics.json`.

    Args:
      task: registered task; model: registered model, built with `overrides`
        after seeding TF with `seed` (the initialisation).
      data_dir: local data; cache_dir: the benchmark's cache folder (relative:
        to the repository root).
      epochs, seed, learning_rate, batch_size: of `models.training.train`.
      tag: extra cache-key part for settings outside the key (e.g. overrides).
      limit: train on at most this many examples per split (quick runs).
      folder: the artifact folder itself instead of a cache-key name under
        `cache_dir`; a network there is reused only if its metrics.json records
        the same settings, else it is trained again (never a stale network).
      progress: label of a tqdm bar over the epochs (`models.training.train`).
      log: callable told when a network is trained.
    Returns:
      The artifact folder.
    """
    key = f"{task}-{model}" + (f"-{tag}" if tag else "") + f"-e{epochs}-s{seed}"
    if (learning_rate, batch_size) != (1e-3, 128):
        key += f"-lr{learning_rate:g}-b{batch_size}"
    if limit:
        key += f"-l{limit}"
    folder = resolve(folder) if folder else os.path.join(resolve(cache_dir), key)
    wanted = {"task": task, "epochs": epochs, "seed": seed, "learning_rate": learning_rate,
              "batch_size": batch_size, "limit": limit}
    settings = os.path.join(folder, "bench_settings.json")     # what metrics.json lacks
    if os.path.exists(os.path.join(folder, "metrics.json")):
        with open(os.path.join(folder, "metrics.json")) as handle:
            found = json.load(handle)
        stale = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if os.path.exists(settings):         # the registry name and builder overrides
            with open(settings) as handle:
                recorded = json.load(handle)
            for k, v in (("model", model), ("overrides", overrides or {})):
                if recorded.get(k) != v:
                    stale[k] = (recorded.get(k), v)
        if stale:
            log(f"{folder} holds a network trained with other settings {stale}: retraining")
            os.remove(os.path.join(folder, "metrics.json"))
    if not os.path.exists(os.path.join(folder, "metrics.json")):
        log(f"training {model} on {task} ({epochs} epochs, seed {seed}) -> {folder}")
        training.set_seed(seed)
        net = models.build(model, **(overrides or {}))
        start = time.time()
        metrics = training.train(net, task, folder, data_dir=data_dir, epochs=epochs,
                                 batch_size=batch_size, learning_rate=learning_rate,
                                 seed=seed, limit=limit, verbose=0, progress=progress)
        artifacts.write_json(settings, {"model": model, "overrides": overrides or {}})
        log(f"  trained in {time.time() - start:.0f} s: validation "
            f"{metrics['val_accuracy']:.4f}, test {metrics['test_accuracy']:.4f}")
    return folder


def weights_path(spec: NetSpec, data_dir: str, reference_dir: str, net_dir: str,
                 log=print) -> str:
    """The network's weights: the reference `.npz`, or the cached trained folder
    (trained now with `trained` when absent)."""
    if spec.reference:
        path = os.path.join(resolve(reference_dir), spec.reference)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reference weights not found: {path} (pass "
                                    f"--reference_dir=<folder holding {spec.reference}>)")
        return path
    return trained(spec.task, spec.model, data_dir=data_dir, cache_dir=net_dir,
                   epochs=spec.epochs, seed=spec.seed, overrides=spec.overrides(), log=log)


def load_plain(spec: NetSpec, path: str):
    """The network as a plain Keras model."""
    return artifacts.load_model(path, spec.model)


def accuracy(model_or_fn, task: str, split: str, data_dir: str,
             limit: int | None = None) -> float:
    """`models.training.evaluate(...)["accuracy"]` (a fixed random subset with `limit`)."""
    return training.evaluate(model_or_fn, task, split, data_dir=data_dir,
                             limit=limit)["accuracy"]


def build_pool(pool_dir: str, specs, paths: dict, data_dir: str, *, page_size: int = 100,
               method: str = "optimal", fisher_source: str = "auto", seed: int = 0,
               log=print) -> dict:
    """Creates `pool_dir` afresh with the networks added largest first
    (`nwv.matching.order_for_pooling` of their weight counts) by `nwv.add_network`
    with `method` page matching.

    Returns:
      {"order", "add": {name: add_network summary + "seconds"}, "seconds" (all adds)}.
    """
    pool_dir = resolve(pool_dir)
    if os.path.exists(pool_dir):
        shutil.rmtree(pool_dir)
    order = [specs[i] for i in matching.order_for_pooling(
        [s.build().count_params() for s in specs])]
    added, total = {}, 0.0
    for spec in order:
        start = time.perf_counter()
        summary = api.add_network(pool_dir, paths[spec.name], name=spec.name, task=spec.task,
                                  model_name=spec.model, model_overrides=spec.overrides(),
                                  data_dir=data_dir, page_size=page_size, matching=method,
                                  seed=seed, fisher_source=fisher_source)
        summary["seconds"] = time.perf_counter() - start
        total += summary["seconds"]
        added[spec.name] = summary
        log(f"  added {spec.name}: {summary['pages']} pages, pool {summary['pool_pages']}, "
            f"shared {summary['shared_pages']}, cost {summary['cost']:.4g}, Fisher "
            f"{summary['fisher_source']}, {summary['seconds']:.1f} s")
    return {"order": [s.name for s in order], "add": added, "seconds": total}


FISHER_SAMPLES = 256


def model_and_fisher(spec: NetSpec, path: str, data_dir: str, seed: int = 0):
    """(plain Keras model, Fisher list, source) of a network. Reference networks use
    the Fisher stored in their `.npz`; trained ones a Fisher computed once (expected
    definition, 256 train examples, `seed`) and cached beside their weights."""
    model = load_plain(spec, path)
    if spec.reference:
        return model, api.network_fisher(model, spec.task, weights_path=path,
                                         source="reference")[0], "reference"
    source = f"computed:expected:{FISHER_SAMPLES}:seed{seed}"
    cache = os.path.join(path, f"fisher_expected_{FISHER_SAMPLES}_s{seed}.npz")
    if os.path.exists(cache):
        with np.load(cache) as archive:
            return model, [archive[f"f{i}"] for i in range(len(archive.files))], source
    fisher, _ = api.network_fisher(model, spec.task, data_dir=data_dir, source="computed",
                                   num_samples=FISHER_SAMPLES, seed=seed)
    artifacts.atomic_write(cache, lambda tmp: np.savez(
        tmp, **{f"f{i}": f for i, f in enumerate(fisher)}))
    return model, fisher, source


def script_flags() -> dict:
    """{name: value} of the flags the running script defines (for result files)."""
    from absl import flags
    return {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(sys.argv[0])}


def load_average() -> list:
    """1, 5 and 15-minute load averages of the (shared) machine."""
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    """The CPU and TensorFlow a result was measured with. Float results (trained
    networks, pools) reproduce bit for bit only on the same kind: TensorFlow's CPU kernels
    take other code paths with and without AVX-512."""
    import platform
    import tensorflow as tf
    cpu, simd = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as handle:
            info = {key.strip(): value.strip()
                    for key, value in (line.split(":", 1) for line in handle if ":" in line)}
        cpu = info.get("model name", cpu)
        cpu_flags = set(info.get("flags", "").split())
        simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
                if f in cpu_flags]
    except OSError:                                       # not Linux
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd, "tensorflow": tf.__version__}


def pool_fingerprint(pool_dir: str) -> str:
    """sha256 of a pool directory's manifest (it lists the sha256 of the pool, every page
    table and every network's files), so it changes whenever the pool is rebuilt or
    optimised: a result chosen for one pool is never applied to another in the same folder."""
    with open(os.path.join(pool_dir, state.MANIFEST), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def float_page_choice(result: dict, name: str, pool_dir: str) -> tuple[int, str]:
    """The float-page budget K that bench_int8's `result` chose for pool `name`, and
    (when K is 0) why none applies: no entry or budget, another folder, or a pool that
    changed since (its fingerprint differs, or bench_int8 recorded none)."""
    entry = result.get("pools", {}).get(name)
    if not entry or "float_pages" not in entry:
        return 0, f"no float-page budget for {name}"
    if os.path.realpath(resolve(entry["pool"])) != os.path.realpath(pool_dir):
        return 0, f"{name}'s budget was chosen for {entry['pool']}, not {pool_dir}"
    if entry.get("pool_fingerprint") != pool_fingerprint(pool_dir):
        return 0, (f"{pool_dir} changed since its budget was chosen (manifest sha256 "
                   f"differs): rerun bench_int8.py")
    return int(entry["float_pages"]["chosen"]), ""


def write_result(path: str, obj) -> str:
    """Writes a result JSON (path relative to the repository root), with the `machine`
    it was measured on added to a dict; returns its path."""
    path = resolve(path)
    if isinstance(obj, dict) and "machine" not in obj:
        obj = {**obj, "machine": machine()}
    artifacts.write_json(path, obj)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> str:
    path = resolve(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


# --- the reload-from-storage baseline of the switching benchmarks -------------------
def evict_from_page_cache(path: str) -> None:
    """Drops a file (or every file of a folder) from the OS page cache
    (`posix_fadvise(POSIX_FADV_DONTNEED)` after an fsync), so the next read comes
    from storage: benchmarks of loading from disk call it before each load."""
    paths = ([os.path.join(path, f) for f in sorted(os.listdir(path))]
             if os.path.isdir(path) else [path])
    for file in paths:
        if not os.path.isfile(file):
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load_from_disk(pool_dir: str, name: str):
    """What a device without virtualization does on every switch: read this network's
    files (manifest, pool, table, with all checks) from `pool_dir` into a freshly
    built Keras model. Returns the model."""
    loaded = state.load_state(pool_dir, [name], with_fisher=False)
    record = loaded.networks[name]
    model = skeletons.build_skeleton(record, loaded.assets)
    runtime.check_model(record, model, pool_dir)
    for variable, value in zip(model.trainable_variables, pages.gather_weights(
            loaded.pool, record.page_table, record.layout(loaded.page_size))):
        variable.assign(value)
    return model


def switch_latency(rt, names, inputs: dict, *, switches: int, seed: int = 0) -> dict:
    """Median switch + one inference: in memory (a page-table change) against a reload
    from the runtime's pool directory with the page cache evicted before each read.

    Args:
      rt: a `VirtualizedNetworks` loaded from a pool directory.
      names: networks to switch between; inputs: {name: one batch}.
      switches: random switches timed; seed: their order.
    Returns:
      {"in_memory_ms", "reload_ms", "ratio", "switches", "page_cache"}.
    """
    if rt.pool_dir is None:
        raise ValueError("switch_latency needs a runtime loaded from a pool directory")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.integers(0, len(names), switches)]
    for name in names:  # compile every path once
        rt.run(name, inputs[name])
    in_memory, reload = [], []
    for name in order:
        start = time.perf_counter()
        rt.switch(name)
        rt(inputs[name]).numpy()
        in_memory.append(time.perf_counter() - start)
        evict_from_page_cache(rt.pool_dir)
        start = time.perf_counter()
        load_from_disk(rt.pool_dir, name)(inputs[name], training=False).numpy()
        reload.append(time.perf_counter() - start)
    return {"in_memory_ms": 1e3 * float(np.median(in_memory)),
            "reload_ms": 1e3 * float(np.median(reload)),
            "ratio": float(np.median(reload) / np.median(in_memory)),
            "switches": switches, "page_cache": "evicted before each reload"}


def latency_summary(values_ms) -> dict:
    """Median, mean, extremes, p10 and p90 of timings in milliseconds (and all of them)."""
    values = sorted(float(v) for v in values_ms)
    return {"median_ms": statistics.median(values), "mean_ms": statistics.fmean(values),
            "min_ms": values[0], "max_ms": values[-1],
            "p10_ms": values[len(values) // 10], "p90_ms": values[(9 * len(values)) // 10],
            "n": len(values), "all_ms": [float(v) for v in values_ms]}


def log(message: str) -> None:
    """Prints a timestamped progress line (flushed, so logs of long runs are live)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def device_scope(device: str | None):
    """`tf.device(device)`, or TensorFlow's own placement for an empty device; a device
    TensorFlow does not see is refused (soft placement would silently run elsewhere)."""
    import contextlib

    import tensorflow as tf

    if not device:
        return contextlib.nullcontext()
    spec = tf.DeviceSpec.from_string(device)
    present = tf.config.list_logical_devices(spec.device_type) if spec.device_type else []
    if len(present) <= (spec.device_index or 0):
        raise ValueError(f"--device={device}: TensorFlow sees no such device; it sees "
                         f"{[d.name for d in tf.config.list_logical_devices()]}")
    return tf.device(device)
