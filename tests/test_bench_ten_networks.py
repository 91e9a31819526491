"""scripts/bench_ten_networks.py on tiny generated data: two families, both pools, evaluate.py."""
import json
import os

from tests.test_scripts import run_script


def test_two_family_run_builds_both_pools_and_evaluate_reads_them(tiny_data, tmp_path):
    work, out = tmp_path / "work", tmp_path / "ten.json"
    run_script("bench_ten_networks.py", f"--data_dir={tiny_data}", f"--work_dir={work}",
               f"--out={out}", "--families=digits,keywords", "--stages=separate,methods",
               "--limit=24", "--epochs_scale=0.01", "--rounds=1", "--steps=2",
               "--batch_size=8", "--fisher_samples=8", "--hessian_samples=16",
               "--zip_families=digits,keywords", "--zip_retrain_steps=1")
    report = json.load(open(out))
    # one distilled MTZ retraining step after each zipped layer (nwv_mnist: 5 layers,
    # nwv_tts: 4), for each of the two networks added to a family's first
    groups = report["zipped_groups"]
    assert {f: g["steps"] for f, g in groups.items()} == {"digits": 10, "keywords": 8}
    # each zipped group is evaluated on validation before it is paged
    assert set(groups["keywords"]["val_accuracy"]) == {"tts_commands", "tts_directions",
                                                        "tts_control"}
    assert all(0 <= v <= 1 for g in groups.values() for v in g["val_accuracy"].values())
    assert set(report["separate"]) == {"mnist", "mnist_parity", "mnist_lowhigh",
                                       "tts_commands", "tts_directions", "tts_control"}
    for key in ("nwv", "mtz_nwv"):
        method = report["methods"][key]
        assert method["compression"] >= 8.0                          # the byte target
        assert method["pool"]["stored_bytes"] <= report["separate_bytes"] / 8
        assert set(method["test_accuracy"]) >= set(report["separate"])
    timing = report["methods"]["mtz_nwv"]["family_timing"]
    assert set(timing) == {"digits", "keywords"}
    for name, task, pool in (("mnist_parity", "mnist_parity", "mtz_nwv"),   # zipped
                             ("tts_control", "tts_control", "nwv")):
        metrics = json.load(open(work / "separate" / name / "metrics.json"))
        assert metrics["task"] == task
        proc = run_script("evaluate.py", f"--weights={work / 'pools' / pool}",
                          f"--network={name}", f"--task={task}",
                          f"--data_dir={tiny_data}", "--limit=24")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["network"] == name and 0 < result["examples"] <= 24
    assert os.path.exists(tmp_path / "ten.png") is False      # no curve: no figure

    # --update reruns one stage on the saved pools into the report, keeping the rest
    quick = ["--families=digits,keywords", "--limit=24", "--epochs_scale=0.01",
             "--batch_size=8", "--fisher_samples=8"]
    run_script("bench_ten_networks.py", f"--data_dir={tiny_data}", f"--work_dir={work}",
               f"--out={out}", "--stages=int8", "--update", *quick)
    updated = json.load(open(out))
    assert updated["methods"] == report["methods"] and updated["separate"] == report["separate"]
    assert set(updated["int8"]) == {"nwv", "mtz_nwv"}
    assert all(m["int8_scales"] == "fisher" for m in updated["int8"].values())
    assert [u["stages"] for u in updated["updates"]] == [["int8"]]
    proc = run_script("bench_ten_networks.py", f"--data_dir={tiny_data}",
                      f"--work_dir={work}", f"--out={tmp_path / 'none.json'}",
                      "--stages=int8", "--update", *quick, check=False)
    assert proc.returncode != 0 and "no report at" in proc.stderr

    # the control: each network alone, same budget and recipe, nothing shared; the
    # saved pools' drops are taken against those networks
    alone = tmp_path / "alone.json"
    run_script("bench_ten_networks.py", f"--data_dir={tiny_data}", f"--work_dir={work}",
               f"--out={alone}", "--families=digits,keywords", "--stages=equal_budget",
               "--limit=24", "--epochs_scale=0.01", "--rounds=1", "--steps=2",
               "--batch_size=8", "--fisher_samples=8")
    control = json.load(open(alone))["equal_budget"]
    assert set(control["networks"]) == set(report["separate"])
    assert set(control["pools"]) == {"nwv", "mtz_nwv"}
    for name, net in control["networks"].items():
        assert net["best_round"] in (0, 1)
        manifest = json.load(open(work / "pools" / "alone" / name / "manifest.json"))
        assert list(manifest["networks"]) == [name]              # nothing shared
        assert manifest["pool_pages"] == manifest["networks"][name]["pages"]
        for key, pool in control["pools"].items():
            drop = 100 * (net["test_accuracy"] - pool["test_accuracy"][name])
            assert abs(pool["drops"]["per_network"][name] - drop) < 0.01
        if net["best_round"] == 0:                               # its separate weights
            assert control["separate_drops"]["per_network"][name] == 0

    # (b) by default zips the digits only: the keyword networks are paged as leftovers
    left = tmp_path / "left.json"
    run_script("bench_ten_networks.py", f"--data_dir={tiny_data}", f"--work_dir={work}",
               f"--out={left}", "--families=digits,keywords",
               "--stages=separate,methods,compare_distill",
               "--methods=mtz_nwv", "--pools_name=_left", "--zip_retrain_steps=0",
               "--limit=24", "--epochs_scale=0.01", "--rounds=1", "--steps=2",
               "--batch_size=8", "--fisher_samples=8", "--hessian_samples=16")
    report = json.load(open(left))
    assert set(report["zipped_groups"]) == {"digits"}
    method = report["methods"]["mtz_nwv"]
    assert set(method["family_timing"]) == {"digits"}
    assert method["pool"]["stored_bytes"] <= report["separate_bytes"] / 8
    assert set(method["test_accuracy"]) >= set(report["separate"])
    # defaults: labels only, balanced; the comparison: (b) again, distilled, same budget
    main, other = method["optimisation"]["config"], report["compare_distill"]
    assert (main["distill"], main["balance"]) == (0.0, 0.5)
    assert other["distill"] == other["optimisation"]["config"]["distill"] == 0.7
    assert {k: v for k, v in other["optimisation"]["config"].items() if k != "distill"} == {
        k: v for k, v in main.items() if k != "distill"}
    assert other["pool"] == method["pool"]
    proc = run_script("evaluate.py", f"--weights={work / 'pools' / 'mtz_nwv_left'}",
                      "--network=tts_control", "--task=tts_control",
                      f"--data_dir={tiny_data}", "--limit=24")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["network"] == "tts_control"
    proc = run_script("bench_ten_networks.py", f"--data_dir={tiny_data}",
                      f"--work_dir={work}", f"--out={left}", "--families=digits",
                      "--zip_families=objects", check=False)
    assert proc.returncode != 0 and "unknown families ['objects']" in proc.stderr
    proc = run_script("bench_ten_networks.py", f"--data_dir={tiny_data}",
                      f"--work_dir={work}", f"--out={left}", "--families=digits",
                      "--stages=separate,equal", check=False)
    assert proc.returncode != 0 and "unknown stages ['equal']" in proc.stderr
