"""Shared pieces of the benchmarks: context and progress, machine and versions, timing, output.

Timing rules used everywhere:
* things compared are timed **interleaved**: round after round, each candidate runs one block,
  in an order rotated every round, so that slow phases of a noisy machine hit all of them;
* the summary is a **median** (of all samples, and of the per-round ratios);
* ratios are reported, not only absolute times.
"""

import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import time
from importlib import metadata

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


# --------------------------------------------------------------------------- context, progress

@dataclasses.dataclass
class Context:
    """What a section needs to run: the mode, where outputs go, and a progress logger.

    Attributes:
      quick: the smoke-test mode (tiny models, few runs).
      output: the folder for results.json, RESULTS.md and the plots.
      start: ``time.perf_counter()`` when the run began (for progress stamps).
    """

    quick: bool
    output: str
    start: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def mode(self):
        return "quick" if self.quick else "full"

    def log(self, section, message):
        """Prints one progress line, stamped with the time since the run began."""
        print(f"[{time.perf_counter() - self.start:7.1f}s] {section}: {message}", flush=True)

    def path(self, name):
        return os.path.join(self.output, name)


def quiet_tensorflow():
    """Silences TensorFlow's and absl's info/warning chatter (progress lines stay readable)."""
    import logging
    import warnings

    from absl import logging as absl_logging

    from tfsynapse.backends.tf_keras import tf

    absl_logging.set_verbosity(absl_logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def release_memory():
    """Drops Keras' global state and collects garbage between models."""
    from tfsynapse.backends.tf_keras import keras

    keras.backend.clear_session()
    gc.collect()


# --------------------------------------------------------------------------- machine, versions

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features():
    """The CPU features that decide how fast LiteRT's int8 and fp32 kernels run here (of
    ``INT8_FEATURES``, as /proc/cpuinfo names them; empty elsewhere): hosts of the same model
    name differ in them, and int8 latency with them (3.5x faster than fp32 with AVX-512 VNNI,
    no faster without it)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in INT8_FEATURES if f in flags]
    except OSError:
        pass
    return []


def _ram_gib():
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    """The machine and software the numbers were measured on.

    Returns:
      A dict: CPU model and its int8-relevant features, logical cores (and those this process may use), RAM, OS, load average
      at the start, and the versions of python, tensorflow, tf_keras, tfmot, ai-edge-litert,
      numpy and tfsynapse.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpu": _cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "load_average_at_start": load,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": _version("tensorflow") or _version("tensorflow-cpu"),
            "tf_keras": _version("tf-keras") or _version("tf_keras"),
            "tfmot": _version("tensorflow-model-optimization"),
            "ai_edge_litert": _version("ai-edge-litert"),
            "numpy": _version("numpy"),
            "tfsynapse": _version("tfsynapse"),
        },
    }


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- statistics

def median(values):
    return float(np.median(np.asarray(values, dtype=float)))


def quartiles(values):
    """(25th, 75th) percentiles."""
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, 25)), float(np.percentile(arr, 75))


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def verdict(value, target, op):
    """'PASS' or 'MISS' of ``value op target`` (op: '>=', '<=', '>' or '<'; NaN misses)."""
    checks = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
              ">": lambda a, b: a > b, "<": lambda a, b: a < b}
    if op not in checks:
        raise ValueError(f"unknown comparison {op!r}; use one of {sorted(checks)}.")
    return "PASS" if checks[op](value, target) else "MISS"


def target_entry(section, name, value, target, op):
    """One checked target, as stored in results.json and listed in RESULTS.md."""
    return {"section": section, "name": name, "value": float(value), "target": float(target),
            "op": op, "status": verdict(value, target, op)}


def loglog_slope(x, y):
    """Least-squares slope of log(y) against log(x): ~1 means linear growth."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        return float("nan")
    return float(np.polyfit(lx, ly, 1)[0])


def linear_fit(x, y):
    """Least squares ``y = a*x + b``; returns ``(a, b, r2)``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    a, b = np.polyfit(x, y, 1)
    residual = y - (a * x + b)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / total) if total > 0 else 1.0
    return float(a), float(b), r2


# --------------------------------------------------------------------------- timing

def rotated(names, round_index):
    """``names`` rotated by ``round_index`` (and reversed on odd rounds): each candidate gets
    every position in the order, so drift over a round hits all of them alike."""
    k = round_index % len(names)
    order = list(names[k:]) + list(names[:k])
    return order[::-1] if round_index % 2 else order


def interleaved(blocks, rounds, log=None):
    """Runs timed blocks interleaved: every round runs each block once, in a rotated order.

    Args:
      blocks: ``{name: callable}``; each call runs one block and returns its duration in
        seconds, or a list of per-item durations.
      rounds: how many rounds.
      log: optional ``log(message)`` for one progress line per round.

    Returns:
      ``{name: [per-round result, ...]}`` in round order.
    """
    names = list(blocks)
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in rotated(names, r):
            out[name].append(blocks[name]())
        if log:
            log(f"round {r + 1}/{rounds}")
    return out


def _random_input(detail, rng):
    shape = [1 if int(d) == -1 else int(d) for d in detail["shape_signature"]]
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-128, 128, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


class LiteRTModel:
    """One LiteRT interpreter kept loaded, inputs set once, for repeated timed blocks.

    The same runtime and defaults as ``tflite_export.benchmark`` (``ai_edge_litert``'s
    interpreter with its default XNNPACK delegate, batch 1, random inputs, only ``invoke()``
    timed), but the interpreter stays alive so that blocks of several models can alternate.
    """

    def __init__(self, tflite, num_threads, seed=0):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=bytes(tflite), num_threads=num_threads)
        for detail in self.interpreter.get_input_details():
            if any(int(d) == -1 for d in detail["shape_signature"]):
                shape = [1 if int(d) == -1 else int(d) for d in detail["shape_signature"]]
                self.interpreter.resize_tensor_input(detail["index"], shape)
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(seed)
        for detail in self.interpreter.get_input_details():
            self.interpreter.set_tensor(detail["index"], _random_input(detail, rng))

    def time_block(self, runs, warmup=1):
        """Runs ``warmup`` untimed then ``runs`` timed invocations; returns seconds per run."""
        invoke = self.interpreter.invoke
        for _ in range(warmup):
            invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            invoke()
            times.append(time.perf_counter() - start)
        return times


def interleaved_latency(models, num_threads, rounds, block_seconds=0.4, min_runs=3, max_runs=50,
                        warmup=3, discard=1, log=None):
    """Median latencies of several TFLite models, timed in interleaved blocks.

    Args:
      models: ``{name: flatbuffer bytes}``; the first one is the reference (dense) model.
      num_threads: LiteRT CPU threads.
      rounds: interleaved rounds.
      block_seconds: each block runs about this long for the slowest model (sets the runs per
        block, the same for every model).
      min_runs, max_runs: bounds of the runs per block.
      warmup: untimed invocations of each model before the rounds.
      discard: extra rounds run first and thrown away (caches, clocks and allocators settle).
      log: optional progress callback.

    Returns:
      ``{name: {"median_ms", "p25_ms", "p75_ms", "samples", "round_medians_ms"}}`` and
      ``runs_per_block``.
    """
    loaded = {name: LiteRTModel(data, num_threads) for name, data in models.items()}
    probe = {name: median(m.time_block(max(1, warmup), warmup=0)) for name, m in loaded.items()}
    runs = int(np.clip(round(block_seconds / max(max(probe.values()), 1e-6)), min_runs, max_runs))
    per_round = interleaved({name: (lambda m=m: m.time_block(runs)) for name, m in loaded.items()},
                            rounds + discard, log=log)
    per_round = {name: blocks[discard:] for name, blocks in per_round.items()}
    stats = {}
    for name, blocks in per_round.items():
        samples = [t * 1000.0 for block in blocks for t in block]
        p25, p75 = quartiles(samples)
        stats[name] = {
            "median_ms": median(samples), "p25_ms": p25, "p75_ms": p75, "samples": len(samples),
            "round_medians_ms": [median(block) * 1000.0 for block in blocks],
        }
    del loaded
    gc.collect()
    return stats, runs


def ratio_stats(reference_rounds, candidate_rounds):
    """Per-round ratios reference/candidate: (median, p25, p75)."""
    ratios = [a / b for a, b in zip(reference_rounds, candidate_rounds) if b > 0]
    p25, p75 = quartiles(ratios)
    return median(ratios), p25, p75


# --------------------------------------------------------------------------- models and data

def small_cnn(input_shape, classes, widths=(16, 32, 32, 64), name="bench_cnn"):
    """The quickstart's Conv-BN-ReLU CNN (``tfsynapse.models.conv_bn_cnn``), narrower."""
    from tfsynapse.models import conv_bn_cnn

    return conv_bn_cnn(input_shape, classes, widths=widths, name=name)


def compile_classifier(model, lr):
    from tfsynapse.backends.tf_keras import keras

    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, x, y, batch_size=1000):
    """Top-1 accuracy of a logits model on ``(x, y)``."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def copy_model(model):
    """A fresh clone with the same weights (pruning wrappers share the layers they wrap)."""
    from tfsynapse.backends.tf_keras import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def calibration_batches(shape, count=8, seed=0):
    """``count`` random batches of one sample each, for int8 calibration."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1,) + tuple(shape)).astype("float32") for _ in range(count)]


# --------------------------------------------------------------------------- output

def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


def write_json(data, path):
    with open(path, "w") as handle:
        json.dump(_jsonable(data), handle, indent=2)
        handle.write("\n")


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def fmt(value, spec=".2f"):
    """Formats a number for a table (``-`` for None/NaN)."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "-"
        return format(float(value), spec)
    return str(value)


def md_table(headers, rows):
    """A Markdown table; ``rows`` are lists of already formatted cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_axes(ax, xlabel, ylabel, title):
    """Labels, title, a light grid and a small legend: every benchmark panel's finish."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return os.path.basename(path)
