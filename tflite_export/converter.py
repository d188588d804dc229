"""Keras model (tf_keras or Keras 3) -> TFLite flatbuffer, builtin ops only, for Android LiteRT.

The model is written as a SavedModel, tried in order: a concrete function of the model with a
dynamic batch dimension (inputs and outputs named after the Keras ones); the Keras model's own
serving signature (what ``from_keras_model`` converts); and a concrete function with a fixed
batch size of 1. A warning says when a fallback was needed. Each SavedModel is converted by
``conversion_job`` in a worker process (``isolation``), so that a crash in TensorFlow's native
converter cannot take this process with it. Unsupported (non-builtin) ops fail at once with a
clear error.
"""

import os
import re
import shutil
import tempfile
import warnings

from tfsynapse.fileio import atomic_write
from tfsynapse.backends import backend_of, tf
from tflite_export import (
    _runtime, conversion_job, float_layers as float_layers_, isolation, litert_route,
    result_checks)
from tflite_export.calibration import Calibration
from tflite_export.keras_io import add_keras_io, keras_io
from tflite_export.qat import is_quantize_aware

QUANTIZATION_MODES = (None, "dynamic", "float16", "int8")

_MAX_MESSAGE = 3000  # converter messages carry MLIR call-site dumps; keep the head
_FLEX_MARKERS = ("ERROR_NEEDS_FLEX_OPS", "neither a custom op nor a flex op", "TF Select ops")


def _check_mode(quantize, int8_io, sparse_weights=False):
    if quantize == "weight_only":
        raise ValueError("quantize='weight_only' (weights stored in int8/int4, float compute) "
                         "is litert-quantizer's: pass quantizer='litert' (pip install "
                         "'tfsynapse[quantizer]').")
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


def _check_isolate(isolate):
    if not isinstance(isolate, bool):
        raise TypeError(f"isolate must be True or False, got {isolate!r}")
    return isolate


def _save_keras_signature(model, path):
    """The Keras model's own serving signature, as ``from_keras_model`` converts it (Keras 3:
    its ``export`` to a TensorFlow SavedModel)."""
    backend_of(model).export_saved_model(model, path)


def _save_function(model, path, batch=None):
    """A concrete function whose signature uses the Keras input/output names."""
    backend = backend_of(model)
    specs = [
        tf.TensorSpec([batch] + list(t.shape)[1:], t.dtype, name=name)
        for t, name in zip(model.inputs, backend.input_names(model))
    ]

    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        return dict(zip(backend.output_names(model), backend.flat_outputs(outputs)))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    holder = tf.Module()
    holder.model_variables = backend.tf_variables(model)
    tf.saved_model.save(holder, path, signatures=function)


# (description, SavedModel writer), tried in order; see the module docstring.
_STRATEGIES = [
    ("concrete function", _save_function),
    ("from_keras_model (the Keras SavedModel signature)", _save_keras_signature),
    ("concrete function with a fixed batch size of 1",
     lambda model, path: _save_function(model, path, 1)),
]


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
    crashed = [d for d, e in errors if isinstance(e, isolation.ConverterCrash)]
    if crashed:
        hint += (
            f" TensorFlow's converter crashed on the {' and '.join(crashed)} attempt (a "
            "TensorFlow bug; it ran in a worker process, so this one is unaffected): another "
            "quantize mode often avoids the crashing code path.")
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
    isolate=True,
    float_layers=None,
    float_tolerance=0.02,
    quantizer="tensorflow",
    weights="int8",
    activations="int8",
):
    """Converts a Keras model to a TFLite flatbuffer that uses builtin ops only.

    Args:
      model: a built Sequential or functional model, tf_keras or Keras 3 (TensorFlow backend).
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
      isolate: run the converter, the calibration and the LiteRT load check in a worker
        process, so that a crash in TensorFlow's native converter (seen on an int8 GRU)
        becomes a ``RuntimeError`` instead of killing this process. The worker starts on the
        first conversion (TensorFlow's import, several seconds) and is reused. False converts
        in this process. With ``quantizer='litert'`` only the float32 conversion runs in the
        worker; litert-quantizer's quantisation, calibration and the load check run here.
      float_layers: with ``'int8'`` and ``representative_dataset``, names of layers whose ops
        stay float32 (with the batch normalisation and activation fused into them), between a
        DEQUANTIZE and a QUANTIZE: selective quantisation, e.g. the layers at the first
        resolution, which int8 runs several times slower than float on x86 without VNNI
        (benchmarks, int8_layers). Not input or output layers. Measure on the target device
        (``tflite_export.benchmark``). ``'auto'``: the fewest layers, chosen by their
        quantisation error (``quantization_report``), that bring the int8 model's outputs
        within ``float_tolerance`` of the float32 model's on the calibration data; the choice
        and the errors are logged, and a warning says when no choice reaches the tolerance.
      float_tolerance: with ``float_layers='auto'``, the relative output error allowed,
        ``||int8 - keras|| / ||keras||`` over the first 32 calibration samples (0.02: 2%),
        the int8 file's outputs against the Keras model's.
      quantizer: ``'tensorflow'`` (TensorFlow's converter quantises) or ``'litert'``
        (litert-quantizer quantises the float32 conversion: the extra
        ``tfsynapse[quantizer]``; see ``litert_route``). With ``'litert'``, ``quantize`` is
        ``'int8'`` (static, calibrated), ``'dynamic'`` or ``'weight_only'``; ``float_layers``
        works with ``'int8'`` without TensorFlow's private hook. When that hook is missing,
        ``float_layers`` on the default quantizer moves to ``'litert'`` with a warning, or
        fails naming the extra.
      weights: with ``quantizer='litert'``: ``'int8'`` or ``'int4'`` weights (int4 with
        ``'dynamic'`` or ``'weight_only'``).
      activations: with ``quantizer='litert'`` and ``quantize='int8'``: ``'int8'`` or
        ``'int16'`` (a16w8; XNNPACK does not run int16 activations on CPU).

    Returns:
      The TFLite flatbuffer as ``bytes``.

    Raises:
      TypeError: ``model`` is not a Keras model.
      ValueError: unknown ``quantize``; ``int8_io`` without ``'int8'``; ``'int8'`` without
        calibration data; calibration batches that do not fit the model's inputs; a
        subclassed or unbuilt model; ``float_layers`` without ``'int8'`` and calibration
        data, naming no layer of the model, or a layer that has no TFLite op of its own.
      RuntimeError: the converter failed or crashed, e.g. an op has no builtin TFLite kernel
        (the message names the cause and includes the converter's); or the result does not
        load and allocate in LiteRT (checked before anything is written to ``output``).
    """
    backend = backend_of(model)
    backend.check_model(model)
    _check_quantizer(quantizer, weights, activations)
    if quantizer == "litert":
        litert_route.check(quantize, weights, activations, int8_io, sparse_weights)
    else:
        _check_mode(quantize, int8_io, sparse_weights)
    isolate = _check_isolate(isolate)
    calibration = None
    if quantize == "int8" and not (representative_dataset is None and is_quantize_aware(model)):
        calibration = Calibration(model, representative_dataset, calibration_steps)
    elif representative_dataset is not None:
        warnings.warn(
            f"representative_dataset is only used by quantize='int8'; ignored for "
            f"quantize={quantize!r}.",
            stacklevel=2,
        )
    if calibration_steps != 100 and calibration is None:
        warnings.warn(f"calibration_steps={calibration_steps!r} is only used by an int8 "
                      "conversion with representative_dataset; ignored.", stacklevel=2)
    if float_tolerance != 0.02 and not (isinstance(float_layers, str) and float_layers == "auto"):
        warnings.warn(f"float_tolerance={float_tolerance!r} is only used by float_layers='auto'; "
                      "ignored.", stacklevel=2)
    if isinstance(float_layers, str) and float_layers == "auto":
        if quantizer != "tensorflow":
            raise ValueError("float_layers='auto' chooses with TensorFlow's quantizer; use "
                             "quantizer='tensorflow' (or name the layers for 'litert').")
        return _convert_auto(model, calibration, int8_io, output, sparse_weights, isolate,
                             float_tolerance)
    kept_float = float_layers_.requested(model, float_layers, quantize, calibration is not None)
    if quantizer == "litert":
        data = _convert_litert(model, quantize, weights, activations, calibration, int8_io,
                               isolate, kept_float)
    else:
        try:
            data = convert_checked(model, quantize, calibration, int8_io=int8_io,
                                   sparse_weights=sparse_weights, isolate=isolate,
                                   kept_float=kept_float)
        except float_layers_.MissingHookError as err:
            if sparse_weights:
                raise float_layers_.FloatLayersError(
                    f"{err} quantizer='litert', which keeps layers float without it, does not "
                    "offer sparse_weights=True: drop one of the two.") from err
            if not litert_route.available():
                raise float_layers_.FloatLayersError(
                    f"{err} Install litert-quantizer to keep layers float without it: "
                    "pip install 'tfsynapse[quantizer]'.") from err
            warnings.warn(f"{err} float_layers moves to quantizer='litert' "
                          "(litert-quantizer) for this conversion.", stacklevel=2)
            data = _convert_litert(model, quantize, "int8", "int8", calibration, int8_io,
                                   isolate, kept_float)
    if output is not None:
        atomic_write(output, lambda stream: stream.write(data))
    return data


def _check_quantizer(quantizer, weights, activations):
    if quantizer not in ("tensorflow", "litert"):
        raise ValueError(f"quantizer must be 'tensorflow' or 'litert', got {quantizer!r}.")
    if quantizer == "tensorflow" and (weights, activations) != ("int8", "int8"):
        raise ValueError(f"weights={weights!r} / activations={activations!r} need "
                         "quantizer='litert' (TensorFlow's converter has int8 only).")


def _convert_litert(model, quantize, weights, activations, calibration, int8_io, isolate,
                    kept_float):
    """The float32 conversion, quantised by litert-quantizer (``litert_route``)."""
    backend = backend_of(model)
    float_data = convert_checked(model, None, None, isolate=isolate, marked=kept_float)
    data = litert_route.quantize(float_data, quantize, weights, activations, calibration,
                                 kept_float, int8_io)
    if keras_io(data) == (None, None):
        data = add_keras_io(data, backend.input_names(model), backend.output_names(model))
    conversion_job.check_loads(data, quantize)
    _check_outputs(data, backend.output_names(model))
    return data


def convert_checked(model, quantize, calibration, int8_io=False, sparse_weights=False,
                    isolate=True, kept_float=(), marked=None):
    """``convert`` after its argument checks (for this package's modules).

    Args:
      model: a checked Keras model.
      quantize, int8_io, sparse_weights, isolate: as ``convert`` (checked).
      calibration: a ``Calibration`` or None.
      kept_float: layer names kept float (checked by ``float_layers.requested``).
      marked: layer names whose ops keep their marker names in the result (``float_layers``
        numbering), for matching the ops of two conversions; only without ``kept_float``.

    Returns:
      The flatbuffer bytes.
    """
    if marked and kept_float:
        raise ValueError("marked and kept_float are exclusive")
    backend = backend_of(model)
    with tempfile.TemporaryDirectory(prefix="tfsynapse-convert-") as directory:
        conversion_job.write_job(
            directory, quantize=quantize, int8_io=int8_io, sparse_weights=sparse_weights,
            input_names=backend.input_names(model), output_names=backend.output_names(model),
            calibration=calibration, float_layers=kept_float, marked=marked or ())
        data = _first_strategy_that_converts(model, quantize, directory, isolate,
                                             marked or kept_float)
    _check_outputs(data, backend.output_names(model))
    if quantize == "int8" and calibration is None:
        result_checks.warn_float_parts(conversion_job.check_loads(data, quantize))
    if quantize == "dynamic":
        result_checks.warn_if_nothing_quantised(data)
    if sparse_weights:
        result_checks.warn_if_nothing_sparse(data, model)
    return data


def _convert_auto(model, calibration, int8_io, output, sparse_weights, isolate, tolerance):
    """``float_layers='auto'``: the fewest layers kept float that bring the int8 model within
    ``tolerance`` of the float32 one (``quantization_report.choose_float_layers``)."""
    from tflite_export import layer_errors  # noqa: PLC0415 - it imports this module

    if calibration is None:
        raise ValueError("float_layers='auto' needs quantize='int8' and representative_dataset: "
                         "the layers are chosen by their error on that data.")
    choice = layer_errors.choose_float_layers(
        model, calibration, tolerance=tolerance, int8_io=int8_io,
        sparse_weights=sparse_weights, isolate=isolate)
    if output is not None:
        atomic_write(output, lambda stream: stream.write(choice.data))
    return choice.data


def _check_outputs(data, names):
    """Every output of the Keras model is one of the file's (none lost by the signature).

    Raises:
      RuntimeError: the converted model has another number of outputs.
    """
    found = _runtime.load_interpreter(data).get_output_details()
    if len(found) != len(names):
        raise RuntimeError(
            f"the converted model has {len(found)} output(s), the Keras model {len(names)} "
            f"({', '.join(names)}): outputs were lost on the way to TFLite. Give the model's "
            "outputs distinct names (a layer with several outputs), or report the model.")


def _first_strategy_that_converts(model, quantize, directory, isolate, kept_float=()):
    errors = []
    saved_model = os.path.join(directory, conversion_job.SAVED_MODEL)
    for description, save in _STRATEGIES:
        try:
            shutil.rmtree(saved_model, ignore_errors=True)
            with float_layers_.marked(model, kept_float):  # traced with the layers' markers
                save(model, saved_model)
            if isolate:
                isolation.run_isolated("tflite_export.conversion_job:run", directory)
            else:
                conversion_job.run(directory)
            data = conversion_job.read_result(directory)
        except (conversion_job.NotLoadableError, float_layers_.FloatLayersError):
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
                stacklevel=3,
            )
        return data
    raise _conversion_error(quantize, errors) from errors[-1][1]
