"""Sensitivity analysis and parallel pruning: the D-Score paper's one-shot procedure.

1. ``sensitivity_analysis`` prunes every prunable dependency group *alone*, at ratios
   ``step, 2 * step, ...`` up to ``max_ratio``, with a filter criterion (D-Score by default),
   and calls the user's ``evaluate(model)`` after each trial without retraining. The model's
   weights are restored after every trial, so the model comes back bit-identical.
2. ``ratios_from_sensitivity`` reads each group's largest safe ratio off its curve for an
   accuracy threshold (e.g. keep 90% of the baseline); the resulting ``{layer name: ratio}``
   feeds ``prune_once(model, sparsity=ratios)`` or ``prune_synaptic(..., layer_sparsity=ratios)``.
3. ``plot_sensitivity`` draws the curves (the paper's sensitivity figure).

How the trials are computed: the dependency graph is built once; each analysed group gets one
``MaskPlan`` whose options ignore the producers of every other group, so the plan holds that
group alone and ``plan.compute(ratio)`` prunes ``round(ratio * channels)`` of its channels
(capped by ``max_pruning_ratio=max_ratio`` and never all of them), exactly as ``prune_once``
with ``sparsity={producer: ratio}`` would. The masked weights are snapshotted once; each trial
assigns ``snapshot * mask`` and then the snapshot again.
"""

import csv
import dataclasses
import json
import math
import numbers
import time

import numpy as np

from tfsynapse._io import atomic_write
from tfsynapse._keras import check_model
from tfsynapse.graph import count_macs, dependency_groups
from tfsynapse.pruning.api import _refuse_wrapped
from tfsynapse.pruning.options import PruningOptions
from tfsynapse.pruning.planner import MaskPlan

__all__ = [
    "SensitivityTable",
    "plot_sensitivity",
    "ratios_from_sensitivity",
    "sensitivity_analysis",
]

CSV_COLUMNS = ("group", "producers", "channels", "ratio", "pruned_channels", "metric", "baseline",
               "macs")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the table
@dataclasses.dataclass
class SensitivityTable:
    """The result of ``sensitivity_analysis``: one row per (group, ratio).

    Attributes:
      baseline: ``evaluate(model)`` on the unpruned model.
      rows: a list of dicts ``{group, producers, channels, ratio, pruned_channels, metric,
        macs}``: the group's name, its producer layer names, its channel count, the requested
        ratio, the channels actually pruned, the metric with that group alone pruned, and the
        model's MACs with that group alone pruned (as ``count_macs`` counts them after shrink).
      baseline_macs: the unpruned model's MACs (None for hand-made tables).
      settings: how the table was made (criterion, step, max_ratio, round_to, residual).
    """

    baseline: float
    rows: list
    baseline_macs: int = None
    settings: dict = dataclasses.field(default_factory=dict)

    def groups(self):
        """The group names, in the order of their first row.

        Returns:
          A list of group names.
        """
        return list(dict.fromkeys(row["group"] for row in self.rows))

    def curves(self):
        """Each group's sensitivity curve.

        Returns:
          ``{group name: (ratios, metrics)}``, two float numpy arrays sorted by ratio (the
          unpruned point, ratio 0 with ``baseline``, is not included).
        """
        result = {}
        for name in self.groups():
            points = sorted((float(r["ratio"]), float(r["metric"])) for r in self.rows
                            if r["group"] == name)
            result[name] = (np.array([p[0] for p in points], dtype=np.float64),
                            np.array([p[1] for p in points], dtype=np.float64))
        return result

    def to_dict(self):
        """A JSON-ready dict of the table.

        Returns:
          ``{"baseline", "baseline_macs", "settings", "rows"}``.
        """
        return {"baseline": float(self.baseline), "baseline_macs": self.baseline_macs,
                "settings": dict(self.settings), "rows": [_clean_row(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data):
        """Builds a table from ``to_dict``'s output.

        Args:
          data: the dict.

        Returns:
          A ``SensitivityTable``.

        Raises:
          ValueError: ``data`` lacks ``baseline`` or ``rows``, or a row lacks a field.
        """
        if not isinstance(data, dict) or "baseline" not in data or "rows" not in data:
            raise ValueError("a sensitivity table needs 'baseline' and 'rows' entries; was it "
                             "written by SensitivityTable.to_json?")
        return cls(baseline=float(data["baseline"]), rows=[_clean_row(r) for r in data["rows"]],
                   baseline_macs=data.get("baseline_macs"),
                   settings=dict(data.get("settings") or {}))

    def to_json(self, path):
        """Writes the table as JSON, atomically (a temporary file, then ``os.replace``).

        Args:
          path: the file to write (its folder is created if needed).

        Returns:
          ``path``.
        """
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    @classmethod
    def from_json(cls, path):
        """Reads a table written by ``to_json``.

        Args:
          path: the JSON file.

        Returns:
          A ``SensitivityTable``.

        Raises:
          OSError: the file cannot be read.
          ValueError: the file is not a sensitivity table.
        """
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_csv(self, path):
        """Writes one CSV line per row, atomically, for spreadsheets and pandas.

        Columns: ``group, producers, channels, ratio, pruned_channels, metric, baseline, macs``;
        ``producers`` are joined with ``;`` and ``macs`` is empty when unknown.

        Args:
          path: the file to write (its folder is created if needed).

        Returns:
          ``path``.
        """
        def write(f):
            import io  # noqa: PLC0415

            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for row in self.rows:
                writer.writerow([row["group"], ";".join(row["producers"]), row["channels"],
                                 repr(float(row["ratio"])), row["pruned_channels"],
                                 repr(float(row["metric"])), repr(float(self.baseline)),
                                 "" if row.get("macs") is None else row["macs"]])
            f.write(text.getvalue().encode("utf-8"))

        atomic_write(path, write)
        return path


def _clean_row(row):
    missing = [k for k in ("group", "channels", "ratio", "metric") if k not in row]
    if missing:
        raise ValueError(f"sensitivity row {row!r} lacks {missing}.")
    producers = row.get("producers") or [row["group"]]
    if isinstance(producers, str):
        producers = [producers]
    pruned = row.get("pruned_channels")
    return {
        "group": str(row["group"]),
        "producers": [str(p) for p in producers],
        "channels": int(row["channels"]),
        "ratio": float(row["ratio"]),
        "pruned_channels": None if pruned is None else int(pruned),
        "metric": float(row["metric"]),
        "macs": None if row.get("macs") is None else int(row["macs"]),
    }


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
                         groups=None, round_to=1, residual="group", verbose=1):
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
      model: a built tf_keras functional or Sequential model, pruned in place during the
        analysis and restored.
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

    Returns:
      A ``SensitivityTable``.

    Raises:
      TypeError: ``evaluate`` is not callable or does not return a number; a Keras 3 or
        non-Keras model.
      ValueError: ``step`` or ``max_ratio`` not in (0, 1), ``step > max_ratio``, unknown or
        frozen group names, invalid options, a subclassed, unbuilt or wrapped model, or
        nothing to prune.
    """
    check_model(model)
    _refuse_wrapped(model)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable evaluate(model) -> float, got {evaluate!r}.")
    step = _check_fraction(step, "step")
    max_ratio = _check_fraction(max_ratio, "max_ratio")
    ratios = _ratios(step, max_ratio)
    base = dict(criterion=criterion, granularity="filter", scope="layer", round_to=round_to,
                max_pruning_ratio=max_ratio, residual=residual)
    graph = dependency_groups(model)
    all_plan = MaskPlan(graph, PruningOptions(**base))
    targets = _select_groups(all_plan, groups)
    settings = {"criterion": all_plan.options.criterion, "step": step, "max_ratio": max_ratio,
                "round_to": round_to, "residual": residual}

    # One snapshot of every weight any group's masks touch (a superset of each trial's).
    snapshot = {id(w): (w, w.numpy().copy()) for _, _, w, _ in all_plan.masked_weights}
    baseline = _metric(evaluate, model, "on the unpruned model")
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
            weights = [snapshot[id(w)] for _, _, w, _ in plan.masked_weights]
            line = []
            for ratio in ratios:
                masks = plan.compute(ratio)
                try:
                    for (w, original), mask in zip(weights, masks):
                        w.assign(original * mask.numpy())
                    metric = _metric(evaluate, model, f"for group '{group.name}' at ratio {ratio}")
                finally:
                    for w, original in weights:
                        w.assign(original)
                keep = plan.keep_plan(masks)
                pruned = int(group.size - np.count_nonzero(keep[group.id]))
                rows.append({"group": group.name, "producers": list(group.producers),
                             "channels": int(group.size), "ratio": ratio,
                             "pruned_channels": pruned, "metric": metric,
                             "macs": int(count_macs(graph, keep))})
                line.append(f"{ratio:.2f}:{metric:.4g}")
                if verbose >= 2:
                    print(f"  {group.name} ratio {ratio:.2f} ({pruned}/{group.size} pruned): "
                          f"metric {metric:.6g}", flush=True)
            if verbose:
                elapsed = time.perf_counter() - started
                eta = elapsed / (i + 1) * (len(targets) - i - 1)
                producers = ", ".join(group.producers[:3]) + (" ..." if len(group.producers) > 3
                                                              else "")
                print(f"[{i + 1}/{len(targets)}] {group.name} ({group.size} ch; {producers}): "
                      f"{' '.join(line)}  ({time.perf_counter() - t0:.1f} s, eta {eta:.0f} s)",
                      flush=True)
    finally:
        for w, original in snapshot.values():
            w.assign(original)
    return SensitivityTable(baseline=baseline, rows=rows, baseline_macs=int(baseline_macs),
                            settings=settings)


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
def ratios_from_sensitivity(table, threshold):
    """The paper's parallel pruning ratios: each group's largest safe ratio.

    A ratio is safe when the metric stays at or above ``threshold * table.baseline``.
    **(choice)** The metric must *stay* there: a group's ratio is the largest ratio before the
    first unsafe one on its curve, so a noisy curve that dips below and rises again does not
    hand out a ratio beyond the dip. Groups whose first ratio is already unsafe get 0.0 (they
    keep all their channels, also under ``prune_synaptic``'s schedule).

    Args:
      table: a ``SensitivityTable`` with a positive, higher-is-better metric (e.g. accuracy).
      threshold: the fraction of the baseline to keep, in (0, 1], e.g. 0.9.

    Returns:
      ``{first producer layer name: ratio}``, ready for ``prune_once(model, sparsity=ratios)``
      (pass the table's ``max_ratio`` as ``max_pruning_ratio`` when it exceeds 0.9) or
      ``prune_synaptic(..., layer_sparsity=ratios)``.

    Raises:
      TypeError: ``table`` is not a ``SensitivityTable``.
      ValueError: ``threshold`` not in (0, 1], or a baseline that is not a positive number.
    """
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"table must be a SensitivityTable (from sensitivity_analysis or "
                        f"SensitivityTable.from_json), got {type(table).__name__}.")
    threshold = _check_fraction(threshold, "threshold", high_closed=True)
    baseline = float(table.baseline)
    if not (math.isfinite(baseline) and baseline > 0):
        raise ValueError(f"the table's baseline is {baseline!r}: ratios_from_sensitivity needs a "
                         "positive, higher-is-better metric such as accuracy (for a loss, "
                         "evaluate e.g. 1 / (1 + loss) instead).")
    floor = threshold * baseline
    result = {}
    for name in table.groups():
        rows = sorted((r for r in table.rows if r["group"] == name), key=lambda r: r["ratio"])
        safe = 0.0
        for row in rows:
            if not float(row["metric"]) >= floor:  # NaN is unsafe too
                break
            safe = float(row["ratio"])
        producers = rows[0].get("producers") or [name]
        result[producers[0]] = safe
    return result


# ------------------------------------------------------------------------------ plotting
def plot_sensitivity(table, path, title=None):
    """Plots metric versus pruning ratio, one curve per group, as a PNG.

    Each curve starts at ratio 0 with the baseline, which is also drawn as a dashed line. With
    more than 8 groups the legend goes outside the axes. Uses matplotlib's Agg canvas directly
    (no display, no change to pyplot's backend).

    Args:
      table: a ``SensitivityTable``.
      path: the PNG file to write (atomically; its folder is created if needed).
      title: the plot title (default: "Sensitivity (<criterion>)").

    Returns:
      ``path``.

    Raises:
      ImportError: matplotlib is not installed.
      TypeError: ``table`` is not a ``SensitivityTable``.
      ValueError: the table has no rows.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as err:
        raise ImportError("plot_sensitivity needs matplotlib: pip install tfsynapse[examples] "
                          "(or pip install matplotlib).") from err
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"table must be a SensitivityTable, got {type(table).__name__}.")
    curves = table.curves()
    if not curves:
        raise ValueError("the sensitivity table has no rows to plot.")
    many = len(curves) > 8
    fig = Figure(figsize=(9.5 if many else 7, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib  # noqa: PLC0415

    cmap = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
    styles = ("-", "--", "-.", ":")
    for i, (name, (ratios, metrics)) in enumerate(curves.items()):
        ax.plot(np.concatenate([[0.0], ratios]), np.concatenate([[table.baseline], metrics]),
                marker="o", markersize=3, linewidth=1.2, color=cmap(i % cmap.N),
                linestyle=styles[(i // cmap.N) % len(styles)], label=name)
    ax.axhline(table.baseline, color="black", linestyle="--", linewidth=1.0,
               label=f"baseline ({table.baseline:.4g})")
    ax.set_xlabel("pruning ratio (fraction of the group's filters)")
    ax.set_ylabel("metric (no retraining)")
    ax.set_xlim(left=0.0)
    ax.grid(True, alpha=0.3)
    criterion = table.settings.get("criterion")
    ax.set_title(title if title is not None else
                 "Sensitivity" + (f" ({criterion})" if criterion else ""))
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small",
                  ncol=1 + len(curves) // 25, frameon=False)
    else:
        ax.legend(loc="best", fontsize="small")
    atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    return path
