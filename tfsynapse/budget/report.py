"""``BudgetReport``: what ``prune_to_budget`` did, as numbers, a table and a plot."""

import dataclasses

from tfsynapse.budget import hold as budget_hold
from tfsynapse.budget import measured as budget_measured


@dataclasses.dataclass
class BudgetReport:
    """What ``prune_to_budget`` did.

    Attributes:
      kind: the budget's kind: ``'macs'``, ``'params'``, ``'size_bytes'`` or
        ``'latency_ms'``.
      budget: the budget, in its units.
      dense: the dense model's cost, in the same units.
      predicted: the pruned model's cost as counted over the graph (MACs, parameters; a
        size or latency budget is only measured, so this is the measured value).
      measured: the cost measured on the shrunk model (MACs and parameters counted on it; a
        size budget: the bytes of its converted file), or None when not measured.
      allocation: ``'uniform'`` or ``'sensitivity'``.
      ratios: ``{first producer layer: pruned fraction}`` per prunable group, ready for
        ``prune_once(model, ratios)`` or ``prune_synaptic(..., layer_sparsity=ratios,
        only_listed=True)``.
      frozen: ``{group: reasons}`` of the groups never pruned.
      steps: the solver's iterations (bisection steps, greedy moves, measured candidates).
      points: for a measured budget (size, latency), every ``(counted cost, measured value,
        predicted value)`` the search measured: parameters and bytes, or MACs and
        milliseconds (``plot()`` draws predicted against measured).
      round_to: the channel multiple every pruned group keeps (given, or measured for a
        latency budget with ``round_to=None``).
      alignment: with a measured ``round_to``: ``{multiple: (MACs, ms, ms per MAC)}`` of the
        candidates timed (MACs and ms are None when the choice came from the cache; empty
        when ``round_to`` was given).
      latency_model: a latency budget with ``sensitivity``: the fitted ``LatencyModel`` whose
        predicted ms the guided allocation spent (``points`` then count predicted ms, not
        MACs); None otherwise.
      margin: a latency budget timed here: how far under the budget the search aimed (the
        relative spread of the dense model's timings, ``budget/hold.py``); 0 otherwise.
      remeasured: a latency budget timed here: the returned model's latency timed again in
        rounds interleaved with the dense model (None otherwise, or when nothing was pruned).
      researches: a latency budget timed here: how many times the search ran again, every
        file timed afresh, because the result timed again landed over the budget or under
        ``budget.hold.LOW`` of it (at most ``budget.hold.RESEARCHES``); ``points`` are then
        those of the search that found the returned model, and ``margin`` the one it aimed by.
    """

    kind: str
    budget: float
    dense: float
    predicted: float
    measured: float
    allocation: str
    ratios: dict
    frozen: dict
    steps: int
    points: list = dataclasses.field(default_factory=list)
    round_to: int = 1
    alignment: dict = dataclasses.field(default_factory=dict)
    latency_model: object = None
    margin: float = 0.0
    remeasured: float = None
    researches: int = 0

    @property
    def layer_sparsity(self):
        """The ratios, for ``prune_synaptic(layer_sparsity=..., only_listed=True)``."""
        return dict(self.ratios)

    def plot(self, path):
        """Writes a PNG of the measured search: predicted against measured value per candidate.

        Args:
          path: the PNG file to write (atomically).

        Returns:
          ``path``.

        Raises:
          ValueError: a MAC or parameter budget (counted, nothing measured to plot).
          ImportError: matplotlib is not installed.
        """
        return budget_measured.plot_budget(self, path)

    def table(self):
        """A plain-text summary.

        Returns:
          Lines of text: the budget, the dense and pruned cost (measured or predicted, as a
          share of the budget and of dense), the latency model when one was fitted, and each
          group's pruned fraction.
        """
        unit = {"macs": "MACs", "params": "parameters", "size_bytes": "bytes",
                "latency_ms": "ms"}[self.kind]
        got = self.measured if self.measured is not None else self.predicted

        def fmt(value):
            return f"{value:.4g}" if self.kind == "latency_ms" else f"{value:,.0f}"

        lines = [f"budget {fmt(self.budget)} {unit} ({self.allocation} allocation, "
                 f"round_to={self.round_to}): dense "
                 f"{fmt(self.dense)}, pruned {fmt(got)} "
                 f"({'measured' if self.measured is not None else 'predicted'}; "
                 f"{got / self.budget:.1%} of the budget, {got / (self.dense or 1):.1%} of dense)"]
        if self.latency_model is not None:
            lines.append(f"  latency model: {self.latency_model.describe()}")
        if self.remeasured is not None:
            again = (f"; searched again {self.researches} time(s), every file timed afresh, "
                     f"after landing outside [{budget_hold.LOW:.0%}, 100%] of it"
                     if self.researches else "")
            lines.append(f"  aimed {self.margin:.1%} under the budget (the timing spread "
                         f"measured here); timed again, interleaved with dense: "
                         f"{self.remeasured:.4g} ms ({self.remeasured / self.budget:.1%} of the "
                         f"budget){again}")
        width = max([len(n) for n in self.ratios] + [5])
        lines += [f"  {name:<{width}}  {ratio:6.1%}" for name, ratio in self.ratios.items()]
        return "\n".join(lines)
