"""Physical channel removal."""

from tfsynapse.surgery.shrink import ShrinkReport, removable_units, shrink

__all__ = ["ShrinkReport", "removable_units", "shrink"]
