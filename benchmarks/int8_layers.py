"""int8 layers: where does int8 LiteRT lose speedup per MAC against float32? (issue #16, item 5)

The ``speed`` section measures whole models: at 50% of the filters kept in multiples of 16, the
int8 speedup per MAC removed is lower than float32's (MobileNetV2 about 0.8 against 0.93). This
section takes both models apart. Every convolution (standard and depthwise) of the dense model
and of its 50% ``round_to=16`` shrunk twin is rebuilt alone (same input shape, kernel, strides,
padding, bias and the ReLU that the converter fuses into it), exported with
``tflite_export.convert`` in float32 and in int8 with int8 inputs and outputs (no quantise or
dequantise ops around it), and the four files are timed in LiteRT, interleaved. The whole
models are timed beside them, so the rows show how much of the latency the convolutions
explain, and in int8 with float32 kept (``float_layers``) for the first convolution, then for
every convolution at the first convolution's output resolution.
Per layer: MACs (dense, shrunk) and the four medians; the markdown groups them by output
resolution.
"""

import time

import numpy as np

from benchmarks import common

SECTION = "int8_layers"
SPARSITY = 0.5
ROUND_TO = 16


def settings(quick):
    if quick:
        return {"models": [("MobileNetV2", 64)], "max_layers": 4, "rounds": 2,
                "block_seconds": 0.01, "full_rounds": 2, "full_block_seconds": 0.05,
                "calibration_batches": 2, "threads": (1,)}
    return {"models": [("MobileNetV2", 224), ("ResNet50", 224)], "max_layers": None,
            "rounds": 5, "block_seconds": 0.05, "full_rounds": 10, "full_block_seconds": 0.5,
            "calibration_batches": 4, "threads": (1, 2)}


def _convolutions(model, keras):
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    return {layer.name: layer for layer in model.layers if isinstance(layer, kinds)}


def _fused_activation(layer, keras):
    """The ReLU (and its cap) that follows ``layer``, possibly after a BatchNormalization:
    the converter folds the BatchNormalization and fuses the ReLU into the convolution."""
    current = layer
    for _ in range(2):
        nodes = current._outbound_nodes
        if len(nodes) != 1:
            return None
        following = nodes[0].outbound_layer
        if isinstance(following, keras.layers.BatchNormalization):
            current = following
            continue
        if isinstance(following, keras.layers.ReLU):  # max_value None: an uncapped ReLU
            return 0.0 if following.max_value is None else following.max_value
        if isinstance(following, keras.layers.Activation):
            return 0.0 if following.get_config()["activation"] == "relu" else None
        return None
    return None


def alone(layer, model, keras):
    """``layer`` rebuilt as a one-layer model (with bias, and its fused ReLU if any).

    Returns:
      ``(model, input shape without the batch axis)``.
    """
    config = dict(layer.get_config(), use_bias=True, activation="linear")
    config.pop("name", None)
    shape = tuple(int(d) for d in layer.input.shape[1:])
    inputs = keras.Input(shape)
    clone = layer.__class__.from_config(config)
    outputs = clone(inputs)
    weights = layer.get_weights()
    clone.set_weights(weights + [np.zeros(clone.weights[-1].shape, "float32")]
                      if len(weights) == 1 else weights)
    cap = _fused_activation(layer, keras)
    if cap is not None:
        outputs = keras.layers.ReLU(max_value=cap or None)(outputs)
    return keras.Model(inputs, outputs), shape


def _kind(layer, keras):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    return "x".join(str(k) for k in layer.kernel_size)


def _exports(tag, model, shape, batches):
    """``model`` (one layer) in fp32 and in int8 with int8 inputs and outputs."""
    import tflite_export

    calibration = common.calibration_batches(shape, batches)
    return {f"{tag} fp32": tflite_export.convert(model, isolate=False),
            f"{tag} int8": tflite_export.convert(
                model, quantize="int8", representative_dataset=calibration, int8_io=True,
                isolate=False)}


def _profile(ctx, name, size, cfg):
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    keras.utils.set_random_seed(0)
    dense = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    pruned = tfsynapse.prune_once(dense, SPARSITY, criterion="l1", scope="layer",
                                  round_to=ROUND_TO)
    small = tfsynapse.shrink(pruned)
    del pruned
    dense_total, dense_macs = tfsynapse.count_macs(dense, per_layer=True)
    small_total, small_macs = tfsynapse.count_macs(small, per_layer=True)
    ctx.log(SECTION, f"{name} {size}px: MACs {dense_total / 1e6:,.0f}M -> "
                     f"{small_total / 1e6:,.0f}M")
    small_layers = _convolutions(small, keras)
    names = [n for n in _convolutions(dense, keras) if n in small_layers][:cfg["max_layers"]]
    rows, started = [], time.perf_counter()
    for index, layer_name in enumerate(names):
        layer = dense.get_layer(layer_name)
        dense_alone, dense_shape = alone(layer, dense, keras)
        small_alone, small_shape = alone(small_layers[layer_name], small, keras)
        files = {**_exports("dense", dense_alone, dense_shape, cfg["calibration_batches"]),
                 **_exports("shrunk", small_alone, small_shape, cfg["calibration_batches"])}
        stats, _ = common.interleaved_latency(files, 1, cfg["rounds"],
                                              block_seconds=cfg["block_seconds"])
        rows.append({
            "model": name, "input": size, "layer": layer_name, "kind": _kind(layer, keras),
            "resolution": int(layer.output.shape[1]),
            "channels": [dense_shape[-1], int(layer.output.shape[-1])],
            "shrunk_channels": [small_shape[-1], int(small_layers[layer_name].output.shape[-1])],
            "macs": dense_macs[layer_name], "shrunk_macs": small_macs[layer_name],
            **{f"{tag.replace(' ', '_')}_ms": stats[tag]["median_ms"] for tag in files}})
        if (index + 1) % 10 == 0 or index + 1 == len(names):
            ctx.log(SECTION, f"{name}: {index + 1}/{len(names)} layers timed "
                             f"({time.perf_counter() - started:.0f}s)")
    whole = _whole_models(dense, small, size, cfg)
    whole.update({"model": name, "input": size, "macs": dense_total, "shrunk_macs": small_total})
    factor = dense_total / small_total
    for t in whole["timings"]:
        ratios = {key: t[f"dense_{key}_ms"] / t[f"shrunk_{key}_ms"] / factor
                  for key in ("fp32", "int8", "stem", "first_resolution")}
        ctx.log(SECTION, f"{name} {t['threads']} thread(s): speedup / MAC factor " +
                ", ".join(f"{key} {ratio:.3f}" for key, ratio in ratios.items()))
    return rows, whole


def first_layers(model, keras):
    """The layers int8 runs slower than float here, as ``float_layers`` lists: ``{'stem': the
    first convolution, 'first_resolution': every convolution at its output resolution}``."""
    convolutions = list(_convolutions(model, keras).values())
    first = int(convolutions[0].output.shape[1])
    return {"stem": [convolutions[0].name], "first_resolution": [
        layer.name for layer in convolutions if int(layer.output.shape[1]) == first]}


def _whole_models(dense, small, size, cfg):
    """The whole models in fp32, in int8, and in int8 with float32 kept (``float_layers``)
    for the first convolution ('stem') and for every convolution at its output resolution
    ('first_resolution')."""
    import tflite_export
    from tfsynapse.backends.tf_keras import keras

    calibration = common.calibration_batches((size, size, 3), cfg["calibration_batches"])
    files, kept_float = {}, {}
    for tag, model in (("dense", dense), ("shrunk", small)):
        kept_float = {"int8": None, **first_layers(model, keras)}
        files[f"{tag} fp32"] = tflite_export.convert(model)
        for key, kept in kept_float.items():
            files[f"{tag} {key}"] = tflite_export.convert(
                model, quantize="int8", representative_dataset=calibration, float_layers=kept)
    timings = []
    for threads in cfg["threads"]:
        stats, _ = common.interleaved_latency(files, threads, cfg["full_rounds"],
                                              block_seconds=cfg["full_block_seconds"])
        timings.append({"threads": threads, **{f"{tag.replace(' ', '_')}_ms":
                                               stats[tag]["median_ms"] for tag in files}})
    return {"first_resolution_layers": kept_float["first_resolution"], "timings": timings}


def run(ctx):
    cfg = settings(ctx.quick)
    rows, wholes = [], []
    for name, size in cfg["models"]:
        layer_rows, whole = _profile(ctx, name, size, cfg)
        rows += layer_rows
        wholes.append(whole)
        common.release_memory()
    result = {"settings": dict(cfg), "rows": rows, "whole": wholes, "targets": []}
    result["plots"] = [plot(result, ctx.path(f"{SECTION}.png"))]
    return result


def _totals(rows):
    keys = ("macs", "shrunk_macs", "dense_fp32_ms", "shrunk_fp32_ms", "dense_int8_ms",
            "shrunk_int8_ms")
    return {k: float(sum(r[k] for r in rows)) for k in keys}


def _line(label, t, dense_total):
    """One table row: share of dense time and speedup per MAC, fp32 and int8."""
    factor = t["macs"] / max(t["shrunk_macs"], 1)
    fp32 = t["dense_fp32_ms"] / t["shrunk_fp32_ms"]
    int8 = t["dense_int8_ms"] / t["shrunk_int8_ms"]
    return [label, f"{t['macs'] / dense_total['macs']:.0%}",
            f"{t['dense_fp32_ms'] / dense_total['dense_fp32_ms']:.0%}",
            f"{t['dense_int8_ms'] / dense_total['dense_int8_ms']:.0%}",
            f"{t['dense_int8_ms'] / t['dense_fp32_ms']:.2f}",
            f"{factor:.2f}", f"{fp32:.2f} ({fp32 / factor:.2f})",
            f"{int8:.2f} ({int8 / factor:.2f})"]


def markdown(result):
    s = result["settings"]
    lines = [
        f"Each convolution of the dense model and of its {SPARSITY:.0%} `round_to={ROUND_TO}` "
        "shrunk twin, rebuilt alone (with its fused ReLU), exported in float32 and in int8 "
        "(int8 inputs and outputs), timed in LiteRT at 1 thread, interleaved "
        f"({s['rounds']} rounds); the whole models beside them ({s['full_rounds']} rounds, "
        "float inputs; also in int8 with layers kept float32, `float_layers`). Grouped by "
        "output resolution: share of the dense model's MACs and of the convolutions' summed "
        "latency, int8 / fp32 latency of the dense layers, the MAC "
        "factor (dense / shrunk) and the speedup (in brackets: speedup / MAC factor).", ""]
    headers = ["layers", "MAC share", "fp32 time share", "int8 time share",
               "int8 / fp32 ms (dense)", "MAC factor", "fp32 speedup", "int8 speedup"]
    for whole in result["whole"]:
        rows = [r for r in result["rows"] if r["model"] == whole["model"]]
        if not rows:
            continue
        total = _totals(rows)
        shares = dict(total, macs=whole["macs"])  # MAC shares of the whole model
        table = []
        for resolution in sorted({r["resolution"] for r in rows}, reverse=True):
            group = [r for r in rows if r["resolution"] == resolution]
            kinds = ", ".join(sorted({r["kind"] for r in group}))
            table.append(_line(f"{resolution}x{resolution} ({len(group)}: {kinds})",
                               _totals(group), shares))
        table.append(_line(f"all {len(rows)} convolutions", total, shares))
        first = whole["first_resolution_layers"]
        labels = (("int8", "whole model"), ("stem", "whole model, first convolution in float"),
                  ("first_resolution", f"whole model, the {len(first)} convolution(s) at the "
                                       "first resolution in float"))
        for timing in whole["timings"]:
            for key, label in labels:
                mixed = dict(timing, macs=whole["macs"], shrunk_macs=whole["shrunk_macs"],
                             dense_int8_ms=timing[f"dense_{key}_ms"],
                             shrunk_int8_ms=timing[f"shrunk_{key}_ms"])
                line = _line(f"{label}, {timing['threads']} thread(s)", mixed, mixed)
                table.append(line[:1] + ["", "", ""] + line[4:])
        lines += [f"**{whole['model']} {whole['input']}px** (convolutions alone sum to "
                  f"{total['dense_fp32_ms'] / whole['timings'][0]['dense_fp32_ms']:.0%} / "
                  f"{total['dense_int8_ms'] / whole['timings'][0]['dense_int8_ms']:.0%} of the "
                  "dense model's fp32 / int8 latency at 1 thread)", "",
                  common.md_table(headers, table), ""]
    return "\n".join(lines)


def plot(result, path):
    plt = common.pyplot()
    models = [w["model"] for w in result["whole"]]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in result["rows"] if r["model"] == model]
        factors = [r["macs"] / max(r["shrunk_macs"], 1) for r in rows]
        top = max(factors + [1.0]) * 1.15
        ax.plot([0.8, top], [0.8, top], "k--", lw=1, label="speedup = MAC factor")
        for precision, color in (("fp32", "tab:blue"), ("int8", "tab:red")):
            dense = np.array([r[f"dense_{precision}_ms"] for r in rows])
            speedups = dense / np.array([r[f"shrunk_{precision}_ms"] for r in rows])
            ax.scatter(factors, speedups, s=400 * dense / dense.sum() + 4, color=color,
                       alpha=0.6, label=f"{precision} (area: share of dense time)")
        common.label_axes(ax, "MAC factor of the layer (dense / shrunk)",
                          "LiteRT speedup of the layer alone",
                          f"{model} ({rows[0]['input'] if rows else ''}px), per convolution")
    return common.save_figure(fig, path)
