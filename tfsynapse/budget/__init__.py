"""Pruning to a budget (MACs, parameters, file size, latency): ``prune_to_budget``.

Above ``surgery`` and ``tflite_export``: a candidate is shrunk and, for size and latency,
converted and measured as it will be shipped.
"""

from tfsynapse.budget.report import BudgetReport
from tfsynapse.budget.search import prune_to_budget

__all__ = ["BudgetReport", "prune_to_budget"]
