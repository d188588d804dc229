"""Paired differences over seeds with 95% confidence intervals (Student's t)."""

import math

import numpy as np

# Two-sided 97.5% quantiles of Student's t for 1..10 degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}


def paired(a, b):
    """Mean of ``a - b`` (paired by position) with its 95% CI half-width, in points.

    Args:
      a, b: equal-length sequences of accuracies (fractions), one per seed.

    Returns:
      ``{"mean", "half_width", "low", "high", "n", "diffs"}`` in percentage points;
      ``half_width`` is NaN with fewer than two pairs.
    """
    diffs = (np.asarray(a, float) - np.asarray(b, float)) * 100.0
    n = len(diffs)
    mean = float(diffs.mean()) if n else float("nan")
    if n >= 2:
        half = T975.get(n - 1, 1.96) * float(diffs.std(ddof=1)) / math.sqrt(n)
    else:
        half = float("nan")
    return {"mean": mean, "half_width": half, "low": mean - half, "high": mean + half, "n": n,
            "diffs": [round(float(d), 3) for d in diffs]}


def _no_interval(stat):
    """One seed has no CI: NaN when computed, None once results.json was read back."""
    half_width = stat["half_width"]
    return half_width is None or math.isnan(half_width)


def fmt(stat):
    """``+0.12 [-0.30, +0.54] (n=3)`` or ``+0.12 (n=1)``."""
    if stat["n"] == 0:
        return "-"
    if _no_interval(stat):
        return f"{stat['mean']:+.2f} (n={stat['n']})"
    return f"{stat['mean']:+.2f} [{stat['low']:+.2f}, {stat['high']:+.2f}] (n={stat['n']})"


def verdict(stat, threshold=0.0):
    """'holds' when the CI lies above ``threshold``, 'does not hold' when below, else
    'not resolved' (the CI straddles it, or too few seeds)."""
    if stat["n"] == 0:
        return "not measured yet"
    if stat["n"] < 2 or _no_interval(stat):
        return "not resolved (one seed)"
    if stat["low"] > threshold:
        return "holds"
    if stat["high"] < threshold:
        return "does not hold"
    return "not resolved (CI straddles)"
