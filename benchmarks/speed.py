"""Speed: does removing channels make LiteRT faster in proportion to the MACs removed?

Each model (``tf_keras.applications``, random weights) is pruned one-shot by filters
(criterion 'l1', scope 'layer', ``round_to=8``; at 50% also ``round_to=16``, the ``aligned``
setting) at several ratios and shrunk; beside it, tfmot's
``prune_low_magnitude`` zeroes the same fraction of parameters without removing anything. All
are exported the same way (``tflite_export.convert``, float32 and int8) and timed in LiteRT at 1
and 2 threads, interleaved with the dense model. Per row: the MAC-reduction factor (dense MACs /
shrunk MACs), the latency speedup (dense median / pruned median) and their ratio, which is 1.0
when latency falls exactly with MACs.
"""

import time

import numpy as np

from benchmarks import common

SECTION = "speed"
# speedup / MAC-reduction factor of the 50% row in float32 (any thread count).
TARGETS = {"ResNet50": 0.95, "MobileNetV2": 0.75}
TARGET_SPARSITY = 0.5
# int8 speedup / MAC-reduction factor of the 50% row kept in multiples of 16, the multiple the
# latency budget's alignment step measures fastest in int8 on this host (issue #16, item 5)
INT8_TARGETS = {"ResNet50": 0.90, "MobileNetV2": 0.80}


def settings(quick):
    if quick:
        return {"models": [("MobileNetV2", 96)], "sparsities": (0.5,), "precisions": ("fp32",),
                "threads": (1,), "rounds": 3, "block_seconds": 0.1, "calibration_batches": 8,
                "tfmot": False, "aligned": ()}
    return {"models": [("ResNet50", 224), ("MobileNetV2", 224)], "sparsities": (0.3, 0.5, 0.7),
            "precisions": ("fp32", "int8"), "threads": (1, 2), "rounds": 10,
            "block_seconds": 0.5, "calibration_batches": 8, "tfmot": True, "aligned": (16,)}


def _zero_count(model):
    return int(sum(np.count_nonzero(w == 0) for w in model.get_weights()))


def tfmot_pruned(dense, sparsity):
    """tfmot's unstructured magnitude pruning at ``sparsity``, masks set, wrappers stripped.

    The masks are computed by the wrappers' own ``pruning_obj`` at step 0 of a
    ``ConstantSparsity`` schedule (what the first training step would do), then applied.
    """
    from tfsynapse.backends.tf_keras import prune, pruning_schedule, pruning_wrapper

    clone = common.copy_model(dense)  # tfmot wraps the original layers: keep `dense` intact
    schedule = pruning_schedule.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    wrapped = prune.prune_low_magnitude(clone, pruning_schedule=schedule)
    for layer in pruning_wrapper.collect_prunable_layers(wrapped):
        layer.pruning_step.assign(0)
        layer.pruning_obj.conditional_mask_update()
        layer.pruning_obj.weight_mask_op()
    return prune.strip_pruning(wrapped)


def _variants(ctx, name, size, cfg, section):
    """The dense model and its pruned versions: ``{variant: (model, info)}``."""
    import tfsynapse
    from tfsynapse import backends

    keras = backends.get(cfg["backend"]).keras
    keras.utils.set_random_seed(0)
    build = cfg.get("builders", {}).get(name)
    dense = build(size) if build else getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3))
    dense_macs, dense_params = tfsynapse.count_macs(dense), tfsynapse.count_params(dense)
    ctx.log(section, f"{name} {size}x{size}: {dense_macs / 1e6:,.0f} M MACs, "
                     f"{dense_params / 1e6:.2f} M params")
    variants = {"dense": (dense, {"kind": "dense", "sparsity": 0.0, "macs": dense_macs,
                                  "params": dense_params, "param_sparsity": 0.0})}
    plans = [(ratio, 8) for ratio in cfg["sparsities"]] + [
        (TARGET_SPARSITY, multiple) for multiple in cfg.get("aligned", ())]
    for ratio, multiple in plans:
        pruned = tfsynapse.prune_once(dense, ratio, criterion="l1", scope="layer",
                                      round_to=multiple)
        small, report = tfsynapse.shrink(pruned, return_report=True)
        variant = f"l1 {ratio:.0%}" + ("" if multiple == 8 else f" r{multiple}")
        variants[variant] = (small, {
            "kind": "shrunk", "sparsity": ratio, "round_to": multiple, "macs": report.macs_after,
            "params": report.params_after, "param_sparsity": report.param_reduction,
            "shrink_max_abs_error": report.max_abs_error})
        ctx.log(section, f"{name}: {variant} -> MACs / {dense_macs / report.macs_after:.2f}, "
                         f"params -{report.param_reduction:.1%}")
        del pruned
    if not cfg["tfmot"]:
        return variants
    reference = variants[f"l1 {TARGET_SPARSITY:.0%}"][1] if TARGET_SPARSITY in cfg["sparsities"] \
        else next(v[1] for k, v in variants.items() if k != "dense")
    target = float(reference["param_sparsity"])
    sparse = tfmot_pruned(dense, target)
    zeroed = (_zero_count(sparse) - _zero_count(dense)) / dense_params
    variants["tfmot"] = (sparse, {"kind": "tfmot", "sparsity": target, "macs": dense_macs,
                                  "params": dense_params, "param_sparsity": zeroed})
    ctx.log(section, f"{name}: tfmot prune_low_magnitude at {target:.1%} -> {zeroed:.1%} of "
                     "parameters zero (nothing removed)")
    return variants


def _export(variants, precision, shape, cfg):
    import tflite_export

    calibration = common.calibration_batches(shape, cfg["calibration_batches"])
    quantize = "int8" if precision == "int8" else None
    return {name: tflite_export.convert(model, quantize=quantize,
                                        representative_dataset=calibration if quantize else None)
            for name, (model, _) in variants.items()}


def run(ctx, backend="tf_keras", section=SECTION, cfg=None):
    """Runs the section on models of ``backend`` ('tf_keras' or 'keras3': tfmot's row only on
    tf_keras, which tfmot supports); ``section`` names it in logs and targets; ``cfg`` replaces
    the settings (its ``builders``: ``{model name: fn(size) -> dense model}``)."""
    cfg = dict(cfg or settings(ctx.quick), backend=backend)
    cfg["tfmot"] = cfg["tfmot"] and backend == "tf_keras"
    rows, targets, timings = [], [], []
    for name, size in cfg["models"]:
        variants = _variants(ctx, name, size, cfg, section)
        dense_macs = variants["dense"][1]["macs"]
        for precision in cfg["precisions"]:
            started = time.perf_counter()
            flatbuffers = _export(variants, precision, (size, size, 3), cfg)
            ctx.log(section, f"{name}: exported {len(flatbuffers)} {precision} models in "
                             f"{time.perf_counter() - started:.0f}s")
            for threads in cfg["threads"]:
                stats, runs = common.interleaved_latency(
                    flatbuffers, threads, cfg["rounds"], block_seconds=cfg["block_seconds"])
                timings.append({"model": name, "precision": precision, "threads": threads,
                                "runs_per_block": runs, "rounds": cfg["rounds"]})
                dense = stats["dense"]
                for variant, (_, info) in variants.items():
                    if variant == "dense":
                        continue
                    s = stats[variant]
                    factor = dense_macs / max(info["macs"], 1)
                    speedup = dense["median_ms"] / s["median_ms"]
                    round_ratio, round_p25, round_p75 = common.ratio_stats(
                        dense["round_medians_ms"], s["round_medians_ms"])
                    row = {
                        "model": name, "input": size, "precision": precision, "threads": threads,
                        "variant": variant, "kind": info["kind"], "sparsity": info["sparsity"],
                        "param_sparsity": info["param_sparsity"], "macs": info["macs"],
                        "dense_macs": dense_macs, "mac_factor": factor,
                        "dense_ms": dense["median_ms"], "ms": s["median_ms"],
                        "speedup": speedup, "speedup_round_median": round_ratio,
                        "speedup_round_p25": round_p25, "speedup_round_p75": round_p75,
                        "ratio": speedup / factor,
                        "bytes": len(flatbuffers[variant]),
                        "dense_bytes": len(flatbuffers["dense"]),
                    }
                    at_target = (info["kind"] == "shrunk"
                                 and abs(info["sparsity"] - TARGET_SPARSITY) < 1e-9)
                    goal = None
                    if at_target and precision == "fp32" and info["round_to"] == 8:
                        goal = TARGETS.get(name)
                    elif at_target and precision == "int8" and info["round_to"] == 16:
                        goal = INT8_TARGETS.get(name)
                    if goal is not None:
                        entry = common.target_entry(
                            section, f"{name} {size}px {precision} {threads} thread(s) "
                                     f"{variant}: speedup / MAC factor", row["ratio"], goal, ">=")
                        row["target"], row["status"] = entry["target"], entry["status"]
                        targets.append(entry)
                    rows.append(row)
                ctx.log(section, f"{name} {precision} {threads} thread(s): dense "
                                 f"{dense['median_ms']:.2f} ms; " + ", ".join(
                                     f"{r['variant']} x{r['speedup']:.2f} (MACs /{r['mac_factor']:.2f})"
                                     for r in rows[-(len(variants) - 1):]))
            del flatbuffers
        del variants
        common.release_memory()
    result = {"settings": dict(cfg), "rows": rows, "targets": targets,
              "timings": timings}
    result["plots"] = [plot(result, ctx.path(f"{section}.png"))]
    return result


def plot(result, path):
    plt = common.pyplot()
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    markers = {"fp32": "o", "int8": "s"}
    colors = {1: "tab:blue", 2: "tab:orange"}
    for ax, model in zip(axes[0], models):
        rows = [r for r in result["rows"] if r["model"] == model]
        top = max(max(r["mac_factor"] for r in rows), max(r["speedup"] for r in rows)) * 1.1
        ax.plot([0.8, top], [0.8, top], "k--", lw=1, label="speedup = MAC factor")
        for r in rows:
            ax.scatter(r["mac_factor"], r["speedup"], marker=markers.get(r["precision"], "o"),
                       color=colors.get(r["threads"], "gray"),
                       edgecolors="black" if r["kind"] == "tfmot" else "none", s=45)
            if r["precision"] == rows[0]["precision"] and r["threads"] == rows[0]["threads"]:
                ax.annotate(r["variant"], (r["mac_factor"], r["speedup"]), fontsize=7,
                            xytext=(4, -9), textcoords="offset points")
        for precision, marker in markers.items():
            for threads, color in colors.items():
                if any(r["precision"] == precision and r["threads"] == threads for r in rows):
                    ax.scatter([], [], marker=marker, color=color, label=f"{precision}, {threads} thr")
        common.label_axes(ax, "MAC reduction factor (dense / pruned)",
                          "LiteRT speedup (dense / pruned median)",
                          f"{model} ({rows[0]['input']}px)")
    return common.save_figure(fig, path)


def markdown(result):
    lines = [
        "Pruned one-shot by filters (criterion `l1`, scope `layer`, `round_to=8`; `r16`: "
        "`round_to=16`), shrunk, "
        "exported with `tflite_export.convert` (fp32; int8 calibrated on "
        f"{result['settings']['calibration_batches']} random batches) and timed in LiteRT "
        "(XNNPACK, batch 1), interleaved with the dense model in "
        f"{result['settings']['rounds']} rounds. `tfmot` = `prune_low_magnitude` at the "
        "parameter sparsity of the 50% row (weights zeroed, nothing removed). "
        "speedup = dense median / pruned median (in brackets: the interquartile range of the "
        "per-round ratios); ratio = speedup / MAC factor.", ""]
    headers = ["model", "precision", "threads", "variant", "params removed/zeroed",
               "MAC factor", "dense ms", "pruned ms", "speedup", "speedup / MAC factor", "target"]
    table = []
    for r in result["rows"]:
        target = f"{r['status']} (>= {r['target']:.2f})" if "status" in r else ""
        table.append([
            f"{r['model']} {r['input']}px", r["precision"], r["threads"], r["variant"],
            f"{r['param_sparsity']:.1%}", common.fmt(r["mac_factor"]),
            common.fmt(r["dense_ms"]), common.fmt(r["ms"]),
            f"{r['speedup']:.2f} [{r['speedup_round_p25']:.2f}-{r['speedup_round_p75']:.2f}]",
            common.fmt(r["ratio"]), target])
    lines.append(common.md_table(headers, table))
    return "\n".join(lines)
