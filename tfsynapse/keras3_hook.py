"""Keras 3 finds tfsynapse's saved classes after a plain ``import tfsynapse``.

Keras 3 loads a ``.keras`` file's custom classes (``KerasPrunedModel``, ``SynapticConv2D``)
only from its registry of serializable classes, which a module fills when it is imported; it
never imports a module named in the file unless it belongs to Keras. ``import tfsynapse``
imports nothing heavy (the command line must start fast), so a user's

    import tfsynapse, keras
    keras.models.load_model("pruned.keras")

would fail in a fresh process. ``install()`` (run by ``import tfsynapse``) closes that gap
without importing TensorFlow: when Keras 3 is already imported it registers tfsynapse's classes
at once, and otherwise it waits on the import system for the ``keras`` package to finish
importing, then registers them (importing ``tfsynapse.backends.keras3``) and removes itself.
A failure to register never breaks ``import keras``: it is reported as a warning.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

BACKEND = "tfsynapse.backends.keras3"


def _register():
    try:
        importlib.import_module(BACKEND)
    except Exception as err:  # noqa: BLE001 - never break the user's import of Keras
        warnings.warn(f"tfsynapse could not register its Keras 3 classes ({err!r}); load "
                      f"tfsynapse's .keras files after `import {BACKEND}`.", stacklevel=3)


class _AfterKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``keras`` is about to be imported, wraps its loader so that
    tfsynapse's classes are registered right after the package has executed. It stays
    installed until Keras really executes (a ``find_spec`` alone, as TensorFlow's import does
    to see whether Keras is installed, loads nothing)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            _uninstall()
            run(module)
            if _is_keras3(module):
                _register()

        spec.loader.exec_module = exec_module
        return spec


def _is_keras3(module):
    return str(getattr(module, "__version__", "")).split(".")[0] == "3"


_FINDER = _AfterKeras()


def _uninstall():
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def install():
    """Registers tfsynapse's Keras 3 classes now (Keras 3 already imported) or right after
    Keras 3 is imported. Idempotent."""
    keras = sys.modules.get("keras")
    if keras is not None:
        if _is_keras3(keras) and BACKEND not in sys.modules:
            _register()
        return
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
