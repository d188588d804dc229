"""Budgets that are measured, not counted: the ``.tflite`` file size and the LiteRT latency.

Both are searched the same way (``fit_measured``): the dense model and the most-pruned
candidate are converted and measured first (an error names the smallest reachable value when
even that is over the budget), then regula falsi on (counted cost, measured value) between the
largest candidate known to fit and the smallest known not to: a straight line through the two,
the counted cost where it crosses the budget, solved, pruned, shrunk, converted and measured
(when the crossing solves to a bracket end, the bracket's middle, then its top), until no new
candidate lies between them (at most 8 rounds). The counted cost is parameters for
a file size and MACs for latency (a sensitivity-guided latency search: the fitted latency
model's predicted ms, ``budget_latency_model``). The least-pruned candidate measured to fit is returned.

Latency is LiteRT's median on this machine (``tflite_export.benchmark``, ``threads``), cached
on disk by the converted file's SHA-256, the thread count and the machine (``machine_tag``:
CPU model, core count, architecture and LiteRT version), so a new shape, precision, width or
host is a new key and nothing stale is reused; or whatever a ``measure_latency(tflite_bytes,
threads) -> ms`` function returns: e.g. LiteRT's ``benchmark_model`` on an Android phone over
adb (see docs/methods.md), not cached on disk (a file is timed once per call).
"""

import functools
import hashlib
import json
import math
import numbers
import os
import platform
import statistics
import warnings

import tflite_export
from tfsynapse.fileio import atomic_write
from tfsynapse.surgery import shrink

_ROUNDS = 8
FAR_BELOW = 0.9  # a result measuring under this fraction of its budget is reported (a warning)


class BudgetUnreachable(ValueError):
    """Even the most-pruned candidate measures over the budget (``fit_measured``)."""


def fit_measured(solve, pruned_with, solver, model, budget, measure, axis, floor_ratios, what,
                 say, stacklevel=4, user_budget=None):
    """The least-pruned candidate whose measured value fits ``budget``.

    Args:
      solve: ``solve(kind, limit) -> (ratios, cost, steps)`` (raises ValueError below reach).
      pruned_with: ``pruned_with(ratios) -> (named ratios, pruned model)``.
      solver: the ``BudgetSolver``.
      model: the dense model.
      budget: the largest acceptable measured value.
      measure: ``measure(model) -> float`` (converts and measures a model).
      axis: the counted cost the search moves along: ``'params'``, ``'macs'`` or
        ``'latency'`` (the solver's fitted latency model, in predicted ms).
      floor_ratios: the ratios of the most-pruned candidate.
      what: how to name the measured value in messages (e.g. ``'bytes'``, ``'ms'``).
      say: a print function for progress.
      stacklevel: the frames between the warning of a result far under the budget and the
        user's call.
      user_budget: the budget the user gave, when ``budget`` is a target under it (a local
        latency budget less its timing margin): "far under" is judged against it, and the
        warning names both. None: ``budget`` itself.

    Returns:
      ``((named ratios, pruned model), measured value, dense measured value, points, steps)``;
      ``points`` lists every ``(counted cost, measured value, predicted value)`` measured (the
      prediction: the straight line the candidate was chosen from; the dense model's and the
      most-pruned one's are their measurements).

    Raises:
      BudgetUnreachable: (a ValueError) even the most-pruned candidate measures over
        ``budget``.
    """
    dense_value = measure(model)
    points = [(solver.dense[axis], dense_value, dense_value)]
    say(f"prune_to_budget: dense {_count(solver.dense[axis], axis)} -> {dense_value:,.4g} "
        f"{what} (budget {budget:,.4g})")
    if dense_value <= budget:
        return pruned_with([0.0] * len(solver.groups)), dense_value, dense_value, points, 0
    floor = pruned_with(floor_ratios)
    floor_cost = solver.cost(floor_ratios, axis)
    floor_value = measure(shrink(floor[1]))
    points.append((floor_cost, floor_value, floor_value))
    say(f"prune_to_budget: most pruned {_count(floor_cost, axis)} -> {floor_value:,.4g} {what}")
    if floor_value > budget:
        raise BudgetUnreachable(
            f"the budget of {budget:,.4g} {what} cannot be met: the most-pruned model measures "
            f"{floor_value:,.4g} {what} (dense {dense_value:,.4g}; every prunable group pruned "
            f"as far as allowed, {len(solver.plan.frozen)} group(s) frozen); what remains is "
            "the part pruning does not touch (frozen layers, per-operator costs, a file's "
            "fixed part). Give a larger budget, another precision, or raise max_pruning_ratio.")
    fits = (floor_cost, floor_value, floor)
    over = (solver.dense[axis], dense_value)
    # the axis's smallest step: one MAC or parameter; predicted ms are continuous
    unit = 1e-9 * over[0] if axis == "latency" else 1
    steps, closed = 2, False
    for _ in range(_ROUNDS):
        slope = (over[1] - fits[1]) / max(over[0] - fits[0], unit)
        target = fits[0] + (budget - fits[1]) / max(slope, 1e-12)
        found = _inside(solve, axis, fits[0], over[0],
                        (target, (fits[0] + over[0]) / 2, over[0] - unit))
        if found is None:  # no configuration lies between the two: the bracket is closed
            closed = True
            break
        ratios, cost, moves = found
        steps += moves + 1
        candidate = pruned_with(ratios)
        value = measure(shrink(candidate[1]))
        points.append((cost, value, fits[1] + slope * (cost - fits[0])))
        say(f"prune_to_budget: {_count(cost, axis)} -> {value:,.4g} {what} (budget "
            f"{budget:,.4g})")
        if value <= budget:
            fits = (cost, value, candidate)
        else:
            over = (cost, value)
    stated = budget if user_budget is None else user_budget
    if fits[1] < FAR_BELOW * stated:
        aimed = "" if user_budget is None else (
            f" (searched to {budget:,.4g}, the budget less the margin for this machine's "
            "timing drift)")
        warnings.warn(
            f"tfsynapse: prune_to_budget returns a model measuring {fits[1]:,.4g} {what}, "
            f"{fits[1] / stated:.0%} of the budget of {stated:,.4g}{aimed}: the closest "
            f"configuration it found over the {'budget' if user_budget is None else 'target'} "
            f"measured {over[1]:,.4g} {what} "
            f"({over[1] / stated:.0%}), " + (
                "and none lies between" if closed else f"and {_ROUNDS} rounds did not close in")
            + f" ({_count(fits[0], axis)} vs {_count(over[0], axis)}). Configurations are "
            "coarse here (round_to, or the steps of the sensitivity table); a finer round_to or "
            "the uniform allocation may get closer to the budget.", stacklevel=stacklevel)
    return fits[2], fits[1], dense_value, points, steps


def _count(cost, axis):
    """A counted cost for progress lines: ``1,234 macs`` or ``1.234 predicted ms``."""
    return f"{cost:.4g} predicted ms" if axis == "latency" else f"{cost:,} {axis}"


def _inside(solve, axis, low, high, limits):
    """The first ``solve(axis, limit)`` whose cost lies strictly between ``low`` and ``high``.

    The straight line's crossing comes first; when the configurations are coarse (a large
    ``round_to``, a greedy step) it can land on the bracket's own end, so the bracket's middle
    (bisection) and its top are tried next. None when none of them is inside.
    """
    for limit in limits:
        try:
            ratios, cost, moves = solve(axis, limit)
        except ValueError:
            continue
        if low < cost < high:
            return ratios, cost, moves
    return None


def file_size(quantize, calibration, float_layers=None):
    """``measure(model) -> bytes`` of the model converted in ``quantize`` precision (with
    ``float_layers`` kept float32 in int8)."""

    def measure(model):
        return float(len(tflite_export.convert(model, quantize=quantize,
                                               representative_dataset=calibration,
                                               float_layers=float_layers)))

    return measure


def latency(quantize, calibration, threads, measure_latency=None, cache=None, runs=30,
            float_layers=None):
    """``measure(model) -> ms``: converted in ``quantize`` precision, timed with ``threads``.

    Args:
      quantize, calibration: the conversion (``tflite_export.convert``).
      threads: LiteRT threads.
      measure_latency: optional ``fn(tflite_bytes, threads) -> ms`` that measures elsewhere
        (an Android device); its values are not cached on disk (each file is timed once per
        meter).
      cache: a ``LatencyCache`` (default: the one under ``TFSYNAPSE_CACHE`` or ~/.cache).
      runs: timed invocations per round (three rounds, the median of their medians).
      float_layers: layer names kept float32 in an int8 conversion (``tflite_export``);
        the cache keys are the files' hashes, so such files are timed and cached apart.

    Returns:
      A ``LatencyMeter`` (call it with a model).
    """
    return LatencyMeter(quantize, calibration, threads, measure_latency, cache, runs,
                        float_layers)


class LatencyMeter:
    """Converts models and times them: ``meter(model) -> ms`` (cached), and its parts.

    Attributes:
      cache: the ``LatencyCache`` of LiteRT timings here (None with ``measure_latency``).
      last_key: the cache key of the file ``meter(model)`` converted last.
      fresh: when set, ``meter(model)`` times every file again instead of reading the cache
        (a search run again after the machine drifted: every value in today's units).
    """
    def __init__(self, quantize, calibration, threads, measure_latency=None, cache=None,
                 runs=30, float_layers=None):
        self.quantize, self.calibration, self.threads = quantize, calibration, threads
        self.float_layers = float_layers
        self.measure_latency, self.runs = measure_latency, runs
        self.cache = None if measure_latency is not None else (
            cache if cache is not None else LatencyCache())
        self.last_key, self.fresh = None, False
        self._timed = {}  # a device's timings, for this meter's life (the dense model twice)

    def convert(self, model):
        """The model's ``.tflite`` bytes in the meter's precision."""

        return tflite_export.convert(model, quantize=self.quantize,
                                     representative_dataset=self.calibration,
                                     float_layers=self.float_layers)

    def time_file(self, flatbuffer):
        """One fresh measurement of a converted file, in ms (never cached).

        Raises:
          ValueError: ``measure_latency`` returned anything but a finite positive number
            (``None``, a string, NaN, inf, a non-positive value), named with its type.
        """
        if self.measure_latency is not None:
            value = self.measure_latency(flatbuffer, self.threads)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value) or not value > 0:
                raise ValueError(
                    f"measure_latency returned {value!r} ({type(value).__name__}) for a "
                    f"{len(flatbuffer)}-byte model; it must return the latency in milliseconds, "
                    "a finite positive number (did the function forget to return, or return "
                    "the command's text?).")
            return float(value)
        return tflite_export.benchmark(flatbuffer, num_threads=self.threads,
                                       runs=self.runs)["median_ms"]

    def __call__(self, model):
        """The model's latency in ms: converted, then timed (three rounds, their median; a
        device's single timing), or read from the cache (not while ``fresh`` is set: then
        timed again and the cache entry replaced)."""
        flatbuffer = self.convert(model)
        self.last_key = LatencyCache.key(flatbuffer, self.threads)
        if self.cache is None:
            if self.last_key not in self._timed:
                self._timed[self.last_key] = self.time_file(flatbuffer)
            return self._timed[self.last_key]
        value = None if self.fresh else self.cache.get(self.last_key)
        if value is None:
            value = statistics.median(self.time_file(flatbuffer) for _ in range(3))
            self.cache.put(self.last_key, value)
        return value


class LatencyCache:
    """Measured LiteRT latencies on disk: ``{sha256 of the .tflite:threads:machine: ms}`` in
    JSON (``key``).

    Args:
      path: the JSON file (default ``$TFSYNAPSE_CACHE/latency.json``, else
        ``~/.cache/tfsynapse/latency.json``).
    """
    def __init__(self, path=None):
        if path is None:
            folder = os.environ.get("TFSYNAPSE_CACHE") or os.path.join(
                os.path.expanduser("~"), ".cache", "tfsynapse")
            path = os.path.join(folder, "latency.json")
        self.path = path
        self.hits = 0
        self.misses = 0
        self._warned = False

    @staticmethod
    def key(flatbuffer, threads):
        """The entry of a converted model timed with ``threads`` on this machine.

        Args:
          flatbuffer: the ``.tflite`` bytes (they decide: a new shape, precision or width is a
            new key).
          threads: LiteRT threads.

        Returns:
          ``'<sha256>:<threads>:<machine_tag()>'``.
        """
        return f"{hashlib.sha256(flatbuffer).hexdigest()}:{int(threads)}:{machine_tag()}"

    def _entries(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                entries = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            if not self._warned:
                self._warned = True
                warnings.warn(f"tfsynapse: the latency cache {self.path} cannot be read ({err}); "
                              "measuring again (it is rewritten on the next measurement).",
                              stacklevel=3)
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key):
        """The cached latency in ms, or None."""
        value = self._entries().get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            self.hits += 1
            return float(value)
        self.misses += 1
        return None

    def get_values(self, key):
        """A cached list of numbers (a fitted latency model's coefficients), or None."""
        value = self._entries().get(key)
        if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            self.hits += 1
            return [float(v) for v in value]
        self.misses += 1
        return None

    def put(self, key, value):
        """Stores a latency, or a list of numbers (atomically; a cache that cannot be written
        is skipped)."""
        entries = self._entries()
        entries[key] = [float(v) for v in value] if isinstance(value, list) else float(value)
        data = json.dumps(entries, indent=0, sort_keys=True).encode()
        try:
            atomic_write(self.path, lambda handle: handle.write(data))
        except OSError as err:
            if not self._warned:
                self._warned = True
                warnings.warn(f"tfsynapse: the latency cache {self.path} cannot be written "
                              f"({err}); latencies are measured again next time. Set "
                              "TFSYNAPSE_CACHE to a writable folder.", stacklevel=2)


@functools.lru_cache(maxsize=1)
def machine_tag():
    """A short hash naming the machine LiteRT times on: CPU model (ARM: implementer, part and
    board), the cores this process may use, architecture and LiteRT version (not the host
    name, which changes with every container). A cache directory shared between machines then
    never reuses another machine's timings.

    Returns:
      12 hex digits.
    """
    import importlib.metadata  # noqa: PLC0415

    fields = {}  # x86: "model name"; ARM: "CPU implementer", "CPU part", "Hardware"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "CPU implementer", "CPU part", "Hardware"):
                    fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    cpu = "|".join(fields[k] for k in sorted(fields)) or platform.processor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        litert = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        litert = "none"
    text = f"{cpu}|{cores}|{platform.machine()}|{litert}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def plot_budget(report, path):
    """Plots a measured budget's search: predicted against measured value per candidate.

    Args:
      report: a ``BudgetReport`` of a ``size_bytes`` or ``latency_ms`` budget.
      path: the PNG file to write (atomically).

    Returns:
      ``path``.

    Raises:
      ValueError: the report has no measured points (a MAC or parameter budget).
      ImportError: matplotlib is not installed.
    """
    if not report.points:
        raise ValueError(f"a {report.kind} budget is counted, not measured: nothing to plot.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install matplotlib.") from err
    unit = "ms" if report.kind == "latency_ms" else "bytes"
    fig = Figure(figsize=(6, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    predicted = [p[2] for p in report.points]
    measured = [p[1] for p in report.points]
    top = max(predicted + measured) * 1.05
    ax.plot([0, top], [0, top], "k--", linewidth=1, label="measured = predicted")
    ax.axhline(report.budget, color="tab:red", linewidth=1, label=f"budget {report.budget:,.4g}")
    ax.scatter(predicted, measured, s=30, label="candidates (in search order)")
    for i, (x, y) in enumerate(zip(predicted, measured)):
        ax.annotate(str(i), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if report.measured is not None:
        ax.scatter([p[2] for p in report.points if p[1] == report.measured][:1],
                   [report.measured], s=90, facecolors="none", edgecolors="tab:green",
                   label="returned")
    ax.set_xlabel(f"predicted {unit}")
    ax.set_ylabel(f"measured {unit}")
    ax.set_title(f"prune_to_budget: {report.kind}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    return path
