"""int8 speed per MAC, interleaved (issue #33, item 7): the figure, and where measurements part.

The ``speed`` section's int8 ``r16`` rows (50% of the filters, kept in multiples of 16) gave
speedup / MAC factor 0.899 on ResNet50 and 0.795 on MobileNetV2, while a check timing only the
dense and pruned int8 files (4 rounds of 15 runs) gave 0.84 and 0.73. This section measures the
same pruning in one run, several times over, with each suspect varied on its own:

* **protocol** ``all``: every int8 file of the model interleaved, as ``speed`` times its int8
  files (10 rounds of 0.5 s blocks after 3 warm-up runs, the first round thrown away; fp32 in
  an interleave of its own); ``pair``: the dense and pruned plain int8 files alone, 4 rounds
  of 15 runs, one warm-up run, nothing thrown away (the issue's check);
* **calibration**: plain int8 calibrated on a second random set (``int8, calibration B``);
* **the first layers' precision**: the first convolution kept float (``stem float``), and every
  convolution at its output resolution (``first resolution float``; ``int8_layers`` measured
  int8 slower than float there on this host), in the dense and pruned files alike;
* **drift**: every protocol ``repeats`` times in turn, at 1 and 2 threads; fp32 beside them.

Per row: model, threads, export, protocol, repeat, dense and pruned medians (ms) and speedup /
MAC factor (dense median / pruned median over dense MACs / pruned MACs; 1.0 = latency falls as
much as MACs). Targets (issue #33): the median over repeats of protocol ``all``, ResNet50
>= 0.90 and MobileNetV2 >= 0.80, for plain int8 and for the better of the two mixed exports.
"""

import statistics
import time

from benchmarks import common, int8_layers

SECTION = "int8_speed"
SPARSITY, ROUND_TO = 0.5, 16
TARGETS = {"ResNet50": 0.90, "MobileNetV2": 0.80}
MIXED = ("stem float", "first resolution float")


def settings(quick):
    if quick:
        return {"models": [("MobileNetV2", 64)], "threads": (1,), "repeats": 1, "rounds": 2,
                "block_seconds": 0.02, "pair_rounds": 2, "pair_runs": 3,
                "calibration_batches": 2}
    return {"models": [("ResNet50", 224), ("MobileNetV2", 224)], "threads": (1, 2),
            "repeats": 3, "rounds": 10, "block_seconds": 0.5, "pair_rounds": 4, "pair_runs": 15,
            "calibration_batches": 8}


def _files(dense, small, size, batches):
    """``{'dense <export>' | 'pruned <export>': flatbuffer}`` and the float layers kept."""
    import tflite_export
    from tfsynapse.backends.tf_keras import keras

    shape = (size, size, 3)
    calibrations = {"int8": common.calibration_batches(shape, batches),
                    "int8, calibration B": common.calibration_batches(shape, batches, seed=1)}
    files, kept = {}, {}
    for tag, model in (("dense", dense), ("pruned", small)):
        first = int8_layers.first_layers(model, keras)
        kept = {"stem float": first["stem"], "first resolution float": first["first_resolution"]}
        if kept["first resolution float"] == kept["stem float"]:  # one layer at that resolution
            del kept["first resolution float"]
        files[f"{tag} fp32"] = tflite_export.convert(model)
        for export, calibration in calibrations.items():
            files[f"{tag} {export}"] = tflite_export.convert(
                model, quantize="int8", representative_dataset=calibration)
        for export, layers in kept.items():
            files[f"{tag} {export}"] = tflite_export.convert(
                model, quantize="int8", representative_dataset=calibrations["int8"],
                float_layers=layers)
    return files, kept


def _rows(stats, exports, base):
    factor = base["dense_macs"] / base["pruned_macs"]
    rows = []
    for export in exports:
        dense_ms, pruned_ms = (stats[f"{tag} {export}"]["median_ms"] for tag in ("dense", "pruned"))
        rows.append({**base, "export": export, "dense_ms": dense_ms, "pruned_ms": pruned_ms,
                     "speedup": dense_ms / pruned_ms, "ratio": dense_ms / pruned_ms / factor})
    return rows


def _measure(ctx, name, size, cfg):
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    keras.utils.set_random_seed(0)
    dense = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    small = tfsynapse.shrink(tfsynapse.prune_once(dense, SPARSITY, criterion="l1",
                                                  scope="layer", round_to=ROUND_TO))
    started = time.perf_counter()
    files, kept = _files(dense, small, size, cfg["calibration_batches"])
    base = {"model": name, "input": size, "dense_macs": tfsynapse.count_macs(dense),
            "pruned_macs": tfsynapse.count_macs(small)}
    exports = sorted({key.split(" ", 1)[1] for key in files})
    ctx.log(SECTION, f"{name}: {len(files)} files converted in "
                     f"{time.perf_counter() - started:.0f}s; MACs / "
                     f"{base['dense_macs'] / base['pruned_macs']:.2f}; float kept: {kept}")
    pair = {key: files[key] for key in ("dense int8", "pruned int8")}
    fp32 = [key for key in files if key.endswith(" fp32")]
    int8 = [key for key in files if key not in fp32]
    rows = []
    for threads in cfg["threads"]:
        for repeat in range(cfg["repeats"]):
            for group in (int8, fp32):
                stats, runs = common.interleaved_latency(
                    {key: files[key] for key in group}, threads, cfg["rounds"],
                    block_seconds=cfg["block_seconds"])
                rows += _rows(stats, sorted({key.split(" ", 1)[1] for key in group}),
                              dict(base, threads=threads, protocol="all", repeat=repeat,
                                   runs_per_block=runs))
            stats, runs = common.interleaved_latency(
                pair, threads, cfg["pair_rounds"], min_runs=cfg["pair_runs"],
                max_runs=cfg["pair_runs"], warmup=1, discard=0)
            rows += _rows(stats, ["int8"], dict(base, threads=threads, protocol="pair",
                                                repeat=repeat, runs_per_block=runs))
            ctx.log(SECTION, f"{name} {threads} thread(s), repeat {repeat + 1}: " + ", ".join(
                f"{r['export']} ({r['protocol']}) {r['ratio']:.3f}" for r in rows[-len(exports) - 1:]))
    return rows, kept


def summary(rows):
    """``{(model, threads, export, protocol): (median ratio, min, max, n)}`` over repeats."""
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["threads"], r["export"], r["protocol"]), []).append(
            r["ratio"])
    return {key: (statistics.median(v), min(v), max(v), len(v)) for key, v in groups.items()}


def _targets(rows):
    found = summary(rows)
    targets = []
    for (model, threads, export, protocol), (ratio, *_rest) in sorted(found.items()):
        if protocol != "all" or model not in TARGETS or export != "int8":
            continue
        targets.append(common.target_entry(
            SECTION, f"{model} int8 {threads} thread(s) 50% r16: speedup / MAC factor "
                     "(interleaved, median of repeats)", ratio, TARGETS[model], ">="))
        mixed = [(found[(model, threads, m, "all")][0], m) for m in MIXED
                 if (model, threads, m, "all") in found]
        if mixed:
            best, which = max(mixed)
            targets.append(common.target_entry(
                SECTION, f"{model} int8 {threads} thread(s) 50% r16, {which}: speedup / MAC "
                         "factor (interleaved, median of repeats)", best, TARGETS[model], ">="))
    return targets


def run(ctx):
    cfg = settings(ctx.quick)
    rows, kept = [], {}
    for name, size in cfg["models"]:
        model_rows, kept[name] = _measure(ctx, name, size, cfg)
        rows += model_rows
        common.release_memory()
    result = {"settings": {k: ([list(m) for m in v] if k == "models" else v)
                           for k, v in cfg.items()},
              "rows": rows, "float_layers": kept, "targets": _targets(rows)}
    result["plots"] = [plot(result, ctx.path(f"{SECTION}.png"))]
    return result


def markdown(result):
    s = result["settings"]
    lines = [
        f"{SPARSITY:.0%} of every group's filters (criterion `l1`, `round_to={ROUND_TO}`), "
        "shrunk; dense and pruned exported alike and timed in LiteRT in one run: protocol "
        f"`all` interleaves every file ({s['rounds']} rounds of {s['block_seconds']} s blocks, "
        f"the `speed` protocol), `pair` the two plain int8 files alone ({s['pair_rounds']} "
        f"rounds of {s['pair_runs']} runs, one warm-up run); {s['repeats']} repeats of both, in "
        "turn. Speedup / MAC factor: median over the repeats [lowest, highest]. Float layers "
        "kept: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} = {', '.join(v)}" for k, v in kept.items())
            for m, kept in result["float_layers"].items()) + ".", ""]
    found = summary(result["rows"])
    headers = ["model", "threads", "export", "protocol", "speedup / MAC factor",
               "dense ms", "pruned ms"]
    table = []
    for (model, threads, export, protocol), (ratio, low, high, n) in sorted(found.items()):
        picked = [r for r in result["rows"] if (r["model"], r["threads"], r["export"],
                                                r["protocol"]) == (model, threads, export,
                                                                   protocol)]
        table.append([model, threads, export, protocol, f"{ratio:.3f} [{low:.3f}, {high:.3f}]",
                      f"{statistics.median(r['dense_ms'] for r in picked):.2f}",
                      f"{statistics.median(r['pruned_ms'] for r in picked):.2f}"])
    lines.append(common.md_table(headers, table))
    return "\n".join(lines)


def plot(result, path):
    plt = common.pyplot()
    models = sorted({r["model"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(models), figsize=(5.6 * len(models), 4.2), squeeze=False)
    found = summary(result["rows"])
    for ax, model in zip(axes[0], models):
        keys = sorted(k for k in found if k[0] == model)
        labels = [f"{k[2]} ({k[3]}), {k[1]} thr" for k in keys]
        medians = [found[k][0] for k in keys]
        errors = [[found[k][0] - found[k][1] for k in keys], [found[k][2] - found[k][0]
                                                                for k in keys]]
        ax.barh(range(len(keys)), medians, xerr=errors, color="tab:red", alpha=0.6)
        ax.set_yticks(range(len(keys)), labels, fontsize=6)
        if model in TARGETS:
            ax.axvline(TARGETS[model], color="k", ls="--", lw=1, label="issue #33 target")
            ax.legend(fontsize=7)
        common.label_axes(ax, "speedup / MAC factor (median of repeats, range)", "",
                          f"{model}: 50% r16, int8 exports")
    return common.save_figure(fig, path)
