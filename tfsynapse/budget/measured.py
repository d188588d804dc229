"""Budgets that are measured, not counted: the ``.tflite`` file size and the LiteRT latency.

Both are searched the same way (``fit_measured``): the dense model and the most-pruned
candidate are converted and measured first (an error names the smallest reachable value when
even that is over the budget), then regula falsi on (counted cost, measured value) between the
largest candidate known to fit and the smallest known not to: a straight line through the two,
the counted cost where it crosses the budget, solved, pruned, shrunk, converted and measured
(when the crossing solves to a bracket end, the bracket's middle, then its top), until no new
candidate lies between them (at most 8 rounds; a latency timed here measures the bracket's
over end once more first, since one spiked timing would otherwise close it). The counted cost
is parameters for a file size and MACs for latency (a sensitivity-guided latency search: the fitted latency
model's predicted ms, ``budget_latency_model``). The least-pruned candidate measured to fit is returned.

Latency is measured by a ``budget.meter.LatencyMeter`` (LiteRT here, cached on disk, or a
device's ``measure_latency``).
"""

import warnings

import tflite_export
from tfsynapse.fileio import atomic_write
from tfsynapse.surgery import shrink

_ROUNDS = 8
FAR_BELOW = 0.9  # a result measuring under this fraction of its budget is reported (a warning)


class BudgetUnreachable(ValueError):
    """Even the most-pruned candidate measures over the budget (``fit_measured``)."""


def fit_measured(solve, pruned_with, solver, model, budget, measure, axis, floor_ratios, what,
                 say, stacklevel=4, again=None, warn_far_below=True):
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
      again: ``again(model) -> value``, the model measured afresh, for a measure that drifts
        and spikes (local LiteRT timing); None for one that does not (a file's size). When no
        configuration lies between the bracket's ends, its over end is measured once more
        before the search stops there: one spiked timing must not decide the result (a
        timing over the budget between two that fit is one).
      warn_far_below: warn when the result measures under ``FAR_BELOW`` of the budget. False
        for a local latency budget, whose result is timed again and judged by ``budget.hold``.

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
    over = (solver.dense[axis], dense_value, None)  # the candidate: None for the dense model
    checked = set()  # over ends measured again
    # the axis's smallest step: one MAC or parameter; predicted ms are continuous
    unit = 1e-9 * over[0] if axis == "latency" else 1
    steps, closed = 2, False
    for _ in range(_ROUNDS):
        slope = (over[1] - fits[1]) / max(over[0] - fits[0], unit)
        target = fits[0] + (budget - fits[1]) / max(slope, 1e-12)
        found = _inside(solve, axis, fits[0], over[0],
                        (target, (fits[0] + over[0]) / 2, over[0] - unit))
        if found is None:  # no configuration lies between the two: the bracket is closed
            if again is None or over[2] is None or over[0] in checked:
                closed = True
                break
            checked.add(over[0])
            value = again(shrink(over[2][1]))
            points.append((over[0], value, value))
            say(f"prune_to_budget: {_count(over[0], axis)} measured again -> {value:,.4g} "
                f"{what} (first {over[1]:,.4g}; budget {budget:,.4g})")
            if value > budget:
                over = (over[0], value, over[2])
                closed = True
                break
            fits = (over[0], value, over[2])  # a spike: it fits; the next end over is known
            over = min(((cost, measured, None) for cost, measured, _ in points
                        if cost > fits[0] and measured > budget), key=lambda p: p[0])
            continue
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
            over = (cost, value, candidate)
    if warn_far_below and fits[1] < FAR_BELOW * budget:
        warnings.warn(
            f"tfsynapse: prune_to_budget returns a model measuring {fits[1]:,.4g} {what}, "
            f"{fits[1] / budget:.0%} of the budget of {budget:,.4g}: the closest "
            f"configuration it found over the budget measured {over[1]:,.4g} {what} "
            f"({over[1] / budget:.0%}), " + (
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
