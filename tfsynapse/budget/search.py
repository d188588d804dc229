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

File-size and latency budgets are met by measurement (``budget/measured.py``): candidates are
shrunk, converted in the requested precision and measured (bytes; LiteRT latency here or on a
device), searching along parameters or MACs until the least-pruned candidate that fits.
"""

import warnings

from tfsynapse.graph import count_macs, count_params, dependency_groups
from tfsynapse.analysis.batchnorm import recalibrate_batchnorm
from tfsynapse.analysis.sensitivity import sensitivity_analysis
from tfsynapse.analysis.sensitivity_table import SensitivityTable
from tfsynapse.plan.options import PruningOptions
from tfsynapse.plan.planner import MaskPlan
from tfsynapse.pruning.api import prune_once
from tfsynapse.surgery import shrink
from tfsynapse.budget import alignment as budget_alignment
from tfsynapse.budget import latency_model as budget_latency_model
from tfsynapse.budget import hold as budget_hold
from tfsynapse.budget import measured as budget_measured
from tfsynapse.budget import meter as budget_meter
from tfsynapse.budget.report import BudgetReport
from tfsynapse.budget.request import BudgetRequest
from tfsynapse.budget.solver import BudgetSolver


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
      representative_dataset: calibration data for an int8 ``size_bytes`` or ``latency_ms``
        budget (as ``tflite_export.convert``'s; a generator is read once, its first 100
        batches, so that every candidate is calibrated on the same data).
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
        integer >= 1; ``measure_latency`` returning anything but a positive number;
        ``representative_dataset`` without an int8 measured budget, or an exhausted iterator;
        ``ignored_layers`` a string or naming a layer the model does not have (all checked
        before any measurement or sensitivity analysis).
      TypeError: ``sensitivity`` is neither a table nor a function; ``measure_latency`` is
        not callable.
      RuntimeError: a device measurement failed (``adb_latency``, ``command_latency``).

    Warns:
      UserWarning: the dense model already meets the budget (nothing pruned); a measured
        result under 0.9 of its budget (the closest candidate over it is named); a poor
        latency-model fit.
    """
    request = BudgetRequest.checked(
        model, macs=macs, params=params, size_bytes=size_bytes, latency_ms=latency_ms,
        threads=threads, quantize=quantize, representative_dataset=representative_dataset,
        float_layers=float_layers, measure_latency=measure_latency, criterion=criterion,
        sensitivity=sensitivity, round_to=round_to, max_pruning_ratio=max_pruning_ratio,
        ignored_layers=ignored_layers, data=data)
    say = print if verbose else (lambda *a, **k: None)
    search = _Search(model, request, say)
    named, pruned, predicted, measured, dense_cost, points, steps = search.run()
    pruned = _recalibrated(pruned, named, data, request.kind, request.budget)
    if request.kind in ("macs", "params") and (return_report or verbose):
        measured = (count_macs if request.kind == "macs" else count_params)(shrink(pruned))
    if not (return_report or verbose):
        return pruned
    report = BudgetReport(kind=request.kind, budget=float(request.budget),
                          dense=float(dense_cost), predicted=float(predicted),
                          measured=None if measured is None else float(measured),
                          allocation="uniform" if search.curves is None else "sensitivity",
                          ratios=named, frozen=dict(search.solver.plan.frozen), steps=steps,
                          points=points, round_to=search.round_to, alignment=search.alignment,
                          latency_model=search.solver.latency_model, margin=search.margin,
                          remeasured=search.remeasured, researches=search.researches)
    say(report.table())
    return (pruned, report) if return_report else pruned


class _Search:
    """One budget search over one model: the solver (counts), the meter (measured budgets),
    alignment and the latency model (latency budgets), then the solve itself."""

    def __init__(self, model, request, say):
        self.model, self.request, self.say = model, request, say
        self.graph = dependency_groups(model)
        self.options, self.solver = self.solver_for(request.round_to or 1)
        self.round_to, self.alignment, self.meter = request.round_to, {}, None
        self.curves = None
        # a local latency budget's (budget/hold.py)
        self.margin, self.remeasured, self.researches = 0.0, None, 0

    def solver_for(self, multiple):
        """``(options, BudgetSolver)`` for channel counts kept in multiples of ``multiple``."""
        r = self.request
        options = PruningOptions(criterion=r.criterion, granularity="filter", scope="layer",
                                 round_to=multiple, max_pruning_ratio=r.max_pruning_ratio,
                                 ignored_layers=tuple(r.ignored_layers), final_sparsity=1.0)
        return options, BudgetSolver(MaskPlan(self.graph, options))

    def prune_at(self, ratios, multiple, by=None):  # not recalibrated: see _recalibrated
        with warnings.catch_warnings():  # the solver chose these counts knowing the rounding
            warnings.filterwarnings("ignore", message=r".*round_to=\d+ keeps channel counts")
            return prune_once(self.model, ratios, criterion=by or self.request.criterion,
                              round_to=multiple,
                              max_pruning_ratio=self.options.max_pruning_ratio,
                              ignored_layers=self.request.ignored_layers)

    def shaped(self, ratios, multiple):
        """A probe to time: only its widths matter."""
        return shrink(self.prune_at(ratios, multiple, by="l1"))

    def prepare(self):
        """Latency: the meter, the channel multiple measured fastest per MAC (``round_to``
        None) and the latency model a guided allocation spends; then the sensitivity curves."""
        r, estimate, dense_key = self.request, None, None
        if r.kind == "latency_ms":
            self.meter = budget_meter.latency(r.quantize, r.calibration, r.threads,
                                              r.measure_latency, float_layers=r.float_layers,
                                              dense=self.model)
            # the budget's uniform ratio: where alignment and the latency model probe (only
            # needed for those: an explicit round_to without sensitivity goes straight on)
            if r.round_to is None or r.sensitivity is not None:
                estimate, dense_key, mac_target = _uniform_estimate(
                    self.model, r.budget, self.meter, self.solver, self.options)
                if r.round_to is None and estimate is not None:
                    self.round_to, self.alignment = budget_alignment.choose_round_to(
                        self.shaped, estimate, self.meter.convert,
                        budget_alignment.interleaved(self.meter.time_file), self.meter.cache,
                        dense_key, self.say, reachable=_reachable(self.solver_for, mac_target))
                    if self.round_to != 1:
                        self.options, self.solver = self.solver_for(self.round_to)
        self.round_to = self.round_to or 1  # counted and size budgets: alignment buys nothing
        self.curves = _curves(self.model, r.sensitivity, r.criterion, r.data, self.solver)
        if r.kind == "latency_ms" and self.curves is not None and estimate is not None:
            self.solver.use_latency_model(budget_latency_model.fit(
                self.solver, estimate,
                lambda ratios: self.shaped(self.solver.named_ratios(ratios), self.round_to),
                self.meter.convert, budget_alignment.interleaved(self.meter.time_file),
                self.meter.cache, dense_key, self.say))

    def solve(self, counted_kind, limit):
        """``(ratios, cost, steps)`` meeting ``limit`` on a counted axis, or a ValueError."""
        if self.curves is None:
            ratios, cost, steps = self.solver.uniform_filled(counted_kind, limit,
                                                             self.options.max_pruning_ratio)
        else:
            ratios, cost, steps = self.solver.greedy(counted_kind, limit, *self.curves)
        if ratios is None:
            raise ValueError(_unreachable(counted_kind, limit, cost, self.solver, self.options,
                                          self.curves is not None))
        return ratios, cost, steps

    def pruned_with(self, ratios):
        named = self.solver.named_ratios(ratios)
        return named, self.prune_at(named, self.round_to)

    def run(self):
        """``(named ratios, pruned, predicted, measured, dense cost, points, steps)``."""
        self.prepare()
        r, solver = self.request, self.solver
        if not r.measured:
            ratios, predicted, steps = self.solve(r.kind, r.budget)
            self.say(f"prune_to_budget: {r.kind} {predicted:,} <= {r.budget:,.0f} after "
                     f"{steps} steps")
            named, pruned = self.pruned_with(ratios)
            return named, pruned, predicted, None, solver.dense[r.kind], [], steps
        floor_ratios = ([self.options.max_pruning_ratio] * len(solver.groups)
                        if self.curves is None else
                        [_last_ratio(self.curves[0], p.group.name) for p in solver.groups])
        if r.kind == "size_bytes":
            measure = budget_measured.file_size(r.quantize, r.calibration, r.float_layers)
            axis = "params"
        else:
            measure, axis = self.meter, "macs" if solver.latency_model is None else "latency"
        target = r.budget
        local = r.kind == "latency_ms" and r.measure_latency is None  # timed here: drifts
        again = self.meter.again if local else None
        if local:
            self.margin, medians = budget_hold.spread_margin(self.meter, self.model)
            target = r.budget / (1.0 + self.margin)
            self.say(f"prune_to_budget: dense timed {len(medians)} times, spread "
                     f"{self.margin:.1%}: aiming at {target:.4g} ms")

        def fit(limit, depth=0):  # depth: frames added between run() and fit()
            return budget_measured.fit_measured(
                self.solve, self.pruned_with, solver, self.model, limit, measure, axis,
                floor_ratios, "bytes" if r.kind == "size_bytes" else "ms", self.say,
                stacklevel=5 + depth, again=again,
                warn_far_below=not local)

        try:
            found = fit(target)
        except budget_measured.BudgetUnreachable:
            if target == r.budget:
                raise
            warnings.warn(f"tfsynapse: the latency budget of {r.budget:.4g} ms cannot be met "
                          f"with the {self.margin:.1%} margin this machine's timing spread "
                          f"asks for ({target:.4g} ms); searching to the budget itself.",
                          stacklevel=3)
            self.margin, target = 0.0, r.budget
            found = fit(target)
        if local:
            found = self.hold(fit, found)
        (named, pruned), measured, dense_cost, points, steps = found
        return named, pruned, measured, measured, dense_cost, points, steps

    def hold(self, fit, found):
        """A local latency budget's result timed again and searched again while it lands
        outside [LOW, 1] x budget (``budget.hold.hold``); the report's fields set.

        Returns:
          What the search that found the returned model returned.
        """
        found, self.remeasured, self.researches, self.margin = budget_hold.hold(
            self.meter, self.model, self.request.budget, self.margin, fit, found, self.say)
        return found


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
                      "curves may not describe the units that go.", stacklevel=5)
    curves = sensitivity.curves()
    missing = [p.group.name for p in solver.groups if p.group.name not in curves]
    if missing:
        warnings.warn(f"tfsynapse: the sensitivity table has no curve for {len(missing)} "
                      f"prunable group(s) ({missing[:5]}): they stay unpruned. Was it measured "
                      "on this model?", stacklevel=5)
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
