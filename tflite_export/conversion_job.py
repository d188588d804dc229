"""One conversion attempt, SavedModel directory -> checked .tflite: the native part of ``convert``.

``convert`` (in the user's process) validates, writes the model as a SavedModel and the
calibration samples as ``.npy`` files into a job directory, and calls ``run`` on it, either
in a worker process (``isolation.run_isolated``, the default) or in-process. ``run`` converts
with builtin ops only, records the Keras input/output order, loads and allocates the result in
LiteRT, and writes the bytes, or the error, and the warnings it raised, back into the directory;
``read_result`` turns them into a return value, an exception and warnings again. Only
TensorFlow, LiteRT and this package are needed in the worker: no Keras classes, so custom
layers convert there too.
"""

import contextlib
import json
import os
import pickle
import traceback
import warnings

import numpy as np

_JOB, _RESULT, _ERROR, _WARNINGS = "job.json", "model.tflite", "error.pickle", "warnings.pickle"
SAVED_MODEL = "saved_model"


class NotLoadableError(RuntimeError):
    """The converter produced a model that LiteRT cannot load or prepare."""


def write_job(directory, *, quantize, int8_io, sparse_weights, input_names, output_names,
              calibration=None, float_layers=(), marked=()):
    """Writes a conversion job (its SavedModel must be written by the caller).

    Args:
      directory: the job directory; the SavedModel goes to ``directory/saved_model``.
      quantize, int8_io, sparse_weights: as ``convert`` takes them.
      input_names, output_names: the Keras model's, in Keras order.
      calibration: a ``Calibration`` (int8 with data) or None; its samples are written once
        as one ``input_<i>.npy`` array per input.
      float_layers: names of layers kept float32 in an int8 model (checked by the caller,
        who saves the SavedModel with them renamed by ``float_layers.marked``).
      marked: names of layers traced under markers without being kept float (their ops keep
        the marker names in the file; messages name the layers).
    """
    count = 0
    if calibration is not None:
        total = sum(1 for _ in calibration.samples())  # a full pass first: it may be replayed
        files = None
        for sample in calibration.samples():
            if files is None:
                files = [np.lib.format.open_memmap(
                    os.path.join(directory, f"input_{i}.npy"), mode="w+", dtype=np.float32,
                    shape=(total,) + a.shape[1:]) for i, a in enumerate(sample)]
            for array, file in zip(sample, files):
                file[count] = array[0]
            count += 1
        for file in files or []:
            file.flush()
    with open(os.path.join(directory, _JOB), "w") as stream:
        json.dump({"quantize": quantize, "int8_io": int8_io, "sparse_weights": sparse_weights,
                   "input_names": list(input_names), "output_names": list(output_names),
                   "samples": count, "float_layers": list(float_layers),
                   "marked": list(marked)}, stream)


def run(directory):
    """Runs the job in ``directory`` and writes its result there; never raises.

    Args:
      directory: a directory prepared by ``write_job``.
    """
    for name in (_RESULT, _ERROR, _WARNINGS):
        if os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = _convert(directory)
            with open(os.path.join(directory, _RESULT), "wb") as stream:
                stream.write(data)
        except Exception as err:  # noqa: BLE001 - every error goes back to the caller
            with open(os.path.join(directory, _ERROR), "wb") as stream:
                pickle.dump(_picklable(err), stream)
    record = [(w.category if _is_picklable(w.category) else UserWarning, str(w.message))
              for w in caught]
    with open(os.path.join(directory, _WARNINGS), "wb") as stream:
        pickle.dump(record, stream)


def read_result(directory):
    """The result of ``run``: the bytes, or its error raised again; its warnings re-emitted.

    Raises:
      The job's exception (a ``RuntimeError`` with its text when it could not be pickled);
      ``RuntimeError`` when the job left no result at all.
    """
    path = os.path.join(directory, _WARNINGS)
    if os.path.exists(path):
        with open(path, "rb") as stream:
            for category, message in pickle.load(stream):
                warnings.warn(message, category, stacklevel=3)
    if os.path.exists(os.path.join(directory, _ERROR)):
        with open(os.path.join(directory, _ERROR), "rb") as stream:
            raise pickle.load(stream)
    if not os.path.exists(os.path.join(directory, _RESULT)):
        raise RuntimeError(f"the conversion job in {directory} left no result")
    with open(os.path.join(directory, _RESULT), "rb") as stream:
        return stream.read()


@contextlib.contextmanager
def _named_layers(layer_names):
    """Errors of a conversion with ``float_layers`` name the user's layers, not the markers
    their scopes were traced under (``float_layers.unmarked``)."""
    try:
        yield
    except Exception as err:
        if layer_names and "tfsynapse_float" in str(err):
            from tflite_export.float_layers import unmarked  # noqa: PLC0415

            # the same error (its type decides what the caller tries next), the layers named
            err.args = tuple(unmarked(a, layer_names) if isinstance(a, str) else a
                             for a in err.args)
        raise


def _convert(directory):
    import tensorflow as tf  # noqa: PLC0415 - the worker imports TensorFlow on its first job

    from tflite_export.float_layers import (  # noqa: PLC0415
        check_kept_float, keep_float, restore_names, unmarked)
    from tflite_export.keras_io import add_keras_io  # noqa: PLC0415

    with open(os.path.join(directory, _JOB)) as stream:
        job = json.load(stream)
    converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(directory, SAVED_MODEL))
    _configure(tf, converter, job, directory)
    with warnings.catch_warnings():
        # Emitted for every int8 conversion; it is about TF1 quantized input stats, which
        # full-integer conversion with a representative dataset never needs.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        # The calibrator itself builds a tf.lite.Interpreter for dict (multi-input) samples.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        with _usable_ranges() as widened, keep_float(
                job.get("float_layers", [])) as kept, _named_layers(
                    job.get("float_layers") or job.get("marked")):
            data = converter.convert()
    if job.get("float_layers"):
        check_kept_float(data, kept, job["float_layers"])
        data = restore_names(data, job["float_layers"])
    names = job.get("float_layers") or job.get("marked") or []
    widened = [unmarked(name, names) for name in widened] if names else widened
    if widened:
        warnings.warn(
            f"{len(widened)} activation tensor(s) were constant over the calibration data (e.g. "
            f"{', '.join(widened[:3])}): channels that output the same value for every sample, "
            "often a ReLU that pruning left dead. Their zero-width int8 ranges were widened so "
            "that LiteRT's XNNPACK can run the model (the values are unchanged); such channels "
            "can usually be pruned too.", stacklevel=2)
    try:
        data = add_keras_io(data, job["input_names"], job["output_names"])
    except Exception as err:  # noqa: BLE001 - a model the flatbuffer object API cannot repack
        warnings.warn(f"could not record the Keras output order in the .tflite ({err}); "
                      "predict() returns the outputs in LiteRT's order.", stacklevel=2)
    _refuse_variables(check_loads(data, job["quantize"]))
    return data


_VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")


def _refuse_variables(interpreter):
    """Weights must be constants: a .tflite that reads TensorFlow variables loads, but LiteRT
    never initialises them, so it would compute with garbage (NaN seen)."""
    found = sorted({op["op_name"] for op in interpreter._get_ops_details()
                    if op["op_name"] in _VARIABLE_OPS})
    if found:
        raise RuntimeError(
            f"the converted model reads TensorFlow variables ({', '.join(found)} ops) instead of "
            "holding its weights as constants; LiteRT would run it with uninitialised weights.")


@contextlib.contextmanager
def _usable_ranges():
    """Widens zero-width calibration ranges between calibration and quantisation
    (``tflite_export.ranges``); yields the list of widened tensor names, filled on exit."""
    try:
        from tensorflow.lite.python.optimize import calibrator  # noqa: PLC0415

        original = calibrator.Calibrator.calibrate
    except (ImportError, AttributeError):  # another TensorFlow: the load check still guards
        yield []
        return
    from tflite_export.ranges import widen_constant_ranges  # noqa: PLC0415

    widened = []

    def calibrate(self, *args, **kwargs):
        data, names = widen_constant_ranges(original(self, *args, **kwargs))
        widened.extend(names)
        return data

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield widened
    finally:
        calibrator.Calibrator.calibrate = original


def _configure(tf, converter, job, directory):
    quantize = job["quantize"]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if job["sparse_weights"]:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if quantize is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT] + list(converter.optimizations)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if job["samples"]:  # none: a quantisation-aware model brings its own ranges
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: _samples(job, directory)
        if job["int8_io"]:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def _samples(job, directory):
    names = job["input_names"]
    arrays = [np.load(os.path.join(directory, f"input_{i}.npy"), mmap_mode="r")
              for i in range(len(names))]
    for k in range(job["samples"]):
        sample = [np.array(a[k:k + 1]) for a in arrays]
        # several inputs: by name (the signature orders them alphabetically, not as Keras)
        yield dict(zip(names, sample)) if len(names) > 1 else sample


def check_loads(data, quantize):
    """A written .tflite must load: build and allocate it in LiteRT (XNNPACK included) first.

    Returns:
      The allocated interpreter.

    Raises:
      NotLoadableError: LiteRT cannot load or prepare the converted model.
    """
    from tflite_export import _runtime  # noqa: PLC0415

    try:
        return _runtime.load_interpreter(data)
    except Exception as err:  # noqa: BLE001 - LiteRT raises RuntimeError/ValueError
        raise NotLoadableError(
            f"the converted model (quantize={quantize!r}) does not load in LiteRT: "
            f"{str(err).strip()[:600]}. Nothing was written. Try another quantize mode, or "
            "report the model (its layers and this message) as a tfsynapse issue.") from err


def _is_picklable(value):
    try:
        pickle.loads(pickle.dumps(value))
        return True
    except Exception:  # noqa: BLE001 - converter errors may hold unpicklable state
        return False


def _picklable(err):
    if _is_picklable(err):
        return err
    return RuntimeError("".join(traceback.format_exception_only(type(err), err)).strip())
