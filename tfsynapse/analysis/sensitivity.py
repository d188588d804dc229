"""Sensitivity analysis and parallel pruning: the D-Score paper's one-shot procedure.

1. ``sensitivity_analysis`` prunes every prunable dependency group *alone*, at ratios
   ``step, 2 * step, ...`` up to ``max_ratio``, with a filter criterion (D-Score by default),
   and calls the user's ``evaluate(model)`` after each trial without retraining. The model's
   weights are restored after every trial, so the model comes back bit-identical.
   With ``recalibration_data``, every trial first re-estimates the BatchNormalization
   statistics (``recalibrate_batchnorm``) and restores them afterwards: without it, stale
   statistics rather than the pruned filters dominate the one-shot metric. The baseline is
   then measured after the same recalibration (the metric with the stored statistics is kept
   in ``settings["baseline_stored_statistics"]``), so drops compare like with like.
2. ``ratios_from_sensitivity`` reads each group's largest safe ratio off its curve for an
   accuracy floor: absolute (``min_metric=0.9``: the paper's "90% accuracy"), a drop from the
   baseline (``max_drop=0.02``: two points) or relative (``keep_fraction=0.9``: 90% of the
   baseline); the resulting ``{layer name: ratio}`` feeds ``prune_once(model,
   sparsity=ratios)`` or ``prune_synaptic(..., layer_sparsity=ratios)``.
3. ``plot_sensitivity`` (in ``sensitivity_table``) draws the curves (the paper's figure).

How the trials are computed: the dependency graph is built once; each analysed group gets one
``MaskPlan`` whose options ignore the producers of every other group, so the plan holds that
group alone and ``plan.compute(ratio)`` prunes ``round(ratio * channels)`` of its channels
(capped by ``max_pruning_ratio=max_ratio`` and never all of them), exactly as ``prune_once``
with ``sparsity={producer: ratio}`` would. The masked weights are snapshotted once; each trial
assigns ``snapshot * mask`` and then the snapshot again.
"""

import math
import numbers
import time

import numpy as np

from tfsynapse.backends import backend_of
from tfsynapse.graph import count_macs, dependency_groups, functional_model
from tfsynapse.analysis.batchnorm import batchnorm_layers, recalibrate_batchnorm
from tfsynapse.plan.options import PruningOptions
from tfsynapse.plan import rounding
from tfsynapse.plan.planner import MaskPlan
from tfsynapse.analysis.sensitivity_table import SensitivityTable, plot_sensitivity

__all__ = [
    "SensitivityTable",
    "plot_sensitivity",
    "ratios_from_sensitivity",
    "sensitivity_analysis",
]


# ------------------------------------------------------------------------- validation
def _check_fraction(value, what, low_open=True, high_closed=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a float, got {value!r}.")
    value = float(value)
    ok_high = value <= 1.0 if high_closed else value < 1.0
    if not (value > 0.0 and ok_high):
        interval = "(0, 1]" if high_closed else "(0, 1)"
        raise ValueError(f"{what} must be in {interval}, got {value!r}.")
    return value


def _ratios(step, max_ratio):
    ratios = []
    k = 1
    while k * step <= max_ratio + 1e-9:
        ratios.append(round(k * step, 10))
        k += 1
    if not ratios:
        raise ValueError(f"step ({step}) is larger than max_ratio ({max_ratio}): no ratio to try; "
                         "lower step or raise max_ratio.")
    return ratios


def _metric(evaluate, model, when):
    value = evaluate(model)
    try:
        return float(np.asarray(value).reshape(()))
    except (TypeError, ValueError) as err:
        raise TypeError(f"evaluate(model) must return one number (e.g. the validation accuracy); "
                        f"it returned {value!r} {when}.") from err


# ---------------------------------------------------------------------------- analysis
def sensitivity_analysis(model, evaluate, criterion="dscore", step=0.05, max_ratio=0.95,
                         groups=None, round_to=1, residual="group", verbose=1,
                         recalibration_data=None, recalibration_steps=20, seed=0):
    """Prunes each dependency group alone at growing ratios and evaluates, without retraining.

    For each prunable group (the channels one or more layers must lose together) and each
    ratio ``step, 2 * step, ...`` up to ``max_ratio``, the group's ``round(ratio * channels)``
    lowest-ranked filters (by ``criterion``, filter granularity, scope 'layer') are zeroed in
    place, ``evaluate(model)`` is called, and the weights are restored. Every group keeps at
    least one channel and at least ``1 - max_ratio`` of them (as ``max_pruning_ratio``).

    ``evaluate`` must not change the weights (no training, no ``training=True`` calls that
    update BatchNormalization statistics); the masked weights are restored after each trial,
    also when ``evaluate`` raises, and the model comes back bit-identical.

    Args:
      model: a built functional or Sequential model (tf_keras or Keras 3), pruned in place
        during the analysis and restored.
      evaluate: ``evaluate(model) -> float``, higher is better (e.g. top-1 accuracy on
        validation data). Called once on the unpruned model, then once per (group, ratio).
      criterion: a filter criterion name ('dscore', 'dstep', 'dstep_gm', 'fpgm', 'l1', 'l2',
        'bn_scale', 'random', 'synaptic_strength') or a registered/callable criterion.
      step: the ratio increment, in (0, 1); the paper uses 0.05 (5% of the filters).
      max_ratio: the largest ratio tried, in (0, 1).
      groups: optional names of the groups to analyse (a group is named after its first
        producer layer, see ``tfsynapse.dependency_groups(model).summary()``); default: every
        group these options can prune.
      round_to: keep channel counts multiples of this.
      residual: 'group' (analyse residual groups as one) or 'skip' (leave groups with more
        than one producer out, as the paper does for the last convolution of residual blocks).
      verbose: 0 silent, 1 one line per group, 2 also one line per trial.
      recalibration_data: training images (array, ``(x, y)`` or dataset; not the data
        ``evaluate`` scores) to re-estimate the BatchNormalization statistics of every trial
        before ``evaluate`` (restored afterwards). Strongly advised for models with
        BatchNormalization: the D-Score paper's one-shot curves are only informative with it.
        The baseline is measured after the same recalibration.
      recalibration_steps: the most batches of ``recalibration_data`` per trial.
      seed: seed of the 'random' criterion (as in ``prune_once``).

    Returns:
      A ``SensitivityTable``.

    Raises:
      TypeError: ``evaluate`` is not callable or does not return a number; a non-Keras
        model.
      ValueError: ``step`` or ``max_ratio`` not in (0, 1), ``step > max_ratio``, unknown or
        frozen group names, invalid options, a subclassed, unbuilt or wrapped model, or
        nothing to prune.
    """
    model = functional_model(model)  # a subclassed model: its traced graph
    backend = backend_of(model)
    backend.check_model(model)
    backend.refuse_pruning_wrappers(model)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable evaluate(model) -> float, got {evaluate!r}.")
    step = _check_fraction(step, "step")
    max_ratio = _check_fraction(max_ratio, "max_ratio")
    ratios = _ratios(step, max_ratio)
    base = dict(criterion=criterion, granularity="filter", scope="layer", round_to=round_to,
                max_pruning_ratio=max_ratio, residual=residual, seed=seed)
    graph = dependency_groups(model)
    all_plan = MaskPlan(graph, PruningOptions(**base))
    targets = _select_groups(all_plan, groups)
    settings = {"criterion": all_plan.options.criterion, "step": step, "max_ratio": max_ratio,
                "round_to": round_to, "residual": residual, "seed": seed}

    trials = _Trials(model, evaluate, all_plan, recalibration_data, recalibration_steps)
    settings["recalibration_steps"] = recalibration_steps if trials.statistics else 0
    baseline = trials.baseline(settings)
    baseline_macs = count_macs(graph)
    if verbose:
        print(f"sensitivity: baseline metric {baseline:.6g}, {baseline_macs:,} MACs; "
              f"{len(targets)} groups x {len(ratios)} ratios ({ratios[0]:g} .. {ratios[-1]:g}), "
              f"criterion '{settings['criterion']}'", flush=True)
    rows = []
    started = time.perf_counter()
    try:
        for i, group in enumerate(targets):
            t0 = time.perf_counter()
            plan = _group_plan(graph, all_plan, group, base)
            found = [trials.row(plan, graph, group, ratio, verbose) for ratio in ratios]
            rows += found
            if verbose:
                _print_group(i, len(targets), group, found, t0, started)
    finally:
        trials.restore()
    return SensitivityTable(baseline=baseline, rows=rows, baseline_macs=int(baseline_macs),
                            settings=settings)


class _Trials:
    """One-shot trials on ``model`` in place: prune with a plan's masks, recalibrate, evaluate,
    restore. Holds one snapshot of every weight any group's masks touch (and of the
    BatchNormalization statistics when recalibrating), so the model comes back bit-identical.

    Raises:
      ValueError: ``recalibration_data`` for a model without BatchNormalization.
    """

    def __init__(self, model, evaluate, all_plan, recalibration_data, recalibration_steps):
        self.model, self.evaluate = model, evaluate
        self.data, self.steps = recalibration_data, recalibration_steps
        self.snapshot = {id(w): (w, w.numpy().copy()) for _, _, w, _ in all_plan.masked_weights}
        self.statistics = []
        if recalibration_data is not None:
            self.statistics = [v for bn in batchnorm_layers(model)
                               for v in (bn.moving_mean, bn.moving_variance)]
            if not self.statistics:
                raise ValueError("recalibration_data was given but the model has no "
                                 "BatchNormalization layer to recalibrate.")
        self.snapshot.update({id(v): (v, v.numpy().copy()) for v in self.statistics})

    def _restore_statistics(self):
        for v in self.statistics:
            v.assign(self.snapshot[id(v)][1])

    def baseline(self, settings):
        """The unpruned model's metric, after the same recalibration as every trial (so a
        drop measures the pruned channels, not stored against re-estimated statistics)."""
        baseline = _metric(self.evaluate, self.model, "on the unpruned model")
        if self.statistics:
            settings["baseline_stored_statistics"] = baseline
            try:
                recalibrate_batchnorm(self.model, self.data, steps=self.steps)
                baseline = _metric(self.evaluate, self.model,
                                   "on the unpruned, recalibrated model")
            finally:
                self._restore_statistics()
        return baseline

    def row(self, plan, graph, group, ratio, verbose):
        """One trial of ``group`` at ``ratio``: its table row."""
        weights = [self.snapshot[id(w)] for _, _, w, _ in plan.masked_weights]
        masks = plan.compute(ratio)
        try:
            for (w, original), mask in zip(weights, masks):
                w.assign(original * mask.numpy())
            if self.statistics:
                recalibrate_batchnorm(self.model, self.data, steps=self.steps)
            metric = _metric(self.evaluate, self.model,
                             f"for group '{group.name}' at ratio {ratio}")
        finally:
            for w, original in weights:
                w.assign(original)
            self._restore_statistics()
        keep = plan.keep_plan(masks)
        pruned = int(group.size - np.count_nonzero(keep[group.id]))
        if verbose >= 2:
            print(f"  {group.name} ratio {ratio:.2f} ({pruned}/{group.size} pruned): "
                  f"metric {metric:.6g}", flush=True)
        return {"group": group.name, "producers": list(group.producers),
                "channels": int(group.size), "ratio": ratio, "pruned_channels": pruned,
                "metric": metric, "macs": int(count_macs(graph, keep))}

    def restore(self):
        """Every snapshotted weight back as it was."""
        for w, original in self.snapshot.values():
            w.assign(original)


def _print_group(i, total, group, rows, t0, started):
    """One progress line: the group, its metric at each ratio, the time and an estimate."""
    elapsed = time.perf_counter() - started
    eta = elapsed / (i + 1) * (total - i - 1)
    producers = ", ".join(group.producers[:3]) + (" ..." if len(group.producers) > 3 else "")
    line = " ".join(f"{r['ratio']:.2f}:{r['metric']:.4g}" for r in rows)
    print(f"[{i + 1}/{total}] {group.name} ({group.size} ch; {producers}): {line}  "
          f"({time.perf_counter() - t0:.1f} s, eta {eta:.0f} s)", flush=True)


def _select_groups(all_plan, names):
    eligible = [p.group for p in all_plan.groups]
    if not eligible:
        reasons = "; ".join(f"{n}: {why[0]}" for n, why in list(all_plan.frozen.items())[:5] if why)
        raise ValueError(f"nothing in this model can be pruned with these options ({reasons}).")
    if names is None:
        return eligible
    if isinstance(names, str):
        names = [names]
    by_name = {g.name: g for g in eligible}
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in by_name]
    if unknown:
        frozen = {n: all_plan.frozen[n][0] for n in unknown if all_plan.frozen.get(n)}
        detail = "".join(f"; '{n}' is frozen ({why})" for n, why in frozen.items())
        raise ValueError(f"groups {unknown} are not prunable groups of this model{detail}. "
                         f"Valid names: {sorted(by_name)}.")
    return [by_name[n] for n in names]


def _group_plan(graph, all_plan, group, base):
    """A MaskPlan that holds ``group`` alone: every other group's producers are ignored."""
    own = set(group.producers)
    others = {name for p in all_plan.groups if p.group.id != group.id
              for name in p.group.producers if name not in own}
    plan = MaskPlan(graph, PruningOptions(**base, ignored_layers=tuple(sorted(others))))
    planned = [p.group.id for p in plan.groups]
    if group.id not in planned:  # pragma: no cover - the options are those of all_plan
        raise RuntimeError(f"group '{group.name}' could not be planned alone: {plan.frozen}.")
    return plan


# --------------------------------------------------------------------- parallel pruning
def ratios_from_sensitivity(table, keep_fraction=None, *, min_metric=None, max_drop=None):
    """The paper's parallel pruning ratios: each group's largest safe ratio.

    Exactly one floor decides what is safe; name the one you mean:

    * ``min_metric``: an **absolute** floor, the D-Score paper's threshold ("0.9" there means
      90% accuracy, not 90% of the baseline);
    * ``max_drop``: the baseline minus this much (``0.02``: at most two points of accuracy);
    * ``keep_fraction``: a **relative** floor, ``keep_fraction * baseline``.

    **(choice)** The metric must *stay* at or above the floor: a group's ratio is the largest
    ratio before the first unsafe one on its curve, so a noisy curve that dips below and rises
    again does not hand out a ratio beyond the dip. Groups whose first ratio is already unsafe
    get 0.0 (they keep all their channels, also under ``prune_synaptic``'s schedule). A ratio
    whose trial pruned fewer channels than ``round(ratio * channels)`` (the one channel every
    group keeps) is returned as the fraction really pruned, so ``prune_once`` reproduces it.

    Args:
      table: a ``SensitivityTable`` with a higher-is-better metric (e.g. accuracy).
      keep_fraction: the fraction of the baseline to keep, in (0, 1].
      min_metric: the lowest acceptable metric (same units as the table's metric).
      max_drop: the largest acceptable drop below the baseline, >= 0.

    Returns:
      ``{first producer layer name: ratio}``, ready for ``prune_once(model, sparsity=ratios)``
      or ``prune_synaptic(..., layer_sparsity=ratios, only_listed=True)`` (without
      ``only_listed``, groups the table does not cover follow the schedule's target).

    Raises:
      TypeError: ``table`` is not a ``SensitivityTable``.
      ValueError: not exactly one floor given, a floor out of range, or a baseline that is
        not finite (``max_drop``) or not a positive number (``keep_fraction``).
    """
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"table must be a SensitivityTable (from sensitivity_analysis or "
                        f"SensitivityTable.from_json), got {type(table).__name__}.")
    given = {k: v for k, v in (("keep_fraction", keep_fraction), ("min_metric", min_metric),
                               ("max_drop", max_drop)) if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one floor: min_metric (absolute, e.g. 0.90 accuracy), "
                         "max_drop (e.g. 0.02 below the baseline) or keep_fraction (e.g. 0.9 of "
                         f"the baseline); got {sorted(given) or 'none'}.")
    baseline = float(table.baseline)
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if keep_fraction is not None:
        keep_fraction = _check_fraction(keep_fraction, "keep_fraction", high_closed=True)
        if not (math.isfinite(baseline) and baseline > 0):
            raise ValueError(f"the table's baseline is {baseline!r}: keep_fraction needs a "
                             "positive, higher-is-better metric such as accuracy (use min_metric "
                             "or max_drop for other metrics).")
        floor = keep_fraction * baseline
    elif max_drop is not None:
        if max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {max_drop!r}.")
        if not math.isfinite(baseline):
            raise ValueError(f"the table's baseline is {baseline!r}: max_drop counts from it, so "
                             "every group would be kept whole. Re-run sensitivity_analysis with "
                             "an evaluate function that returns a finite number, or give "
                             "min_metric.")
        floor = baseline - float(max_drop)
    else:
        floor = float(min_metric)
    result = {}
    for name in table.groups():
        rows = sorted((r for r in table.rows if r["group"] == name), key=lambda r: r["ratio"])
        safe = 0.0
        for row in rows:
            if not float(row["metric"]) >= floor:  # NaN is unsafe too
                break
            safe = _realised_ratio(row)
        producers = rows[0].get("producers") or [name]
        result[producers[0]] = safe
    return result


def _realised_ratio(row):
    ratio, pruned, channels = float(row["ratio"]), row.get("pruned_channels"), row["channels"]
    if pruned is None or rounding.pruned_count(ratio, channels) == pruned:
        return ratio
    return pruned / channels
