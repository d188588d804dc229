"""Structured pruning inside tfmot: masks, wrappers, one-shot pruning."""

from tfsynapse.backends.tf_keras import register_custom_objects

from tfsynapse.pruning.api import (
    apply_masks,
    custom_objects,
    prune_once,
    prune_scope,
    prune_synaptic,
    strip_pruning,
)
from tfsynapse.pruning.budget import BudgetReport, prune_to_budget
from tfsynapse.pruning.batchnorm import batchnorm_layers, recalibrate_batchnorm
from tfsynapse.pruning.distill import Distiller
from tfsynapse.pruning.model import PrunedModel, collect_wrappers
from tfsynapse.pruning.options import PruningOptions, register_criterion
from tfsynapse.pruning.planner import MaskPlan
from tfsynapse.pruning.progress import (
    PruningProgress,
    UpdatePruningStep,
    fit_schedule,
    mask_sparsity,
    schedule_shortfall,
)
from tfsynapse.pruning.stats import connection_sparsity
from tfsynapse.pruning.sensitivity import (
    SensitivityTable,
    plot_sensitivity,
    ratios_from_sensitivity,
    sensitivity_analysis,
)
from tfsynapse.pruning.wrapper import StructuredPruneWrapper

__all__ = [
    "BudgetReport", "Distiller", "MaskPlan", "PrunedModel", "PruningProgress", "UpdatePruningStep",
    "fit_schedule", "mask_sparsity", "schedule_shortfall", "PruningOptions", "SensitivityTable", "StructuredPruneWrapper", "apply_masks",
    "batchnorm_layers", "collect_wrappers", "connection_sparsity", "custom_objects", "prune_once",
    "prune_scope", "prune_synaptic", "prune_to_budget",
    "plot_sensitivity", "ratios_from_sensitivity", "recalibrate_batchnorm", "register_criterion",
    "sensitivity_analysis", "strip_pruning",
]

# Files saved by tfsynapse load with a plain ``keras.models.load_model`` in any process that has
# imported tfsynapse's pruning or layers (a PrunedModel file loads even without that: Keras
# imports its class by module path). ``prune_scope()`` stays for explicit scoping.
register_custom_objects(custom_objects())
