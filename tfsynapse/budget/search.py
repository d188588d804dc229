"""Prune to a budget: the per-group ratios that bring a model under a MAC, parameter, file-size
or latency budget, then ``prune_once`` with them.

The cost of a pruned model depends only on how many units each group keeps, not on which, so
the solver counts without computing a single criterion score: ``BudgetSolver`` turns per-group
ratios into kept-unit counts exactly as the planner does (rounding half up, the group's cap,
``round_to``) and counts MACs and parameters over the dependency graph as ``shrink`` will leave
them. Two allocations:

* **uniform** (no sensitivity table): one ratio for every prunable group, the smallest that
  meets the budget (bisection; cost never rises with the ratio); then every pruned group may
  keep one rounding step more while the budget allows (largest cost first), so a coarse
  ``round_to`` does not miss a budget by a step of every group. **(choice)** Uniform, not
  cost-weighted: it is the ratio the D-Score paper and ``prune_once(model, r)`` use, it keeps
  every layer's share of the width, and without accuracy information a cost-weighted
  allocation would only prefer cutting the layers that cost most, which are often the ones
  accuracy needs (the wide late layers of a classifier).
* **sensitivity** (a ``SensitivityTable``): greedy, from every group unpruned: each move takes
  one group to its next ratio in the table, and the move with the smallest accuracy lost per
  unit of cost saved goes first (the accuracy lost read from the group's own curve, as the
  paper's parallel pruning reads it), until the budget is met. Under a latency budget the
  cost is a latency model fitted to measured probes (``budget_latency_model``: fixed ms, ms
  per MAC, ms per activation element), not MACs: a layer at full resolution saves more time
  than its MACs say.

File-size and latency budgets are met by measurement (``budget_measured.py``): candidates are
shrunk, converted in the requested precision and measured (bytes; LiteRT latency here or on a
device), searching along parameters or MACs until the least-pruned candidate that fits.
"""

import math
import numbers
import warnings

from tfsynapse.graph import count_macs, count_params, dependency_groups
from tfsynapse.analysis.batchnorm import recalibrate_batchnorm
from tfsynapse.analysis.sensitivity import sensitivity_analysis
from tfsynapse.analysis.sensitivity_table import SensitivityTable
from tfsynapse.plan.options import PruningOptions
from tfsynapse.plan.planner import MaskPlan
from tfsynapse.pruning.api import prune_once
from tfsynapse.surgery import shrink
from tflite_export.float_layers import requested
from tfsynapse.budget import alignment as budget_alignment
from tfsynapse.budget import latency_model as budget_latency_model
from tfsynapse.budget import measured as budget_measured
from tfsynapse.budget.report import BudgetReport
from tfsynapse.budget.solver import BudgetSolver


_PRECISIONS = (None, "float16", "dynamic", "int8")


def prune_to_budget(model, *, macs=None, params=None, size_bytes=None, latency_ms=None,
                    threads=1, quantize=None, representative_dataset=None, float_layers=None,
                    criterion="l1", sensitivity=None, round_to=None, max_pruning_ratio=None,
                    ignored_layers=(), data=None, measure_latency=None, return_report=False,
                    verbose=0):
    """Prunes filters until the shrunk model fits a budget (one-shot, like ``prune_once``).

    Give exactly one budget, in absolute units. The per-group ratios come from a uniform
    ratio, or from ``sensitivity`` (see the module docstring); the returned model has the
    pruned units zeroed, and ``shrink`` removes them.

    Args:
      model: a built functional or Sequential model, tf_keras or Keras 3 (left untouched).
      macs: the most multiply-accumulates per sample the shrunk model may need.
      params: the most parameters it may hold.
      size_bytes: the largest ``.tflite`` file, converted with ``quantize``.
      latency_ms: the largest LiteRT latency (median, batch 1) of the converted model, measured
        on this machine with ``threads`` (or by ``measure_latency``).
      threads: LiteRT threads of a latency budget.
      quantize: the precision of a ``size_bytes`` or ``latency_ms`` budget: None (float32),
        'float16', 'dynamic' or 'int8' (int8 needs ``representative_dataset``).
      representative_dataset: calibration data for int8.
      float_layers: with an int8 ``size_bytes`` or ``latency_ms`` budget, layer names kept
        float32 in every converted candidate (``tflite_export.convert``'s ``float_layers``):
        measure what you will ship, and export the result with the same names.
      criterion: the filter criterion that picks which units go, per group.
      sensitivity: None (uniform ratio), a ``SensitivityTable`` of this model, or a function
        ``evaluate(model) -> metric`` (higher is better) to build one with
        ``sensitivity_analysis`` (recalibrated on ``data`` when given).
      round_to: every pruned group keeps a multiple of this many units. None (default): 1
        for MAC, parameter and file-size budgets; for a latency budget, the multiple of 1, 4,
        8 or 16 measured fastest per MAC in this precision and thread count
        (``budget_alignment``; cached beside the latencies).
      max_pruning_ratio: no group loses more than this fraction (default: the filter default).
      ignored_layers: layer names whose groups are never pruned.
      data: training images: BatchNormalization statistics of the returned model are
        recalibrated on them (50 batches; the measured candidates are not, their size and
        latency do not depend on it), and the sensitivity trials when ``sensitivity`` is a
        function.
      measure_latency: optional ``fn(tflite_bytes, threads) -> ms`` that measures latency
        elsewhere, e.g. on an Android device over adb (docs/methods.md); default: LiteRT here,
        cached on disk (``TFSYNAPSE_CACHE``).
      return_report: also return a ``BudgetReport`` (the shrunk model is then measured).
      verbose: 1 prints the solver's progress and the report.

    Returns:
      The pruned model (pruned units exactly zero), or ``(model, report)``.

    Raises:
      ValueError: no budget or more than one; a budget that is not a positive number; a
        budget below what the frozen groups and the caps allow (the lowest reachable cost is
        in the message); int8 without calibration data; an unknown precision, or a precision
        with a MAC or parameter budget; ``float_layers`` without an int8 size or latency
        budget, or naming no layer of the model (or an input or output layer); ``threads``
        or ``measure_latency`` without a latency budget; ``threads`` or ``round_to`` not an
        integer >= 1; ``measure_latency`` returning anything but a positive number.
      TypeError: ``sensitivity`` is neither a table nor a function; ``measure_latency`` is
        not callable.
      RuntimeError: a device measurement failed (``adb_latency``, ``command_latency``).

    Warns:
      UserWarning: the dense model already meets the budget (nothing pruned); a measured
        result under 0.9 of its budget (the closest candidate over it is named); a poor
        latency-model fit.
    """
    kind, budget = _the_budget(macs=macs, params=params, size_bytes=size_bytes,
                               latency_ms=latency_ms)
    if quantize not in _PRECISIONS:
        raise ValueError(f"quantize must be one of None, 'float16', 'dynamic', 'int8'; got "
                         f"{quantize!r}.")
    measured_kind = kind in ("size_bytes", "latency_ms")
    if quantize is not None and not measured_kind:
        raise ValueError(f"quantize={quantize!r} only changes a size_bytes or latency_ms "
                         f"budget; {kind} do not depend on the precision.")
    if measured_kind and quantize == "int8" and representative_dataset is None:
        raise ValueError(f"an int8 {kind} budget converts the candidates to int8, which needs "
                         "representative_dataset (a few hundred training samples).")
    kept_float = _float_layers(model, float_layers, quantize, representative_dataset, kind)
    if (threads != 1 or measure_latency is not None) and kind != "latency_ms":
        raise ValueError("threads and measure_latency only apply to a latency_ms budget.")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}.")
    if measure_latency is not None and not callable(measure_latency):
        raise TypeError("measure_latency must be a function (tflite_bytes, threads) -> ms, got "
                        f"{type(measure_latency).__name__}.")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise ValueError(f"round_to must be an integer >= 1 or None, got {round_to!r}.")
    say = print if verbose else (lambda *a, **k: None)
    graph = dependency_groups(model)

    def solver_for(multiple):
        options = PruningOptions(criterion=criterion, granularity="filter", scope="layer",
                                 round_to=multiple, max_pruning_ratio=max_pruning_ratio,
                                 ignored_layers=tuple(ignored_layers), final_sparsity=1.0)
        return options, BudgetSolver(MaskPlan(graph, options))

    options, solver = solver_for(round_to or 1)

    def prune_at(ratios, multiple, by=criterion):  # not recalibrated: see _recalibrated
        with warnings.catch_warnings():  # the solver chose these counts knowing the rounding
            warnings.filterwarnings("ignore", message=r".*round_to=\d+ keeps channel counts")
            return prune_once(model, ratios, criterion=by, round_to=multiple,
                              max_pruning_ratio=options.max_pruning_ratio,
                              ignored_layers=ignored_layers)

    def shaped(ratios, multiple):  # a probe to time: only its widths matter
        return shrink(prune_at(ratios, multiple, by="l1"))

    meter, alignment, estimate = None, {}, None
    if kind == "latency_ms":
        meter = budget_measured.latency(quantize, representative_dataset, threads,
                                        measure_latency, float_layers=kept_float)
        # the budget's uniform ratio: where alignment and the latency model probe (only
        # needed for those: an explicit round_to without sensitivity goes straight to search)
        estimate, dense_key, mac_target = (
            _uniform_estimate(model, budget, meter, solver, options)
            if round_to is None or sensitivity is not None else (None, None, None))
        if round_to is None and estimate is not None:
            round_to, alignment = budget_alignment.choose_round_to(
                shaped, estimate, meter.convert, budget_alignment.interleaved(meter.time_file),
                meter.cache, dense_key, say, reachable=_reachable(solver_for, mac_target))
            if round_to != 1:
                options, solver = solver_for(round_to)
    round_to = round_to or 1  # counted and file-size budgets: alignment buys nothing
    curves = _curves(model, sensitivity, criterion, data, solver)
    if kind == "latency_ms" and curves is not None and estimate is not None:
        solver.use_latency_model(budget_latency_model.fit(
            solver, estimate, lambda ratios: shaped(solver.named_ratios(ratios), round_to),
            meter.convert, budget_alignment.interleaved(meter.time_file), meter.cache,
            dense_key, say))

    def solve(counted_kind, limit):
        if curves is None:
            ratios, cost, steps = solver.uniform_filled(counted_kind, limit,
                                                        options.max_pruning_ratio)
        else:
            ratios, cost, steps = solver.greedy(counted_kind, limit, *curves)
        if ratios is None:
            raise ValueError(_unreachable(counted_kind, limit, cost, solver, options,
                                          curves is not None))
        return ratios, cost, steps

    def pruned_with(ratios):
        named = solver.named_ratios(ratios)
        return named, prune_at(named, round_to)

    points, measured = [], None
    if kind in ("size_bytes", "latency_ms"):
        floor_ratios = ([options.max_pruning_ratio] * len(solver.groups) if curves is None else
                        [_last_ratio(curves[0], p.group.name) for p in solver.groups])
        if kind == "size_bytes":
            measure = budget_measured.file_size(quantize, representative_dataset, kept_float)
            axis = "params"
        else:
            measure, axis = meter, "macs" if solver.latency_model is None else "latency"
        (named, pruned), measured, dense_cost, points, steps = budget_measured.fit_measured(
            solve, pruned_with, solver, model, budget, measure, axis, floor_ratios,
            "bytes" if kind == "size_bytes" else "ms", say)
        predicted = measured
    else:
        ratios, predicted, steps = solve(kind, budget)
        say(f"prune_to_budget: {kind} {predicted:,} <= {budget:,.0f} after {steps} steps")
        (named, pruned), dense_cost = pruned_with(ratios), solver.dense[kind]
    pruned = _recalibrated(pruned, named, data, kind, budget)
    if kind in ("macs", "params") and (return_report or verbose):
        measured = (count_macs if kind == "macs" else count_params)(shrink(pruned))
    if not (return_report or verbose):
        return pruned
    report = BudgetReport(kind=kind, budget=float(budget), dense=float(dense_cost),
                          predicted=float(predicted),
                          measured=None if measured is None else float(measured),
                          allocation="uniform" if curves is None else "sensitivity",
                          ratios=named, frozen=dict(solver.plan.frozen), steps=steps,
                          points=points, round_to=round_to, alignment=alignment,
                          latency_model=solver.latency_model)
    say(report.table())
    return (pruned, report) if return_report else pruned


def _float_layers(model, float_layers, quantize, representative_dataset, kind):
    """The checked ``float_layers`` (None when empty): an int8 measured budget only."""
    if not float_layers:
        return None
    if kind not in ("size_bytes", "latency_ms"):
        raise ValueError(f"float_layers only changes a size_bytes or latency_ms budget (the "
                         f"converted file); {kind} do not depend on the precision.")

    return requested(model, float_layers, quantize, representative_dataset is not None) or None


def _recalibrated(pruned, named, data, kind, budget):
    """The returned model: its BatchNormalization statistics recalibrated on ``data`` (only
    this one; the measured candidates' sizes and latencies do not depend on them). A budget the
    dense model already meets prunes nothing: a warning, and the copy is left as it was."""

    if not any(named.values()):
        shown = f"{budget:.4g} ms" if kind == "latency_ms" else f"{budget:,.0f}"
        warnings.warn(f"tfsynapse: the dense model already meets the {kind} budget of "
                      f"{shown}: nothing was pruned (the model is returned unchanged).",
                      stacklevel=3)
    elif data is not None:
        recalibrate_batchnorm(pruned, data, steps=50)
    return pruned


def _uniform_estimate(model, budget, meter, solver, options):
    """``(ratio, dense key, MAC target)``: the uniform ratio a latency budget suggests (the
    dense MACs scaled by budget / dense ms, as a ratio; None when the dense model fits), the
    dense file's cache key (it names the model, precision and threads for the measured
    choices) and the scaled MACs."""
    dense_ms = meter(model)
    target = solver.dense["macs"] * budget / dense_ms
    if dense_ms <= budget:
        return None, meter.last_key, target
    top = options.max_pruning_ratio
    ratio = solver.uniform("macs", target, top)[0]
    return min(max(ratio if ratio is not None else top, 0.05), top), meter.last_key, target


def _reachable(solver_for, mac_target):
    """``reachable(multiple) -> (ok, reason)``: whether pruning every group to its cap in
    multiples of ``multiple`` gets below the budget's estimated MACs."""
    def reachable(multiple):
        options, solver = solver_for(multiple)
        floor = solver.cost([options.max_pruning_ratio] * len(solver.groups), "macs")
        return floor <= mac_target, (
            f"its most pruned configuration keeps {floor / 1e6:.4g} MMACs, above the "
            f"{mac_target / 1e6:.4g} MMACs the budget allows (dense MACs x budget / dense ms)")

    return reachable


def _the_budget(**budgets):
    given = {k: v for k, v in budgets.items() if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one budget: macs=, params=, size_bytes= or latency_ms=; "
                         f"got {sorted(given) or 'none'}.")
    (kind, value), = given.items()
    # numbers.Real admits numpy scalars (np.float32(8.0), np.int64(5_000_000)) as well
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{kind} must be a positive number, got {value!r}.")
    return kind, int(value) if isinstance(value, numbers.Integral) else float(value)


def _curves(model, sensitivity, criterion, data, solver):
    """``(curves, baseline)`` of a sensitivity table, or None for the uniform allocation."""

    if sensitivity is None:
        return None
    if callable(sensitivity) and not isinstance(sensitivity, SensitivityTable):
        sensitivity = sensitivity_analysis(model, sensitivity, criterion=criterion, step=0.1,
                                           max_ratio=0.9, recalibration_data=data)
    if not isinstance(sensitivity, SensitivityTable):
        raise TypeError("sensitivity must be a SensitivityTable or a function evaluate(model) -> "
                        f"metric, got {type(sensitivity).__name__}.")
    table_criterion = sensitivity.settings.get("criterion")
    if table_criterion not in (None, criterion):
        warnings.warn(f"tfsynapse: the sensitivity table was measured with criterion "
                      f"'{table_criterion}' and the model is pruned with '{criterion}': the "
                      "curves may not describe the units that go.", stacklevel=3)
    curves = sensitivity.curves()
    missing = [p.group.name for p in solver.groups if p.group.name not in curves]
    if missing:
        warnings.warn(f"tfsynapse: the sensitivity table has no curve for {len(missing)} "
                      f"prunable group(s) ({missing[:5]}): they stay unpruned. Was it measured "
                      "on this model?", stacklevel=3)
    return curves, float(sensitivity.baseline)


def _last_ratio(curves, name):
    ratios = curves.get(name, ([],))[0]
    return float(ratios[-1]) if len(ratios) else 0.0


def _unreachable(kind, limit, lowest, solver, options, by_sensitivity):
    unit = {"macs": "MACs", "params": "parameters", "latency": "predicted ms"}[kind]

    def fmt(value):
        return f"{value:.4g}" if kind == "latency" else f"{value:,.0f}"

    where = ("at the largest ratio of its sensitivity curve" if by_sensitivity else
             f"at max_pruning_ratio={options.max_pruning_ratio:g}")
    return (f"the budget of {fmt(limit)} {unit} cannot be met: the lowest reachable is "
            f"{fmt(lowest)} (dense {fmt(solver.dense[kind])}), with every prunable group {where} "
            f"and {len(solver.plan.frozen)} group(s) frozen ({list(solver.plan.frozen)[:4]}). "
            "Raise max_pruning_ratio, unfreeze groups (dependency_groups(model).summary() says "
            "why they are frozen) or give a larger budget.")
