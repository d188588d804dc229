"""The accuracy section's summary, verdicts, targets, plots and Markdown."""

import numpy as np

from benchmarks import acc_connection, acc_filters, acc_robust, common
from benchmarks.acc_stats import fmt, paired, verdict

SECTION = "accuracy"
WITHIN = 0.5  # points: "without accuracy loss"


def _mean(values):
    return float(np.mean(values)) if len(values) else float("nan")


def _rows(result, part):
    return [r for r in result["rows"] if r.get("part") == part]


def _by_seed(rows, key):
    return {r["seed"]: r[key] for r in rows}


def _pair(rows_a, key_a, rows_b, key_b):
    a, b = _by_seed(rows_a, key_a), _by_seed(rows_b, key_b)
    seeds = sorted(set(a) & set(b))
    return paired([a[s] for s in seeds], [b[s] for s in seeds])


def summarize(result):
    dense = _rows(result, "dense")
    summary = {"dense_test": _mean([r["test"] for r in dense]),
               "control_p2_test": _mean([r["control_p2_test"] for r in dense]),
               "control_ft_test": _mean([r["control_ft_test"] for r in dense])}
    conn = _rows(result, "connection")
    cells = []
    for sparsity in sorted({r["sparsity"] for r in conn}):
        at = {m: [r for r in conn if r["method"] == m and r["sparsity"] == sparsity]
              for m in acc_connection.METHODS}
        for method, runs in at.items():
            if not runs:
                continue
            cell = {"method": method, "sparsity": sparsity,
                    "test": float(np.mean([r["test"] for r in runs])),
                    "connection_sparsity": float(np.mean([r["connection_sparsity"] for r in runs])),
                    "mac_reduction": float(np.mean([r["mac_reduction"] for r in runs])),
                    "vs_control": _pair(runs, "test", runs, "control_test")}
            if method != "kernel_norm" and at["kernel_norm"]:
                cell["vs_kernel_norm"] = _pair(runs, "test", at["kernel_norm"], "test")
            cells.append(cell)
    summary["connection"] = cells
    summary["highest_within"] = {m: acc_connection.highest_within(conn, m, WITHIN)
                                 for m in acc_connection.METHODS}
    filt, equal, shots = _rows(result, "filter"), _rows(result, "equal"), _rows(result, "oneshot")
    seen = {r["criterion"] for r in filt + equal + shots}
    criteria = [c for c in acc_filters.CRITERIA if c in seen] + sorted(
        seen - set(acc_filters.CRITERIA))
    summary["filter"] = []
    for criterion in criteria:
        for floor in sorted({r["floor"] for r in filt}):
            runs = [r for r in filt if r["criterion"] == criterion and r["floor"] == floor]
            if runs:
                summary["filter"].append({
                    "criterion": criterion, "floor": floor,
                    "mac_reduction": float(np.mean([r["mac_reduction"] for r in runs])),
                    "oneshot_val": float(np.mean([r["oneshot_val"] for r in runs])),
                    "test": float(np.mean([r["test"] for r in runs])),
                    "vs_control": _pair(runs, "test", runs, "control_test")})
    # keyed by str(points): the summary goes through JSON, which turns float keys into strings
    summary["flops_at"] = {c: {str(p): acc_filters.flops_at_drop(filt, c, p) for p in (0.5, 1.0)}
                           for c in criteria if any(r["criterion"] == c for r in filt)}
    reference = [r for r in equal if r["criterion"] == "dscore"]
    summary["equal"] = [{
        "criterion": c, "mac_reduction": float(np.mean([r["mac_reduction"] for r in runs])),
        "test": float(np.mean([r["test"] for r in runs])),
        "vs_control": _pair(runs, "test", runs, "control_test"),
        "dscore_minus": _pair(reference, "test", runs, "test")}
        for c in criteria for runs in [[r for r in equal if r["criterion"] == c]] if runs]
    summary["oneshot"] = [{
        "criterion": c, "ratio": runs[0]["ratio"],
        "stale": float(np.mean([r["test_stale"] for r in runs])),
        "recalibrated": float(np.mean([r["test_recalibrated"] for r in runs])),
        "gain": _pair(runs, "test_recalibrated", runs, "test_stale")}
        for c in criteria for runs in [[r for r in shots if r["criterion"] == c]] if runs]
    deploy = _rows(result, "deploy")
    if deploy:
        summary["deploy"] = {
            "kd_minus_plain": _pair(deploy, "test", deploy, "plain_test"),
            "ptq_minus_float": _pair(deploy, "int8_ptq_test", deploy, "float_test"),
            "qat_minus_float": _pair(deploy, "int8_qat_test", deploy, "float_test"),
            "qat_minus_qat_float": _pair(deploy, "int8_qat_test", deploy, "qat_float_test"),
            "float_test": float(np.mean([r["float_test"] for r in deploy]))}
    summary["robust"] = [{k: r.get(k) for k in ("kind", "method", "sparsity", "floor", "test",
                                                 "control_test", "mac_reduction",
                                                 "connection_sparsity")}
                         for r in _rows(result, "robust")]
    summary["verdicts"] = verdicts(summary)
    return summary


def verdicts(summary):
    out = []
    cells = {(c["method"], c["sparsity"]): c for c in summary["connection"]}
    ss96 = cells.get(("synaptic_strength", 0.96))
    if ss96:
        out.append({"claim": "Synaptic Strength: 96% of connections pruned without accuracy "
                             f"loss (within {WITHIN} pt of the control)",
                    "evidence": fmt(ss96["vs_control"]),
                    "verdict": verdict(ss96["vs_control"], -WITHIN)})
    for (method, sparsity), cell in sorted(cells.items(), key=lambda kv: kv[0][1]):
        if method == "synaptic_strength" and "vs_kernel_norm" in cell:
            out.append({"claim": f"Synaptic Strength keeps more accuracy than kernel norm at "
                                 f"{sparsity:.0%} of connections",
                        "evidence": fmt(cell["vs_kernel_norm"]),
                        "verdict": verdict(cell["vs_kernel_norm"], 0.0)})
    best = (summary["flops_at"].get("dscore") or {}).get("0.5")
    if "dscore" in summary["flops_at"]:
        run = next((f for f in summary["filter"] if best and f["criterion"] == "dscore"
                    and f["floor"] == best["floor"]), None)
        out.append({"claim": "D-Score pipeline: >= 60% of FLOPs removed within 0.5 pt "
                             "(paper: 64.8% on VGG-16/CIFAR-10)",
                    "evidence": (f"{best['mac_reduction']:.1%} MACs off at "
                                 f"{fmt(run['vs_control'])} pt" if best else
                                 "no floor stayed within 0.5 pt"),
                    "verdict": ("holds" if best and best["mac_reduction"] >= 0.6 and
                                verdict(run["vs_control"], -WITHIN) == "holds" else
                                "does not hold" if not best or best["mac_reduction"] < 0.6 else
                                "not resolved")})
    for item in summary["equal"]:
        if item["criterion"] != "dscore":
            out.append({"claim": f"D-Score picks better filters than {item['criterion']} at "
                                 "equal per-group ratios",
                        "evidence": fmt(item["dscore_minus"]),
                        "verdict": verdict(item["dscore_minus"], 0.0)})
    return out


def targets(result):
    summary = result["summary"]
    entries = []
    highest = summary["highest_within"].get("synaptic_strength")
    entries.append(common.target_entry(SECTION, "SS connection sparsity within 0.5 pt of the "
                                       "control", highest or 0.0, 0.97, ">="))
    best = (summary["flops_at"].get("dscore") or {}).get("0.5")
    entries.append(common.target_entry(SECTION, "D-Score pipeline MAC reduction within 0.5 pt",
                                       best["mac_reduction"] if best else 0.0, 0.60, ">="))
    deploy = summary.get("deploy")
    if deploy:
        entries.append(common.target_entry(SECTION, "int8 (post-training) minus float, points",
                                           deploy["ptq_minus_float"]["mean"], -0.3, ">="))
        entries.append(common.target_entry(SECTION, "int8 (QAT) minus float, points",
                                           deploy["qat_minus_float"]["mean"], -0.3, ">="))
    return entries


def plots(result, ctx):
    plt = common.pyplot()
    summary, out = result["summary"], []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, marker in zip(acc_connection.METHODS, ("o", "s", "^")):
        cells = [c for c in summary["connection"] if c["method"] == method]
        if cells:
            ax.errorbar([c["sparsity"] * 100 for c in cells],
                        [c["vs_control"]["mean"] for c in cells],
                        yerr=[0 if np.isnan(c["vs_control"]["half_width"]) else
                              c["vs_control"]["half_width"] for c in cells],
                        marker=marker, capsize=3, label=method)
    ax.axhline(0, color="black", lw=1)
    ax.axhspan(-WITHIN, 0, color="gray", alpha=0.2, label=f"within {WITHIN} pt")
    ax.set_xlabel("connections pruned (%)")
    ax.set_ylabel("test accuracy minus control (pt), 95% CI")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(common.save_figure(fig, ctx.path("accuracy_connections.png")))
    if summary["filter"]:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for criterion in dict.fromkeys(f["criterion"] for f in summary["filter"]):
            cells = [f for f in summary["filter"] if f["criterion"] == criterion]
            ax.plot([f["mac_reduction"] * 100 for f in cells],
                    [f["vs_control"]["mean"] for f in cells], marker="o", label=criterion)
        ax.axhline(0, color="black", lw=1)
        ax.axhspan(-WITHIN, 0, color="gray", alpha=0.2)
        ax.set_xlabel("MACs removed (%)")
        ax.set_ylabel("test accuracy minus control (pt)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        out.append(common.save_figure(fig, ctx.path("accuracy_filters.png")))
    return out


def _pct(v):
    return f"{v * 100:.2f}"


def markdown(result):
    s, summary = result["settings"], result["summary"]
    lines = [
        f"{'Fashion-MNIST 55k/5k/10k' if s['data'] == 'fashion_mnist' else 'digits'}; "
        f"{s['arch']} {s['widths']}; seeds {s['seeds']}; dense {s['dense_epochs']} epochs (SGD "
        "Nesterov, cosine from 0.05); every later phase a cosine restart from 0.01. "
        "Differences are test accuracy minus the **equal-budget dense control**, in points, "
        "mean [95% CI] over seeds (paired). The stages are cached and resumable: their compute "
        f"time adds up to {result.get('stage_seconds', 0.0) / 3600:.1f} h on this 2-core machine "
        "(the section's own time above is only what this run computed).", "",
        f"Dense {_pct(summary['dense_test'])}%; control after {s['phase1_epochs']}+"
        f"{s['ft_epochs']} more epochs {_pct(summary['control_p2_test'])}%; control after "
        f"{s['ft_epochs']} more epochs {_pct(summary['control_ft_test'])}%.", "",
        "### Verdicts", "",
        common.md_table(["claim", "evidence (pt)", "verdict"],
                        [[v["claim"], v["evidence"], v["verdict"]] for v in summary["verdicts"]]),
        "", f"### (a) Connection pruning ({s['phase1_epochs']} epochs L1/plain + "
        f"{s['ft_epochs']} fine-tuning; lambda = {result['lambda']:g} chosen on validation)", "",
        common.md_table(["lambda", "val acc at sweep sparsity", "strengths zero after L1"],
                        [[f"{w['lambda']:g}", _pct(w["val"]),
                          f"{(w['strength_sparsity_after_l1'] or 0):.1%}"]
                         for w in result["lambda_sweep"]]), "",
        common.md_table(["sparsity", "method", "test acc", "vs control (pt)", "vs kernel norm",
                         "measured sparsity", "MACs off after shrink"],
                        [[f"{c['sparsity']:.0%}", c["method"], _pct(c["test"]),
                          fmt(c["vs_control"]), fmt(c["vs_kernel_norm"]) if "vs_kernel_norm" in c
                          else "", f"{c['connection_sparsity']:.1%}", f"{c['mac_reduction']:.1%}"]
                         for c in summary["connection"]]), "",
        "Highest sparsity with paired mean **validation** difference >= -0.5 pt (selected on "
        "validation; the table reports its test difference): " + "; ".join(
            f"{m}: {'none' if v is None else f'{v:.0%}'}" for m, v in
            summary["highest_within"].items()) + ".", "",
        "### (b) D-Score pipeline (sensitivity on validation with BN recalibration, floors = "
        "baseline minus 2/5/10 pt, parallel pruning, fine-tuning)", "",
        common.md_table(["criterion", "floor (pt)", "MACs off", "one-shot val", "test acc",
                         "vs control (pt)"],
                        [[f["criterion"], f"{f['floor'] * 100:g}", f"{f['mac_reduction']:.1%}",
                          _pct(f["oneshot_val"]), _pct(f["test"]), fmt(f["vs_control"])]
                         for f in summary["filter"]]), "",
        "Floors selected on validation (paired mean validation drop within 0.5 / 1 pt); "
        "the test drop at the selected floor is reported beside it:", "",
        common.md_table(["criterion", "MACs off within 0.5 pt (val)", "within 1 pt (val)"],
                        [[c] + [f"{v[p]['mac_reduction']:.1%} (floor {v[p]['floor'] * 100:g}; "
                                f"test drop {v[p]['test_drop_points']:.2f} pt)"
                                if v[p] else "none" for p in ("0.5", "1.0")]
                         for c, v in summary["flops_at"].items()]), "",
        "Equal per-group ratios (D-Score's at the middle floor):", "",
        common.md_table(["criterion", "MACs off", "test acc", "vs control (pt)",
                         "D-Score minus this (pt)"],
                        [[e["criterion"], f"{e['mac_reduction']:.1%}", _pct(e["test"]),
                          fmt(e["vs_control"]), fmt(e["dscore_minus"])]
                         for e in summary["equal"]]), "",
        f"One-shot at {s['oneshot_ratio']:.0%} of every group's filters, no fine-tuning:", "",
        common.md_table(["criterion", "stale BN statistics", "recalibrated", "gain (pt)"],
                        [[o["criterion"], _pct(o["stale"]), _pct(o["recalibrated"]),
                          fmt(o["gain"])] for o in summary["oneshot"]]),
    ]
    missing = result.get("missing_stages") or []
    if missing:
        lines[0:0] = [f"**Partial run**: {len(missing)} stage(s) had not run when this report was "
                      "written (`TFSYNAPSE_BENCH_CACHED_ONLY=1`), among them "
                      + ", ".join(f"`{m}`" for m in missing[:6])
                      + ("" if len(missing) <= 6 else ", ...")
                      + ". Everything below uses only finished stages.", ""]
    deploy = summary.get("deploy")
    if deploy:
        lines += ["", f"### (c) Distillation and int8 (Synaptic Strength at "
                  f"{s['kd_sparsity']:.0%})", "",
                  common.md_table(["comparison", "difference (pt)"], [
                      ["fine-tuned with distillation minus without", fmt(deploy["kd_minus_plain"])],
                      ["int8 post-training quantisation minus float", fmt(deploy["ptq_minus_float"])],
                      [f"int8 after {s['qat_epochs']} epoch(s) of QAT minus float (before QAT)",
                       fmt(deploy["qat_minus_float"])],
                      ["int8 after QAT minus the QAT model's own float accuracy",
                       fmt(deploy["qat_minus_qat_float"])]]),
                  "", "QAT adds an epoch of training, so its gain over the float model before "
                  "QAT mixes quantisation with extra training; the last row is the "
                  "quantisation error alone."]
    if summary.get("robust"):
        lines += ["", f"### (d) Robustness check: {acc_robust.ARCH}, seed {acc_robust.SEED} "
                  "(one seed: no interval, a sanity check)", "",
                  common.md_table(
                      ["arm", "test acc", "control", "difference (pt)", "MACs off"],
                      [[(f"{r['method']} at {r['sparsity']:.0%} of connections"
                         if r["kind"] == "connection" else
                         f"{r['method']} pipeline, floor -{r['floor'] * 100:g} pt"),
                        _pct(r["test"]), _pct(r["control_test"]),
                        f"{(r['test'] - r['control_test']) * 100:+.2f}",
                        f"{r['mac_reduction']:.1%}"] for r in summary["robust"]])]
    return "\n".join(lines)
