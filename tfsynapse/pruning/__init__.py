"""Structured pruning inside tfmot: masks, wrappers, one-shot pruning."""

from tfsynapse.pruning.api import (
    apply_masks,
    custom_objects,
    prune_once,
    prune_scope,
    prune_synaptic,
    pruned_fraction,
    strip_pruning,
)
from tfsynapse.pruning.model import PrunedModel, collect_wrappers
from tfsynapse.pruning.options import PruningOptions, register_criterion
from tfsynapse.pruning.planner import MaskPlan
from tfsynapse.pruning.wrapper import StructuredPruneWrapper

__all__ = [
    "MaskPlan", "PrunedModel", "PruningOptions", "StructuredPruneWrapper", "apply_masks",
    "collect_wrappers", "custom_objects", "prune_once", "prune_scope", "prune_synaptic",
    "pruned_fraction", "register_criterion", "strip_pruning",
]
