"""tf_keras model -> TFLite flatbuffer, with builtin ops only so it runs on Android LiteRT.

Conversion tries, in order: a concrete function of the model with a dynamic batch dimension
(``from_concrete_functions``; inputs and outputs named after the Keras ones, and several times
faster than ``from_keras_model``, which first saves the whole model as a SavedModel);
``from_keras_model``; and a concrete function with a fixed batch size of 1. A warning says when
a fallback was needed. Unsupported (non-builtin) ops fail at once with a clear error.
"""

import re
import warnings

import numpy as np

from tfsynapse._io import atomic_write
from tfsynapse._keras import check_model, tf
from tflite_export import _runtime
from tflite_export.calibration import Calibration, CalibrationDataError
from tflite_export.keras_io import add_keras_io
from tflite_export.qat import is_quantize_aware

QUANTIZATION_MODES = (None, "dynamic", "float16", "int8")

_MAX_MESSAGE = 3000  # converter messages carry MLIR call-site dumps; keep the head
_FLEX_MARKERS = ("ERROR_NEEDS_FLEX_OPS", "neither a custom op nor a flex op", "TF Select ops")


def _check_mode(quantize, int8_io, sparse_weights=False):
    if quantize not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unknown quantize={quantize!r}. Valid modes: None (float32), 'dynamic' "
            "(dynamic-range int8 weights), 'float16' (float16 weights), 'int8' (full-integer, "
            "needs representative_dataset)."
        )
    if int8_io and quantize != "int8":
        raise ValueError(
            f"int8_io=True needs quantize='int8' (full-integer), got quantize={quantize!r}: "
            "only a fully quantized model can take and return int8 tensors."
        )
    if sparse_weights and quantize == "dynamic":
        raise ValueError(
            "sparse_weights=True does not work with quantize='dynamic': LiteRT's XNNPACK cannot "
            "prepare the resulting model. Use quantize=None, 'float16' or 'int8'."
        )


def _configure(converter, quantize, calibration, int8_io, as_dict, sparse_weights=False):
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    converter.target_spec.supported_ops = [builtins]
    if sparse_weights:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if quantize is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT] + list(converter.optimizations)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is not None:  # None: a quantisation-aware model brings its own ranges
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: calibration.samples(as_dict=as_dict)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def _keras_converter(model):
    return tf.lite.TFLiteConverter.from_keras_model(model), len(model.inputs) > 1


def _function_converter(model, batch=None):
    """A converter from a concrete function whose signature uses the Keras input/output names."""
    specs = [
        tf.TensorSpec([batch] + t.shape.as_list()[1:], t.dtype, name=name)
        for t, name in zip(model.inputs, model.input_names)
    ]

    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(model.output_names, outputs))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    return converter, len(specs) > 1


# (description, converter factory), tried in order; see the module docstring.
_STRATEGIES = [
    ("concrete function", _function_converter),
    ("from_keras_model", _keras_converter),
    ("concrete function with a fixed batch size of 1", lambda model: _function_converter(model, 1)),
]


def _run(make_converter, model, quantize, calibration, int8_io, sparse_weights=False):
    converter, as_dict = make_converter(model)
    _configure(converter, quantize, calibration, int8_io, as_dict, sparse_weights)
    with warnings.catch_warnings():
        # Emitted for every int8 conversion from a Keras model; it is about TF1 quantized
        # input stats, which full-integer conversion with a representative dataset never needs.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        # The calibrator itself builds a tf.lite.Interpreter for dict (multi-input) samples.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        return converter.convert()


def _short(err):
    text = str(err).strip()
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "\n... (truncated; the full message is in __cause__)"
    return text


def _needs_flex(err):
    return any(marker in str(err) for marker in _FLEX_MARKERS)


def _flex_error(err):
    text = str(err)
    ops = set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    for line in re.findall(r"TF Select ops: ([^\n]+)", text):
        ops.update(op.strip() for op in line.split(",") if op.strip())
    cause = (
        f"the model uses TensorFlow op(s) without a builtin TFLite kernel: {', '.join(sorted(ops))}"
        if ops
        else "the model uses TensorFlow op(s) without a builtin TFLite kernel"
    )
    return RuntimeError(
        f"TFLite conversion failed: {cause}. tflite_export converts with builtin ops only "
        "(supported_ops=[TFLITE_BUILTINS]), so that the .tflite runs on Android LiteRT without "
        "the Flex (TF Select) delegate; the model needs builtin ops: replace those ops (often in "
        "a Lambda or custom layer) with ones that have a builtin kernel "
        "(https://ai.google.dev/edge/litert/models/ops_compatibility).\n"
        f"Converter message:\n{_short(err)}"
    )


def _conversion_error(quantize, errors):
    hint = (
        " Full-integer conversion needs an int8 kernel for every op (TFLITE_BUILTINS_INT8); "
        "try quantize='dynamic' or 'float16' for models with ops that have none."
        if quantize == "int8"
        else ""
    )
    messages = "\n".join(f"Converter message ({d}):\n{_short(e)}" for d, e in errors)
    return RuntimeError(
        "TFLite conversion failed with builtin ops only (needed to run on Android LiteRT "
        f"without the Flex delegate), for quantize={quantize!r}.{hint}\n{messages}"
    )


def convert(
    model,
    quantize=None,
    representative_dataset=None,
    int8_io=False,
    output=None,
    calibration_steps=100,
    sparse_weights=False,
):
    """Converts a tf_keras model to a TFLite flatbuffer that uses builtin ops only.

    Args:
      model: a built tf_keras Sequential or functional model.
      quantize: one of ``QUANTIZATION_MODES``: None (float32), ``'dynamic'`` (int8 weights,
        float activations; weights with fewer than 1024 elements stay float), ``'float16'``
        (float16 weights) or ``'int8'`` (full-integer; needs ``representative_dataset``,
        except for a model from ``quantize_aware``, whose learned ranges are used; a warning
        then names any float tensors left between its inputs and outputs, and passing
        ``representative_dataset`` forces full-integer ops).
      representative_dataset: calibration data for ``'int8'``: a callable returning an
        iterable of input batches, an iterable or generator of batches, a ``tf.data.Dataset``
        of batches, or a numpy array of N samples. A batch is a numpy array (or tensor) for a
        single-input model, and a list of arrays in ``model.inputs`` order or a dict keyed by
        ``model.input_names`` for a multi-input one. Batches may have any batch size; they are
        fed to the calibrator one sample at a time. The first batch is checked before
        converting. A one-shot generator's batches are kept in memory (at most
        ``calibration_steps``) so that the fallback conversion can replay them. Ignored
        (with a warning) by the other modes.
      int8_io: with ``'int8'``, make the input and output tensors int8 (scale and zero point
        in the tensor's quantization parameters); otherwise they stay float32.
      output: optional path; the bytes are also written there atomically (a temporary file in
        the same folder, then ``os.replace``). Missing folders are created.
      calibration_steps: at most this many batches (samples, for a numpy array) are used.
      sparse_weights: store sparse weight tensors compressed (TFLite's sparsity encoding;
        a builtin DENSIFY op expands them when the model loads). For connection-pruned models
        this shrinks the file several times; latency is unchanged. Not with 'dynamic'.

    Returns:
      The TFLite flatbuffer as ``bytes``.

    Raises:
      TypeError: ``model`` is a Keras 3 model or not a Keras model.
      ValueError: unknown ``quantize``; ``int8_io`` without ``'int8'``; ``'int8'`` without
        calibration data; calibration batches that do not fit the model's inputs; a
        subclassed or unbuilt model.
      RuntimeError: the converter failed, e.g. an op has no builtin TFLite kernel (the
        message names the cause and includes the converter's); or the result does not load
        and allocate in LiteRT (checked before anything is written to ``output``).
    """
    check_model(model)
    _check_mode(quantize, int8_io, sparse_weights)
    calibration = None
    if quantize == "int8" and not (representative_dataset is None and is_quantize_aware(model)):
        calibration = Calibration(model, representative_dataset, calibration_steps)
    elif representative_dataset is not None:
        warnings.warn(
            f"representative_dataset is only used by quantize='int8'; ignored for "
            f"quantize={quantize!r}.",
            stacklevel=2,
        )
    errors = []
    for description, make_converter in _STRATEGIES:
        try:
            data = _run(make_converter, model, quantize, calibration, int8_io, sparse_weights)
        except CalibrationDataError:
            raise
        except Exception as err:  # the converter raises ConverterError, ValueError, RuntimeError
            if _needs_flex(err):
                raise _flex_error(err) from err
            errors.append((description, err))
            continue
        if errors:
            warnings.warn(
                f"TFLite conversion succeeded from a {description} after "
                + "; ".join(f"{d} failed: {_short(e)[:300]}" for d, e in errors),
                stacklevel=2,
            )
        break
    else:
        raise _conversion_error(quantize, errors) from errors[-1][1]
    data = _with_keras_io(data, model)
    interpreter = _loaded(data, quantize)
    if quantize == "int8" and calibration is None:
        _warn_float_parts(interpreter)
    if output is not None:
        atomic_write(output, lambda stream: stream.write(data))
    return data


def _with_keras_io(data, model):
    """Records the Keras input/output order in the file (see ``keras_io``); never fatal."""
    try:
        return add_keras_io(data, model.input_names, model.output_names)
    except Exception as err:  # noqa: BLE001 - a model the flatbuffer object API cannot repack
        warnings.warn(f"could not record the Keras output order in the .tflite ({err}); "
                      "predict() returns the outputs in LiteRT's order.", stacklevel=3)
        return data


def _loaded(data, quantize):
    """A written .tflite must load: build and allocate it in LiteRT (XNNPACK included) first.

    Returns:
      The allocated interpreter.

    Raises:
      RuntimeError: LiteRT cannot load or prepare the converted model (nothing is written).
    """
    try:
        return _runtime.load_interpreter(data)
    except Exception as err:  # noqa: BLE001 - LiteRT raises RuntimeError/ValueError
        raise RuntimeError(
            f"the converted model (quantize={quantize!r}) does not load in LiteRT: "
            f"{_short(err)[:600]}. Nothing was written. Try another quantize mode, or report "
            "the model (its layers and this message) as a tfsynapse issue.") from err


def _warn_float_parts(interpreter):
    """A QAT model converted from its learned ranges alone keeps every op without fake
    quantisation in float; say so (a full-integer model has float tensors only at its I/O)."""
    inputs, outputs = _runtime.io_details(interpreter)
    edges = {d["index"] for d in inputs + outputs}
    floating = [d["name"] for d in interpreter.get_tensor_details()
                if d["dtype"] == np.float32 and d["index"] not in edges]
    if floating:
        warnings.warn(
            f"the quantisation-aware model converted to int8 from its learned ranges keeps "
            f"{len(floating)} float32 tensor(s) between its inputs and outputs (e.g. "
            f"{', '.join(floating[:3])}): some ops had no fake quantisation and run in float, "
            "so the .tflite is not full-integer (NNAPI / Edge TPU need full-integer). Pass "
            "representative_dataset to force full-integer conversion (it fails with the "
            "ops that cannot be int8).",
            stacklevel=3)
