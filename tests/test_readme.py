"""README stays true: its command lines run as written (with small settings appended, on
tiny generated data), and the SavedModel endpoints its snippets call exist."""
import os
import re
import shlex

import pytest

from tests.conftest import REPO
from tests.test_scripts import run_script

# Appended to README's commands (absl: the last occurrence of a flag wins).
SMALL = {
    "train.py": ["--epochs=1", "--limit=32", "--verbose=0"],
    "evaluate.py": ["--limit=32"],
    "zip.py": ["--retrain_steps=2", "--hessian_samples=32", "--eval_limit=32"],
    "add_dnn.py": ["--fisher_samples=8"],
    "add_zipped.py": ["--fisher_samples=8"],
    "joint_optimize.py": ["--rounds=1", "--steps=2", "--limit=32", "--batch_size=8"],
    "demo.py": ["--quick"],
}


def readme_commands():
    """(script, args) of every `python scripts/...` line in README's bash blocks."""
    text = open(os.path.join(REPO, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python scripts/"):
                words = shlex.split(line)
                commands.append((os.path.basename(words[1]), words[2:]))
    return commands


def test_readme_commands_run_in_order(tiny_data, tmp_path):
    commands = readme_commands()
    assert len(commands) >= 12
    shared = os.path.join(os.path.dirname(REPO), "shared")
    outputs = {}
    for script, args in commands:
        if script in ("bench_ten_networks.py", "bench_distributed.py"):
            continue                                    # benchmarks: minutes to hours
        if script == "demo.py":
            continue           # run as written by test_demo_and_notebooks (readme_demo_args)
        args = [a.replace("../shared/datasets", tiny_data)
                 .replace("runs/", f"{tmp_path}/runs/").replace("demo_out", f"{tmp_path}/demo")
                for a in args]
        if any(shared in a or "../shared/reference" in a for a in args):
            continue
        proc = run_script(script, *args, *SMALL.get(script, []), check=False)
        assert proc.returncode == 0, (f"README command failed: {script} {' '.join(args)}\n"
                                      f"{proc.stderr[-3000:]}")
        outputs[script] = proc.stdout
    assert "export_savedmodel.py" in outputs and "export_tflite.py" in outputs
    text = open(os.path.join(REPO, "README.md")).read()
    called = set(re.findall(r"served\.(\w+)\(", text))
    assert called, "README shows how to call the SavedModel"
    import tensorflow as tf
    saved = [a for s, args in commands if s == "export_savedmodel.py" for a in args
             if a.startswith("--out=")][0].split("=", 1)[1].replace("runs/", f"{tmp_path}/runs/")
    served = tf.saved_model.load(saved)
    missing = [name for name in called if not hasattr(served, name)]
    assert not missing, f"README calls endpoints the SavedModel lacks: {missing}"


def readme_demo_args(tiny_data, out):
    """README's main-job command line (`demo.py`) on tiny data, writing to `out`."""
    (args,) = [args for script, args in readme_commands() if script == "demo.py"]
    return [a.replace("../shared/datasets", tiny_data) if not a.startswith("--out=")
            else f"--out={out}" for a in args]


@pytest.mark.parametrize("script", sorted({s for s, _ in readme_commands()}))
def test_readme_scripts_exist(script):
    assert os.path.exists(os.path.join(REPO, "scripts", script))
