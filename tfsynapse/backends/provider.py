"""The one place where the backends reach above themselves: by name, at run time.

A backend's pruned model (tf_keras ``PrunedModel``, Keras 3 ``KerasPrunedModel``) is a Keras
class, so it lives in a backend; its masks come from the planner, which lives above the
backends (``plan``, ``graph``, ``criteria``). The pruning package registers the planner when it
is imported (``use_planner``). But Keras loads a saved model by importing only the module its
file names, in a process that may have run nothing but ``import tfsynapse`` (which imports
nothing until asked) or the CLI. So a pruned model that needs the planner and finds nothing
registered asks ``ensure`` to import the package that registers it, named here once: the
static import graph stays a one-way flow (``tests/test_import_graph.py``), and a fresh process
still loads every file tfsynapse writes.
"""

import importlib

# what a backend may need from above -> the module that registers it on import
PROVIDERS = {
    "planner": "tfsynapse.pruning",
}

_PLANNER = {}


def use_planner(make_plan, pruned_fraction, warn_if_short):
    """Registers the pruning package's functions (``tfsynapse.pruning.fit`` on import):
    ``make_plan(model, options or its config) -> (plan, options)``,
    ``pruned_fraction(model, keep) -> float`` and ``warn_if_short(model, where)``."""
    _PLANNER.update(make=make_plan, fraction=pruned_fraction, warn=warn_if_short)


def planner(what):
    """The registered planner function ``what`` ('make', 'fraction' or 'warn'), imported
    through ``ensure`` in a process that has not imported the pruning package yet."""
    if what not in _PLANNER:
        ensure("planner")
    return _PLANNER[what]


def ensure(what):
    """Imports the module that registers ``what`` (one of ``PROVIDERS``) with the backends.

    Raises:
      KeyError: an unknown name (a bug in tfsynapse).
    """
    importlib.import_module(PROVIDERS[what])


class PrunedModelBase:
    """What both Keras' pruned models read from their plan and masks; mixed in before their
    model class, which provides ``mask_plan`` and ``mask_values()``."""

    def keep_plan(self):
        """The units the current masks keep: ``{group id: bool array}`` (True = kept)."""
        return self.mask_plan.keep_plan(self.mask_values())

    def keep(self):
        """The plan's ``Keep`` value now: ``{group name: bool array}`` (True = kept), what
        ``strip_pruning`` hands to ``shrink``; None at connection granularity."""
        return self.mask_plan.keep(self.mask_values())

    def pruned_fraction(self, keep=None):
        """How much the current masks prune: the fraction of prunable channels (filter
        granularity; ``keep``: ``keep_plan()`` when the caller has it) or of the convolutions'
        connections (connection granularity)."""
        return planner("fraction")(self, keep)
