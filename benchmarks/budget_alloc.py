"""Budget (allocation): at equal measured latency, does sensitivity-guided allocation keep more
accuracy than one uniform ratio?

The accuracy benchmark's models and data (the VGG-style CNN on Fashion-MNIST, and where its
dense seeds can be trained the ResNet-20-style net of its robustness check; three dense seeds
each, its recipe and stage cache). Per model, seed and latency budget (a fraction of the dense model's measured fp32
LiteRT latency, 1 thread; ``round_to=None`` in both arms: the reachable channel multiple
measured fastest per MAC, the same for both since it is measured once per model):

* ``uniform``: ``prune_to_budget(latency_ms=budget)`` with one ratio for every group;
* ``guided``: the same budget with ``sensitivity=`` the seed's 'l1' sensitivity table (measured
  on the validation split, BatchNormalization recalibrated in every trial; the accuracy
  benchmark's own table), the greedy spending the fitted latency model's predicted ms;

both with criterion 'l1' and BatchNormalization recalibrated on training images; then the
accuracy benchmark's fine-tuning (``ft_epochs``, pruned channels kept at zero), shrink, test.
The claim is read from the paired difference guided - uniform over the seeds (95% CI), after
fine-tuning and, beside it, for the model ``prune_to_budget`` returns (one-shot, BN
recalibrated, tested before any fine-tuning: what the allocation alone decides); both
arms' shrunk models are also re-timed interleaved, to show they run equally fast. Beside it,
``accuracy_by_macs`` asks how much of the fine-tuned accuracy the MAC reduction alone explains
over every allocation the accuracy cache holds for the model.
"""

import numpy as np

from benchmarks import acc_filters, acc_robust, acc_stats, common
from benchmarks import acc_setup as S

SECTION = "budget_alloc"


def settings(quick):
    # quick mode's digits model runs in ~15 microseconds, below what LiteRT timing resolves:
    # its smoke run uses a MAC budget instead
    # full mode: the VGG at 30% of the dense latency, where the allocation has the most to
    # decide (each arm's fine-tuning takes 6-7 minutes on this host). The ResNet-20-style net
    # of the robustness check ("resnet20": (0.4,)) runs too where its dense seeds 1-2 can be
    # trained: 15 epochs take 1-2 hours each on this host, and one fine-tuning 12 minutes
    # oneshot: budgets whose arms are only tested as prune_to_budget returns them (BN
    # recalibrated, not fine-tuned; a minute per arm), over oneshot_seeds (None: the accuracy
    # benchmark's). Three seeds left the 95% CI unresolved with every seed positive, so seed 3
    # trains a dense model for this comparison only (9-12 minutes in the cache's first runs,
    # 62 on this host on 2026-12-02; seed 4 was planned too and dropped for time, before seed
    # 3's guided arm was tested)
    return {"budget": "macs" if quick else "latency_ms",
            "models": {"vgg": (0.5,)} if quick else {"vgg": (0.3,)},
            "oneshot": {"vgg": (0.5,)} if quick else {"vgg": (0.3, 0.5)},
            "oneshot_seeds": None if quick else (0, 1, 2, 3),
            "threads": 1, "retime_rounds": 5, "round_to": None}


def _dense_cost(run, seed, dense, kind, threads):
    from tfsynapse.graph import count_macs
    from tfsynapse.budget import meter as budget_meter

    if kind == "macs":
        return count_macs(dense)

    def compute():
        return {"ms": budget_meter.latency(None, None, threads)(dense)}

    return run.cache.result(f"{run.arch}/seed{seed}/latency_dense_t{threads}", compute)["ms"]


def _search(run, seed, dense, arm, kind, budget, fraction, threads):
    """``prune_to_budget`` for one arm: its report's numbers (cached)."""
    import tfsynapse

    table = acc_filters.sensitivity(run, seed, "l1") if arm == "guided" else None

    def compute():
        _, report = tfsynapse.prune_to_budget(
            dense, **{kind: budget}, **({"threads": threads} if kind == "latency_ms" else {}),
            criterion="l1", sensitivity=table, data=acc_filters.recalibration_images(run),
            round_to=None, return_report=True)  # the default: measured alignment
        model = report.latency_model
        return {"ratios": report.ratios, "measured": report.measured, "round_to": report.round_to,
                "candidates": len(report.points), "points": report.points,
                "latency_model": None if model is None else
                {"coefficients": list(model.coefficients), "error": model.error,
                 "probes": [list(p) for p in model.probes]}}

    # 2026-12-01, second run: measured alignment in both arms and the guided arm spending the
    # latency model (the first run's keys, round_to=1 and MACs, stay in the cache); 2026-12-02:
    # both arms searched again, each filling what a coarse round_to leaves (uniform_filled,
    # the greedy's give-back)
    return run.cache.result(f"{run.arch}/seed{seed}/budget-filled/{arm}/{kind}{fraction:g}",
                            compute)


def _arm(run, seed, found, arm, fraction, finetune):
    """One arm's accuracy: the model ``prune_to_budget`` returned, tested as it is, and with
    ``finetune`` the accuracy benchmark's pipeline on its ratios."""
    oneshot = _oneshot(run, seed, found["ratios"])
    numbers = {"oneshot_test": oneshot["test"], "mac_reduction": oneshot["mac_reduction"]}
    if finetune:
        numbers.update(acc_filters.pipeline(run, seed, "l1", found["ratios"],
                                            f"budget-{arm}-{fraction:g}"))
    return {**found, **numbers}


def _oneshot(run, seed, ratios):
    """``{"test", "mac_reduction"}`` of the model ``prune_to_budget`` returns, before any
    fine-tuning (the same ratios, criterion 'l1', BatchNormalization recalibrated as in the
    pipeline; cached)."""
    import tfsynapse

    def compute():
        model = tfsynapse.prune_once(run.dense(seed), ratios, criterion="l1", seed=seed,
                                     data=acc_filters.recalibration_images(run),
                                     recalibration_steps=run.cfg["recalibration_steps"])
        _, report = tfsynapse.shrink(model, return_report=True)
        return {"test": S.accuracy(model, *run.data["test"]),
                "mac_reduction": report.mac_reduction}

    key = f"{run.arch}/seed{seed}/budget-oneshot/{acc_filters.ratios_tag(ratios)}"
    return run.cache.result(key, compute)


def _retime(dense, rows, threads, rounds):
    """Interleaved LiteRT medians of both arms' shrunk models (fresh, not the cache)."""
    import tflite_export
    import tfsynapse
    from tfsynapse.budget import alignment as budget_alignment

    files = {row["arm"]: tflite_export.convert(tfsynapse.shrink(
        tfsynapse.prune_once(dense, row["ratios"], criterion="l1"))) for row in rows}
    time_files = budget_alignment.interleaved(
        lambda flatbuffer: tflite_export.benchmark(flatbuffer, num_threads=threads,
                                                   runs=50)["median_ms"], rounds)
    return time_files(files)


def run(ctx):
    from benchmarks import accuracy

    cfg = settings(ctx.quick)
    vgg = accuracy.Run(ctx, accuracy.settings(ctx.quick), accuracy.cache_folder(ctx))
    rows, oneshot_rows = [], []
    for arch in {**cfg["models"], **cfg["oneshot"]}:
        run_ = vgg if arch == vgg.arch else acc_robust.robust_run(vgg, arch)
        for seed in run_.cfg["seeds"]:
            rows += _seed(ctx, cfg, run_, seed, cfg["models"].get(arch, ()), True)
            common.release_memory()
        for seed in cfg["oneshot_seeds"] or run_.cfg["seeds"]:
            oneshot_rows += _seed(ctx, cfg, run_, seed, cfg["oneshot"].get(arch, ()), False)
            common.release_memory()
    listed = {name: {a: list(f) for a, f in cfg[name].items()} for name in ("models", "oneshot")}
    listed["oneshot_seeds"] = list(cfg["oneshot_seeds"] or vgg.cfg["seeds"])
    result = {"settings": {**cfg, **listed, "seeds": list(vgg.cfg["seeds"]),
                           "ft_epochs": vgg.cfg["ft_epochs"]},
              "rows": rows, "oneshot_rows": oneshot_rows}
    result["summary"] = summarize(rows)
    result["oneshot_summary"] = summarize(oneshot_rows)
    result["accuracy_by_macs"] = {arch: accuracy_by_macs(vgg.cache, arch)
                                  for arch in cfg["models"]}
    result["plots"] = []
    result["targets"] = [
        common.target_entry(SECTION, f"{s['arch']}: guided - uniform test accuracy{when} at "
                                     f"{s['fraction']:.0%} of dense latency (points, CI low)",
                            s[key]["low"], 0.0, ">")
        for summary, key, when in (
            (result["summary"], "test", " after fine-tuning"),
            (result["oneshot_summary"], "oneshot_test",
             " of the returned model (one-shot, not fine-tuned)"))
        for s in summary]
    return result


def _seed(ctx, cfg, run_, seed, fractions, finetune):
    """Both arms of one seed of ``run_``'s model at every budget fraction (``finetune``: also
    fine-tuned, tested and re-timed; else tested one-shot only)."""
    if not fractions:
        return []
    dense = run_.dense(seed)
    control = run_.control_numbers(seed, "ft") if finetune else {"test": None, "val": None}
    dense_cost = _dense_cost(run_, seed, dense, cfg["budget"], cfg["threads"])
    rows = []
    for fraction in fractions:
        budget = fraction * dense_cost
        pair = []
        for arm in ("uniform", "guided"):
            found = _search(run_, seed, dense, arm, cfg["budget"], budget, fraction,
                            cfg["threads"])
            numbers = _arm(run_, seed, found, arm, fraction, finetune)
            pair.append({"arch": run_.arch, "seed": seed, "fraction": fraction, "arm": arm,
                         "dense": dense_cost, "budget": budget,
                         "control_test": control["test"], "control_val": control["val"],
                         **numbers})
        again = _retime(dense, pair, cfg["threads"], cfg["retime_rounds"]) if finetune else {}
        for row in pair:
            row["retimed_ms"] = again.get(row["arm"])
            tested = (f"test {row['test']:.2%} (control {control['test']:.2%})" if finetune
                      else "not fine-tuned")
            ctx.log(SECTION, f"{run_.arch} seed {seed} {fraction:.0%} {row['arm']}: "
                             f"{row['measured']:.4g} / {budget:.4g} {cfg['budget']}, MACs "
                             f"-{row['mac_reduction']:.1%}, one-shot test "
                             f"{row['oneshot_test']:.2%}, {tested}")
        rows += pair
    return rows


def accuracy_by_macs(cache, arch):
    """How much of the fine-tuned test accuracy the MAC reduction alone explains.

    Every fine-tuned 'l1' filter pipeline of ``arch`` in the accuracy cache (equal ratios,
    sensitivity floors, both budget arms, every run: allocations that differ) is fitted per seed
    by a quadratic in its MAC reduction. A residual near zero says where the channels went did
    not matter, only how many MACs: at equal latency an allocation can then win only by removing
    fewer MACs. Returns ``{"n", "seeds", "residual_sd", "max_residual"}`` (points), or None with
    fewer than 4 pipelines for every seed.
    """
    by_seed = {}
    for key, numbers in cache.matching(f"{arch}/seed").items():
        _, seed, *stage = key.split("/")
        if stage[:2] == ["filter", "l1"]:
            by_seed.setdefault(seed, []).append((numbers["mac_reduction"], numbers["test"]))
    residuals, dof = [], 0
    for points in by_seed.values():
        if len(points) < 4:
            continue
        x, y = np.array(points).T
        fit = np.polyval(np.polyfit(x, y, 2), x)
        residuals += list(100 * (y - fit))
        dof += len(points) - 3
    if not dof:
        return None
    return {"n": len(residuals), "seeds": len(by_seed),
            "residual_sd": float(np.sqrt(np.sum(np.square(residuals)) / dof)),
            "max_residual": float(np.max(np.abs(residuals)))}


def summarize(rows):
    """Per model and budget fraction: paired guided - uniform differences over seeds, of every
    accuracy the rows hold (``test``, ``val``: fine-tuned; ``oneshot_test``)."""
    out = []
    for arch, fraction in sorted({(r.get("arch", "vgg"), r["fraction"]) for r in rows},
                                 key=lambda key: (key[0] != "vgg", key)):
        pairs = {}
        for r in rows:
            if (r.get("arch", "vgg"), r["fraction"]) == (arch, fraction):
                pairs.setdefault(r["seed"], {})[r["arm"]] = r
        both = [p for _, p in sorted(pairs.items()) if {"uniform", "guided"} <= set(p)]
        keys = [k for k in ("test", "val", "oneshot_test", "mac_reduction", "retimed_ms")
                if all(p[arm].get(k) is not None for p in both for arm in p)]
        pick = {arm: {key: [p[arm][key] for p in both] for key in keys}
                for arm in ("uniform", "guided")}
        summary = {"arch": arch, "fraction": fraction, "n": len(both),
                   "mac_reduction": {arm: float(np.mean(pick[arm]["mac_reduction"]))
                                     for arm in pick}, "time_ratio": None}
        for key in ("test", "val", "oneshot_test"):
            if key in keys:
                summary[key] = acc_stats.paired(pick["guided"][key], pick["uniform"][key])
        if "retimed_ms" in keys:
            summary["time_ratio"] = float(np.mean(np.divide(pick["guided"]["retimed_ms"],
                                                            pick["uniform"]["retimed_ms"])))
        out.append(summary)
    return out


def markdown(result):
    lines = [
        "The accuracy benchmark's models on Fashion-MNIST ("
        + ", ".join(result["settings"].get("models", {"vgg": ()})) + "; their dense seeds), "
        "pruned by "
        "`prune_to_budget(latency_ms=fraction x dense)` (fp32, 1 thread, criterion `l1`) with "
        "one uniform ratio or guided by the seed's `l1` sensitivity table (validation split), "
        f"then fine-tuned {result['settings']['ft_epochs']} epochs with the pruned channels kept "
        "at zero, shrunk and tested once. control = the dense model trained as many extra "
        "epochs. searched = the latency the search measured; again = both arms re-timed "
        "interleaved.", ""]
    unit = "MACs" if result["settings"]["budget"] == "macs" else "ms"
    headers = ["model", "seed", "budget", "arm", "round_to", f"budget {unit}", f"searched {unit}",
               "again ms", "MACs removed", "one-shot test", "val", "test", "control test"]
    table = [[r.get("arch", "vgg"), r["seed"], f"{r['fraction']:.0%}", r["arm"], r.get("round_to", 1),
              f"{r['budget']:.4g}", f"{r['measured']:.4g}", f"{r['retimed_ms']:.3f}",
              f"{r['mac_reduction']:.1%}", f"{r['oneshot_test']:.2%}", f"{r['val']:.2%}",
              f"{r['test']:.2%}",
              f"{r['control_test']:.2%}"] for r in result["rows"]]
    lines += [common.md_table(headers, table), ""]
    fits = [(f"{r.get('arch', 'vgg')} seed {r['seed']}", r["latency_model"])
            for r in result["rows"] if r.get("latency_model")]
    if fits:
        lines += ["The guided arm's latency model (`ms = fixed + a x MACs + b x activation "
                  "elements`, fitted to its probes): " + "; ".join(
                      f"{seed}: {m['coefficients'][0]:.3g} ms + "
                      f"{m['coefficients'][1] * 1e6:.3g} ms/MMAC + "
                      f"{m['coefficients'][2] * 1e6:.3g} ms/M elements, " + (
                          "from the cache" if m["error"] is None else
                          f"max error {m['error']:.1%}") for seed, m in fits) + ".", ""]
    headers = ["model", "budget", "seeds", "guided - uniform, test (points, 95% CI)", "verdict",
               "guided - uniform, val", "time guided / uniform", "MACs removed (uniform, guided)"]
    table = [[s.get("arch", "vgg"), f"{s['fraction']:.0%}", s["n"], acc_stats.fmt(s["test"]),
              acc_stats.verdict(s["test"]), acc_stats.fmt(s["val"]), f"{s['time_ratio']:.3f}",
              f"{s['mac_reduction']['uniform']:.1%}, {s['mac_reduction']['guided']:.1%}"]
             for s in result["summary"]]
    lines.append(common.md_table(headers, table))
    lines += _oneshot_markdown(result, unit)
    for arch, fit in result.get("accuracy_by_macs", {}).items():
        if fit:
            lines += ["", f"What {arch}'s accuracy follows: over its {fit['n']} fine-tuned `l1` "
                      "pipelines in the accuracy cache (equal ratios, sensitivity floors, both "
                      "budget arms of every run), a quadratic in the MAC reduction per seed "
                      f"leaves a residual SD of {fit['residual_sd']:.2f} point (largest "
                      f"{fit['max_residual']:.2f}). The smaller it is beside the arms' "
                      "difference, the less where the channels went mattered beside how many "
                      "MACs went."]
    return "\n".join(lines)


def _oneshot_markdown(result, unit):
    """The budgets whose arms are tested one-shot only: per seed, then paired."""
    rows = result.get("oneshot_rows")
    if not rows:
        return []
    headers = ["model", "seed", "budget", "arm", "round_to", f"budget {unit}",
               f"searched {unit}", "MACs removed", "one-shot test"]
    table = [[r["arch"], r["seed"], f"{r['fraction']:.0%}", r["arm"], r["round_to"],
              f"{r['budget']:.4g}", f"{r['measured']:.4g}", f"{r['mac_reduction']:.1%}",
              f"{r['oneshot_test']:.2%}"] for r in rows]
    paired = [[s["arch"], f"{s['fraction']:.0%}", s["n"], acc_stats.fmt(s["oneshot_test"]),
               acc_stats.verdict(s["oneshot_test"]),
               f"{s['mac_reduction']['uniform']:.1%}, {s['mac_reduction']['guided']:.1%}"]
              for s in result["oneshot_summary"]]
    seeds = result["settings"].get("oneshot_seeds", result["settings"]["seeds"])
    extra = sorted(set(seeds) - set(result["settings"]["seeds"]))
    return ["", "The model `prune_to_budget` returns, tested as it is (BatchNormalization "
            f"recalibrated, not fine-tuned; searched as above), dense seeds "
            f"{', '.join(map(str, seeds))}" + (
                f" (seed{'s' if len(extra) > 1 else ''} {', '.join(map(str, extra))} trained "
                "for this comparison only)"
                if extra else "") + ":", "",
            common.md_table(headers, table), "",
            common.md_table(["model", "budget", "seeds",
                             "one-shot: guided - uniform, test (points, 95% CI)", "verdict",
                             "MACs removed (uniform, guided)"], paired)]
