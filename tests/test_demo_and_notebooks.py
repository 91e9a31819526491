"""The main job (`scripts/demo.py --quick`) and every Colab notebook run end to end offline."""
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.test_readme import readme_demo_args
from tests.test_scripts import run_script


def test_demo_quick_writes_summary_and_figures(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "demo")
    readme_args = readme_demo_args(tiny_data, out)       # README's main-job line, as written
    assert f"--out={out}" in readme_args
    proc = run_script("demo.py", *readme_args, "--quick")
    assert "switch + inference" in proc.stdout
    assert "cuInit" not in proc.stderr and "unsupported characters" not in proc.stderr
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["tasks"] == ["mnist", "mnist_parity", "cifar10"]
    for key in ("accuracy_before", "accuracy_after", "accuracy_after_int8"):
        assert set(summary[key]) == set(summary["tasks"])
    memory = summary["memory"]
    assert memory["pool_weights"] < memory["separate_weights"]
    assert memory["savedmodel_variable_bytes"] == 4 * memory["pool_weights"]
    assert memory["int8_stored_bytes"] < memory["stored_bytes"] / 3
    assert os.path.getsize(os.path.join(out, "pool.tflite")) == memory["tflite_bytes"]
    assert "zipped_all" in summary["savedmodel_endpoints"]
    for figure in ("accuracy.png", "switching.png"):
        assert os.path.getsize(os.path.join(out, figure)) > 1000
    # The trained networks are cached for these settings only: other settings retrain
    # (the demo's own training step, in process: the rest of the run is covered above).
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import _demo
    metrics = os.path.join(out, "nets", "mnist", "metrics.json")
    before = os.path.getmtime(metrics)
    _demo._train("mnist", out, tiny_data, _demo.DemoConfig.quick())       # same settings
    assert os.path.getmtime(metrics) == before
    _demo._train("mnist", out, tiny_data, _demo.DemoConfig.quick(seed=1))
    assert "trained with other settings" in capsys.readouterr().out
    assert json.load(open(metrics))["seed"] == 1


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "colab"))
                                        if f.endswith(".ipynb")))
def test_notebook_executes(name, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ZIPVIRT_SMALL", "1")
    monkeypatch.setenv("ZIPVIRT_DATA_DIR", tiny_data)
    monkeypatch.setenv("ZIPVIRT_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", REPO)
    notebook = nbformat.read(os.path.join(REPO, "colab", name), as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
