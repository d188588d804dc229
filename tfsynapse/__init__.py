"""tfsynapse: structured pruning for tf_keras inside tfmot, with real channel removal.

Prune during ``model.fit`` with ``prune_synaptic`` (Synaptic Strength, D-Score and classic
criteria), or in one shot with ``prune_once``; ``strip_pruning``; ``shrink`` to remove the
pruned channels for real; export with ``tflite_export.convert``.

Names are imported on first use (PEP 562), so ``import tfsynapse`` and the ``tfsynapse``
command start without loading TensorFlow until something needs it.
"""

import importlib

from tfsynapse import keras3_hook

__version__ = "0.1.0"

keras3_hook.install()  # Keras 3 loads tfsynapse's .keras files after a plain `import tfsynapse`

_EXPORTS = {
    "criteria": ("tfsynapse.criteria", None),
    "DependencyGraph": ("tfsynapse.graph", "DependencyGraph"),
    "UnsupportedLayerError": ("tfsynapse.graph", "UnsupportedLayerError"),
    "count_macs": ("tfsynapse.graph", "count_macs"),
    "count_params": ("tfsynapse.graph", "count_params"),
    "dependency_groups": ("tfsynapse.graph", "dependency_groups"),
    "register_rule": ("tfsynapse.graph", "register_rule"),
    "functional_model": ("tfsynapse.graph", "functional_model"),
    "keep_opaque": ("tfsynapse.graph", "keep_opaque"),
    "ProximalL1": ("tfsynapse.layers", "ProximalL1"),
    "SynapticConv2D": ("tfsynapse.layers", "SynapticConv2D"),
    "strength_sparsity": ("tfsynapse.layers", "strength_sparsity"),
    "from_synaptic": ("tfsynapse.layers", "from_synaptic"),
    "to_synaptic": ("tfsynapse.layers", "to_synaptic"),
    "Distiller": ("tfsynapse.pruning", "Distiller"),
    "PrunedModel": ("tfsynapse.pruning", "PrunedModel"),
    "SensitivityTable": ("tfsynapse.analysis", "SensitivityTable"),
    "StructuredPruneWrapper": ("tfsynapse.pruning", "StructuredPruneWrapper"),
    "connection_sparsity": ("tfsynapse.analysis", "connection_sparsity"),
    "plot_sensitivity": ("tfsynapse.analysis", "plot_sensitivity"),
    "prune_once": ("tfsynapse.pruning", "prune_once"),
    "prune_scope": ("tfsynapse.pruning", "prune_scope"),
    "prune_synaptic": ("tfsynapse.pruning", "prune_synaptic"),
    "ratios_from_sensitivity": ("tfsynapse.analysis", "ratios_from_sensitivity"),
    "recalibrate_batchnorm": ("tfsynapse.analysis", "recalibrate_batchnorm"),
    "register_criterion": ("tfsynapse.plan", "register_criterion"),
    "Criterion": ("tfsynapse.criteria.registry", "Criterion"),
    "criteria_table": ("tfsynapse.criteria.registry", "table"),
    "sensitivity_analysis": ("tfsynapse.analysis", "sensitivity_analysis"),
    "prune_to_budget": ("tfsynapse.budget", "prune_to_budget"),
    "BudgetReport": ("tfsynapse.budget", "BudgetReport"),
    "adb_latency": ("tfsynapse.budget.device_latency", "adb_latency"),
    "command_latency": ("tfsynapse.budget.device_latency", "command_latency"),
    "strip_pruning": ("tfsynapse.pruning", "strip_pruning"),
    "ShrinkReport": ("tfsynapse.surgery", "ShrinkReport"),
    "shrink": ("tfsynapse.surgery", "shrink"),
    "ConstantSparsity": ("tfsynapse.backends.tf_keras", "pruning_schedule.ConstantSparsity"),
    "PolynomialDecay": ("tfsynapse.backends.tf_keras", "pruning_schedule.PolynomialDecay"),
    "UpdatePruningStep": ("tfsynapse.pruning", "UpdatePruningStep"),
    "PruningProgress": ("tfsynapse.pruning", "PruningProgress"),
    "fit_schedule": ("tfsynapse.pruning", "fit_schedule"),
    "mask_sparsity": ("tfsynapse.pruning", "mask_sparsity"),
    "PruningSummaries": ("tfsynapse.backends.tf_keras", "pruning_callbacks.PruningSummaries"),
}

__all__ = sorted(_EXPORTS)


# Subpackages reachable as attributes without importing them first (``tfsynapse.graph.Rule``).
_SUBPACKAGES = ("analysis", "backends", "budget", "criteria", "datasets", "graph", "layers",
                "models", "plan", "pruning", "quiet", "surgery")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tfsynapse.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tfsynapse' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    value = importlib.import_module(module_name)
    for part in (attribute.split(".") if attribute else []):
        value = getattr(value, part)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(_EXPORTS) | set(_SUBPACKAGES) | {"__version__"})
