"""Converter memory: the conversion worker's resident memory over many conversions.

TensorFlow 2.21's TFLite converter leaks memory on every conversion (about 22 MB a SavedModel
conversion, fixed upstream after 2.21). tfsynapse converts in a worker process
(``tflite_export.isolation``) that is recycled after ``TFSYNAPSE_CONVERTER_JOBS`` jobs (default
25) or past ``TFSYNAPSE_CONVERTER_MAX_MB`` (default 2048). ``conversions`` small CNNs (widths
varied, so no conversion repeats another; tf_keras and Keras 3 alternately, the latter through
a SavedModel) are converted to int8 (8 calibration samples), as a
measured size or latency budget search does, once with recycling switched off and
once with the defaults; the worker's resident memory is read after each. Target: with
recycling, the peak stays within 10% of the peak of the first worker's life (the memory is
bounded by one recycling period, whatever the number of conversions).
"""

import os

import numpy as np

from benchmarks import common

SECTION = "converter_memory"
TARGET = 1.10


def settings(quick):
    if quick:
        return {"conversions": 6, "jobs": 3}
    return {"conversions": 50, "jobs": 25}


def _models(count):
    """Small CNNs, alternately tf_keras (converted from its Keras model) and Keras 3 (converted
    through a SavedModel, the path that leaks most)."""
    from tfsynapse.models import conv_bn_cnn

    for i in range(count):
        width = 8 + 4 * (i % 7)
        yield conv_bn_cnn((16, 16, 1), 4, widths=(width, 2 * width, 2 * width, 4 * width),
                          backend=("tf_keras", "keras3")[i % 2])


def _series(cfg, jobs, max_mb, log):
    """Worker memory (MB) after each conversion, under the given recycling limits."""
    import tflite_export
    from tflite_export import isolation

    calibration = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype(np.float32)
    isolation.shutdown()
    saved = {k: os.environ.get(k) for k in ("TFSYNAPSE_CONVERTER_JOBS", "TFSYNAPSE_CONVERTER_MAX_MB")}
    os.environ["TFSYNAPSE_CONVERTER_JOBS"] = str(jobs)
    os.environ["TFSYNAPSE_CONVERTER_MAX_MB"] = str(max_mb)
    try:
        start = isolation.worker_stats()["recycled"]
        rss = []
        for i, model in enumerate(_models(cfg["conversions"])):
            tflite_export.convert(model, quantize="int8", representative_dataset=calibration)
            rss.append(isolation.worker_stats()["last_rss_bytes"] / 2 ** 20)
            if (i + 1) % 10 == 0:
                log(f"jobs={jobs}: {i + 1} conversions, worker {rss[-1]:.0f} MB")
        recycled = isolation.worker_stats()["recycled"] - start
    finally:
        isolation.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return rss, recycled


def run(ctx):
    cfg = settings(ctx.quick)
    log = lambda m: ctx.log(SECTION, m)  # noqa: E731
    never = 10 ** 9
    kept, _ = _series(cfg, never, never, log)
    recycled, count = _series(cfg, cfg["jobs"], 2048, log)
    first_life = max(recycled[:cfg["jobs"]])
    slope, _, _ = common.linear_fit(np.arange(len(kept)), kept)
    result = {
        "settings": cfg, "never_recycled_mb": kept, "recycled_mb": recycled,
        "recycles": count, "leak_mb_per_conversion": slope,
        "peak_never_mb": max(kept), "peak_recycled_mb": max(recycled),
        "peak_first_life_mb": first_life,
        "targets": [common.target_entry(SECTION, "peak worker memory / first worker's peak",
                                        max(recycled) / first_life, TARGET, "<=")],
    }
    log(f"leak {slope:.1f} MB a conversion; peak {max(kept):.0f} MB never recycled, "
        f"{max(recycled):.0f} MB recycled every {cfg['jobs']} ({count} recycles)")
    result["plots"] = [plot(result, ctx.path("converter_memory.png"))]
    return result


def plot(result, path):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    n = np.arange(1, len(result["never_recycled_mb"]) + 1)
    ax.plot(n, result["never_recycled_mb"], "o-", ms=3, label="one worker (never recycled)")
    ax.plot(n, result["recycled_mb"], "s-", ms=3,
            label=f"recycled every {result['settings']['jobs']} conversions")
    ax.set_xlabel("conversions")
    ax.set_ylabel("worker resident memory (MB)")
    ax.legend()
    ax.grid(alpha=0.3)
    return common.save_figure(fig, path)


def markdown(result):
    s = result["settings"]
    return "\n".join([
        f"{s['conversions']} int8 conversions of small Conv-BN CNNs (widths varied; tf_keras and "
        "Keras 3 alternately, the latter through a SavedModel) in the "
        "conversion worker; its resident memory read from /proc after each.", "",
        common.md_table(
            ["worker", "peak (MB)", "growth (MB a conversion)", "recycles"],
            [["one worker, never recycled", f"{result['peak_never_mb']:.0f}",
              f"{result['leak_mb_per_conversion']:.1f}", "0"],
             [f"recycled every {s['jobs']} (the default)", f"{result['peak_recycled_mb']:.0f}",
              "bounded", str(result["recycles"])]]),
    ])
