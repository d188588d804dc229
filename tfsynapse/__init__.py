"""tfsynapse: structured pruning for tf_keras inside tfmot, with real channel removal.

Prune during ``model.fit`` with ``prune_synaptic`` (Synaptic Strength, D-Score and classic
criteria), or in one shot with ``prune_once``; ``strip_pruning``; ``shrink`` to remove the
pruned channels for real; export with ``tflite_export.convert``.
"""

from tfsynapse._keras import pruning_callbacks as _callbacks
from tfsynapse._keras import pruning_schedule as _schedules
from tfsynapse import criteria
from tfsynapse.graph import (
    DependencyGraph,
    UnsupportedLayerError,
    count_macs,
    count_params,
    dependency_groups,
    register_rule,
)
from tfsynapse.layers import SynapticConv2D, from_synaptic, to_synaptic
from tfsynapse.pruning import (
    PrunedModel,
    StructuredPruneWrapper,
    prune_once,
    prune_scope,
    prune_synaptic,
    register_criterion,
    strip_pruning,
)
from tfsynapse.surgery import ShrinkReport, shrink

ConstantSparsity = _schedules.ConstantSparsity
PolynomialDecay = _schedules.PolynomialDecay
UpdatePruningStep = _callbacks.UpdatePruningStep
PruningSummaries = _callbacks.PruningSummaries

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity", "DependencyGraph", "PolynomialDecay", "PrunedModel", "PruningSummaries",
    "StructuredPruneWrapper", "SynapticConv2D", "from_synaptic", "to_synaptic", "UnsupportedLayerError", "UpdatePruningStep", "count_macs",
    "count_params", "criteria", "dependency_groups", "prune_once", "prune_scope",
    "prune_synaptic", "register_criterion", "register_rule", "shrink", "ShrinkReport", "strip_pruning",
]
