"""Quantisation by litert-quantizer, Google's maintained quantiser of converted models.

``convert(..., quantizer="litert")`` (the optional extra ``pip install 'tfsynapse[quantizer]'``)
converts the model to float32 with TensorFlow's converter (the layers of ``float_layers``
renamed to markers while traced, as in ``float_layers``), then quantises the flatbuffer with
``litert_quantizer``: no private TensorFlow hook, and modes TensorFlow's converter lacks.

| ``quantize`` | ``weights`` | ``activations`` | litert-quantizer recipe |
|---|---|---|---|
| ``'int8'`` | ``'int8'`` | ``'int8'`` | static a8w8 (calibrated) |
| ``'int8'`` | ``'int8'`` | ``'int16'`` | static a16w8 (calibrated) |
| ``'dynamic'`` | ``'int8'`` / ``'int4'`` | - | dynamic range (integer compute) |
| ``'weight_only'`` | ``'int8'`` / ``'int4'`` | - | weights stored in int, float compute |

**(choices)** Input and output stay float (QUANTIZE / DEQUANTIZE at the ends) unless
``int8_io=True``, as on TensorFlow's route (litert-quantizer's default is integer I/O).
Calibration keeps each tensor's absolute min and max over the samples (litert-quantizer's
``min_max_update``), as TensorFlow's calibrator does: ``Quantizer.calibrate`` merges samples by
a moving average that narrows the ranges and clips (measured: max error 0.041 -> 0.017 of the output
range on a small CNN). Ops litert-quantizer leaves float without a word (LEAKY_RELU; a
depthwise convolution with int4 weights) are named in a warning; ``float_layers`` are checked
to be float.
"""

import contextlib
import io
import warnings

import numpy as np

from tflite_export import _runtime, float_layers as float_layers_

MODES = ("int8", "dynamic", "weight_only")
_HOW_TO_INSTALL = "pip install 'tfsynapse[quantizer]' (litert-quantizer 0.11)"
_EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")


def available():
    """Whether ``litert_quantizer`` can be imported."""
    try:
        import litert_quantizer  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def check(quantize, weights, activations, int8_io, sparse_weights):
    """Checks the litert route's arguments.

    Raises:
      ImportError: litert-quantizer is not installed.
      ValueError: a mode, width or combination the route does not offer.
    """
    if quantize not in MODES:
        raise ValueError(f"quantizer='litert' quantises with quantize in {MODES}, got "
                         f"quantize={quantize!r} (float32 and float16 need no quantizer: use "
                         "the default quantizer).")
    if weights not in ("int8", "int4"):
        raise ValueError(f"weights must be 'int8' or 'int4', got {weights!r}.")
    if activations not in ("int8", "int16"):
        raise ValueError(f"activations must be 'int8' or 'int16', got {activations!r}.")
    if quantize == "int8" and weights != "int8":
        raise ValueError("quantize='int8' (static) has int8 weights; int4 weights are for "
                         "quantize='dynamic' or 'weight_only'.")
    if quantize != "int8" and activations != "int8":
        raise ValueError(f"activations={activations!r} needs quantize='int8' (static): "
                         f"quantize={quantize!r} keeps activations float.")
    if int8_io and quantize != "int8":
        raise ValueError(f"int8_io=True needs quantize='int8' (static); quantize={quantize!r} "
                         "keeps float inputs and outputs.")
    if int8_io and activations == "int16":
        raise ValueError("int8_io=True with activations='int16': the I/O of an a16w8 model "
                         "would be int16; keep int8_io=False (float I/O).")
    if sparse_weights:
        raise ValueError("sparse_weights=True is not offered with quantizer='litert'.")
    if not available():
        raise ImportError(f"quantizer='litert' needs litert-quantizer: {_HOW_TO_INSTALL}.")


def _recipe(quantize, weights, activations):
    from litert_quantizer import recipe  # noqa: PLC0415

    return {("int8", "int8", "int8"): recipe.static_wi8_ai8,
            ("int8", "int8", "int16"): recipe.static_wi8_ai16,
            ("dynamic", "int8", "int8"): recipe.dynamic_wi8_afp32,
            ("dynamic", "int4", "int8"): recipe.dynamic_wi4_afp32,
            ("weight_only", "int8", "int8"): recipe.weight_only_wi8_afp32,
            ("weight_only", "int4", "int8"): recipe.weight_only_wi4_afp32,
            }[(quantize, weights, activations)]()


@contextlib.contextmanager
def _quiet():
    """No progress bar (stderr), size report (stdout) or preserve-all-tensors warning."""
    from litert_quantizer.utils import progress_utils  # noqa: PLC0415

    original = progress_utils.ProgressBar.__init__

    def silent(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "enable": False})

    progress_utils.ProgressBar.__init__ = silent
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            yield
    finally:
        progress_utils.ProgressBar.__init__ = original


def _signature_samples(float_data, calibration):
    """``(signature key, [{signature input name: float32 sample}])`` from ``calibration``."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    signatures = Interpreter(model_content=float_data).get_signature_list()
    key = next(iter(signatures))
    names = list(signatures[key]["inputs"])
    keras_names = list(calibration._names)
    if set(names) == set(keras_names):
        by_keras = {n: n for n in names}
    elif len(names) == len(keras_names) == 1:
        by_keras = {keras_names[0]: names[0]}
    else:
        raise ValueError(f"the float32 model's signature inputs {names} do not match the Keras "
                         f"inputs {keras_names}, so calibration samples cannot be matched to "
                         "them; give the model's inputs distinct names, or use "
                         "quantizer='tensorflow'.")
    samples = [{by_keras[k]: np.asarray(v, np.float32) for k, v in sample.items()}
               for sample in calibration.samples(as_dict=True)]
    return key, samples


def _calibrate(qt, float_data, key, samples):
    """Absolute min/max per tensor over the samples (see the module docstring): one
    calibrator, litert-quantizer's ``min_max_update`` as its merge."""
    from litert_quantizer import calibrator  # noqa: PLC0415
    from litert_quantizer.utils import qsv_utils  # noqa: PLC0415

    calib = calibrator.Calibrator(float_data, num_threads=1,
                                  qsv_update_func=qsv_utils.min_max_update)
    # the Quantizer's recipe (with our no_quantize entries) decides which tensors need ranges
    calib.calibrate({key: samples}, qt._recipe_manager)  # noqa: SLF001 - no public accessor
    return calib.get_model_qsvs()


def quantize(float_data, quantize, weights, activations, calibration, kept_float, int8_io):
    """Quantises a float32 flatbuffer with litert-quantizer.

    Args:
      float_data: the float32 flatbuffer, its ``kept_float`` layers' ops named by markers.
      quantize, weights, activations, int8_io: checked by ``check``.
      calibration: a ``Calibration`` for ``quantize='int8'``, else None.
      kept_float: layer names kept float (``float_layers.marked`` numbering).

    Returns:
      The quantised flatbuffer bytes, markers replaced by the layers' names.

    Raises:
      ValueError: ``quantize='int8'`` without calibration data.
      float_layers.FloatLayersError: a kept layer has no op, or came out quantised.
    """
    from litert_quantizer import Quantizer  # noqa: PLC0415

    if quantize == "int8" and calibration is None:
        raise ValueError("quantize='int8' with quantizer='litert' needs representative_dataset.")
    qt = Quantizer(bytes(float_data), _recipe(quantize, weights, activations))
    if quantize == "int8" and not int8_io:
        for edge in ("INPUT", "OUTPUT"):
            qt.update_quantization_recipe(regex=".*", operation_name=edge,
                                          algorithm_key="no_quantize")
    found = {name: [] for name in kept_float}
    for index, name in enumerate(kept_float):
        qt.update_quantization_recipe(regex=_marker_regex(index), operation_name="*",
                                      algorithm_key="no_quantize")
    for _, tensor, dtype in float_layers_.op_outputs(float_data):
        for index in float_layers_.marked_indices(tensor):
            if np.dtype(dtype) == np.float32:
                found[kept_float[index]].append(tensor)
    with _quiet():
        qsv = _calibrate(qt, bytes(float_data), *_signature_samples(float_data, calibration)) if (
            quantize == "int8") else None
        result = qt.quantize(qsv, enable_progress_report=False)
    data = bytes(result.quantized_model)
    if kept_float:
        float_layers_.check_kept_float(data, found, kept_float)
        data = float_layers_.restore_names(data, kept_float)
    if quantize == "int8":
        _warn_float_ops(data, {float_layers_.unmarked(t, kept_float)
                               for tensors in found.values() for t in tensors})
    else:
        _warn_float_weights(data, weights)
    return data


_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
             "BATCH_MATMUL", "EMBEDDING_LOOKUP")


def _warn_float_weights(data, weights):
    """Names the weighted ops whose weights litert-quantizer left float32."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    interpreter = Interpreter(
        model_content=data,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    produced = {i for op in ops for i in op["outputs"]}
    left = sorted({op["op_name"] for op in ops if op["op_name"] in _WEIGHTED
                   and len(op["inputs"]) > 1 and op["inputs"][1] in tensors
                   and op["inputs"][1] not in produced
                   and np.dtype(tensors[op["inputs"][1]]["dtype"]) == np.float32})
    if left:
        warnings.warn(
            f"litert-quantizer left the weights of {', '.join(left)} in float32 with "
            f"weights={weights!r} (no {weights} kernel for them, e.g. int4 depthwise "
            "convolutions): those ops are not smaller.", stacklevel=5)


def _marker_regex(index):
    return rf"(^|[/;])tfsynapse_float{index}x(_\d+)*(?=$|[/;])"


def _warn_float_ops(data, kept):
    """Names the ops a static model computes in float that nobody asked for (``kept``: the
    tensor names of the ops kept float on request)."""
    interpreter = _runtime.load_interpreter(data)
    edges = {d["name"] for d in interpreter.get_output_details()}
    floating = sorted({op for op, tensor, dtype in float_layers_.op_outputs(data)
                       if np.dtype(dtype) == np.float32 and op not in _EDGE_OPS
                       and tensor not in kept and tensor not in edges})
    if floating:
        warnings.warn(
            f"litert-quantizer left {', '.join(floating)} in float32 (it has no integer "
            "kernel for them), between a DEQUANTIZE and a QUANTIZE: the model is not "
            "full-integer (NNAPI / Edge TPU need full-integer). Replace those layers (e.g. "
            "LeakyReLU by ReLU) or use quantizer='tensorflow'.", stacklevel=5)
