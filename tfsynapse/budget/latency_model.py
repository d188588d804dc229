"""A latency model fitted to measurements, the cost a sensitivity-guided allocation spends
under a latency budget.

Counting MACs alone misjudges layers: a convolution at full resolution moves much more data
per MAC than one at 7x7, so cutting it saves more time than its MACs say (and a depthwise
layer, few MACs, costs far more than them). ``fit`` measures a handful of shrunk probes of the
model in the budget's precision and thread count, interleaved:

* the dense model, the uniform ratio the budget suggests and half of it;
* every prunable group alone at that ratio (the others dense), so each group's own effect is
  seen;

and fits ``ms = fixed + per_mac x MACs + per_element x elements`` by least squares with
non-negative coefficients (``elements``: the activation elements the compute layers read and
write, ``count_activations``). Both counts follow the plan exactly, interactions between a
layer's input and output groups included, so the model predicts any allocation without
another measurement. The fit is cached with the latencies (key: the dense file's SHA-256,
threads, machine and ``round_to``); a poor fit (a probe off by more than ``WARN_ERROR``) is a warning
with the numbers. The measured search still has the last word on the total: the model only
ranks the moves.
"""

import dataclasses
import warnings

import numpy as np

FEATURES = ("fixed", "macs", "elements")
WARN_ERROR = 0.15


@dataclasses.dataclass
class LatencyModel:
    """``ms = fixed + per_mac x MACs + per_element x elements`` (batch 1).

    Attributes:
      coefficients: ``(fixed ms, ms per MAC, ms per activation element)``, each >= 0.
      probes: ``[(name, MACs, elements, measured ms)]`` the fit was made on (empty when it
        came from the cache).
      error: the largest relative error of the fit over its probes (None from the cache).
    """

    coefficients: tuple
    probes: list = dataclasses.field(default_factory=list)
    error: float = None

    def predict(self, macs, elements):
        """The predicted latency in ms of a model with these counts."""
        fixed, per_mac, per_element = self.coefficients
        return fixed + per_mac * macs + per_element * elements

    def describe(self):
        """One line: the coefficients, relative to nothing, and the fit's error."""
        fixed, per_mac, per_element = self.coefficients
        error = "" if self.error is None else f", max error {self.error:.1%} over " \
                                              f"{len(self.probes)} probes"
        return (f"ms = {fixed:.4g} + {per_mac * 1e6:.4g}/MMAC + {per_element * 1e6:.4g}/M "
                f"elements{error}")


def fit(solver, ratio, shaped, convert, time_files, cache=None, dense_key=None, say=print):
    """Measures probes and fits the latency model (see the module docstring).

    Args:
      solver: the ``BudgetSolver`` (its groups and counts, with the budget's ``round_to``).
      ratio: the probes' ratio (the uniform ratio the budget suggests).
      shaped: ``shaped(ratios) -> shrunk model`` for one ratio per solver group.
      convert: ``convert(model) -> tflite bytes`` in the budget's precision.
      time_files: ``time_files({name: tflite bytes}) -> {name: ms}`` (interleaved timing).
      cache: a ``LatencyCache`` (the coefficients are stored in it) or None.
      dense_key: the dense file's cache key (model, precision and threads).
      say: a print function for progress.

    Returns:
      A ``LatencyModel``.
    """
    key = None
    if cache is not None and dense_key is not None:
        key = f"latency_model:{dense_key}:{solver.plan.options.round_to}"
        known = cache.get_values(key)
        if known is not None and len(known) == len(FEATURES):
            model = LatencyModel(tuple(known))
            say(f"prune_to_budget: latency model (measured before): {model.describe()}")
            return model
    n = len(solver.groups)
    probes = {"dense": [0.0] * n, f"uniform {ratio:.2f}": [ratio] * n,
              f"uniform {ratio / 2:.2f}": [ratio / 2] * n}
    for i, plan in enumerate(solver.groups):
        alone = [0.0] * n
        alone[i] = ratio
        probes[f"{plan.group.name} {ratio:.2f}"] = alone
    say(f"prune_to_budget: latency model: timing {len(probes)} probes")
    counts = {name: solver.counts(ratios) for name, ratios in probes.items()}
    times = time_files({name: convert(shaped(ratios)) for name, ratios in probes.items()})
    rows = [(name, *counts[name], times[name]) for name in probes]
    model = _least_squares(rows)
    if key is not None:
        cache.put(key, list(model.coefficients))
    say(f"prune_to_budget: latency model: {model.describe()}")
    if model.error > WARN_ERROR:
        worst = max(rows, key=lambda r: abs(model.predict(r[1], r[2]) - r[3]) / r[3])
        warnings.warn(
            f"tfsynapse: the latency model fits its {len(rows)} probes only within "
            f"{model.error:.0%} (worst: '{worst[0]}' measured {worst[3]:.4g} ms, predicted "
            f"{model.predict(worst[1], worst[2]):.4g}); the guided allocation ranks its moves "
            "by it, so they may not be the fastest (the measured search still meets the "
            "budget). Noisy timing (a busy machine) is the usual cause.", stacklevel=3)
    return model


def _least_squares(rows):
    """Non-negative least squares on ``[(name, macs, elements, ms)]``: the columns are scaled
    to the dense counts; a negative coefficient drops its feature and the rest is refitted."""
    counts = np.array([[1.0, r[1], r[2]] for r in rows])
    ms = np.array([r[3] for r in rows])
    scale = np.maximum(counts.max(axis=0), 1.0)
    active = [0, 1, 2]
    while True:
        solution, *_ = np.linalg.lstsq(counts[:, active] / scale[active], ms, rcond=None)
        if (solution >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(solution)))
    coefficients = np.zeros(3)
    coefficients[active] = np.maximum(solution, 0.0) / scale[active]
    predicted = counts @ coefficients
    error = float(np.max(np.abs(predicted - ms) / ms))
    return LatencyModel(tuple(float(c) for c in coefficients), list(rows), error)
