"""Where int8 loses accuracy, layer by layer, and which layers to keep float.

``quantization_report(model, data)`` converts the model twice, float32 and int8 (calibrated on
``data``), with every layer renamed to a marker while it is traced (``float_layers.marked``), so
that each TFLite op's output tensor names the layers it computes (a convolution with its fused
batch normalisation and activation names all three). Both files run on the same samples with
every intermediate tensor kept; each marked op output of the int8 model is dequantised and
compared with the same tensor of the float32 model:

* ``snr_db``: ``10 log10(sum f**2 / sum (q - f)**2)``, the signal-to-quantisation-noise
  ratio of the layer's output (error accumulated from the input up to here), and ``error``,
  the same as a relative RMS error ``||q - f|| / ||f||``;
* ``added_error``: what this op adds, ``sqrt(error**2 - error_in**2)`` (0 when it removes
  noise, as an average pool does), ``error_in`` the largest error of the op's inputs. A graph
  input counts as exact, so the first layer is charged with the input's quantisation.

``choose_float_layers`` (``convert(float_layers='auto')``) keeps float the layers that add the
most error, one more at a time, until the int8 outputs are within a relative error of the
float32 ones; every candidate is a real conversion, measured, never estimated.
"""

import dataclasses
import logging
import math
import warnings

import numpy as np

from tfsynapse.backends import backend_of
from tflite_export import _runtime, converter, float_layers as float_layers_
from tflite_export.calibration import Calibration
from tflite_export.keras_io import keras_io

_LOG = logging.getLogger("tflite_export")
_PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE")  # ops the int8 model adds around float tensors


@dataclasses.dataclass
class LayerError:
    """The int8 error of one TFLite op output, and the Keras layers that op computes.

    Attributes:
      layers: the Keras layer names fused into the op (first the op's own layer).
      op: the TFLite op name, e.g. ``CONV_2D``.
      snr_db: signal-to-noise ratio of the output, int8 against float32 (inf: exact).
      error: the relative RMS error of the output, ``10 ** (-snr_db / 20)``.
      added_error: the relative error this op adds to its inputs' (see the module docstring).
    """

    layers: list
    op: str
    snr_db: float
    error: float
    added_error: float


@dataclasses.dataclass
class QuantizationReport:
    """``quantization_report``'s result.

    Attributes:
      layers: one ``LayerError`` per marked op output, in execution order.
      output_error: ``||int8 - float32|| / ||float32||`` over all outputs and samples.
      output_snr_db: the same as an SNR in dB.
      samples: how many samples were compared.
    """

    layers: list
    output_error: float
    output_snr_db: float
    samples: int

    def worst(self, count=5):
        """The ``count`` ops that add the most error, worst first."""
        return sorted(self.layers, key=lambda e: -e.added_error)[:count]

    def __str__(self):
        lines = [f"int8 against float32 over {self.samples} samples: output error "
                 f"{self.output_error:.2%} (SNR {self.output_snr_db:.1f} dB)",
                 f"{'layers':<40} {'op':<18} {'SNR dB':>7} {'error':>7} {'added':>7}"]
        for e in self.layers:
            lines.append(f"{'+'.join(e.layers)[:40]:<40} {e.op:<18} {e.snr_db:>7.1f} "
                         f"{e.error:>7.2%} {e.added_error:>7.2%}")
        return "\n".join(lines)


def _snr(signal, noise):
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _relative(snr_db):
    """Relative RMS error from an SNR in dB."""
    return 10.0 ** (-snr_db / 20.0)


def _markable(model):
    """Leaf layers that compute something (not inputs, not nested models)."""
    return [layer.name for layer in float_layers_._all_layers(model)
            if not hasattr(layer, "layers") and type(layer).__name__ != "InputLayer"]


def _check_tolerance(tolerance):
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            0 < tolerance < 1):
        raise ValueError(f"float_tolerance must be a relative error in (0, 1), e.g. 0.02 for "
                         f"2%, got {tolerance!r}.")


def _calibration(model, data, steps):
    return data if isinstance(data, Calibration) else Calibration(model, data, steps)


def _run_all(data, samples):
    """Runs ``samples`` (lists of arrays, batch 1) through the flatbuffer keeping every tensor.

    Returns:
      ``(ops, tensors, outputs, values)``: the op details, ``{index: tensor detail}``, the
      model's output tensor indices (Keras order), and a generator of ``{tensor index: float
      array}`` per sample (quantised tensors dequantised).
    """
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    with warnings.catch_warnings():  # "intended for debugging": reading every tensor is the point
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    interpreter.keras_io_names = keras_io(data)
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    inputs, outputs = _runtime.io_details(interpreter)
    wanted = {i for op in ops for i in op["outputs"]}

    def values():
        for sample in samples:
            for detail, array in zip(inputs, sample):
                interpreter.set_tensor(detail["index"], _runtime.to_tensor_dtype(array, detail))
            interpreter.invoke()
            yield {i: _runtime.from_tensor_dtype(interpreter.get_tensor(i), tensors[i])
                   for i in wanted if i in tensors}

    return ops, tensors, [d["index"] for d in outputs], values()


def _marked_outputs(ops, tensors):
    """``{tensor name: (op name, marker indices, input tensor names)}`` of marked op outputs,
    in execution order; QUANTIZE/DEQUANTIZE inputs are followed to their source."""
    producer = {i: op for op in ops for i in op["outputs"]}

    def source(index):
        op = producer.get(index)
        while op is not None and op["op_name"] in _PASS_THROUGH:
            index = op["inputs"][0]
            op = producer.get(index)
        return tensors[index]["name"] if index in tensors else None

    found = {}
    for op in ops:
        for index in op["outputs"]:
            name = tensors[index]["name"] if index in tensors else None
            marks = float_layers_.marked_indices(name or "")
            if marks and op["op_name"] not in _PASS_THROUGH:
                found[name] = (op["op_name"], marks,
                               [source(i) for i in op["inputs"] if i in producer])
    return found


def quantization_report(model, representative_dataset, samples=32, calibration_steps=100,
                        isolate=True):
    """Per-layer error of the model's int8 conversion against its float32 conversion.

    Args:
      model: a built tf_keras or Keras 3 model.
      representative_dataset: calibration data, as ``convert``'s; its first ``samples``
        samples are also the ones compared.
      samples: how many samples to compare (int >= 1).
      calibration_steps: as ``convert``'s.
      isolate: as ``convert``'s.

    Returns:
      A ``QuantizationReport`` (printable as a table).

    Raises:
      ValueError: ``samples`` is not a positive int; bad calibration data (as ``convert``).
      RuntimeError: a conversion failed (as ``convert``).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}.")
    calibration = _calibration(model, representative_dataset, calibration_steps)
    names = _markable(model)
    dense = converter.convert_checked(model, None, None, isolate=isolate, marked=names)
    int8 = converter.convert_checked(model, "int8", calibration, isolate=isolate, marked=names)
    return _compare(dense, int8, calibration, names, samples)


def _compare(dense, int8, calibration, names, samples):
    chosen = [s for s, _ in zip(calibration.samples(), range(samples))]
    ops_f, tensors_f, outputs_f, values_f = _run_all(dense, chosen)
    ops_q, tensors_q, outputs_q, values_q = _run_all(int8, chosen)
    marked_q = _marked_outputs(ops_q, tensors_q)
    index_f = {t["name"]: i for i, t in tensors_f.items()}
    index_q = {t["name"]: i for i, t in tensors_q.items()}
    # every op output both files share (marked or not), so that an op's inputs have an SNR
    # even behind ops that are not layers (Keras 3's ops, a reshape)
    compared = [tensors_q[i]["name"] for op in ops_q for i in op["outputs"]
                if i in tensors_q and tensors_q[i]["name"] in index_f
                and tuple(tensors_q[i]["shape"]) == tuple(tensors_f[index_f[tensors_q[i]["name"]]]
                                                          ["shape"])]
    signal = dict.fromkeys(compared, 0.0)
    noise = dict.fromkeys(compared, 0.0)
    out_signal = out_noise = 0.0
    for f, q in zip(values_f, values_q):
        for name in compared:
            a, b = f[index_f[name]], q[index_q[name]]
            signal[name] += float(np.sum(np.square(a, dtype=np.float64)))
            noise[name] += float(np.sum(np.square(b - a, dtype=np.float64)))
        for i, j in zip(outputs_f, outputs_q):
            out_signal += float(np.sum(np.square(f[i], dtype=np.float64)))
            out_noise += float(np.sum(np.square(q[j] - f[i], dtype=np.float64)))
    snr = {name: _snr(signal[name], noise[name]) for name in compared}
    rows = []
    for name, (op, marks, inputs) in marked_q.items():
        if name not in snr:
            continue
        error = _relative(snr[name])
        before = max((_relative(snr[i]) for i in inputs if i in snr), default=0.0)
        added = math.sqrt(max(error ** 2 - before ** 2, 0.0))
        layers = [names[m] for m in sorted(marks)]
        rows.append(LayerError(layers, op, snr[name], error, added))
    unmatched = [float_layers_.unmarked(n, names) for n in marked_q if n not in snr]
    if unmatched:
        warnings.warn(
            f"quantization_report: {len(unmatched)} op output(s) of the int8 file have no "
            f"counterpart of the same name and shape in the float32 file and are left out "
            f"(e.g. {', '.join(unmatched[:3])}).", stacklevel=3)
    error = math.sqrt(out_noise / out_signal) if out_signal > 0 else math.inf
    return QuantizationReport(rows, error, _snr(out_signal, out_noise), len(chosen))


@dataclasses.dataclass
class FloatChoice:
    """``choose_float_layers``'s result.

    Attributes:
      layers: the layer names kept float (empty: int8 everywhere met the tolerance).
      data: the int8 flatbuffer with those layers float.
      error: its outputs' relative error against the Keras model's on the calibration
        samples (``||int8 - keras|| / ||keras||``; the report's ``output_error`` is against
        the float32 file instead, which differs from Keras by operator fusion only).
      tried: ``[(layers, error)]`` for every conversion measured, in order.
      report: the ``QuantizationReport`` of the all-int8 model.
    """

    layers: list
    data: bytes
    error: float
    tried: list
    report: QuantizationReport


def choose_float_layers(model, representative_dataset, tolerance=0.02, max_layers=4,
                        samples=32, calibration_steps=100, int8_io=False,
                        sparse_weights=False, isolate=True):
    """The fewest layers kept float that bring the int8 model within ``tolerance``.

    Candidates are the ops that add the most error (``quantization_report``), worst first (the
    op's own layer: the first it computes; input and output layers are skipped). Each try
    converts with the layers kept so far plus the next candidate, and the candidate is kept
    only when the output error falls; it stops once the error is within ``tolerance``, when
    ``max_layers`` are float, or after ``2 * max_layers`` tries.

    Args:
      model: a built tf_keras or Keras 3 model.
      representative_dataset: calibration data (as ``convert``), also the data the error is
        measured on.
      tolerance: the relative output error allowed, in (0, 1).
      max_layers: at most this many layers kept float (int >= 1).
      samples, calibration_steps, isolate: as ``quantization_report``.
      int8_io, sparse_weights: as ``convert``.

    Returns:
      A ``FloatChoice``. When no choice reaches the tolerance, the one with the lowest error,
      with a warning that gives the numbers.

    Raises:
      ValueError: a bad ``tolerance`` or ``max_layers``; as ``quantization_report``.
    """
    _check_tolerance(tolerance)
    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise ValueError(f"max_layers must be an int >= 1, got {max_layers!r}.")
    calibration = _calibration(model, representative_dataset, calibration_steps)
    report = quantization_report(model, calibration, samples=samples, isolate=isolate)

    def convert(layers):
        data = converter.convert_checked(model, "int8", calibration, int8_io=int8_io,
                                         sparse_weights=sparse_weights, isolate=isolate,
                                         kept_float=layers)
        return data, _output_error(model, data, calibration, samples)

    data, error = convert([])
    tried = [([], error)]
    best = ([], data, error)
    edges = {layer.name for layer in float_layers_._end_layers(model)}
    candidates = list(dict.fromkeys(e.layers[0] for e in report.worst(len(report.layers))
                                    if e.added_error > 0 and e.layers[0] not in edges))
    for name in candidates[:2 * max_layers]:  # each try is one conversion
        if best[2] <= tolerance or len(best[0]) >= max_layers:
            break
        trial = best[0] + [name]
        try:
            data, error = convert(trial)
        except float_layers_.FloatLayersError as err:  # this layer cannot be kept float
            _LOG.info("float_layers='auto': %s cannot be kept float (%s)", name, err)
            tried.append((trial, math.inf))
            continue
        tried.append((trial, error))
        _LOG.info("float_layers='auto': %s float -> output error %.2f%%", trial, error * 100)
        if error < best[2]:  # keep a layer float only when that helps
            best = (trial, data, error)
    layers, data, error = best
    if error > tolerance:
        warnings.warn(
            f"float_layers='auto' could not bring the int8 model within {tolerance:.2%} of "
            f"float32: int8 everywhere {tried[0][1]:.2%}, the best of {len(tried)} tries "
            f"{error:.2%} with {layers or 'no layer'} float (at most {max_layers} layers). "
            "Raise float_tolerance or max_layers, try quantize_aware(), or keep the model "
            "float16.", stacklevel=2)
    else:
        _LOG.info("float_layers='auto': %s kept float, output error %.2f%% (int8 everywhere "
                  "%.2f%%)", layers or "no layer", error * 100, tried[0][1] * 100)
    return FloatChoice(layers, data, error, tried, report)


def _output_error(model, data, calibration, samples):
    """``||int8 - float32|| / ||float32||`` of the outputs, float32 from Keras itself."""
    chosen = [s for s, _ in zip(calibration.samples(), range(samples))]
    batch = [np.concatenate(parts, axis=0) for parts in zip(*chosen)]
    feed = batch if len(batch) > 1 else batch[0]
    backend = backend_of(model)
    lite = _runtime.run_batch(_runtime.load_interpreter(data), feed,
                              backend.input_names(model), backend.output_names(model))
    reference = backend.flat_outputs(model.predict(feed, verbose=0))
    signal = sum(float(np.sum(np.square(np.asarray(r, np.float64)))) for r in reference)
    noise = sum(float(np.sum(np.square(np.asarray(r, np.float64) - q)))
                for r, q in zip(reference, lite))
    return math.sqrt(noise / signal) if signal > 0 else math.inf
