"""train.py and evaluate.py end to end on tiny data, in subprocesses as users run them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def run_script(name, *args, check=True):
    """Runs scripts/<name> as users do (TensorFlow's log level left to `_cli`)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    run_script("train.py", "--task=mnist", "--model=lenet_300_100", f"--out={out}",
               f"--data_dir={tiny_data}", "--epochs=3", "--batch_size=32", "--verbose=0",
               "--seed=3")
    return out


def test_train_writes_model_and_metrics(trained):
    metrics = json.load(open(os.path.join(trained, "metrics.json")))
    assert os.path.exists(os.path.join(trained, "model.keras"))
    assert metrics["task"] == "mnist" and 1 <= metrics["best_epoch"] <= 3
    assert metrics["val_accuracy"] == max(metrics["history"]["val_accuracy"])


def test_evaluate_last_line_is_json(trained, tiny_data):
    proc = run_script("evaluate.py", "--task=mnist", f"--weights={trained}",
                      f"--data_dir={tiny_data}", "--split=test")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = json.load(open(os.path.join(trained, "metrics.json")))
    assert result["task"] == "mnist" and result["examples"] == 20
    assert abs(result["accuracy"] - metrics["test_accuracy"]) < 1e-6


def test_same_seed_same_model(trained, tiny_data, tmp_path):
    run_script("train.py", "--task=mnist", "--model=lenet_300_100", f"--out={tmp_path}",
               f"--data_dir={tiny_data}", "--epochs=3", "--batch_size=32", "--verbose=0",
               "--seed=3")
    a = json.load(open(os.path.join(trained, "metrics.json")))["history"]
    b = json.load(open(os.path.join(tmp_path, "metrics.json")))["history"]
    assert a == b


@pytest.fixture(scope="module")
def reference_npz(tmp_path_factory):
    """A file in the original NWV code's format (weight_i, bias_i) for nwv_mnist."""
    import models
    model = models.build("nwv_mnist")
    weighted = [l for l in model.layers if getattr(l, "kernel", None) is not None]
    arrays = {}
    for i, layer in enumerate(weighted):
        arrays[f"weight_{i}"], arrays[f"bias_{i}"] = layer.get_weights()
    path = str(tmp_path_factory.mktemp("reference") / "mnist.npz")
    np.savez(path, **arrays)
    return path


def test_evaluate_reference_npz(reference_npz, tiny_data):
    proc = run_script("evaluate.py", "--task=mnist", "--model=nwv_mnist",
                      f"--weights={reference_npz}", f"--data_dir={tiny_data}")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["model"] == "nwv_mnist"


@pytest.mark.parametrize("args,message", [
    (["--task=mnsit", "--weights=x"], "unknown task 'mnsit'"),
    (["--task=mnist", "--weights=/nope"], "no model artifact"),
    (["--task=cifar10", "--model=nwv_mnist", "--weights=REF"], "takes inputs"),
    (["--task=mnist", "--weights=REF"], "holds bare weights: pass the registered model name"),
])
def test_evaluate_errors_are_clear(args, message, tiny_data, reference_npz):
    args = [a.replace("REF", reference_npz) for a in args]
    proc = run_script("evaluate.py", *args, f"--data_dir={tiny_data}", check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", sorted(
    f for f in os.listdir(os.path.join(REPO, "scripts"))
    if f.endswith(".py") and not f.startswith(("_", "bench_", "make_", "plot_"))))
def test_help_is_instant_clean_and_exits_zero(script):
    """--help prints the docstring and the flags, exits 0, and imports no TensorFlow."""
    path = os.path.join(REPO, "scripts", script)
    code = (f"import runpy, sys; sys.path.insert(0, {os.path.dirname(path)!r}); "
            f"sys.argv = [{path!r}, '--help']\n"
            f"try:\n    runpy.run_path({path!r}, run_name='__main__')\n"
            f"except SystemExit as exit:\n    code = exit.code\n"
            f"print('EXIT', code, 'TF' if 'tensorflow' in sys.modules else 'NO_TF')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "EXIT 0 NO_TF", proc.stdout[-500:]
    assert "Flags:" in proc.stdout and "--seed" in proc.stdout
    assert not proc.stderr.strip(), proc.stderr[-500:]


@pytest.mark.parametrize("args,message", [
    (["--taks=mnist"], "Did you mean: task"),
    (["--task=mnist", "--out=x", "--epochs=abc"], "flag --epochs=abc"),
    ([], "Flag --task must have a value"),
])
def test_bad_flags_give_one_error_line_and_exit_2(args, message):
    proc = run_script("train.py", *args, check=False)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_benchmark_cache_retrains_for_other_model_settings(tiny_data, tmp_path):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import _bench

    said = []
    common = dict(data_dir=tiny_data, cache_dir="", epochs=1, limit=32,
                  folder=str(tmp_path / "net"), log=said.append)
    _bench.trained("mnist", "lenet_300_100", **common)
    _bench.trained("mnist", "lenet_300_100", **common)             # cached
    assert sum(line.startswith("training") for line in said) == 1
    _bench.trained("mnist", "lenet_300_100", overrides={"units": [20, 10]}, **common)
    assert any("other settings" in line and "overrides" in line for line in said)


def test_a_float_page_budget_applies_only_to_the_pool_it_was_chosen_for(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import _bench

    pool, other = tmp_path / "pool", tmp_path / "other"
    for folder in (pool, other):
        folder.mkdir()
        (folder / "manifest.json").write_text('{"pool": "v1"}')
    result = {"pools": {"ten": {"pool": str(pool), "float_pages": {"chosen": 2},
                                "pool_fingerprint": _bench.pool_fingerprint(str(pool))}}}
    assert _bench.float_page_choice(result, "ten", str(pool)) == (2, "")
    assert _bench.float_page_choice(result, "demo", str(pool))[0] == 0      # no entry
    k, why = _bench.float_page_choice(result, "ten", str(other))            # other folder
    assert k == 0 and "not" in why
    (pool / "manifest.json").write_text('{"pool": "v2"}')                   # rebuilt pool
    k, why = _bench.float_page_choice(result, "ten", str(pool))
    assert k == 0 and "changed" in why
    del result["pools"]["ten"]["pool_fingerprint"]                          # older result
    assert _bench.float_page_choice(result, "ten", str(pool))[0] == 0


def test_result_files_record_the_machine_they_were_measured_on(tmp_path):
    """Float results reproduce bit for bit only on the same kind of CPU, so every result
    JSON names it; a result that already has its own `machine` keeps it."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import _bench

    path = _bench.write_result(str(tmp_path / "r.json"), {"accuracy": 0.5})
    with open(path) as handle:
        written = json.load(handle)
    assert written["accuracy"] == 0.5
    assert set(written["machine"]) == {"cpu", "cores", "simd", "tensorflow"}
    assert written["machine"]["cores"] == os.cpu_count()
    with open(_bench.write_result(str(tmp_path / "own.json"), {"machine": {"cpus": 2}})) as h:
        assert json.load(h) == {"machine": {"cpus": 2}}


def test_every_command_starts_seeded_and_deterministic(tmp_path):
    """`_cli.run` seeds from --seed before `main`: a command's first random draw and
    TensorFlow's op determinism do not depend on which of its stages seeds first
    (the ten-network benchmark's (b) pool once depended on whether (a) ran before it)."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.join(REPO, 'scripts')!r})\n"
        "import _cli\n"
        "from absl import flags\n"
        "flags.DEFINE_integer('seed', 0, 'seed')\n"
        "def main(argv):\n"
        "    import numpy as np\n"
        "    from tensorflow.python.framework import config  # no public getter\n"
        "    print(repr(float(np.random.rand())), config.is_op_determinism_enabled())\n"
        "_cli.run(main)\n")
    proc = subprocess.run([sys.executable, str(script), "--seed=7"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-2000:]
    draw, deterministic = proc.stdout.split()
    assert float(draw) == np.random.RandomState(7).rand()
    assert deterministic == "True"
