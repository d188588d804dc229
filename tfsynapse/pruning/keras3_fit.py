"""Pruning during ``fit`` for Keras 3 models: the planner side of ``backends.keras3_pruning``.

``prune_synaptic`` makes the same checked ``MaskPlan`` for either Keras; for a Keras 3 model it
hands the plan to ``KerasPrunedModel`` (masks as variables of the model, updated in its
``train_step``) instead of tfmot's wrappers. A loaded ``KerasPrunedModel`` builds its plan
through ``make_plan``, registered here.
"""

import numpy as np

from tfsynapse.backends import keras3_pruning
from tfsynapse.graph import dependency_groups
from tfsynapse.pruning.options import PruningOptions
from tfsynapse.pruning.planner import MaskPlan
from tfsynapse.pruning.progress import warn_if_short


def make_plan(model, options):
    """``(MaskPlan, PruningOptions)`` of ``model`` for ``options`` (an object or its config)."""
    if isinstance(options, dict):
        options = PruningOptions.from_config(options)
    return MaskPlan(dependency_groups(model), options), options


def pruned_fraction(model, keep=None):
    """How much a ``KerasPrunedModel``'s masks prune: the fraction of prunable channels masked
    (filter granularity; ``keep``: its ``keep_plan()`` when known) or of the convolutions'
    connections that are zero (connection)."""
    if model.pruning_options.granularity == "connection":
        dead = total = 0
        for lc in model.mask_plan.graph.calls:
            kernel = lc.rule.connection_kernel(lc.call.layer)
            if kernel is None:
                continue
            values = np.asarray(kernel.numpy())
            alive = np.any(values != 0, axis=tuple(range(values.ndim - 2)))
            dead, total = dead + int((~alive).sum()), total + alive.size
        return dead / total if total else 0.0
    keep = model.keep_plan() if keep is None else keep
    total = sum(len(k) for k in keep.values())
    return 1.0 - sum(int(k.sum()) for k in keep.values()) / max(total, 1)


keras3_pruning.use_planner(make_plan, pruned_fraction, warn_if_short)


def pruned_model(model, pruning_schedule, options, plan):
    """The ``KerasPrunedModel`` that trains ``model``'s layers under ``plan``."""
    return keras3_pruning.pruned_model(model, pruning_schedule, options.to_config(), plan)


def strip_pruning(model):
    """The plain Keras 3 model of a ``KerasPrunedModel``, its masks applied."""
    if not isinstance(model, keras3_pruning.KerasPrunedModel):
        raise ValueError(f"model '{model.name}' is not a Keras 3 model from prune_synaptic.")
    return keras3_pruning.strip(model)
