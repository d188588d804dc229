"""Importance criteria: pure, vectorised TF functions of weight arrays (lower = pruned first).

Filter criteria (``filters``; input ``[n, d]``, row ``u`` = unit ``u``'s flattened weights;
``P_u = sum max(w, 0)``, ``N_u = sum |min(w, 0)|``, ranks are stable, 0-based, ascending):

* ``l1_scores``: ``sum |w|`` -- Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017.
* ``l2_scores``: ``||w||_2`` -- the L2 variant of the same magnitude criterion.
* ``dscore_scores``: ``rank(P_u) + rank(N_u)`` -- D-Score, Park et al., arXiv 2308.04470 (2023).
* ``dstep_prune_mask``: the ``k`` units in the smallest prefix intersection of the P and N orders
  (drop the largest ``rP + rN`` if it holds ``k + 1``) -- D-Step, same paper.
* ``dstep_gm_prune_mask``: D-Step with the orders given by summed distances between positive
  (resp. negative) parts -- D-Step GM, same paper.
* ``fpgm_scores``: ``sum_v ||w_u - w_v||_2`` -- He et al., "Filter Pruning via Geometric Median",
  CVPR 2019.
* ``random_scores``: stateless uniform scores -- the random baseline.

Connection criteria (``connections``; kernel ``(..spatial.., C_in, C_out)``, connection
``(i, j)`` = ``K[..., i, j]``):

* ``kernel_norm``: ``||K[..., i, j]||_2``.
* ``connection_l1``: ``sum |K[..., i, j]|``.
* ``synaptic_strength``: ``|gamma_i| * ||K[..., i, j]||_2`` -- Lin et al., "Synaptic Strength for
  Convolutional Neural Network", NeurIPS 2018.
* ``strength_magnitude``: ``|s_ij|`` of a trainable strength matrix -- same paper.

Criteria as objects (what the planner, ``prune_synaptic`` and the CLI use): ``registry``
(``Criterion``, ``FunctionCriterion``, ``GroupInputs``, ``LayerInputs``, ``names``, ``table``).

Helpers: ``ranks``, ``lowest_k_mask`` and ``select_filters`` (one kernel through a criterion
object). Criteria are found by name only through the registry (``registry.get``).
"""

from tfsynapse.criteria.connections import (
    connection_l1,
    kernel_norm,
    strength_magnitude,
    synaptic_strength,
)
from tfsynapse.criteria.filters import (
    dscore_scores,
    dstep_gm_prune_mask,
    dstep_prune_mask,
    fpgm_scores,
    l1_scores,
    l2_scores,
    lowest_k_mask,
    random_scores,
    ranks,
)

from tfsynapse.criteria import connections as _connections  # noqa: E402
from tfsynapse.criteria import filters as _filters  # noqa: E402

from tfsynapse.criteria import registry  # noqa: E402
from tfsynapse.criteria.registry import Criterion, FunctionCriterion, select_filters  # noqa: E402

__all__ = list(_filters.__all__) + list(_connections.__all__) + [
    "registry", "Criterion", "FunctionCriterion", "select_filters"]
