"""Analysis of a model under pruning: per-group sensitivity, BatchNorm recalibration and
connection sparsity."""

from tfsynapse.analysis.batchnorm import batchnorm_layers, recalibrate_batchnorm
from tfsynapse.analysis.sensitivity import (
    SensitivityTable,
    plot_sensitivity,
    ratios_from_sensitivity,
    sensitivity_analysis,
)
from tfsynapse.analysis.stats import connection_sparsity

__all__ = ["SensitivityTable", "batchnorm_layers", "connection_sparsity", "plot_sensitivity",
           "ratios_from_sensitivity", "recalibrate_batchnorm", "sensitivity_analysis"]
