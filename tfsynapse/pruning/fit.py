"""The planner side of pruning during ``fit``, for the backends' pruned models.

A backend's pruned model (tf_keras ``PrunedModel``, Keras 3 ``KerasPrunedModel``) gets its
``MaskPlan`` from ``prune_synaptic``; a loaded one builds it through ``make_plan``. Both read how
much they prune through ``pruned_fraction`` and warn through ``warn_if_short``. These are
registered with ``backends.provider`` when this module is imported (by ``tfsynapse.pruning``).
"""

from tfsynapse.analysis.stats import connection_sparsity
from tfsynapse.backends import provider
from tfsynapse.graph import dependency_groups
from tfsynapse.plan.options import PruningOptions
from tfsynapse.plan.planner import MaskPlan
from tfsynapse.pruning.progress import warn_if_short


def make_plan(model, options):
    """``(MaskPlan, PruningOptions)`` of ``model`` for ``options`` (an object or its config)."""
    if isinstance(options, dict):
        options = PruningOptions.from_config(options)
    return MaskPlan(dependency_groups(model), options), options


def pruned_fraction(model, keep=None):
    """How much a pruned model's masks prune now.

    Args:
      model: a backend's pruned model (``mask_plan``, ``keep_plan()``, ``pruning_options``).
      keep: its ``keep_plan()`` when the caller has it (filter granularity).

    Returns:
      The fraction of prunable channels masked (filter granularity) or of the convolutions'
      connections that are dead, masks applied (connection granularity).
    """
    if model.pruning_options.granularity == "connection":
        return connection_sparsity(model)[0]
    keep = model.keep_plan() if keep is None else keep
    total = sum(len(k) for k in keep.values())
    return 1.0 - sum(int(k.sum()) for k in keep.values()) / max(total, 1)


provider.use_planner(make_plan, pruned_fraction, warn_if_short)
