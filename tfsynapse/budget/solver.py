"""The budget solver: per-group ratios -> the planner's kept counts -> MACs, parameters or
predicted latency.

What a pruned model costs depends only on how many units each group keeps, not on which, so
``BudgetSolver`` searches ratios without scoring a unit: it rounds as the planner rounds and
counts over the dependency graph as ``shrink`` will leave it. ``prune_to_budget``
(``budget.py``) uses it; see ``docs/methods.md``, "Pruning to a budget".
"""

import math

import numpy as np

from tfsynapse.graph import count_activations, count_macs, count_params
from tfsynapse.plan import rounding


class BudgetSolver:
    """Per-group ratios -> kept-unit counts -> MACs and parameters, without scoring a unit.

    Args:
      plan: a ``MaskPlan`` of the model (filter granularity) with the options to prune by.

    Attributes:
      dense: ``{kind: the unpruned model's cost}``.
      latency_model: a ``LatencyModel`` once ``use_latency_model`` attached one; then
        ``cost(ratios, 'latency')`` is its prediction in ms.
    """

    def __init__(self, plan):
        self.plan = plan
        self.graph = plan.graph
        self.groups = list(plan.groups)
        self.dense = {"macs": count_macs(self.graph), "params": count_params(self.graph)}
        self.latency_model = None

    def use_latency_model(self, latency_model):
        """Attaches a fitted ``LatencyModel``: the ``'latency'`` cost becomes available."""
        self.latency_model = latency_model
        self.dense["latency"] = self.cost([0.0] * len(self.groups), "latency")

    def kept(self, ratio, group_plan):
        """Units the planner keeps of a group pruned at ``ratio`` (rounding, cap, round_to),
        computed in float32 as the planner computes it, so the counts agree at every ratio."""
        return rounding.kept_units(ratio, group_plan.n, group_plan.cap, group_plan.round_to)

    def named_ratios(self, ratios):
        """``{producer layer: fraction it really loses}`` for ``ratios`` (rounding, cap and
        round_to applied): ``prune_once`` with it keeps exactly the solver's counts."""
        return {p.group.producers[0]: (p.n - self.kept(r, p)) / p.n
                for p, r in zip(self.groups, ratios)}

    def _keep(self, ratios):
        return {p.group.id: np.arange(p.n) < self.kept(r, p) for p, r in zip(self.groups, ratios)}

    def counts(self, ratios):
        """``(MACs, activation elements)`` with ``ratios``: the latency model's inputs."""
        keep = self._keep(ratios)
        return count_macs(self.graph, keep), count_activations(self.graph, keep)

    def cost(self, ratios, kind):
        """The MACs, parameters or predicted ms (``'latency'``) with ``ratios`` (one per
        planned group, in order)."""
        if kind == "latency":
            if self.latency_model is None:
                raise ValueError("the 'latency' cost needs a fitted latency model "
                                 "(use_latency_model).")
            return self.latency_model.predict(*self.counts(ratios))
        counter = count_macs if kind == "macs" else count_params
        return counter(self.graph, self._keep(ratios))

    def uniform(self, kind, budget, max_ratio):
        """The smallest single ratio whose cost is within ``budget``.

        Returns:
          ``(ratio, cost, steps)``; ``ratio`` is None when even ``max_ratio`` costs more.
        """
        if self.dense[kind] <= budget:  # ratio 0 keeps every unit: the dense count
            return 0.0, self.dense[kind], 0
        lo, hi = 0.0, max_ratio
        hi_cost = self.cost([hi] * len(self.groups), kind)
        if hi_cost > budget:
            return None, hi_cost, 0
        steps = 0
        while hi - lo > 1e-4:  # the counts change in steps of 1/n; 1e-4 resolves n < 10,000
            mid = (lo + hi) / 2
            steps += 1
            cost = self.cost([mid] * len(self.groups), kind)
            if cost <= budget:
                hi, hi_cost = mid, cost
            else:
                lo = mid
        return hi, hi_cost, steps

    def uniform_filled(self, kind, budget, max_ratio):
        """``uniform``, then each group keeps one rounding step more while the budget allows.

        Between two neighbouring uniform configurations the gap can be wide (groups of equal
        width cross a multiple of ``round_to`` at the same ratio), so one ratio can miss a
        budget by a step of every group. From the uniform ratio, every pruned group is offered
        one more kept step (``round_to`` units), the largest cost first (first fit
        decreasing), and takes it if the cost stays within the budget: the kept counts then
        differ from the uniform ones by at most one step per group.

        Returns:
          ``(ratios, cost, steps)``, one ratio per group; ``ratios`` is None when even
          ``max_ratio`` costs more.
        """
        ratio, cost, steps = self.uniform(kind, budget, max_ratio)
        if ratio is None:
            return None, cost, steps
        ratios = [ratio] * len(self.groups)
        grows = []
        for i, plan in enumerate(self.groups):
            back = self.one_step_back(ratio, plan)
            if back is not None:
                trial = list(ratios)
                trial[i] = back
                grows.append((self.cost(trial, kind) - cost, i, back))
                steps += 1
        for _, i, back in sorted(grows, reverse=True):
            trial = list(ratios)
            trial[i] = back
            trial_cost = self.cost(trial, kind)
            steps += 1
            if trial_cost <= budget:
                ratios, cost = trial, trial_cost
        return ratios, cost, steps

    def one_step_back(self, ratio, group_plan):
        """The ratio at which a group keeps one rounding step (``round_to`` units) more than
        at ``ratio``; None when it keeps every unit there."""
        n, kept = group_plan.n, self.kept(ratio, group_plan)
        if kept >= n:
            return None
        return (n - min(n, kept + max(group_plan.round_to, 1))) / n

    def greedy(self, kind, budget, curves, baseline):
        """Sensitivity-guided allocation (see ``docs/methods.md``): from every group unpruned,
        repeatedly take the next curve step that loses the least metric per unit of cost saved
        until the cost is within ``budget``; the last move stops as soon as the budget is met,
        then rounding steps are given back while it still holds (``_give_back``).

        Args:
          curves: ``{group name: (ratios, metrics)}`` from ``SensitivityTable.curves()``.
          baseline: the table's unpruned metric.

        Returns:
          ``(ratios, cost, steps)``; ``ratios`` is None when every group at its table's
          largest ratio still costs more than ``budget``.
        """
        steps_of = []
        for p in self.groups:
            ratios, metrics = curves.get(p.group.name, (np.array([]), np.array([])))
            steps_of.append(list(zip(ratios.tolist(), metrics.tolist())))
        position = [-1] * len(self.groups)  # index into the group's curve; -1: unpruned
        current = [0.0] * len(self.groups)
        cost = self.cost(current, kind)
        moves, last = 0, None
        while cost > budget:
            best = None
            for i, curve in enumerate(steps_of):
                # the group's next ratio that prunes at least one more unit (a ratio that
                # rounds to the same count saves nothing and is skipped)
                for j in range(position[i] + 1, len(curve)):
                    ratio, metric = curve[j]
                    trial = list(current)
                    trial[i] = ratio
                    saved = cost - self.cost(trial, kind)
                    if saved > 0:
                        break
                else:
                    continue
                before = baseline if position[i] < 0 else curve[position[i]][1]
                lost = before - metric if math.isfinite(metric) else math.inf
                key = (max(lost, 0.0) / saved, -saved)
                if best is None or key < best[0]:
                    best = (key, i, j, ratio, cost - saved)
            if best is None:
                return None, cost, moves
            last = (best[1], current[best[1]])
            _, i, position[i], current[i], cost = best
            moves += 1
        if last is not None:  # the last move may overshoot: go only as far as the budget needs
            cost, steps = self._shorten(last[0], last[1], current, kind, budget, cost)
            moves += steps
        cost, steps = self._give_back(current, kind, budget, cost, steps_of, baseline)
        return current, cost, moves + steps

    def _give_back(self, ratios, kind, budget, cost, steps_of, baseline):
        """After the greedy: kept rounding steps are given back while the budget allows, the
        most metric regained per unit of cost first; ``ratios`` is updated in place.

        With a coarse ``round_to`` the last move cannot stop part way (a 64-unit group moves
        by 16), so the greedy can end well below the budget; this spends what is left."""
        lines = []  # per group: the curve's points (finite metrics), from ratio 0 at baseline
        for steps in steps_of:
            finite = [(r, m) for r, m in steps if math.isfinite(m)]
            lines.append(([0.0] + [r for r, _ in finite], [baseline] + [m for _, m in finite]))

        def lost(i, ratio):  # the curve's straight line between its points
            return baseline - float(np.interp(ratio, *lines[i]))

        steps = 0
        while True:
            best = None
            for i, plan in enumerate(self.groups):
                back = self.one_step_back(ratios[i], plan)
                if back is None:
                    continue
                trial = list(ratios)
                trial[i] = back
                trial_cost = self.cost(trial, kind)
                steps += 1
                if trial_cost > budget:
                    continue
                key = (lost(i, ratios[i]) - lost(i, back)) / max(trial_cost - cost, 1e-12)
                if best is None or key > best[0]:
                    best = (key, i, back, trial_cost)
            if best is None:
                return cost, steps
            _, i, ratios[i], cost = best

    def _shorten(self, i, start, ratios, kind, budget, cost):
        """Bisects group ``i``'s ratio between ``start`` (over budget) and ``ratios[i]``
        (within it) to the smallest that meets ``budget``; ``ratios`` is updated in place.
        The accuracy lost in between is the curve's straight line, never more than the move's."""
        lo, steps = start, 0
        while ratios[i] - lo > 1e-4:
            mid = (lo + ratios[i]) / 2
            trial = list(ratios)
            trial[i] = mid
            steps += 1
            trial_cost = self.cost(trial, kind)
            if trial_cost <= budget:
                ratios[i], cost = mid, trial_cost
            else:
                lo = mid
        return cost, steps
