"""Selective quantisation: chosen Keras layers stay float32 inside an int8 model.

TensorFlow's converter quantises a calibrated float model in one call (``mlir_quantize``),
which can leave named nodes in float (``denylisted_nodes``, the mechanism behind
``tf.lite.experimental.QuantizationDebugger``). The converter does not expose that argument;
``keep_float`` wraps the call during one conversion and passes the nodes that compute the
chosen layers. A TFLite op computes a layer when one of its output tensor's names (the
converter joins fused names with ``;``) has the layer's name as a path segment, e.g.
``model/Conv1_relu/Relu6;model/Conv1/Conv2D`` computes ``Conv1`` and ``Conv1_relu``: the
batch normalisation and activation fused into a convolution go with it.

Why: on the x86 host of the benchmarks, int8 runs a model's first convolution (3 input
channels) 2-4x slower than float32 (``benchmarks`` section ``int8_layers``); kept float, the
whole int8 ResNet50 is 8% faster. Whether that holds on a phone's ARM cores must be measured
there.
"""

import contextlib
import re

from tflite_export import _runtime


class FloatLayersError(ValueError):
    """A layer of ``float_layers`` has no TFLite op of its own, or was quantised anyway."""


def requested(model, float_layers, quantize, calibrated):
    """Checks ``convert``'s ``float_layers`` argument; returns the names as a list.

    Args:
      model: the Keras model being converted.
      float_layers: None, a layer name, or an iterable of layer names.
      quantize: ``convert``'s quantisation mode.
      calibrated: whether the conversion calibrates on representative data.

    Raises:
      TypeError: a name is not a string.
      ValueError: names without ``quantize='int8'`` or without calibration data (a
        quantisation-aware model converted from its own ranges), or names of no layer.
    """
    if float_layers is None:
        return []
    names = [float_layers] if isinstance(float_layers, str) else list(float_layers)
    if not names:
        return []
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"float_layers takes layer names (strings), got {bad[:3]!r}")
    if quantize != "int8":
        raise ValueError(f"float_layers keeps layers float inside an int8 model; it needs "
                         f"quantize='int8', got quantize={quantize!r}.")
    if not calibrated:
        raise ValueError("float_layers needs representative_dataset: the layers are left out "
                         "of the quantisation step that follows calibration.")
    known = layer_names(model)
    unknown = [n for n in names if n not in set(known)]
    if unknown:
        raise ValueError(f"float_layers: the model has no layer {', '.join(map(repr, unknown))}"
                         f" (its first layers: {', '.join(known[:6])}, ...).")
    return list(dict.fromkeys(names))


def layer_names(model):
    """Every layer name of ``model``, nested models' layers included."""
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if hasattr(layer, "layers"):  # a nested model
            names += layer_names(layer)
    return names


def matches(tensor_name, layer_names, all_names=()):
    """The layer names of ``layer_names`` that ``tensor_name`` (a TFLite op output) computes.

    A path segment names a layer exactly (tf_keras: ``model/Conv1/Conv2D``) or with the
    numeric suffix Keras 3 adds to its name scopes (``functional_1/stem_1/convolution``), unless
    that suffixed name is itself one of ``all_names``, the model's layer names.
    """
    segments = {segment for part in tensor_name.split(";") for segment in part.split("/")}
    taken = set(all_names)
    found = set()
    for name in layer_names:
        suffixed = re.compile(re.escape(name) + r"_\d+")
        if name in segments or any(suffixed.fullmatch(s) and s not in taken for s in segments):
            found.add(name)
    return found


def op_outputs(data):
    """``[(op name, output tensor name, output dtype)]`` of a TFLite flatbuffer, in order."""
    interpreter = _runtime.load_interpreter(data)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    rows = []
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            if index in tensors:
                rows.append((op["op_name"], tensors[index]["name"], tensors[index]["dtype"]))
    return rows


@contextlib.contextmanager
def keep_float(layer_names, all_names=()):
    """While active, the converter's int8 quantisation leaves ``layer_names``' ops in float.

    Args:
      layer_names: the layers to keep float.
      all_names: every layer name of the model (see ``matches``).

    Yields:
      A dict filled during the conversion: ``{layer name: [TFLite node names kept float]}``.

    Raises:
      RuntimeError: this TensorFlow's converter has no ``_mlir_quantize`` to wrap.
    """
    found = {name: [] for name in layer_names}
    if not layer_names:
        yield found
        return
    try:
        from tensorflow.lite.python import lite  # noqa: PLC0415

        original = lite._mlir_quantize
    except (ImportError, AttributeError) as err:
        raise RuntimeError(
            "float_layers needs TensorFlow's converter internals (tensorflow.lite.python.lite."
            f"_mlir_quantize, present in TensorFlow 2.21); this TensorFlow has none: {err}"
        ) from err

    def quantize(calibrated, *args, **kwargs):
        nodes = []
        for _, tensor, _ in op_outputs(calibrated):
            for name in matches(tensor, layer_names, all_names):
                found[name].append(tensor)
                nodes.append(tensor)
        kwargs["denylisted_nodes"] = sorted(set(nodes) | set(kwargs.get("denylisted_nodes") or ()))
        return original(calibrated, *args, **kwargs)

    lite._mlir_quantize = quantize
    try:
        yield found
    finally:
        lite._mlir_quantize = original


def check_kept_float(data, found):
    """Every chosen layer matched an op and that op computes in float32 in ``data``.

    Raises:
      FloatLayersError: a layer matched no TFLite op (e.g. it was folded into another op, or it
        computes nothing, such as an ``InputLayer``), or an op of a chosen layer was
        quantised all the same.
    """
    import numpy as np  # noqa: PLC0415

    missing = sorted(name for name, nodes in found.items() if not nodes)
    if missing:
        raise FloatLayersError(
            f"float_layers: no TFLite op carries the name of {', '.join(map(repr, missing))}: "
            "a layer folded into another op (e.g. a batch normalisation into its convolution) "
            "is kept float by naming that op's layer instead; a layer whose output is a model "
            "output has its tensor named after the signature and cannot be chosen.")
    nodes = {node for tensors in found.values() for node in tensors}
    quantised = sorted(tensor for _, tensor, dtype in op_outputs(data)
                       if tensor in nodes and dtype != np.float32)
    if quantised:
        raise FloatLayersError(
            f"float_layers: the converter quantised {', '.join(quantised[:3])} despite the "
            "request to keep it float.")
