"""The pruning plan: options, scoring, reachability and the planner that turns scores into
masks and kept units (one rounding rule, ``rounding.py``; the ``Keep`` value, ``keep.py``)."""

from tfsynapse.plan.options import PruningOptions, register_criterion
from tfsynapse.plan.planner import MaskPlan

__all__ = ["MaskPlan", "PruningOptions", "register_criterion"]
