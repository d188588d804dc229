"""Export tf_keras models to TFLite (builtin ops only) and check them in LiteRT.

``convert(model, quantize=...)`` supports these modes (``QUANTIZATION_MODES``):

* ``None``: float32 weights and activations.
  Matches Keras to ~1e-6 (operator fusion only); the baseline for size and speed.
* ``'dynamic'``: dynamic-range quantization, int8 weights (tensors of >= 1024 elements).
  Activations stay float and are quantized on the fly; ~4x smaller weights, no data needed.
* ``'float16'``: float16 weights, dequantized to float32 when the model loads on CPU.
  Half the size with a negligible error; GPU delegates can run it in float16.
* ``'int8'``: full-integer quantization of weights and activations.
  Needs ``representative_dataset`` for calibration; ``int8_io=True`` also makes I/O int8.
  ``quantize_aware(model)`` first gives quantisation-aware training (QAT) whose learned
  ranges replace the calibration.

``quantization_report`` gives the int8 error layer by layer, and ``convert(...,
float_layers='auto')`` keeps float the fewest layers that bring int8 within a tolerance.

``verify`` compares a converted model with its Keras model, ``predict`` runs one, ``benchmark`` times it in
``ai_edge_litert``'s interpreter, and ``inspect`` lists its ops and I/O tensors.
"""

from tflite_export.benchmarking import benchmark
from tflite_export.converter import QUANTIZATION_MODES, convert
from tflite_export.inspect_model import inspect
from tflite_export.qat import is_quantize_aware, quantize_aware
from tflite_export.layer_errors import (
    QuantizationReport, choose_float_layers, quantization_report)
from tflite_export.verification import predict, verify

__all__ = ["convert", "verify", "predict", "benchmark", "inspect", "quantize_aware",
           "is_quantize_aware", "QUANTIZATION_MODES", "quantization_report", "QuantizationReport",
           "choose_float_layers"]
