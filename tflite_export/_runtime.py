"""Private LiteRT helpers: load a flatbuffer, feed a batch, read the outputs back as float.

Everything that touches ``ai_edge_litert.interpreter.Interpreter`` lives here, so that
``verification``, ``benchmarking`` and ``inspect_model`` share one way of loading models, of
ordering inputs and outputs, and of (de)quantizing int8 tensors.
"""

import os
import re

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tflite_export.keras_io import keras_io

_TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite
_POSITIONAL_OUTPUT = re.compile(r"^output_(\d+)$")


def read_model(tflite):
    """Returns the flatbuffer bytes of ``tflite``.

    Args:
      tflite: the model as ``bytes`` (or ``bytearray``/``memoryview``) or as a path
        (``str`` / ``os.PathLike``) to a ``.tflite`` file.

    Returns:
      The model as ``bytes``.

    Raises:
      TypeError: ``tflite`` is neither bytes nor a path.
      FileNotFoundError: the path does not exist.
      ValueError: the content is not a TFLite flatbuffer.
    """
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        data = bytes(tflite)
        where = "the given bytes"
    elif isinstance(tflite, (str, os.PathLike)):
        path = os.fspath(tflite)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No TFLite model at {path!r}.")
        with open(path, "rb") as handle:
            data = handle.read()
        where = repr(path)
    else:
        raise TypeError(
            "tflite must be the flatbuffer bytes returned by tflite_export.convert() or a path "
            f"to a .tflite file, got {type(tflite).__name__}."
        )
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ValueError(
            f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier); pass the output of "
            "tflite_export.convert() or a .tflite file."
        )
    return data


def load_interpreter(tflite, num_threads=None):
    """Builds an ``ai_edge_litert`` interpreter for ``tflite`` (bytes or path), tensors allocated.

    Args:
      tflite: model bytes or a path to a ``.tflite`` file.
      num_threads: CPU threads for the interpreter, or None for LiteRT's default.

    Returns:
      An ``ai_edge_litert.interpreter.Interpreter`` after ``allocate_tensors()``.

    Raises:
      TypeError, FileNotFoundError, ValueError: see ``read_model``; ValueError also when LiteRT
        cannot load the model.
    """
    data = read_model(tflite)
    try:
        interpreter = Interpreter(model_content=data, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"LiteRT could not load the model: {err}") from err
    # The Keras input/output order written by convert (read by io_details).
    interpreter.keras_io_names = keras_io(data)
    return interpreter


def _single_signature(interpreter):
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return None
    return interpreter.get_signature_runner(next(iter(signatures)))


def _order(by_name, names):
    """Orders signature details ``{name: detail}`` by ``names`` or by ``output_<i>``; else None."""
    if names is not None and set(names) == set(by_name) and len(names) == len(by_name):
        return [by_name[name] for name in names]
    matches = {name: _POSITIONAL_OUTPUT.match(name) for name in by_name}
    if by_name and all(matches.values()):
        return [by_name[name] for name in sorted(by_name, key=lambda n: int(matches[n].group(1)))]
    return None


def io_details(interpreter, input_names=None, output_names=None):
    """Input and output tensor details, ordered like the Keras model when it can be told.

    The order of ``get_input_details()`` / ``get_output_details()`` is not guaranteed to be the
    Keras order, but the signature of a model converted by ``convert`` names its inputs and
    outputs after the Keras ones, and ``convert`` records the Keras order in the file
    (``keras_io``); a converted concrete function without names calls its outputs
    ``output_0, output_1, ...``. Names given here, else the recorded ones, fix the order;
    otherwise the interpreter's order is used.

    Args:
      interpreter: an allocated interpreter.
      input_names: the Keras model's input names, or None.
      output_names: the Keras model's output names, or None.

    Returns:
      ``(inputs, outputs)``: two lists of tensor-detail dicts (keys as in
      ``Interpreter.get_input_details()``), each carrying the tensor ``index`` of subgraph 0.
    """
    stored_inputs, stored_outputs = getattr(interpreter, "keras_io_names", (None, None))
    input_names = input_names if input_names is not None else stored_inputs
    output_names = output_names if output_names is not None else stored_outputs
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    runner = _single_signature(interpreter)
    if runner is not None:
        inputs = _order(runner.get_input_details(), input_names) or inputs
        outputs = _order(runner.get_output_details(), output_names) or outputs
    return inputs, outputs


def _scale_zero_point(detail):
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point)


def to_tensor_dtype(values, detail):
    """Converts float ``values`` to the dtype of input tensor ``detail``, quantizing if needed."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = _scale_zero_point(detail)
    if np.issubdtype(dtype, np.integer) and scale != 0.0:
        info = np.iinfo(dtype)
        quantized = np.round(np.asarray(values, np.float32) / scale) + zero_point
        return np.clip(quantized, info.min, info.max).astype(dtype)
    return np.asarray(values).astype(dtype, copy=False)


def from_tensor_dtype(values, detail):
    """Converts output ``values`` of tensor ``detail`` to float32, dequantizing if needed."""
    scale, zero_point = _scale_zero_point(detail)
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale != 0.0:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32, copy=False)


def _as_list(inputs, count):
    arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) != count:
        raise ValueError(f"The TFLite model has {count} input(s), got {len(arrays)} array(s).")
    sizes = {a.shape[0] if a.ndim else None for a in arrays}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "Every input array needs the same leading batch dimension, got shapes "
            f"{[a.shape for a in arrays]}."
        )
    return arrays


def _chunk_size(details, arrays):
    """Batch size per invoke: all of it if the batch dim is dynamic, else the fixed size."""
    fixed = {int(d["shape_signature"][0]) for d in details if int(d["shape_signature"][0]) != -1}
    batch = arrays[0].shape[0]
    if not fixed:
        return batch
    if len(fixed) > 1:
        raise ValueError(f"The TFLite inputs have different fixed batch sizes {sorted(fixed)}.")
    size = fixed.pop()
    if batch % size:
        raise ValueError(
            f"The TFLite model has a fixed batch size of {size}, which does not divide the "
            f"{batch} samples given."
        )
    return size


def run_batch(interpreter, inputs, input_names=None, output_names=None):
    """Runs a batch through the interpreter and returns float outputs.

    When the batch dimension of the model is dynamic (-1 in ``shape_signature``), the input
    tensors are resized to the whole batch and invoked once; when it is fixed (1 for the
    concrete-function fallback), the batch is fed in slices of that size. int8/uint8 inputs are
    quantized with the tensor's scale and zero point, and quantized outputs dequantized.

    Args:
      interpreter: an allocated interpreter.
      inputs: a numpy batch, or a list of batches for a multi-input model (Keras order).
      input_names: the Keras input names, used to match the signature; optional.
      output_names: the Keras output names, used to order the outputs; optional.

    Returns:
      A list of float32 arrays, one per model output, each with the batch as first dim.

    Raises:
      ValueError: the number of inputs or their batch sizes do not fit the model.
    """
    in_details, out_details = io_details(interpreter, input_names, output_names)
    arrays = _as_list(inputs, len(in_details))
    step = _chunk_size(in_details, arrays)
    batch = arrays[0].shape[0]
    results = [[] for _ in out_details]
    for start in range(0, batch, step):
        chunk = [a[start : start + step] for a in arrays]
        resized = False
        for detail, values in zip(in_details, chunk):
            if tuple(detail["shape"]) != values.shape:
                interpreter.resize_tensor_input(detail["index"], list(values.shape))
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for detail, values in zip(in_details, chunk):
            interpreter.set_tensor(detail["index"], to_tensor_dtype(values, detail))
        interpreter.invoke()
        for slot, detail in zip(results, out_details):
            slot.append(from_tensor_dtype(interpreter.get_tensor(detail["index"]), detail))
    return [np.concatenate(parts, axis=0) for parts in results]


def random_input(detail, rng):
    """A random array for input tensor ``detail``, dynamic (-1) dims set to 1."""
    shape = [1 if int(d) == -1 else int(d) for d in detail["shape_signature"]]
    dtype = np.dtype(detail["dtype"])
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low, high = max(int(info.min), -128), min(int(info.max), 127)
        return rng.integers(low, high + 1, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)
