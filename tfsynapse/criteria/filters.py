"""Filter (output-channel) importance criteria: L1, L2, D-Score, D-Step, D-Step GM, FPGM.

Every criterion is a pure function of a ``[n, d]`` matrix whose row ``u`` holds unit ``u``'s
weights flattened (for a group of coupled producers, their rows concatenated along ``d``).
Lower score = less important = pruned first. All functions are built from vectorised TF ops
only, so they run eagerly, inside a ``tf.function`` graph and under ``tf.distribute``
``merge_call``; ``k`` may be a Python int or a scalar int tensor. Ties are always broken by the
lower unit index first (a stable ascending sort), see docs/methods.md.

``criteria.select_filters`` (in ``registry.py``) is the numpy-in, numpy-out helper for one
Keras kernel, through the criterion objects.
"""

from tfsynapse.backends import tf

__all__ = [
    "l1_scores",
    "l2_scores",
    "dscore_scores",
    "fpgm_scores",
    "random_scores",
    "ranks",
    "lowest_k_mask",
    "dstep_prune_mask",
    "dstep_gm_prune_mask",
]


def _as_float(x):
    """Converts ``x`` to a float32/float64 tensor (half precision and integers become float32)."""
    x = tf.convert_to_tensor(x)
    if x.dtype not in (tf.float32, tf.float64):
        x = tf.cast(x, tf.float32)
    return x


def _as_rows(filters):
    filters = _as_float(filters)
    if filters.shape.rank != 2:
        raise ValueError(
            f"filters must be a [n, d] matrix (one row per unit), got shape {filters.shape}; "
            "flatten each unit's weights into one row first."
        )
    return filters


def _positive_negative(filters):
    """Returns the positive part max(w, 0) and the negative magnitude |min(w, 0)|."""
    return tf.nn.relu(filters), tf.nn.relu(-filters)


def l1_scores(filters):
    """L1 norm of every unit (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

    Args:
      filters: float array or tensor ``[n, d]``, one row per unit.

    Returns:
      float32 tensor ``[n]``: ``sum_i |w_ui|``.

    Raises:
      ValueError: ``filters`` is not 2-D.
    """
    filters = _as_rows(filters)
    return tf.cast(tf.reduce_sum(tf.abs(filters), axis=1), tf.float32)


def l2_scores(filters):
    """Euclidean (L2) norm of every unit.

    Args:
      filters: float array or tensor ``[n, d]``, one row per unit.

    Returns:
      float32 tensor ``[n]``: ``sqrt(sum_i w_ui^2)``.

    Raises:
      ValueError: ``filters`` is not 2-D.
    """
    filters = _as_rows(filters)
    return tf.cast(tf.sqrt(tf.reduce_sum(tf.square(filters), axis=1)), tf.float32)


def ranks(values):
    """Stable 0-based ascending ranks: the smallest value gets 0, ties go to the lower index first.

    Args:
      values: 1-D array or tensor ``[n]`` of comparable values (NaN order is undefined).

    Returns:
      int32 tensor ``[n]``: ``ranks[u]`` is the position of ``values[u]`` in a stable ascending
      sort, i.e. the inverse of ``argsort(values, stable=True)``.
    """
    values = tf.convert_to_tensor(values)
    order = tf.argsort(values, direction="ASCENDING", stable=True)
    return tf.math.invert_permutation(tf.cast(order, tf.int32))


def lowest_k_mask(scores, k):
    """Marks the ``k`` units with the lowest scores (ties: lower index first).

    Args:
      scores: 1-D array or tensor ``[n]``.
      k: number of units to mark, a Python int or a scalar integer tensor. ``k <= 0`` marks
        none, ``k >= n`` marks all.

    Returns:
      bool tensor ``[n]``, True for the ``k`` lowest-scoring units.
    """
    return ranks(scores) < tf.cast(k, tf.int32)


def _pn_ranks(filters):
    """Ranks of the positive mass P and negative mass N of every row (D-Score, docs/methods.md)."""
    positive, negative = _positive_negative(filters)
    return ranks(tf.reduce_sum(positive, axis=1)), ranks(tf.reduce_sum(negative, axis=1))


def dscore_scores(filters):
    """D-Score (Park et al., arXiv 2308.04470): rank of positive mass + rank of negative mass.

    ``P_u = sum max(w, 0)``, ``N_u = sum |min(w, 0)|``; ``rP``, ``rN`` are their stable 0-based
    ascending ranks and the score is ``rP_u + rN_u``, an integer in ``[0, 2(n-1)]``.

    Args:
      filters: float array or tensor ``[n, d]``, one row per unit.

    Returns:
      float32 tensor ``[n]`` of D-Scores.

    Raises:
      ValueError: ``filters`` is not 2-D.
    """
    rank_p, rank_n = _pn_ranks(_as_rows(filters))
    return tf.cast(rank_p + rank_n, tf.float32)


def _summed_distances(rows):
    """``sum_v ||rows_u - rows_v||_2`` for every ``u``, vectorised through the Gram matrix.

    Computed in float64 after centring the rows (distances are translation invariant), which
    keeps the ``|a|^2 + |b|^2 - 2ab`` form accurate and immune to TF32 matmuls on GPUs. The
    diagonal is set to exactly 0.
    """
    rows = tf.cast(rows, tf.float64)
    rows = rows - tf.reduce_mean(rows, axis=0, keepdims=True)
    sq_norms = tf.reduce_sum(tf.square(rows), axis=1)
    gram = tf.matmul(rows, rows, transpose_b=True)
    sq_dist = tf.nn.relu(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram)
    sq_dist = tf.linalg.set_diag(sq_dist, tf.zeros_like(sq_norms))
    return tf.reduce_sum(tf.sqrt(sq_dist), axis=1)


def fpgm_scores(filters):
    """FPGM (He et al., "Filter Pruning via Geometric Median", CVPR 2019).

    A unit close to all others (near the geometric median) is redundant: its score is the sum of
    its Euclidean distances to the other units, and small scores are pruned first.

    Args:
      filters: float array or tensor ``[n, d]``, one row per unit.

    Returns:
      float32 tensor ``[n]``: ``sum_v ||row_u - row_v||_2``.

    Raises:
      ValueError: ``filters`` is not 2-D.
    """
    return tf.cast(_summed_distances(_as_rows(filters)), tf.float32)


def random_scores(n, seed):
    """Uniform random scores from a stateless RNG (a baseline; deterministic for a seed).

    Args:
      n: number of units (Python int).
      seed: integer seed (Python int or scalar tensor); the RNG seed is ``[seed, 0]``.

    Returns:
      float32 tensor ``[n]`` of values in ``[0, 1)``.
    """
    seed = tf.cast(seed, tf.int64)
    return tf.random.stateless_uniform([n], seed=tf.stack([seed, tf.zeros_like(seed)]))


def _dstep_select(rank_p, rank_n, k):
    """The D-Step selection on two rank vectors (docs/methods.md, D-Step).

    The intersection of the ``m`` smallest-P and ``m`` smallest-N units is
    ``I(m) = {u : max(rP_u, rN_u) < m}``. A value ``t`` is attained by ``rP`` once and by ``rN``
    once, so ``|I(m)|`` grows by at most 2 per step; the first ``m`` with ``|I(m)| >= k`` is
    ``t_k + 1`` where ``t_k`` is the ``k``-th smallest ``max(rP, rN)``, and ``I`` then holds ``k``
    or ``k + 1`` units. Pruning the ``k`` members with the lowest ``rP + rN`` (ties: lower index)
    drops exactly the member with the largest ``rP + rN`` (ties: larger index) when there are
    ``k + 1`` -- possibly an older member, not one of the two that just joined.
    """
    n = tf.size(rank_p)
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, n)
    reach = tf.maximum(rank_p, rank_n)
    threshold = tf.gather(tf.sort(reach), tf.maximum(k - 1, 0))
    in_intersection = reach <= threshold
    key = tf.where(in_intersection, rank_p + rank_n, 2 * n)
    return lowest_k_mask(key, k)


def dstep_prune_mask(filters, k):
    """D-Step (Park et al., arXiv 2308.04470): prune units low in both the P and the N order.

    Grows a prefix ``m`` over the ascending P and N orders until their intersection holds at
    least ``k`` units; those are pruned, except that if it holds ``k + 1`` the member with the
    largest ``rP + rN`` (tie: the larger index) is dropped from the pruned set.

    Args:
      filters: float array or tensor ``[n, d]``, one row per unit.
      k: number of units to prune, a Python int or scalar integer tensor (clipped to ``[0, n]``).

    Returns:
      bool tensor ``[n]``, True for the ``k`` units to prune.

    Raises:
      ValueError: ``filters`` is not 2-D.
    """
    rank_p, rank_n = _pn_ranks(_as_rows(filters))
    return _dstep_select(rank_p, rank_n, k)


def dstep_gm_prune_mask(filters, k):
    """D-Step GM (Park et al., arXiv 2308.04470): D-Step over geometric-median orders.

    The P order ranks units by the summed Euclidean distance from their positive part
    ``max(w, 0)`` to the other units' positive parts, the N order likewise with the negative
    parts ``|min(w, 0)|`` (ascending: a small summed distance is redundant, as in FPGM). The
    selection is then exactly D-Step's.

    Args:
      filters: float array or tensor ``[n, d]``, one row per unit.
      k: number of units to prune, a Python int or scalar integer tensor (clipped to ``[0, n]``).

    Returns:
      bool tensor ``[n]``, True for the ``k`` units to prune.

    Raises:
      ValueError: ``filters`` is not 2-D.
    """
    positive, negative = _positive_negative(_as_rows(filters))
    rank_p = ranks(_summed_distances(positive))
    rank_n = ranks(_summed_distances(negative))
    return _dstep_select(rank_p, rank_n, k)
