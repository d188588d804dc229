"""tfsynapse: structured pruning for tf_keras inside tfmot, with real channel removal.

Prune during ``model.fit`` with ``prune_synaptic`` (Synaptic Strength, D-Score and classic
criteria), or in one shot with ``prune_once``; ``strip_pruning``; ``shrink`` to remove the
pruned channels for real; export with ``tflite_export.convert``.
"""

from tfsynapse import criteria
from tfsynapse._keras import pruning_callbacks as _callbacks
from tfsynapse._keras import pruning_schedule as _schedules
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
    SensitivityTable,
    StructuredPruneWrapper,
    connection_sparsity,
    plot_sensitivity,
    prune_once,
    prune_scope,
    prune_synaptic,
    ratios_from_sensitivity,
    register_criterion,
    sensitivity_analysis,
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
    "SensitivityTable", "ShrinkReport", "StructuredPruneWrapper", "SynapticConv2D",
    "UnsupportedLayerError", "UpdatePruningStep", "connection_sparsity", "count_macs",
    "count_params", "criteria", "dependency_groups", "from_synaptic", "plot_sensitivity",
    "prune_once", "prune_scope", "prune_synaptic", "ratios_from_sensitivity",
    "register_criterion", "register_rule", "sensitivity_analysis", "shrink", "strip_pruning",
    "to_synaptic",
]
