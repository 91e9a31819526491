"""tf.distribute: mirrored over 2 logical CPUs and two workers on 127.0.0.1 give the
single-process results; a killed worker resumes from the last checkpoint."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import models
from models import artifacts
from nwv import api, optimize
from tests.conftest import REPO

ARGS = ["--steps=4", "--batch_size=16", "--limit=32", "--seed=3", "--distill=0.5",
        "--sync_every=2", "--schedule=constant"]


@pytest.fixture(scope="module")
def pool_dir(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    for i, (name, task, model, kw) in enumerate((
            ("digits", "mnist", "nwv_mnist", {}),
            ("parity", "mnist_parity", "nwv_mnist", {"num_classes": 2}))):
        path = str(root / f"{name}.keras")
        artifacts.save_model(models.build(model, **kw), path)
        api.add_network(str(root / "pool"), path, name=name, task=task, model_name=model,
                        model_overrides=kw, data_dir=tiny_data, fisher_samples=8, seed=i)
    return str(root / "pool")


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def test_mirrored_over_two_cpus_equals_the_default_strategy(tiny_data, pool_dir):
    proc = subprocess.run([sys.executable, "-m", "tests.distributed_check", tiny_data,
                           pool_dir], capture_output=True, text=True, cwd=REPO, env=_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["pool_changed"] > 1e-4              # the round really trained
    assert result["pool"] < 1e-4                       # summation order differs only
    assert result["fisher"] < 1e-4
    assert result["hessian_xtx"] < 1e-9
    assert result["hessian_count"][0] == result["hessian_count"][1]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(pool, data, rounds, extra=()):
    """Starts the two workers; each one's stdout and stderr go to files beside the pool
    (pipes that nobody reads while the test polls would block a chatty worker)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(_env(), TF_CONFIG=json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}}))
        logs = [f"{pool}.worker{index}.{stream}" for stream in ("out", "err")]
        with open(logs[0], "w") as out, open(logs[1], "w") as err:  # the child keeps its fds
            proc = subprocess.Popen(
                [sys.executable, os.path.join(REPO, "scripts", "joint_optimize.py"),
                 f"--pool={pool}", f"--data_dir={data}", "--strategy=multi_worker",
                 f"--rounds={rounds}", *ARGS, *extra], env=env, stdout=out, stderr=err,
                text=True)
        proc.logs = logs
        procs.append(proc)
    return procs


def _single(pool, data, rounds, tmp_path, name):
    folder = str(tmp_path / name)
    shutil.copytree(pool, folder)
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "joint_optimize.py"),
                    f"--pool={folder}", f"--data_dir={data}", f"--rounds={rounds}", *ARGS],
                   check=True, capture_output=True, env=_env(), timeout=300)
    return np.load(os.path.join(folder, optimize.CHECKPOINT))["pool"]


def _finish(procs, timeout=600):
    """Waits for the workers; returns [(returncode, stdout, stderr)]. The limit catches
    hangs, not a slow machine."""
    deadline = time.time() + timeout
    results = []
    for proc in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("workers did not finish within the time limit")
        out, err = (pathlib.Path(log).read_text() for log in proc.logs)
        results.append((proc.returncode, out, err))
    return results


def test_two_workers_match_the_single_process_and_resume_after_a_kill(tiny_data, pool_dir,
                                                                       tmp_path):
    pool = str(tmp_path / "workers")
    shutil.copytree(pool_dir, pool)
    for returncode, _, err in _finish(_workers(pool, tiny_data, rounds=1)):
        assert returncode == 0, err[-3000:]
    reference = _single(pool_dir, tiny_data, 1, tmp_path, "single1")
    trained = np.load(os.path.join(pool, optimize.CHECKPOINT))["pool"]
    scale = np.abs(reference).max()
    assert np.abs(trained - reference).max() / scale < 1e-4       # the chief wrote it

    # Two rounds; worker 1 is killed once round 1 is checkpointed; both rerun --resume.
    pool = str(tmp_path / "killed")
    shutil.copytree(pool_dir, pool)
    procs = _workers(pool, tiny_data, rounds=2)
    history = os.path.join(pool, optimize.HISTORY)
    deadline = time.time() + 600
    while time.time() < deadline:
        if os.path.exists(history) and len(json.load(open(history))["history"]) >= 2:
            break
        time.sleep(0.2)
    else:
        for p in procs:
            p.kill()
        pytest.fail("round 1 was never checkpointed")
    procs[1].send_signal(signal.SIGKILL)
    time.sleep(2)
    procs[0].kill()
    for p in procs:
        p.wait()
    resumed = _finish(_workers(pool, tiny_data, rounds=2, extra=["--resume"]))
    for returncode, _, err in resumed:
        assert returncode == 0, err[-3000:]
    assert "resuming after round 1" in resumed[0][1]
    reference = _single(pool_dir, tiny_data, 2, tmp_path, "single2")
    resumed_pool = np.load(os.path.join(pool, optimize.CHECKPOINT))["pool"]
    assert np.abs(resumed_pool - reference).max() / np.abs(reference).max() < 1e-4
