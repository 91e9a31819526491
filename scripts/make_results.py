"""Gather the committed benchmark outputs (results/*.json) into results/RESULTS.md.

    python scripts/make_results.py

Reads only what the benchmarks wrote (never re-measures, never edits a figure)
and renders one table per benchmark with links to the figures. Seconds.
"""
import functools
import json
import os

import _cli
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("results", "results", "Folder of benchmark outputs.")
flags.DEFINE_integer("seed", 0, "Random seed (unused: deterministic).")


def _load(name):
    """A result JSON of the results folder, or None when that benchmark has none."""
    path = os.path.join(FLAGS.results, name)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def pct(x):
    return f"{100 * x:.2f}%"


def mtz_lenet(d):
    rows = ["| network | err_A | err_B | err_C (A/B heads) | increase | paper increase | "
            "iterations (batch) | no retraining: 1st layer / all / random 1st |",
            "|---|---|---|---|---|---|---|---|"]
    for name in ("lenet_300_100", "lenet5"):
        r = d.get(name)
        if not r:
            continue
        nr = [r[f"no_retrain_{k}"] for k in ("first_layer", "all_layers", "first_layer_random")]
        nr = " / ".join(f"{sum(v.values()) / len(v):.2f}%" for v in nr)
        rows.append(f"| {name} | {r['err_a']}% | {r['err_b']}% | {r['err_c']}% "
                    f"({r['err_c_task_a']}/{r['err_c_task_b']}) | {r['increase_over_mean_ab']:+.3f} |"
                    f" {r['paper']['increase']:+.3f} | {r['iterations']} ({r['batch_size']}) | {nr} |")
    return rows


def mtz_layers_figure(d):
    """Per-layer neurons shared and ΔE of the Table 2.1 zips (from their records)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n in ("lenet_300_100", "lenet5") if n in d]
    fig, axes = plt.subplots(2, len(nets), figsize=(4 * len(nets), 5), squeeze=False)
    for col, name in enumerate(nets):
        records = d[name]["records"]
        layers = [r["layer"] for r in records]
        axes[0, col].bar(layers, [r["shared"] for r in records], color="#3a7")
        axes[0, col].set_title(f"{name}: neurons shared")
        axes[1, col].bar(layers, [r["delta_e"] for r in records], color="#e93")
        axes[1, col].set_title("layer-wise ΔE (Eq. 2.16)")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.results, "mtz_layers.png"), dpi=110)
    plt.close(fig)


def mtz_speed(d):
    rows = ["| layer | d × m | Hessians | costs | greedy | optimal | merge | total (greedy) | "
            "target | original |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in d["layers"].items():
        s = r["seconds"]
        rows.append(f"| {name} | {r['d']} × {r['m_a']} | {s['hessian']} s | {s['costs']} s | "
                    f"{s['pairing_greedy']} s | {s['pairing_optimal']} s | {s['merge']} s | "
                    f"**{r['total_seconds_greedy']} s** | ≤ {r['target_seconds']} s | "
                    f"~{r['original_seconds_approx']} s |")
    rows.append(f"\nPeak RSS {d['peak_rss_mb']} MB.")
    return rows


def nwv_matching(d):
    rows = ["| method | total cost | pool pages | compression | time |", "|---|---|---|---|---|"]
    for name, r in d["methods"].items():
        rows.append(f"| {name} | {r['total_cost']:.3f} | {r['pool_pages']} | "
                    f"{r['compression']:.2f}× | {r['seconds']:.3f} s |")
    b = d.get("brute_force")
    if b:
        rows.append(f"\nAgainst brute force on {b['problems']} tiny problems: optimal equals it "
                    f"in {b['optimal_equals_brute_force']} (dense / sparse solver); greedy is "
                    f"worse in {b['greedy_worse_in']} ({100 * b['greedy_mean_excess']:.1f}% "
                    f"mean excess cost).")
    small = d.get("small_pages")
    if small:
        rows += ["", f"| P = {small['page_size']}: network | pages | pool pages | optimal "
                 f"(sparse) | optimal (dense) | greedy |", "|---|---|---|---|---|---|"]
        for r in small["networks"]:
            dense = (f"{r['dense_seconds']:.1f} s, cost {r['dense_cost']:.4g}"
                     if "dense_seconds" in r else "not run")
            rows.append(f"| {r['network']} | {r['pages']} | {r['pool_pages']} | "
                        f"{r['sparse_seconds']:.1f} s, cost {r['sparse_cost']:.4g} | {dense} | "
                        f"{r['greedy_seconds']:.1f} s, cost {r['greedy_cost']:.4g} |")
    return rows


def nwv_switch(d):
    rows = ["| | median |", "|---|---|",
            f"| in-memory switch | {1e3 * d['in_memory_switch']['median_ms']:.2f} µs |",
            f"| in-memory switch + 1 inference | {d['in_memory_switch_and_inference']['median_ms']:.3f} ms |",
            f"| load from disk (page cache evicted) | {d['load_from_disk']['median_ms']:.2f} ms |",
            f"| load from disk + 1 inference | {d['load_from_disk_and_inference']['median_ms']:.2f} ms |",
            f"\nSwitch ratio {d['speedup_switch_only']:.0f}× (original NWV 459×), end to end "
            f"{d['speedup_end_to_end']:.1f}×; execution through the pool vs plain Keras, worst "
            f"network: {d['execution_ratio_worst']:.3f}× (target ≤ 1.1×)."]
    return rows


def zip_switch(d):
    m = d["median_seconds"]
    rows = [f"{len(d['tasks'])} zipped LeNet-300-100, {100 * d['shared_parameter_fraction']:.1f}% "
            f"of each task's weights shared; page cache {d['page_cache']}.", "",
            "| making a task ready | median | with 1 inference |", "|---|---|---|",
            f"| (a) whole task from storage | {1e3 * m['full_load']:.2f} ms | {1e3 * m['full_load_e2e']:.2f} ms |",
            f"| (b) task-specific weights from storage | {1e3 * m['specific_load']:.2f} ms | {1e3 * m['specific_load_e2e']:.2f} ms |",
            f"| (c) in-memory page-table switch | {1e6 * m['in_memory']:.2f} µs | {1e3 * m['in_memory_e2e']:.3f} ms |",
            f"\n(a)/(b) = {d['ratio_full_over_specific']:.2f}× (paper 8.71×), (a)/(c) = "
            f"{d['ratio_full_over_in_memory']:.0f}× (target 459×), end to end (a)/(c) = "
            f"{d['ratio_e2e_full_over_in_memory']:.1f}×.", "",
            "| tasks (batch 64, one input) | one call | one by one | speed-up |", "|---|---|---|---|"]
    for n, s in d["simultaneous_batch64"].items():
        rows.append(f"| {n} | {s['one_call_ms']:.2f} ms | {s['one_by_one_ms']:.2f} ms | "
                    f"{s['speedup']:.2f}× |")
    return rows


def demo(d):
    int8 = d.get("accuracy_after_int8")
    rows = ["| task | separate | zipped/virtualized pool |" + (" same pool, int8 pages |"
                                                               if int8 else ""),
            "|---|---|---|" + ("---|" if int8 else "")]
    for t in d["tasks"]:
        rows.append(f"| {t} | {pct(d['accuracy_before'][t])} | {pct(d['accuracy_after'][t])} |"
                    + (f" {pct(int8[t])} |" if int8 else ""))
    m, w = d["memory"], d["switching"]
    rows.append(f"\nZipped: {', '.join(d['zipped'])}. Memory {m['separate_weights']} weights → "
                f"{m['pool_weights']} pool weights ({m['ratio']:.2f}×), SavedModel variables "
                f"{m['savedmodel_variable_bytes']} bytes. Switch + 1 inference: in-memory "
                f"{w['in_memory_ms']:.2f} ms vs reload {w['reload_ms']:.2f} ms ({w['ratio']:.0f}×).")
    return rows


def nwv_sweeps(d):
    rows = [f"Networks {', '.join(d['fisher'])}: the originals are short trainings (see the "
            f"script), compared here setting against setting; pools of "
            f"{d['page_size']['100']['compression']:.2f}×, {d['flags']['rounds']} × "
            f"{d['flags']['steps']} steps each, test carves.", "",
            "| run | mode | λ | " + " | ".join(d["original_test_accuracy"]) + " | mean | seconds |",
            "|---|---|---|" + "---|" * len(d["original_test_accuracy"]) + "---|---|",
            "| originals | | | " + " | ".join(pct(v) for v in d["original_test_accuracy"].values())
            + " | | |"]
    for name, r in d["runs"].items():
        rows.append(f"| {name} | {r['mode']} | {r['lambda']} | " + " | ".join(
            pct(r["test_accuracy"][t]) for t in d["original_test_accuracy"])
            + f" | {pct(r['mean_test_accuracy'])} | {r['seconds']:.0f} |")
    rows += ["", "| page size | pool pages | greedy cost / s | optimal cost / s |",
             "|---|---|---|---|"]
    for size, p in d["page_size"].items():
        g, o = p["matching"]["greedy"], p["matching"]["optimal"]
        rows.append(f"| {size} | {p['pool_pages']} | {g['total_cost']:.2f} / {g['seconds']:.3f} |"
                    f" {o['total_cost']:.2f} / {o['seconds']:.3f} |")
    return rows


def resident(d):
    rows = [f"{len(d['networks'])} networks, pool {d['pool_bytes'] / 1e3:.0f} kB (largest network "
            f"{d['largest_network_bytes'] / 1e3:.0f} kB, separately {d['separate_bytes'] / 1e3:.0f}"
            f" kB); page cache evicted before every timed switch.", "",
            "| RAM budget | weights in memory | read per switch (mean) | switch + 1 inference "
            "(median, p90) | logits vs all in memory |", "|---|---|---|---|---|"]
    for r in d["budgets"]:
        lat = r["switch_and_inference"]
        rows.append(f"| {r['budget_bytes'] / 1e3:.0f} kB | {r['memory_bytes'] / 1e3:.0f} kB | "
                    f"{r['mean_bytes_read_per_switch'] / 1e3:.1f} kB | {lat['median_ms']:.2f} ms, "
                    f"{lat['p90_ms']:.2f} ms | "
                    f"{'bitwise equal' if r['bitwise_equal'] else 'differ'} |")
    reload, low = d["reload_from_storage"], d["budgets"][0]
    rows.append(f"\nReload from storage + 1 inference: {reload['median_ms']:.2f} ms, "
                f"{reload['median_ms'] / low['switch_and_inference']['median_ms']:.1f}× the "
                f"smallest budget's switch, which holds "
                f"{d['separate_bytes'] / low['memory_bytes']:.1f}× less than the networks "
                f"stored separately (TwoLevel: 5.9× less memory, 52× faster than a reload).")
    return rows


def deploy(d, ten_file="bench_ten_networks.json"):
    """The deployment tables of a bench_deploy result; int8 accuracy is compared with the
    separate networks of `ten_file`, the ten-network run whose pools it deployed."""
    rows = []
    separate = (_load(ten_file) or {}).get("separate", {})
    for name, r in d["pools"].items():
        sep = r["separate_tflite_bytes"]
        rows += [f"**{name}** ({len(r['networks'])} networks): one stock TFLite file per network "
                 f"would take {sep['float32'] / 1e3:.0f} kB (float32), "
                 f"{sep['dynamic_int8'] / 1e3:.0f} kB (dynamic-range int8). int8 pages: "
                 f"{scales(r)}.", "",
                 "| file | bytes | pool | tables | other | min / mean accuracy (interpreter) | "
                 "same as the pool runtime |", "|---|---|---|---|---|---|---|"]
        for label in [lb for lb in DEPLOY_LABELS if f"tflite_{lb}" in r]:
            t = r[f"tflite_{label}"]
            acc = [v["accuracy"] for v in t["networks"].values()]
            same = all(abs(v["accuracy"] - r["runtime_accuracy"][label][n]) < 1e-9
                       for n, v in t["networks"].items())
            rows.append(f"| tflite {deploy_label(label, r)} | {t['file_bytes'] / 1e3:.0f} kB | "
                        f"{t['pool_bytes'] / 1e3:.0f} kB | {t['table_bytes'] / 1e3:.1f} kB | "
                        f"{t['other_bytes'] / 1e3:.1f} kB | {pct(min(acc))} / "
                        f"{pct(sum(acc) / len(acc))} | {'yes' if same else 'no'} |")
        rows += ["", "TFLM files: weights = the pool (int8: codes and a float32 scale a page) "
                 "+ the page tables as stored (an int8 plane and 2-bit high digits, four "
                 "to a byte, for pools up to 896 pages); against separate float32 = the "
                 "networks' float32 "
                 "weights / these weights.",
                 "", "| TFLM file | flash | weights: pool + tables | against separate float32 "
                 "| arena (all) | arena (largest alone) | 256 kB SRAM / 1 MB flash | worst logit "
                 "diff |", "|---|---|---|---|---|---|---|---|"]
        for label in [lb for lb in DEPLOY_LABELS if f"micro_{lb}" in r]:
            m = r.get(f"micro_{label}")
            if not m:
                continue
            alone = max(v for k, v in m["arena_bytes"].items() if k != "all")
            worst = max(a["max_abs_logit_diff"] for a in m["against_pool_runtime"].values())
            rows.append(f"| micro {deploy_label(label, r)} | {m['flash_bytes'] / 1e3:.0f} kB | "
                        f"{m['pool_bytes'] / 1e3:.1f} + {m['table_bytes'] / 1e3:.1f} kB | "
                        f"{m['compression']:.2f}x | "
                        f"{m['arena_bytes']['all'] / 1e3:.0f} kB | {alone / 1e3:.0f} kB | "
                        f"{'fits' if m['fits_256kB_sram'] else 'no'} / "
                        f"{'fits' if m['fits_1MB_flash'] else 'no'} | {worst:.1e} |")
        for label in ("int8", "int8_float_pages"):
            rows += _against_separate(r, separate, label, ten_file)
        rows.append("")
    return rows


DEPLOY_LABELS = ("float32", "int8", "int8_float_pages")


def with_float_pages(k) -> str:
    return f"int8 + {k} float page{'s' if k != 1 else ''}"


def deploy_label(label, r) -> str:
    return with_float_pages(r["float_pages"]) if label == "int8_float_pages" else label


def _against_separate(r, separate, label, ten_file) -> list:
    """A line on the int8 pages' (`label`) test accuracy against `separate`, the
    separate networks of `ten_file`, for a pool of those ten networks
    (the micro int8 file's logits are the int8 runtime's, checked above)."""
    accuracy = r["runtime_accuracy"].get(label)
    if not accuracy or set(accuracy) != set(separate):     # the ten networks only
        return []
    drops = {n: 100 * (separate[n]["test_accuracy"] - a) for n, a in accuracy.items()}
    worst = max(drops, key=drops.get)
    what = "int8 pages" if label == "int8" else deploy_label(label, r)
    return ["", f"{what} against the separate float32 networks "
            f"(test carves, [`{ten_file}`]({ten_file})): worst drop "
            f"{drops[worst]:.2f} pt ({worst}), mean {sum(drops.values()) / len(drops):.2f} pt."]


def int8_pages(d):
    tol = d["tolerance_points"]
    rows = []
    for label, r in d["pools"].items():
        comp = (f", {r['int8_compression']:.2f}x less than the networks stored separately "
                f"in float32" if r.get("int8_compression") else "")
        rows += [f"**{label}** ({len(r['networks'])} networks): float32 pool + tables "
                 f"{r['float_stored_bytes'] / 1e3:.0f} kB, int8 {r['int8_stored_bytes'] / 1e3:.0f}"
                 f" kB{comp}.", ""]
        qat, fp = "int8_qat" in r, r.get("float_pages")
        plain = "int8_max_scales" in r      # written with Fisher scales, max |w| beside
        fp_head = f" {with_float_pages(fp['chosen'])} |" if fp else ""
        rows += ["| network | float32 pool |" + (" int8, max-abs scales |" if plain else "")
                 + (" int8, Fisher scales |" if plain else " int8 (max-abs scales) |")
                 + fp_head
                 + (" int8, quantisation-aware | (its float32 pool) |" if qat else ""),
                 "|---|---|---|" + ("---|" if plain else "") + ("---|" if fp else "")
                 + ("---|---|" if qat else "")]
        for key, value in r["float"].items():
            name = key[:-len("_noisy")] + " (noisy, shifted)" if key.endswith("_noisy") else key
            row = f"| {name} | {pct(value)} |"
            if plain:
                row += f" {pct(r['int8_max_scales'][key])} |"
            row += f" {pct(r['int8_post_training'][key])} |"
            if fp:
                row += f" {pct(fp['test'][key])} |"
            if qat:
                row += f" {pct(r['int8_qat'][key])} | {pct(r['qat_float_pool'][key])} |"
            rows.append(row)
        rows.append("")
        changed = r.get("changed_predictions", {})
        for key, variant, what in (
                ("max_scales_lost", "int8_max_scales", "post-training, max-abs scales"),
                ("post_training_lost", "int8_post_training",
                 "post-training" + (", Fisher scales" if plain else "")),
                ("float_pages_lost", "int8_float_pages", "+ float pages"),
                ("qat_lost", "int8_qat", "quantisation-aware")):
            if key in r:
                lost = r[key]
                line = (f"- int8 {what}: worst {lost['worst']:.2f} pt, mean "
                        f"{lost['mean']:.2f} pt below the float32 pool; every network "
                        f"within {tol} pt: {'yes' if lost['within_tolerance'] else 'no'}")
                if "within_tolerance_task_carves" in lost:
                    line += (f" (on its own test carve, the noisy variants left out: worst "
                             f"{lost['worst_task_carves']:.2f} pt, "
                             f"{'yes' if lost['within_tolerance_task_carves'] else 'no'})")
                if variant in changed:
                    c = changed[variant]
                    line += (f"; {c['total']} of {sum(c['examples'].values())} test "
                             f"predictions differ from the float pool's")
                rows.append(line + ".")
        if fp:
            comp = (f", {fp['compression']:.2f}x less than separate float32"
                    if fp.get("compression") else "")
            on = "validation" + (" joined with the fresh data" if "fresh" in r else "")

            def selection(v):
                return v.get("selection_lost", v["validation_lost"])
            tried = ", ".join(f"{k}: {selection(v)['worst']:.2f}" + (
                f" (validation alone {v['validation_lost']['worst']:.2f})"
                if "selection_lost" in v else "") for k, v in fp["tried"].items())
            met = selection(fp["tried"][str(fp["chosen"])])["within_tolerance"]
            why = (f"the smallest tried whose every network is within {tol} pt on {on}"
                   if met else f"none tried kept every network within {tol} pt on "
                   f"{on}, so the one with the smallest worst drop there")
            kept = (f"the {fp['chosen']} page(s) {fp['pages']} whose int8 rounding costs "
                    f"most (Fisher-weighted) kept float32" if fp["chosen"] else "none kept")
            rows.append(f"- Float pages: {kept}, {fp['stored_bytes'] / 1e3:.1f} kB "
                        f"stored{comp}; budget: {why} (worst drop by budget: {tried}).")
        if "fresh" in r:
            rows += fresh_data(r["fresh"], tol)
        if qat:
            q = r["qat"]
            cfg = q["config"]
            rows.append(f"- Quantisation-aware: {cfg['rounds']} x {cfg['steps']} joint steps "
                        f"(peak learning rate {cfg['learning_rate']:g}, distill "
                        f"{cfg['distill']}), best round {q['best_round']} on validation, "
                        f"{q['seconds']:.0f} s.")
        rows.append("")
    return rows


def fresh_data(fresh, tol) -> list:
    """Lines of bench_int8's measurements on --fresh_data_dir."""
    total = sum(fresh["examples"].values())
    rows = [f"- Fresh held-out data (`{fresh['data_dir']}`, every carve: "
            + ", ".join(f"{k} {n}" for k, n in fresh["examples"].items())
            + " examples), float32 pool: "
            + ", ".join(f"{k} {pct(v)}" for k, v in fresh["float"].items()) + "."]
    for key, variant, what in (("max_scales_lost", "int8_max_scales", "max-abs scales"),
                               ("post_training_lost", "int8_post_training", "post-training"),
                               ("float_pages_lost", "int8_float_pages", "+ float pages"),
                               ("qat_lost", "int8_qat", "quantisation-aware")):
        if key in fresh:
            lost = fresh[key]
            rows.append(f"  - int8 {what} there: worst {lost['worst']:.2f} pt "
                        f"({max(lost['per_network'], key=lost['per_network'].get)}), every "
                        f"network within {tol} pt: {'yes' if lost['within_tolerance'] else 'no'}"
                        f"; {fresh['changed_predictions'][variant]['total']} of {total} "
                        f"predictions differ from the float pool's.")
    return rows


def balanced(config) -> str:
    """', balance η' of an optimisation config that balanced its losses, else ''."""
    return f", balance {config['balance']:g}" if config.get("balance") else ""


TEN_METHODS = {"nwv": "NWV alone", "mtz_nwv": "MTZ + NWV"}   # bench_ten_networks' keys


def scales(entry) -> str:
    """The int8 page-scale rule of a result entry: results written before the
    Fisher-chosen scales record none and used max |w| / 127 ("max-abs")."""
    return "Fisher scales" if (entry or {}).get("int8_scales") == "fisher" else "max-abs scales"


def ten_networks(d):
    methods = d.get("methods", {})
    labels = TEN_METHODS
    head = "| network | task | separate |" + "".join(
        f" {labels[k]} |" for k in methods) + "".join(
        f" {labels[k]} int8 ({scales(m)}) |" for k, m in d.get("int8", {}).items())
    rows = [f"Ten float32 networks: {d['separate_bytes'] / 1e6:.2f} MB stored separately."]
    if d.get("stale_removed"):
        rows.append(f"\n{d['stale_removed']}")
    zipped = d.get("flags", {}).get("zip_families")
    if zipped and "mtz_nwv" in methods:
        left = sorted({s["family"] for s in d["separate"].values()} - set(zipped))
        rows.append(f"\nMTZ + NWV zips {', '.join(zipped)}; the networks of "
                    f"{', '.join(left) or 'no other family'} are paged as leftovers (NWV).")
    rows += ["", head, "|---|---|---|" + "---|" * (len(methods) + len(d.get("int8", {})))]
    for name, sep in d["separate"].items():
        cells = [pct(sep["test_accuracy"])]
        cells += [pct(m["test_accuracy"][name]) for m in methods.values()]
        cells += [pct(m["test_accuracy"][name]) for m in d.get("int8", {}).values()]
        rows.append(f"| {name} | {sep['task']} | " + " | ".join(cells) + " |")
        if sep.get("test_noisy") is not None:
            noisy = [pct(sep["test_noisy"])]
            noisy += [pct(m["test_accuracy"][f"{name}_noisy"]) for m in methods.values()]
            noisy += [pct(m["test_accuracy"][f"{name}_noisy"])
                      for m in d.get("int8", {}).values()]
            rows.append(f"| {name} (noisy, shifted) | | " + " | ".join(noisy) + " |")
    rows += ["", "| pool | stored bytes | compression | mean drop (points) | worst drop | "
             "optimisation (best round) | seconds |", "|---|---|---|---|---|---|---|"]
    for key, m in methods.items():
        o = m["optimisation"]
        rows.append(f"| {labels[key]} | {m['pool']['stored_bytes'] / 1e3:.0f} kB | "
                    f"{m['compression']:.2f}x | {m['drops']['mean']:.2f} pt | "
                    f"{m['drops']['worst']:.2f} pt | {o['config']['rounds']} x "
                    f"{o['config']['steps']} steps{balanced(o['config'])} ({o['best_round']}) "
                    f"| {m['seconds']:.0f} |")
    for key, m in d.get("int8", {}).items():
        rows.append(f"| {labels[key]}, int8 pages ({scales(m)}) | "
                    f"{m['stored_bytes'] / 1e3:.0f} kB | "
                    f"{m['compression']:.2f}x | {m['drops']['mean']:.2f} pt | "
                    f"{m['drops']['worst']:.2f} pt | (post-training) | |")
    other = d.get("compare_distill") or d.get("labels_only")
    if other:
        beta = other.get("distill", 0.0)
        what = f"β = {beta:g}" if beta else "labels only (no distillation)"
        rows.append(f"| MTZ + NWV, {what} | "
                    f"{other['pool']['stored_bytes'] / 1e3:.0f} kB | | "
                    f"{other['drops']['mean']:.2f} pt | {other['drops']['worst']:.2f} pt | "
                    f"{other['optimisation']['best_round']} | |")
    rows += ["", "| pool | mean validation accuracy after each round |", "|---|---|"]
    for key, m in methods.items():
        rounds = m["optimisation"].get("mean_val_accuracy_per_round", [])
        rows.append(f"| {labels[key]} | " + ", ".join(pct(a) for a in rounds) + " |")
    if d.get("curve"):
        rows += ["", "| curve point | compression | mean drop | worst drop | steps |",
                 "|---|---|---|---|---|"]
        for c in sorted(d["curve"], key=lambda c: (c["method"], c["compression"])):
            rows.append(f"| {labels[c['method']]} | {c['compression']:.2f}x | "
                        f"{c['drops']['mean']:.2f} pt | {c['drops']['worst']:.2f} pt | "
                        f"{c['optimisation_steps']} |")
    timing = methods.get("mtz_nwv", {}).get("family_timing", {})
    if timing:
        rows += ["", "| family (batch 64) | all members in one call | one at a time | speedup |",
                 "|---|---|---|---|"]
        for family, t in timing.items():
            rows.append(f"| {family} ({len(t['members'])}) | {t['one_call_ms']:.1f} ms | "
                        f"{t['one_at_a_time_ms']:.1f} ms | {t['speedup']:.2f}x |")
    groups = d.get("zipped_groups", {})
    retrained = {k: g["steps"] for k, g in groups.items() if g["steps"]}
    if retrained and "mtz_nwv" in methods:
        rows.append("\nMTZ + NWV's zipping retrained each family after every zipped layer "
                    "(distilled), on top of the joint budget: " + ", ".join(
                        f"{k} {v} steps" for k, v in retrained.items()) + ".")
    if groups and "mtz_nwv" in methods:
        rows.append("Zipped groups before paging (validation accuracy, separate network in "
                    "brackets): " + "; ".join(
                        f"{name} {100 * acc:.2f}% ({100 * d['separate'][name]['val_accuracy']:.2f}%)"
                        for g in groups.values() for name, acc in g["val_accuracy"].items()) + ".")
    rows.append(f"\nWall time {d['seconds'] / 60:.0f} min (separate networks cached; Fishers "
                f"and zips {d['seconds_fisher_and_zip']:.0f} s).")
    return rows


def ten_networks_equal_budget(d):
    e = d["equal_budget"]
    labels = TEN_METHODS
    pools = e.get("pools", {})
    steps = ""
    flags = d.get("flags", {})
    if flags.get("rounds") and flags.get("steps"):
        steps = f" ({flags['rounds']} x {flags['steps']} steps of {flags.get('batch_size')})"
    rows = [f"Each network alone, trained on from its separate weights with the joint "
            f"optimisation's budget and recipe{steps}, nothing shared, its best round "
            f"selected on its own validation accuracy: the control for what the pooled "
            f"networks owe to extra training rather than to sharing. The pools are the "
            f"ones saved by the main run.", "",
            "| network | separate | alone, equal budget (best round) |" + "".join(
                f" {labels[k]} | drop vs alone |" for k in pools),
            "|---|---|---|" + "---|---|" * len(pools)]
    for name, sep in d["separate"].items():
        alone = e["networks"][name]
        cells = [pct(sep["test_accuracy"]),
                 f"{pct(alone['test_accuracy'])} ({alone['best_round']})"]
        for p in pools.values():
            cells += [pct(p["test_accuracy"][name]), f"{p['drops']['per_network'][name]:.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows += ["", "| against the alone networks | mean drop | worst drop |", "|---|---|---|",
             f"| separate networks | {e['separate_drops']['mean']:.2f} pt | "
             f"{e['separate_drops']['worst']:.2f} pt |"]
    rows += [f"| {labels[k]} | {p['drops']['mean']:.2f} pt | {p['drops']['worst']:.2f} pt |"
             for k, p in pools.items()]
    return rows


def distributed(d):
    m = d["machine"]
    rows = [f"{len(d['networks'])} networks on {m['cpu_model']} ({m['usable_cpus']} usable "
            f"CPUs, GPUs: {', '.join(m['gpus']) or 'none'}).", "",
            "| configuration | replicas | steps/s | s per round | speedup |",
            "|---|---|---|---|---|"]
    for name, r in d["runs"].items():
        if "steps_per_second" not in r:
            rows.append(f"| {name} | | {r.get('error') or r.get('skipped')} | | |")
            continue
        rows.append(f"| {name} | {r['replicas']} | {r['steps_per_second']:.2f} | "
                    f"{r['seconds_per_round']:.1f} | {d['speedup'].get(name, float('nan')):.2f}x |")
    rows.append(f"\nEvery configuration ends with the same pool (SHA-1): "
                f"{'yes' if d['same_pool'] else 'no'}.")
    return rows


SECTIONS = [
    ("Main job: `scripts/demo.py` with default settings", "demo/summary.json", demo,
     ["demo/accuracy.png", "demo/switching.png"]),
    ("MTZ: Table 2.1 on real MNIST", "bench_mtz_lenet.json", mtz_lenet, ["mtz_layers.png"]),
    ("MTZ: scoring and pairing speed (VGG-16 shapes)", "bench_mtz_speed.json", mtz_speed, []),
    ("NWV: page matching of the five reference networks", "bench_nwv_matching.json",
     nwv_matching, ["nwv_fisher.png"]),
    ("NWV: switching and execution", "nwv_switch.json", nwv_switch, ["nwv_switch.png"]),
    ("NWV: page size, λ and optimisation modes", "nwv_sweeps.json", nwv_sweeps,
     ["nwv_page_size.png", "nwv_convergence.png"]),
    ("Two-level pages: RAM budget against switch latency", "bench_nwv_resident.json",
     resident, ["bench_nwv_resident.png"]),
    ("Ten networks: NWV alone against MTZ + NWV (defaults: 8x, 24 x 400 joint steps, "
     "labels only, balanced losses; separate networks trained on the AVX2-only machine)",
     "bench_ten_networks.json", ten_networks, ["bench_ten_networks.png"]),
    ("Ten networks at 8.25x (24 x 400 joint steps, labels only, balanced losses) on the same "
     "AVX2 separate networks", "bench_ten_networks_8x25_avx2.json", ten_networks, []),
    ("Ten networks at 8.5x, MTZ + NWV (24 x 400 joint steps, labels only, balanced losses) "
     "on the same AVX2 separate networks", "bench_ten_networks_8x5_avx2.json", ten_networks,
     []),
    ("Ten networks at 8x (24 x 400 joint steps, labels only, balanced losses) on the "
     "separate networks the AVX-512 machine trained: every ten-network section below uses "
     "those networks", "bench_ten_networks_avx512.json", ten_networks,
     ["bench_ten_networks_avx512.png"]),
    ("Ten networks, control: each network alone with the joint budget (against the 8x pools "
     "of bench_ten_networks_avx512.json)",
     "bench_ten_networks_equal_budget.json", ten_networks_equal_budget, []),
    ("Ten networks, budget: NWV alone and MTZ + NWV (digits zipped) at 8x with two thirds "
     "of the default steps (16 x 400 joint steps, the default before 24 x 400; labels only, "
     "balanced losses)",
     "bench_ten_networks_rounds16.json", ten_networks, []),
    ("Ten networks, budget: NWV alone and MTZ + NWV (digits zipped) at 8x with a sixth of "
     "the default steps (8 x 200 joint steps, labels only, balanced losses)",
     "bench_ten_networks_budget4x.json", ten_networks, []),
    ("Ten networks, ablation: MTZ + NWV at 8x trained on labels only against distillation "
     "(beta 0.7) at equal budget (24 x 400 joint steps, balanced losses; run on its own, "
     "without NWV alone before it)",
     "bench_ten_networks_distill.json", ten_networks, []),
    ("Ten networks, ablation: MTZ + NWV at 8x zipping the digits and the keywords (8 x 200 "
     "joint steps)", "bench_ten_networks_zip_digits_keywords.json", ten_networks, []),
    ("Ten networks, ablation: MTZ + NWV at 8x zipping every family (8 x 200 joint steps)",
     "bench_ten_networks_zip_all.json", ten_networks, []),
    ("Ten networks, a point for int8 deployment: MTZ + NWV built and optimised at 8.5x "
     "(float32; defaults otherwise), then int8 pages",
     "bench_ten_networks_8x5.json", ten_networks, []),
    ("Ten networks, a point for int8 deployment: MTZ + NWV at 8.25x on the AVX-512 "
     "machine's separate networks, then int8 pages", "bench_ten_networks_8x25.json",
     ten_networks, []),
    ("int8 pages of the demo pool and the default ten-network pools: max-abs against "
     "Fisher scales, float pages, quantisation-aware", "bench_int8.json", int8_pages, []),
    ("int8 pages of the 8.25x MTZ + NWV pool (AVX2 separate networks)",
     "bench_int8_8x25_avx2.json", int8_pages, []),
    ("int8 pages of the 8.5x MTZ + NWV pool (AVX2 separate networks)",
     "bench_int8_8x5_avx2.json", int8_pages, []),
    ("int8 pages of the 8x ten-network pools and the demo pool (AVX-512 machine)",
     "bench_int8_avx512.json", int8_pages, []),
    ("Deployment: one TFLite / TFLM file per pool (the demo pool and the default "
     "ten-network pools)", "bench_deploy.json",
     deploy, []),
    ("Deployment of the 8.25x MTZ + NWV pool (AVX2 separate networks)",
     "bench_deploy_8x25_avx2.json",
     functools.partial(deploy, ten_file="bench_ten_networks_8x25_avx2.json"), []),
    ("Deployment of the 8.5x MTZ + NWV pool (AVX2 separate networks)",
     "bench_deploy_8x5_avx2.json",
     functools.partial(deploy, ten_file="bench_ten_networks_8x5_avx2.json"), []),
    ("Scaling out: joint optimisation under tf.distribute", "bench_distributed.json",
     distributed, []),
    ("Zip + virtualize: task switching and simultaneous execution", "bench_zip_switch.json",
     zip_switch, ["zip_switch.png"]),
]


def _machine(d) -> str:
    """'; measured on <cpu> ...' for a result that recorded its machine, else ''."""
    m = d.get("machine") if isinstance(d, dict) else None
    if not m or not {"cpu", "cores", "simd", "tensorflow"} <= set(m):   # their own fields
        return ""
    simd = "/".join(m["simd"]) or "no AVX2"
    return f"; measured on {m['cpu']} ({m['cores']} cores, {simd}), TensorFlow {m['tensorflow']}"


def render() -> list:
    """The lines of RESULTS.md: a header, then one section per benchmark that wrote
    its JSON (table and figures that exist)."""
    lines = ["# Benchmark results", "",
             "Generated by `python scripts/make_results.py` from the JSON files each "
             "`scripts/bench_*.py` wrote (measured on the 2-core CPU machine; see each JSON "
             "for the exact command, flags and seeds). Accuracies are on the test carve of "
             "../shared's training images; checkpoints were selected on validation.", ""]
    for title, file, section, figures in SECTIONS:
        d = _load(file)
        if d is None:
            continue
        lines += [f"## {title}", "", f"Source: [`{file}`]({file})" + _machine(d), ""]
        lines += section(d)
        lines += [""] + [f"![{f}]({f})" for f in figures
                         if os.path.exists(os.path.join(FLAGS.results, f))] + [""]
    return lines


def main(argv):
    del argv
    lenet = _load("bench_mtz_lenet.json")
    if lenet:
        mtz_layers_figure(lenet)
    path = os.path.join(FLAGS.results, "RESULTS.md")
    with open(path, "w") as handle:
        handle.write("\n".join(render()) + "\n")
    print(f"wrote {path}")

if __name__ == "__main__":
    _cli.run(main)
