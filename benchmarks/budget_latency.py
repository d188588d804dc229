"""Budget (latency): does ``prune_to_budget(latency_ms=...)`` land within [0.90, 1.00] x budget?

The model (``tf_keras.applications``, random weights, criterion 'l1', ``round_to=8``, uniform
allocation) is pruned to latency budgets at 30/50/70% of its measured dense LiteRT latency, in
fp32 and int8, at 1 and 2 threads. Per row: the latency the search measured for the returned
model over the budget, and an independent re-measurement of the same file (fresh rounds, not
the cache) over the budget: timing noise on a shared 2-core machine moves the second.
Only MobileNetV2 runs here so far: a ResNet50 224 row converts ~8 candidates of ~30 s and times
each at ~0.3 s per run (~1.5 hours for its 12 rows on this host).
"""

import statistics
import time

from benchmarks import common

SECTION = "budget_latency"
LOW, HIGH = 0.90, 1.00


def settings(quick):
    if quick:
        return {"models": [("MobileNetV2", 64)], "fractions": (0.5,), "precisions": ("fp32",),
                "threads": (1,), "calibration_batches": 4}
    return {"models": [("MobileNetV2", 224)], "fractions": (0.3, 0.5, 0.7),
            "precisions": ("fp32", "int8"), "threads": (1, 2), "calibration_batches": 8}


def _remeasure(model, quantize, calibration, threads):
    import tflite_export
    import tfsynapse

    flatbuffer = tflite_export.convert(tfsynapse.shrink(model), quantize=quantize,
                                       representative_dataset=calibration)
    return statistics.median(tflite_export.benchmark(flatbuffer, num_threads=threads,
                                                     runs=30)["median_ms"] for _ in range(3))


def run(ctx):
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras
    from tfsynapse.pruning import budget_measured

    cfg = settings(ctx.quick)
    rows = []
    cache = budget_measured.LatencyCache(ctx.path("latency_cache.json"))
    for name, size in cfg["models"]:
        keras.utils.set_random_seed(0)
        dense = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
        calibration = common.calibration_batches((size, size, 3), cfg["calibration_batches"])
        for precision in cfg["precisions"]:
            quantize = "int8" if precision == "int8" else None
            data = calibration if quantize else None
            for threads in cfg["threads"]:
                dense_ms = budget_measured.latency(quantize, data, threads, cache=cache)(dense)
                for fraction in cfg["fractions"]:
                    budget = fraction * dense_ms
                    started = time.perf_counter()
                    pruned, report = tfsynapse.prune_to_budget(
                        dense, latency_ms=budget, threads=threads, quantize=quantize,
                        representative_dataset=data, round_to=8, return_report=True)
                    seconds = time.perf_counter() - started
                    again = _remeasure(pruned, quantize, data, threads)
                    row = {"model": name, "input": size, "precision": precision,
                           "threads": threads, "fraction": fraction, "dense_ms": dense_ms,
                           "budget_ms": budget, "measured_ms": report.measured,
                           "ratio": report.measured / budget, "remeasured_ms": again,
                           "remeasured_ratio": again / budget, "candidates": len(report.points),
                           "seconds": seconds, "points": report.points}
                    rows.append(row)
                    ctx.log(SECTION, f"{name} {precision} {threads} thr {fraction:.0%}: "
                                     f"{report.measured:.3f} / {budget:.3f} ms = "
                                     f"{row['ratio']:.3f} (again {row['remeasured_ratio']:.3f}; "
                                     f"{row['candidates']} candidates, {seconds:.0f}s)")
                    del pruned
        del dense
        common.release_memory()
    within = sum(LOW <= r["ratio"] <= HIGH for r in rows) / len(rows)
    again = sum(LOW <= r["remeasured_ratio"] <= HIGH for r in rows) / len(rows)
    targets = [
        common.target_entry(SECTION, f"latency within [{LOW:.2f}, {HIGH:.2f}] x budget as "
                                     "measured by the search (fraction of rows)", within, 1.0, ">="),
        common.target_entry(SECTION, "the same, re-measured (fraction of rows)", again, 1.0, ">=")]
    result = {"settings": {k: ([list(m) for m in v] if k == "models" else v)
                           for k, v in cfg.items()}, "rows": rows, "targets": targets}
    result["plots"] = [plot(result, ctx.path("budget_latency.png"))]
    return result


def plot(result, path):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    colors = {("fp32", 1): "tab:blue", ("fp32", 2): "tab:cyan", ("int8", 1): "tab:red",
              ("int8", 2): "tab:orange"}
    top = 0.0
    for r in result["rows"]:
        predicted = [p[2] for p in r["points"]]
        measured = [p[1] for p in r["points"]]
        top = max([top] + predicted + measured)
        ax.scatter(predicted, measured, s=14, alpha=0.7,
                   color=colors.get((r["precision"], r["threads"]), "gray"))
    for (precision, threads), color in colors.items():
        if any(r["precision"] == precision and r["threads"] == threads for r in result["rows"]):
            ax.scatter([], [], color=color, label=f"{precision}, {threads} thr")
    ax.plot([0, top * 1.05], [0, top * 1.05], "k--", lw=1, label="measured = predicted")
    ax.set_xlabel("predicted latency (ms): the search's straight line")
    ax.set_ylabel("measured LiteRT latency (ms)")
    ax.set_title("prune_to_budget(latency_ms=...): every candidate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def markdown(result):
    lines = [
        "`prune_to_budget(latency_ms=...)` (uniform allocation, criterion `l1`, `round_to=8`): "
        "every candidate shrunk, converted and timed in LiteRT (median of 3 rounds of 30 runs, "
        "cached by file and threads); measured = the search's value for the returned model, "
        f"again = a fresh re-measurement of the same file. Target: [{LOW:.2f}, {HIGH:.2f}] x "
        "budget.", ""]
    headers = ["model", "precision", "threads", "budget (% of dense)", "dense ms", "budget ms",
               "measured ms", "measured / budget", "again / budget", "candidates", "seconds"]
    table = [[f"{r['model']} {r['input']}px", r["precision"], r["threads"],
              f"{r['fraction']:.0%}", f"{r['dense_ms']:.3f}", f"{r['budget_ms']:.3f}",
              f"{r['measured_ms']:.3f}", f"{r['ratio']:.3f}", f"{r['remeasured_ratio']:.3f}",
              r["candidates"], f"{r['seconds']:.0f}"] for r in result["rows"]]
    lines.append(common.md_table(headers, table))
    return "\n".join(lines)
