"""The backend seam: which Keras implements a model, and the one module that speaks to it.

Two backends implement one small interface (see ``docs/architecture.md``):

* ``tfsynapse.backends.tf_keras`` — tf_keras (Keras 2) and tfmot; the only module that imports
  them.
* ``tfsynapse.backends.keras3`` — Keras 3 with its TensorFlow backend (``import keras``); the
  only modules that import ``keras`` (with ``keras3_pruning.py``, pruning during ``fit``).

``backend_of(obj)`` answers from the object's classes, without importing anything. The graph,
the criteria, the planner and the surgery ask it for the calls they need (walk a model, make
inputs and models, recognise layers), so they work on either Keras. TensorFlow itself is the
compute engine of both, so ``tf`` is exported here.
"""

import importlib
import json
import os
import zipfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot needs tf.keras to be tf_keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

__all__ = ["tf", "backend_of", "backend_name", "get", "is_framework_function", "name_for_file",
           "unwrap", "weight_name", "weight_path", "NAMES"]

NAMES = ("tf_keras", "keras3")
_MODULES = {"tf_keras": "tfsynapse.backends.tf_keras", "keras3": "tfsynapse.backends.keras3"}
_LOADED = {}


def backend_name(obj):
    """``'tf_keras'`` or ``'keras3'`` for a Keras object (model, layer, tensor), else None.

    Decided from the modules of the object's classes (a user's subclass of a Keras class
    counts as that Keras), so nothing is imported.
    """
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module == "tf_keras" or module.startswith("tf_keras."):
            return "tf_keras"
        if module == "keras" or module.startswith("keras."):
            return "keras3"
    return None


def weight_name(weight):
    """A weight's own name without its layer or suffix: ``'kernel'`` in either Keras."""
    return weight.name.split(":")[0].rsplit("/", 1)[-1]


def weight_path(weight):
    """``'layer/kernel'`` in either Keras: tf_keras names a weight ``'c3/kernel:0'``, Keras 3
    names it ``'kernel'`` and keeps the layer in its ``path``."""
    path = getattr(weight, "path", None)
    return path if isinstance(path, str) and path else weight.name.split(":")[0]


def unique_names(names):
    """``names`` with repeats made unique: a second ``'encoder'`` becomes ``'encoder_1'`` (a
    layer with several outputs names them all after itself)."""
    taken, out = set(names), []
    seen = set()
    for name in names:
        new, n = name, 0
        while new in seen or (new != name and new in taken):
            n += 1
            new = f"{name}_{n}"
        seen.add(new)
        out.append(new)
    return out


def is_framework_function(fn):
    """Whether ``fn`` comes from Keras or TensorFlow (rather than from user code)."""
    module = getattr(fn, "__module__", "") or ""
    return module.startswith(("tf_keras.", "keras.", "tensorflow."))


def builtin_class_path(layer, package):
    """The key of built-in rules for a class of Keras ``package`` (``'tf_keras'``, ``'keras'``):
    ``'Conv2D'`` for a class of ``package.layers``, ``'applications.convnext.LayerScale'``
    for one an application defines; None for any other class (a user's layer, a subclass)."""
    module = type(layer).__module__ or ""
    for prefix in (package + ".src.", package + "."):
        if module.startswith(prefix + "layers"):
            return type(layer).__name__
        if module.startswith(prefix + "applications."):
            return module[len(prefix):] + "." + type(layer).__name__
    return None


def name_for_file(path):
    """The backend that reads a model file: ``'keras3'`` for a ``.keras`` zip or an HDF5 file
    written by Keras 3, else ``'tf_keras'``.

    A ``.keras`` file's ``metadata.json`` and an HDF5 model file's ``keras_version`` attribute
    name the Keras version that wrote it; SavedModel directories are tf_keras's. Nothing is
    imported but h5py (installed with TensorFlow), and only for an HDF5 file.
    """
    version = ""
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                version = json.loads(archive.read("metadata.json")).get("keras_version", "")
        except (KeyError, ValueError, OSError):
            version = ""
    elif os.path.isfile(path):
        with open(path, "rb") as handle:
            is_hdf5 = handle.read(8) == b"\x89HDF\r\n\x1a\n"
        if is_hdf5:
            import h5py  # noqa: PLC0415 - only for HDF5 files

            try:
                with h5py.File(path, "r") as handle:
                    version = handle.attrs.get("keras_version", "")
            except OSError:
                version = ""
            version = version.decode() if isinstance(version, bytes) else str(version)
    return "keras3" if version.split(".")[0] == "3" else "tf_keras"


def get(name):
    """The backend module called ``name`` (one of ``NAMES``), imported on first use.

    Raises:
      ValueError: an unknown name.
    """
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; the backends are {', '.join(NAMES)}.")
    module = _LOADED.get(name)
    if module is None:
        module = _LOADED[name] = importlib.import_module(_MODULES[name])
    return module


def backend_of(obj, what="model"):
    """The backend module that implements ``obj``.

    Args:
      obj: a Keras model, layer or symbolic tensor.
      what: how to name ``obj`` in the error.

    Returns:
      ``tfsynapse.backends.tf_keras`` or ``tfsynapse.backends.keras3``.

    Raises:
      TypeError: ``obj`` is not a Keras object.
    """
    name = backend_name(obj)
    if name is None:
        raise TypeError(
            f"{what} must be a Keras model (tf_keras, or Keras 3 with the TensorFlow backend), "
            f"got {type(obj).__name__}.")
    return get(name)


def unwrap(layer):
    """The layer a pruning wrapper wraps (recursively), in the layer's backend; else the layer."""
    name = backend_name(layer)
    return get(name).unwrap(layer) if name else layer
