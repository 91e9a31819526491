"""zip.py and evaluate.py --member end to end on tiny data."""
import json
import os

import keras

import models
from models import artifacts
from tests.test_scripts import run_script


def test_zip_script_and_member_evaluation(tiny_data, tmp_path):
    runs = []          # two LeNet-300-100 (train.py's own runs are tested in test_scripts)
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        runs.append(str(tmp_path / f"net{seed}.keras"))
        artifacts.save_model(models.build("lenet_300_100"), runs[-1])
    zipped = str(tmp_path / "zipped")
    proc = run_script("zip.py", f"--models={','.join(runs)}", "--tasks=mnist,mnist",
                      "--share=1.0", "--retrain_steps=3", "--batch_size=16",
                      "--hessian_samples=64", f"--out={zipped}", f"--data_dir={tiny_data}")
    assert "retraining iterations" in proc.stdout
    report = json.load(open(os.path.join(zipped, "report.json")))
    assert report["members"] == ["mnist_0", "mnist_1"]
    assert [r["shared"] for r in report["records"]] == [300, 100]
    assert report["retrain_iterations"] == 6
    assert report["parameters"]["zipped"] == 266_610 + 1010
    for stage in ("before", "after_zip", "after_retrain"):
        assert set(report[stage]) == {"mnist_0", "mnist_1"}
    # the same zip mirrored over two logical CPUs (the CPU is split before loading)
    run_script("zip.py", f"--models={','.join(runs)}", "--tasks=mnist,mnist",
               "--share=1.0", "--retrain_steps=3", "--batch_size=16", "--hessian_samples=64",
               f"--out={tmp_path / 'mirrored'}", f"--data_dir={tiny_data}",
               "--strategy=mirrored", "--cpu_replicas=2")
    mirrored = json.load(open(tmp_path / "mirrored" / "report.json"))
    assert mirrored["parameters"] == report["parameters"]
    assert [r["shared"] for r in mirrored["records"]] == [300, 100]
    proc = run_script("evaluate.py", f"--weights={zipped}", "--member=1", "--task=mnist",
                      f"--data_dir={tiny_data}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(result["accuracy"] - report["after_retrain"]["mnist_1"]["test"]) < 1e-6
    pool = str(tmp_path / "pool")
    proc = run_script("add_zipped.py", f"--zipped={zipped}", f"--pool={pool}",
                      f"--data_dir={tiny_data}", "--fisher_samples=16")
    added = json.loads(proc.stdout.strip().splitlines()[-1])
    assert added["networks"] == ["mnist_0", "mnist_1", "zipped_all"]
    assert added["pool_weights"] < added["networks_weights"]
    proc = run_script("evaluate.py", f"--weights={pool}", "--network=mnist_1", "--task=mnist",
                      f"--data_dir={tiny_data}")
    pooled = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(pooled["accuracy"] - result["accuracy"]) < 1e-6
    proc = run_script("export_savedmodel.py", f"--weights={pool}",
                      f"--out={tmp_path / 'savedmodel'}")
    exported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert exported["variable_bytes"] == 4 * added["pool_weights"]
    assert "zipped_all" in exported["endpoints"]
    bad = run_script("evaluate.py", f"--weights={zipped}", "--member=7", "--task=mnist",
                     f"--data_dir={tiny_data}", check=False)
    assert bad.returncode == 2 and "member index" in bad.stderr
    bad = run_script("zip.py", f"--models={runs[0]}", "--tasks=mnist,mnist",
                     f"--out={tmp_path / 'x'}", f"--data_dir={tiny_data}", check=False)
    assert bad.returncode == 2 and "one task per model" in bad.stderr
