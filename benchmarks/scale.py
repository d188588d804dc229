"""Scale: does the pipeline's time grow linearly with the depth of the model?

For ResNet50/101/152 and DenseNet121/169/201 (``tf_keras.applications``, random weights, a
small input so that only the graph work counts), the time of ``dependency_groups``,
``prune_once`` (0.5, 'l1'), ``shrink`` and int8 ``tflite_export.convert`` of the shrunk model,
against the number of layers. Growth is summarized by the slope of log(time) on log(layers)
(1 = linear, 2 = quadratic) and by the time per layer.
"""

import time

from benchmarks import common

SECTION = "scale"
OPERATIONS = ("dependency_groups", "prune_once", "shrink", "convert_int8")
LINEAR_EXPONENT = 1.3  # a log-log slope up to this is reported as "about linear"


def settings(quick):
    if quick:
        return {"models": ("ResNet50", "DenseNet121"), "input": 32,
                "operations": ("dependency_groups", "prune_once"), "graph_repeats": 1}
    return {"models": ("ResNet50", "ResNet101", "ResNet152", "DenseNet121", "DenseNet169",
                       "DenseNet201"), "input": 64, "operations": OPERATIONS, "graph_repeats": 3}


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(name, cfg, log):
    """Times each operation once (the graph build: median of ``graph_repeats``)."""
    import tflite_export
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    keras.utils.set_random_seed(0)
    size = cfg["input"]
    model, build_s = _timed(
        lambda: getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3)))
    row = {"model": name, "input": size, "layers": len(model.layers), "build_s": build_s}
    graph_times = []
    for _ in range(cfg["graph_repeats"]):
        graph, seconds = _timed(lambda: tfsynapse.dependency_groups(model))
        graph_times.append(seconds)
    row["dependency_groups_s"] = common.median(graph_times)
    row["groups"] = len(graph)
    row["prunable_groups"] = len(graph.prunable_groups)
    del graph
    ops = cfg["operations"]
    if "prune_once" in ops:
        pruned, row["prune_once_s"] = _timed(
            lambda: tfsynapse.prune_once(model, 0.5, criterion="l1", scope="layer"))
        if "shrink" in ops:
            (small, report), row["shrink_s"] = _timed(
                lambda: tfsynapse.shrink(pruned, return_report=True))
            row["mac_reduction"] = report.mac_reduction
            if "convert_int8" in ops:
                calibration = common.calibration_batches((size, size, 3))
                data, row["convert_int8_s"] = _timed(lambda: tflite_export.convert(
                    small, quantize="int8", representative_dataset=calibration))
                row["tflite_bytes"] = len(data)
            del small
        del pruned
    log(f"{name}: {row['layers']} layers, " + ", ".join(
        f"{op} {row[op + '_s']:.1f}s" for op in OPERATIONS if op + "_s" in row))
    del model
    common.release_memory()
    return row


def run(ctx):
    cfg = settings(ctx.quick)
    rows = [measure(name, cfg, lambda m: ctx.log(SECTION, m)) for name in cfg["models"]]
    layers = [r["layers"] for r in rows]
    fits = {}
    for op in OPERATIONS:
        key = op + "_s"
        if not all(key in r for r in rows):
            continue
        times = [r[key] for r in rows]
        exponent = common.loglog_slope(layers, times)
        slope, intercept, r2 = common.linear_fit(layers, times)
        per_layer = [t / n * 1000.0 for t, n in zip(times, layers)]
        fits[op] = {
            "exponent": exponent, "linear_slope_ms_per_layer": slope * 1000.0,
            "linear_intercept_s": intercept, "linear_r2": r2,
            "ms_per_layer_min": min(per_layer), "ms_per_layer_max": max(per_layer),
            "about_linear": bool(exponent <= LINEAR_EXPONENT),
        }
        families = {}
        for family in ("ResNet", "DenseNet"):
            sub = [r for r in rows if r["model"].startswith(family)]
            if len(sub) >= 2:
                families[family] = common.loglog_slope([r["layers"] for r in sub],
                                                       [r[key] for r in sub])
        fits[op]["exponent_by_family"] = families
        ctx.log(SECTION, f"{op}: time ~ layers^{exponent:.2f} "
                         f"({'about linear' if fits[op]['about_linear'] else 'faster than linear'})")
    result = {"settings": {**cfg, "models": list(cfg["models"]), "operations": list(cfg["operations"])},
              "rows": rows, "fits": fits, "targets": []}
    result["plots"] = [plot(result, ctx.path("scale.png"))]
    return result


def plot(result, path):
    import numpy as np

    plt = common.pyplot()
    rows = result["rows"]
    layers = np.array([r["layers"] for r in rows], float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for op, fit in result["fits"].items():
        times = np.array([r[op + "_s"] for r in rows])
        line = axes[0].loglog(layers, times, "o", label=f"{op} (~layers^{fit['exponent']:.2f})")[0]
        xs = np.array([layers.min(), layers.max()])
        # the power law through the geometric means, with the fitted exponent
        scale = np.exp(np.mean(np.log(times)) - fit["exponent"] * np.mean(np.log(layers)))
        axes[0].loglog(xs, scale * xs ** fit["exponent"], "--", lw=0.8, color=line.get_color())
        for family, style in (("ResNet", "o-"), ("DenseNet", "s:")):
            pick = np.array([r["model"].startswith(family) for r in rows])
            if pick.any():
                order = np.argsort(layers[pick])
                axes[1].plot(layers[pick][order], (times / layers * 1000)[pick][order], style,
                             color=line.get_color(),
                             label=op if family == "ResNet" or not any(
                                 r["model"].startswith("ResNet") for r in rows) else None)
    for r in rows:
        axes[1].annotate(r["model"], (r["layers"], r["prune_once_s"] / r["layers"] * 1000
                                      if "prune_once_s" in r else 0), fontsize=7,
                         xytext=(3, 3), textcoords="offset points")
    axes[0].set_xlabel("layers (log)")
    axes[0].set_ylabel("seconds (log)")
    axes[0].set_title("time vs layers (slope 1 = linear)")
    axes[1].set_xlabel("layers")
    axes[1].set_ylabel("ms per layer")
    axes[1].set_yscale("log")
    axes[1].set_title("time per layer (flat = linear; — ResNet, ··· DenseNet)")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def markdown(result):
    s = result["settings"]
    described = {
        "prune_once": "`prune_once(model, 0.5, criterion='l1')`",
        "shrink": "`shrink` of that model",
        "convert_int8": "int8 `tflite_export.convert` of the shrunk model (8 random calibration "
                        "batches)",
    }
    others = [described[op] for op in s["operations"] if op in described]
    lines = [
        f"`tf_keras.applications` models, random weights, input {s['input']}x{s['input']}; "
        f"`dependency_groups`: median of {s['graph_repeats']} run(s)"
        + (f"; one run each of {', '.join(others)}" if others else "") + ". The exponent k is "
        f"the slope of log(time) on log(layers); k <= {LINEAR_EXPONENT} counts as about linear "
        "(fixed costs make small models look sub-linear).", ""]
    ops = [op for op in OPERATIONS if op in result["fits"]]
    table = []
    for r in result["rows"]:
        table.append([r["model"], r["layers"], r["prunable_groups"]]
                     + [common.fmt(r.get(op + "_s")) for op in ops])
    lines.append(common.md_table(["model", "layers", "prunable groups"] + [f"{op} (s)" for op in ops],
                                 table))
    lines += ["", common.md_table(
        ["operation", "exponent (time ~ layers^k)", "by family", "ms per layer (min-max)",
         "linear fit R²", "about linear?"],
        [[op, f"{f['exponent']:.2f}",
          ", ".join(f"{k} {v:.2f}" for k, v in f["exponent_by_family"].items()) or "-",
          f"{f['ms_per_layer_min']:.1f}-{f['ms_per_layer_max']:.1f}", common.fmt(f["linear_r2"]),
          "yes" if f["about_linear"] else f"**no** (k > {LINEAR_EXPONENT})"]
         for op, f in result["fits"].items()])]
    return "\n".join(lines)
