"""How many units a ratio prunes: the one rounding rule of every stage.

The planner computes masks inside TensorFlow graphs (ratios may be tensors during ``fit``);
the budget solver, the reachability check and the sensitivity analysis predict the same counts
in Python. Both go through these functions, which compute in float32 as the planner's graph
does, so a prediction and the masks can never disagree at a ratio where float64 and float32
round differently.

* ``pruned_count(ratio, n)``: ``round(ratio * n)``, halves rounded up.
* ``kept_after(pruned, n, round_to)``: the units kept once the kept count is rounded up to a
  multiple of ``round_to`` (never above ``n``).
* ``kept_units(ratio, n, cap, round_to)``: the two, with the pruned count clipped to ``cap``.
"""

import numpy as np

from tfsynapse.backends import tf


def pruned_count(ratio, n):
    """``ratio * n`` rounded to the nearest unit, halves up, computed in float32.

    Args:
      ratio: a fraction (a Python number, a numpy scalar or a TensorFlow scalar).
      n: the number of units (an int, or an int32 tensor).

    Returns:
      An int, or an int32 tensor when ``ratio`` or ``n`` is a tensor.
    """
    if tf.is_tensor(ratio) or tf.is_tensor(n):
        product = tf.cast(ratio, tf.float32) * tf.cast(n, tf.float32)
        return tf.cast(tf.floor(product + 0.5), tf.int32)
    return int(np.floor(np.float32(ratio) * np.float32(n) + np.float32(0.5)))


def kept_after(pruned, n, round_to):
    """Units kept when ``pruned`` of ``n`` are pruned and the kept count is rounded up to a
    multiple of ``round_to`` (at most ``n``). Works on ints and on int32 tensors."""
    kept = n - pruned
    if round_to == 1:
        return kept
    rounded = ((kept + round_to - 1) // round_to) * round_to
    return tf.minimum(n, rounded) if tf.is_tensor(rounded) else min(n, rounded)


def cap(max_ratio, n):
    """The most units of ``n`` ever pruned under ``max_ratio``: its rounded count, and never
    the last unit."""
    return min(n - 1, pruned_count(max_ratio, n))


def kept_units(ratio, n, cap_, round_to):
    """Units kept of ``n`` at ``ratio``: rounded, clipped to ``cap_``, rounded to
    ``round_to``."""
    return kept_after(min(max(pruned_count(ratio, n), 0), cap_), n, round_to)
