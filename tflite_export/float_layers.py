"""Selective quantisation: chosen Keras layers stay float32 inside an int8 model.

TensorFlow's converter quantises a calibrated float model in one call (``mlir_quantize``),
which can leave named nodes in float (``denylisted_nodes``, the mechanism behind
``tf.lite.experimental.QuantizationDebugger``). The converter does not expose that argument;
``keep_float`` wraps the call during one conversion and passes the nodes that compute the
chosen layers.

Which TFLite ops compute a layer is read from the ops' output tensor names, which carry the
TensorFlow name scope of the layer call. Layer names are ambiguous there (Keras 3 opens each
layer's scope twice, so layer ``conv2d`` computes under ``conv2d_1`` and layer ``conv2d_1``
under ``conv2d_1_2``; an op name such as ``add`` can equal a layer name), so while the model is
traced for conversion each chosen layer is renamed to a marker no other name contains
(``marked``), and an op belongs to chosen layer ``i`` when a segment of its name is the marker
``tfsynapse_float<i>x``, with any ``_<n>`` suffixes a name scope adds. The converter joins fused
names with ``;``: the batch normalisation and activation fused into a convolution go with it.

Why: on the x86 host of the benchmarks, int8 runs the layers at a model's first resolution
(a 3-channel first convolution above all) 2-4.4x slower than float32 (``benchmarks`` section
``int8_layers``); kept float, the int8 ResNet50 and MobileNetV2 are 8-12% faster. Whether
that holds on a phone's ARM cores must be measured there.
"""

import contextlib
import re

from tflite_export import _runtime

_MARKER = "tfsynapse_float{}x"
_MARKED_SEGMENT = re.compile(r"(^|[/;])tfsynapse_float(\d+)x((?:_\d+)*)(?=$|[/;])")


class FloatLayersError(ValueError):
    """``float_layers`` could not be honoured: a layer without an op of its own, an op
    quantised anyway, or a converter without the hook this module needs."""


class MissingHookError(FloatLayersError):
    """TensorFlow's converter has no ``_mlir_quantize`` to wrap (``tf.lite`` moved on)."""


def requested(model, float_layers, quantize, calibrated):
    """Checks ``convert``'s ``float_layers`` argument.

    Args:
      model: the Keras model being converted.
      float_layers: None, a layer name, or an iterable of layer names.
      quantize: ``convert``'s quantisation mode.
      calibrated: whether the conversion calibrates on representative data.

    Returns:
      The names as a list, without repeats (empty for None or an empty iterable).

    Raises:
      TypeError: a name is not a string.
      ValueError: names without ``quantize='int8'`` or without calibration data (a
        quantisation-aware model converted from its own ranges); names of no layer, of more
        than one layer (nested models), or of an input or output layer (an input computes
        nothing; an output's tensor is named after the signature).
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
    layers = _all_layers(model)
    known = [layer.name for layer in layers]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"float_layers: the model has no layer {', '.join(map(repr, unknown))}"
                         f" (its first layers: {', '.join(known[:6])}, ...).")
    repeated = [n for n in names if known.count(n) > 1]
    if repeated:
        raise ValueError(f"float_layers: {', '.join(map(repr, repeated))} names more than one "
                         "layer (nested models); rename one of them.")
    ends = {layer.name for layer in _end_layers(model)}
    edge = [n for n in names if n in ends]
    if edge:
        raise ValueError(f"float_layers: {', '.join(map(repr, edge))} is an input or output "
                         "layer; an input computes nothing and an output's tensor is named after"
                         " the signature. Choose a layer inside the model.")
    return list(dict.fromkeys(names))


def _all_layers(model):
    """Every layer of ``model``, nested models' layers included, in order."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):  # a nested model
            layers += _all_layers(layer)
    return layers


def _end_layers(model):
    """The layers that produce the model's inputs and outputs."""
    tensors = list(model.inputs) + list(model.outputs)
    ends = []
    for tensor in tensors:
        history = getattr(tensor, "_keras_history", None)  # (layer, node, tensor index)
        if history is not None:
            ends.append(history[0])
    return ends


@contextlib.contextmanager
def marked(model, names):
    """Renames the layers ``names`` to markers while active (to trace the model for
    conversion), and restores their names on exit, also after an error.

    Args:
      model: the Keras model.
      names: layer names checked by ``requested``.
    """
    if not names:
        yield
        return
    by_name = {layer.name: layer for layer in _all_layers(model)}
    renamed = []
    try:
        for index, name in enumerate(names):
            _rename(by_name[name], _MARKER.format(index))
            renamed.append((by_name[name], name))
        yield
    finally:
        for layer, name in renamed:
            _rename(layer, name)


def _rename(layer, name):
    try:
        layer.name = name  # Keras 3: a plain attribute
    except AttributeError:
        layer._name = name  # tf_keras: a read-only property over _name


def unmarked(name, layer_names):
    """``name`` (a tensor name) with every marker replaced by its layer's own name, so that
    messages and files name the user's layers."""
    return _MARKED_SEGMENT.sub(
        lambda match: match.group(1) + layer_names[int(match.group(2))] + match.group(3), name)


def marked_indices(tensor_name):
    """The indices of the marked layers whose ops produce ``tensor_name``."""
    return {int(match.group(2)) for match in _MARKED_SEGMENT.finditer(tensor_name)}


def op_outputs(data):
    """The ops of a TFLite flatbuffer and what they produce.

    Args:
      data: the flatbuffer bytes.

    Returns:
      ``[(op name, output tensor name, output dtype)]`` in execution order (delegate nodes
      left out).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    interpreter = Interpreter(  # names and types only: no allocation, no delegate
        model_content=_runtime.read_model(data),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return [(op["op_name"], tensors[index]["name"], tensors[index]["dtype"])
            for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"
            for index in op["outputs"] if index in tensors]


@contextlib.contextmanager
def keep_float(layer_names):
    """While active, the converter's int8 quantisation leaves the marked layers' ops float.

    Args:
      layer_names: the chosen layers, in the order ``marked`` numbered them.

    Yields:
      ``{layer name: [float32 node names kept float]}``, filled during the conversion.

    Raises:
      FloatLayersError: this TensorFlow's converter has no ``_mlir_quantize`` to wrap, or the
        conversion finished without calling it.
    """
    import numpy as np  # noqa: PLC0415

    found = {name: [] for name in layer_names}
    if not layer_names:
        yield found
        return
    try:
        from tensorflow.lite.python import lite  # noqa: PLC0415

        original = lite._mlir_quantize
    except (ImportError, AttributeError) as err:
        raise MissingHookError(
            "float_layers needs TensorFlow's converter internals (tensorflow.lite.python.lite."
            f"_mlir_quantize, present in TensorFlow 2.21); this TensorFlow has none: {err}"
        ) from err
    called = []

    def quantize(calibrated, *args, **kwargs):
        called.append(True)
        for _, tensor, dtype in op_outputs(calibrated):
            for index in marked_indices(tensor):
                if dtype == np.float32:  # shape and index tensors are not quantised anyway
                    found[layer_names[index]].append(tensor)
        nodes = {t for tensors in found.values() for t in tensors}
        kwargs["denylisted_nodes"] = sorted(nodes | set(kwargs.get("denylisted_nodes") or ()))
        return original(calibrated, *args, **kwargs)

    lite._mlir_quantize = quantize
    try:
        yield found
    finally:
        lite._mlir_quantize = original
    if not called:
        raise FloatLayersError("float_layers: the converter never reached its quantisation "
                               "step (mlir_quantize), so no layer could be kept float.")


def check_kept_float(data, found, layer_names):
    """Every chosen layer matched an op, and each such op is float32 in ``data``.

    Args:
      data: the converted flatbuffer.
      found: what ``keep_float`` yielded.
      layer_names: the chosen layers, in the order ``marked`` numbered them (messages name
        the layers' tensors by the layers' names, never by the markers).

    Raises:
      FloatLayersError: a layer matched no TFLite op (e.g. it was folded into another op, or
        computes nothing), or an op of a chosen layer is missing from ``data`` or quantised.
    """
    import numpy as np  # noqa: PLC0415

    missing = sorted(name for name, nodes in found.items() if not nodes)
    if missing:
        raise FloatLayersError(
            f"float_layers: no TFLite op computes {', '.join(map(repr, missing))}: a layer "
            "folded into another op (e.g. a batch normalisation into its convolution) is kept "
            "float by naming that op's layer instead.")
    dtypes = {tensor: dtype for _, tensor, dtype in op_outputs(data)}
    wrong = sorted(t for nodes in found.values() for t in nodes if dtypes.get(t) != np.float32)
    if wrong:
        named = [unmarked(tensor, layer_names) for tensor in wrong[:3]]
        raise FloatLayersError(
            f"float_layers: {', '.join(named)} did not come out float32 (quantised or "
            "renamed by the converter) despite the request to keep it float.")


def restore_names(data, layer_names):
    """``data`` with the markers in its tensor names replaced by the layers' own names.

    Args:
      data: the converted flatbuffer.
      layer_names: the chosen layers, in the order ``marked`` numbered them.

    Returns:
      The flatbuffer bytes, the chosen layers' tensors named after the layers again (with
      the ``_<n>`` suffixes the markers' scopes got, which on Keras 3 may differ from those
      of an export without ``float_layers``).
    """
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415

    from tflite_export.keras_io import pack  # noqa: PLC0415

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))

    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            if name and "tfsynapse_float" in name:
                tensor.name = unmarked(name, layer_names)
    return pack(model, len(data))
