"""add_dnn.py, pool.py, joint_optimize.py and evaluate.py --network end to end on tiny
data, in subprocesses as users run them; api errors in process."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import data
import models
from models import artifacts
from nwv import api, state
from tests.conftest import write_images
from tests.test_scripts import run_script


def _last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name, model_name in (("digits", "nwv_mnist"), ("objects", "nwv_cifar10")):
        out[name] = str(root / f"{name}.keras")
        artifacts.save_model(models.build(model_name), out[name])
    return out


def test_scripts_end_to_end(weights, tiny_data, tmp_path):
    pool = str(tmp_path / "pool")
    first = _last_json(run_script(
        "add_dnn.py", f"--pool={pool}", "--name=digits", "--task=mnist", "--model=nwv_mnist",
        f"--weights={weights['digits']}", f"--data_dir={tiny_data}", "--fisher_samples=8",
        "--seed=1"))
    assert first == {"name": "digits", "pages": 458, "pool_pages": 458, "shared_pages": 0,
                     "cost": 0.0, "fisher_source": "computed:expected:8"}
    second = _last_json(run_script(
        "add_dnn.py", f"--pool={pool}", "--name=objects", "--task=cifar10",
        "--model=nwv_cifar10", f"--weights={weights['objects']}", f"--data_dir={tiny_data}",
        "--fisher_samples=8", "--matching=greedy", "--fisher_definition=predicted",
        "--seed=2"))
    assert second["pool_pages"] == 458 and second["shared_pages"] == 455

    assert [n["name"] for n in api.list_networks(pool)] == ["digits", "objects"]
    report = _last_json(run_script("pool.py", f"--pool={pool}", "--action=inspect"))
    assert report["networks"]["digits"]["shared_with"] == {"objects": 455}
    assert report["networks"]["objects"]["exclusive_pages"] == 0
    assert set(report["networks"]["digits"]["fisher_mass"]) == {
        "conv1", "conv2", "conv3", "fc1", "fc2", "logits"}
    assert report["compression"] == pytest.approx((458 + 455) / 458)

    summary = _last_json(run_script(
        "joint_optimize.py", f"--pool={pool}", f"--data_dir={tiny_data}", "--mode=joint",
        "--rounds=1", "--steps=2", "--batch_size=16", "--limit=32", "--seed=3"))
    assert summary["rounds"] == 1 and set(summary["val_accuracy"]) == {"digits", "objects"}
    assert os.path.exists(os.path.join(pool, "history.json"))

    result = _last_json(run_script(
        "evaluate.py", f"--weights={pool}", "--network=objects", "--task=cifar10",
        f"--data_dir={tiny_data}", "--split=test"))
    assert result["network"] == "objects" and result["examples"] == 30
    assert 0.0 <= result["accuracy"] <= 1.0

    removed = _last_json(run_script("pool.py", f"--pool={pool}", "--action=remove",
                                    "--name=digits"))
    # Optimised since the add: the shared pages are rebuilt from objects' own weights.
    assert removed == {"removed": "digits", "pool_pages": 455, "freed_pages": 3,
                       "restored": "from teachers", "restored_pages": 455}
    assert [n["name"] for n in api.list_networks(pool)] == ["objects"]


def test_api_errors_are_clear(weights, tiny_data, tmp_path, shared_dir):
    pool = str(tmp_path / "pool")
    ref = f"{shared_dir}/reference/nwv/mnist.npz"
    summary = api.add_network(pool, ref, name="ref", task="mnist", model_name="nwv_mnist",
                              data_dir=tiny_data)
    assert summary["fisher_source"] == "reference"              # auto: the npz Fisher
    stored = models.load_reference_fisher(ref)
    record = state.load_state(pool).networks["ref"]
    assert record.fisher.ravel()[:stored[0].size].tobytes() == stored[0].ravel().tobytes()
    with pytest.raises(ValueError, match="already holds a network named 'ref'"):
        api.add_network(pool, ref, name="ref", task="mnist", model_name="nwv_mnist",
                        data_dir=tiny_data)
    with pytest.raises(ValueError, match="uses page_size 100, received page_size 50"):
        api.add_network(pool, ref, name="other", task="mnist", model_name="nwv_mnist",
                        data_dir=tiny_data, page_size=50)
    with pytest.raises(ValueError, match="takes inputs"):
        api.add_network(pool, ref, name="other", task="cifar10", model_name="nwv_mnist",
                        data_dir=tiny_data)
    with pytest.raises(ValueError, match="expected fisher_weight_i"):
        api.add_network(pool, weights["digits"], name="other", task="mnist",
                        model_name="nwv_mnist", data_dir=tiny_data, fisher_source="reference")
    with pytest.raises(KeyError, match="no network 'nope'"):
        api.remove_network(pool, "nope")
    with pytest.raises(FileNotFoundError, match="no NWV pool"):
        api.list_networks(str(tmp_path / "missing"))
    assert np.isfinite(api.inspect(pool)["networks"]["ref"]["fisher_mass"]["conv1"])


def test_bench_int8_compares_post_training_and_quantization_aware(weights, tiny_data,
                                                                  tmp_path):
    pool = str(tmp_path / "pool")
    for i, (name, task, model_name) in enumerate((("digits", "mnist", "nwv_mnist"),
                                                  ("objects", "cifar10", "nwv_cifar10"))):
        api.add_network(pool, weights[name], name=name, task=task, model_name=model_name,
                        data_dir=tiny_data, page_size=100, fisher_samples=8, seed=i)
    before = state.load_state(pool).pool
    fresh = str(tmp_path / "fresh")      # new digits only: the objects network is skipped
    write_images(fresh, "mnist", "train", data.get("mnist").class_names, 6,
                 (28, 28, 1), seed=7)
    out = str(tmp_path / "int8.json")
    run_script("bench_int8.py", f"--pools={pool}", "--labels=tiny", f"--data_dir={tiny_data}",
               f"--work_dir={tmp_path / 'work'}", "--qat_rounds=1", "--qat_steps=2",
               "--limit=16", "--float_pages=3,1", f"--fresh_data_dir={fresh}", f"--out={out}")
    report = json.load(open(out))["pools"]["tiny"]
    on_fresh = report["fresh"]        # every carve of the folder: more than one carve's 16
    assert set(on_fresh["examples"]) == {"digits"} and on_fresh["examples"]["digits"] > 16
    for key, lost_key in (("int8_post_training", "post_training_lost"),
                          ("int8_float_pages", "float_pages_lost"), ("int8_qat", "qat_lost")):
        assert on_fresh[lost_key]["per_network"]["digits"] == pytest.approx(
            round(100 * (on_fresh["float"]["digits"] - on_fresh[key]["digits"]), 2))
        assert 0 <= on_fresh["changed_predictions"][key]["total"] <= on_fresh["examples"][
            "digits"]
    assert report["float_pages"]["selected_on"] == "validation joined with the fresh data"
    for tried in report["float_pages"]["tried"].values():    # digits: more examples joined
        assert {"fresh_lost", "selection_lost"} <= set(tried)
        assert tried["selection_lost"]["per_network"]["objects"] == tried[
            "validation_lost"]["per_network"]["objects"]
    manifest = Path(pool, state.MANIFEST).read_bytes()
    assert report["pool_fingerprint"] == hashlib.sha256(manifest).hexdigest()
    for key in ("float", "int8_max_scales", "int8_post_training", "int8_qat",
                "qat_float_pool"):
        assert set(report[key]) == {"digits", "objects"}
    for key in ("int8_max_scales", "int8_post_training", "int8_float_pages", "int8_qat"):
        changed = report["changed_predictions"][key]   # predictions unlike the float pool's
        assert changed["examples"] == {"digits": 16, "objects": 16}
        assert changed["total"] == sum(changed["per_network"].values()) and all(
            0 <= n <= 16 for n in changed["per_network"].values())
        lost = report[{"int8_max_scales": "max_scales_lost", "int8_float_pages":
                       "float_pages_lost"}.get(key, key.replace("int8_", "") + "_lost")]
        # accuracies move by at most the changed predictions (a point is 1/16 here)
        assert all(abs(lost["per_network"][n]) <= 100 * changed["per_network"][n] / 16
                   + 0.01 for n in ("digits", "objects"))
    budget = report["float_pages"]          # tried in increasing order, chosen on validation
    assert list(budget["tried"])[0] == "1" and budget["chosen"] in (1, 3)
    assert len(budget["pages"]) == budget["chosen"] and set(budget["test"]) == {"digits",
                                                                              "objects"}
    page_bytes = 4 * 100 + 1   # a float row and, for every page, a slot byte
    assert budget["stored_bytes"] > report["int8_stored_bytes"] + budget["chosen"] * page_bytes
    assert report["int8_stored_bytes"] < report["float_stored_bytes"] / 3
    assert report["int8_compression"] == pytest.approx(
        report["separate_bytes"] / report["int8_stored_bytes"])
    assert report["qat"]["config"]["quantize"] == "int8"
    assert len(report["qat"]["mean_val_accuracy_per_round"]) == 2
    assert state.exists(str(tmp_path / "work" / "tiny"))       # the copy was trained,
    assert state.load_state(pool).pool.tobytes() == before.tobytes()   # not the pool
