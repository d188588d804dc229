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
