"""The ``tfsynapse`` command's files: models, data, ratios; read and written safely.

Models are read from ``.keras`` and ``.h5`` files and SavedModel directories (tfsynapse/tfmot
pruning wrappers included) and written by the output's extension (a path without one is a
SavedModel directory), atomically. Every problem is a ``CliError`` with a one-line message.
"""

import contextlib
import json
import os
import shutil
import warnings

from tfsynapse.fileio import temp_sibling

KERAS_SUFFIXES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}


class CliError(Exception):
    """A user-facing error: printed as one line, without a traceback."""


def require_input(path, what="model"):
    if not os.path.exists(path):
        raise CliError(f"{what} not found: {path!r} (no such file or directory)")
    return path


def model_format(path):
    """The format an output path asks for: 'keras', 'h5' or 'savedmodel'."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return "savedmodel"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in KERAS_SUFFIXES:
        return KERAS_SUFFIXES[suffix]
    if not suffix:
        return "savedmodel"
    raise CliError(
        f"cannot tell how to save {path!r}: use a .keras or .h5 file, or a directory for a "
        f"SavedModel (end the path with '/' if its name has a dot)"
    )


def check_output(path, fmt, model_path=None):
    """Fails early (before any work) if ``path`` cannot be written as ``fmt`` (for the model
    read from ``model_path``, when given: a format its Keras saves, ``SAVE_FORMATS``)."""
    if model_path is not None:
        from tfsynapse import backends  # noqa: PLC0415

        backend = backends.get(backends.name_for_file(model_path))
        if fmt not in backend.SAVE_FORMATS:
            raise CliError(f"{model_path!r} is a {backend.NAME} model, saved as a "
                           f"{' or '.join(backend.SAVE_FORMATS)} file only (not a {fmt}): give "
                           f"-o {os.path.normpath(path)}.keras")
    clean = os.path.normpath(path)
    folder = os.path.dirname(os.path.abspath(clean))
    if not os.path.isdir(folder):
        raise CliError(f"output folder does not exist: {folder!r}; create it first")
    if fmt == "savedmodel":
        if os.path.lexists(clean) and (os.path.islink(clean) or not os.path.isdir(clean)):
            raise CliError(f"output {path!r} exists and is not a directory; choose another path")
        if os.path.isdir(clean) and os.listdir(clean) and not _is_saved_model(clean):
            raise CliError(
                f"refusing to replace {path!r}: it is a non-empty directory that is not a "
                "SavedModel; choose another path"
            )
    elif os.path.isdir(clean):
        raise CliError(f"output {path!r} is a directory; give a file path")
    return clean


def _is_saved_model(path):
    names = ("saved_model.pb", "saved_model.pbtxt")
    return any(os.path.isfile(os.path.join(path, n)) for n in names)


def one_line(err):
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1:
        return lines[0] + " (more with --debug)"
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Loading and saving


def load_model(path):
    """Loads a tf_keras or Keras 3 model (by what wrote the file; pruning wrappers and
    pruned models included), with a one-line error if it is not a model."""
    import tfsynapse  # noqa: F401, PLC0415 - registers tfsynapse's classes in both Keras
    from tfsynapse import backends  # noqa: PLC0415

    require_input(path)
    try:
        return backends.get(backends.name_for_file(path)).load_model(path)
    except Exception as err:  # noqa: BLE001 - every load failure means "not a readable model"
        raise CliError(f"cannot load a Keras model from {path!r}: {one_line(err)}") from err


def strip_wrappers(model):
    """Applies and removes tfmot/tfsynapse pruning wrappers, if the model has any."""
    from tfsynapse import strip_pruning  # noqa: PLC0415
    from tfsynapse.backends import backend_of  # noqa: PLC0415

    if not backend_of(model).has_pruning_wrappers(model):
        return model
    print("note: the model is wrapped for pruning; its masks were applied and the wrappers removed")
    return strip_pruning(model)


def save_model(model, path):
    """Saves ``model`` to ``path`` by its extension, atomically.

    A ``.keras`` or ``.h5`` file is written to a temporary file in the same folder, then
    ``os.replace``d; a SavedModel is written to a temporary directory beside ``path``, which
    then takes the place of ``path`` (an existing SavedModel there is moved aside first and
    deleted only once the new one is in place).

    Args:
      model: a tf_keras model.
      path: the destination: ``.keras``, ``.h5``/``.hdf5``, or a directory.

    Raises:
      CliError: the path is not a usable destination.
      OSError: writing failed (nothing is left behind at ``path``).
    """
    from tfsynapse.backends import backend_of  # noqa: PLC0415

    fmt = model_format(path)
    path = check_output(path, fmt)
    backend = backend_of(model)
    if fmt == "savedmodel":
        _save_directory(model, path, backend)
        return
    temp = temp_sibling(path, suffix=os.path.splitext(path)[1])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`")
            backend.save_model(model, temp, fmt)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def _save_directory(model, path, backend):
    temp = temp_sibling(path)
    try:
        backend.save_model(model, temp, "savedmodel")  # a backend that cannot read it raises
        if os.path.isdir(path):
            old = temp_sibling(path, suffix=".old")
            os.rename(path, old)
            try:
                os.rename(temp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def load_calibration(path, what="calibration"):
    """The one array of samples in a ``.npy`` or ``.npz`` file, checked to be numbers.

    Raises:
      CliError: not a NumPy file, several arrays, pickled objects, strings, a 0-d array or
        no sample; each said with the file and what to save instead.
    """
    import numpy as np  # noqa: PLC0415

    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as err:
        raise CliError(f"cannot read {what} data from {path!r}: {one_line(err)}") from err
    if magic != b"\x93NUMPY" and magic[:2] != b"PK":
        raise CliError(f"{what} file {path!r} is not a NumPy .npy or .npz file; save the "
                       "samples with np.save(path, array)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read {what} data from {path!r}: {one_line(err)}") from err
    if not isinstance(data, np.ndarray):
        with data:
            names = list(data.files)
            if len(names) != 1:
                raise CliError(
                    f"{what} file {path!r} holds {len(names)} arrays {names}; save exactly one "
                    "array of samples (N, ...) with np.save or np.savez"
                )
            data = data[names[0]]
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise CliError(f"{what} file {path!r} holds {data.dtype} values, not numbers; save the "
                       "samples as a numeric array (e.g. float32 images, int64 class ids)")
    if data.ndim == 0 or len(data) == 0:
        raise CliError(f"{what} file {path!r} holds an array of shape {list(data.shape)}: no "
                       "samples; save an array of shape (N, ...) with N >= 1")
    return data


def check_samples(x, model, what, path):
    """Refuses samples whose shape the model's single input cannot take.

    Raises:
      CliError: ``x.shape[1:]`` differs from the input's known dimensions.
    """
    inputs = model.inputs
    if len(inputs) != 1:
        return
    expected = list(inputs[0].shape)[1:]
    got = list(x.shape[1:])
    if len(got) != len(expected) or any(e is not None and int(e) != g
                                        for e, g in zip(expected, got)):
        raise CliError(f"{what} {path!r} holds samples of shape {got}; the model's input is "
                       f"{['N' if e is None else int(e) for e in expected]} per sample")


def load_ratios(path):
    try:
        with open(path, encoding="utf-8") as handle:
            ratios = json.load(handle)
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read ratios from {path!r}: {one_line(err)}") from err
    if not isinstance(ratios, dict) or not ratios:
        raise CliError(
            f"{path!r} must hold a non-empty JSON object {{\"layer name\": ratio, ...}}, got "
            f"{type(ratios).__name__}"
        )
    for name, ratio in ratios.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise CliError(
                f"{path!r}: the ratio of layer {name!r} must be a number in [0, 1), got {ratio!r}")
    return {name: float(ratio) for name, ratio in ratios.items()}


def load_data_pair(spec):
    """``x.npy`` or ``x.npy,y.npy`` -> ``(x, y or None)``."""
    parts = spec.split(",")
    if len(parts) > 2 or not all(parts):
        raise CliError(f"--data takes x.npy or x.npy,y.npy (images, then labels), got {spec!r}")
    x = load_calibration(require_input(parts[0], "data file"), "recalibration")
    y = load_calibration(require_input(parts[1], "labels file"), "label") \
        if len(parts) == 2 else None
    if y is not None and len(y) != len(x):
        raise CliError(f"--data: {parts[0]} holds {len(x)} samples but {parts[1]} holds "
                       f"{len(y)} labels")
    return x, y
