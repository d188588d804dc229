"""Structured pruning inside tfmot: masks, wrappers, one-shot pruning."""

from tfsynapse.pruning.api import (
    apply_masks,
    custom_objects,
    prune_once,
    prune_scope,
    prune_synaptic,
    strip_pruning,
)
from tfsynapse.pruning.distill import Distiller
from tfsynapse.backends.tf_keras import PrunedModel, StructuredPruneWrapper, collect_wrappers
from tfsynapse.pruning import fit as _fit  # noqa: F401  (registers the planner with the backends)
from tfsynapse.pruning.progress import (
    PruningProgress,
    UpdatePruningStep,
    fit_schedule,
    mask_sparsity,
    schedule_shortfall,
)

__all__ = [
    "Distiller", "PrunedModel", "PruningProgress", "StructuredPruneWrapper", "UpdatePruningStep",
    "apply_masks", "collect_wrappers", "custom_objects", "fit_schedule", "mask_sparsity",
    "prune_once", "prune_scope", "prune_synaptic", "schedule_shortfall", "strip_pruning",
]
