"""Tracing Keras 3 layers and subclassed models into graphs of their sublayers and ops.

On Keras 3, calling a layer or a ``keras.ops`` function on symbolic tensors records a node, so
running a composite layer's ``call`` on fresh ``keras.Input`` tensors records the calls it is
made of; a functional model over them is the layer's graph. ``graph/trace.py`` decides what to
trace and checks the result.
"""

import keras

from tfsynapse.backends import tracing as shared
from tfsynapse.backends.keras3 import is_symbolic
from tfsynapse.backends.tracing import sublayers  # noqa: F401 - part of the backend


def rename(layer, name):
    """Gives ``layer`` a new name (a traced sublayer whose name another layer of the model has).
    """
    layer.name = name


def trace_call(layer, args, kwargs):
    """``layer.call`` run on fresh symbolic inputs (``backends.tracing.trace_call``)."""
    return shared.trace_call(keras, is_symbolic, layer, args, kwargs)


def trace_model(model):
    """A functional model of a subclassed model's ``call``, on inputs of the shape it was built
    or first called with (float32).

    Raises:
      ValueError: the model was never built or called, or with arguments other than one tensor
        or a list of tensors.
      Exception: whatever the model's ``call`` raises on symbolic inputs.
    """
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        raise ValueError(
            f"the input shape of subclassed model '{model.name}' is not known ("
            f"{'never built' if not shapes else f'built with {len(shapes)} arguments'}): "
            "call it once on a batch, or model.build(input_shape), with one tensor or a list.")
    (shape,) = shapes.values()
    if _is_shape(shape):
        inputs = keras.Input(batch_shape=tuple(shape))
        args = (inputs,)
    else:
        inputs = [keras.Input(batch_shape=tuple(s)) for s in shape]
        args = (inputs,)
    outputs = model.call(*args)
    return keras.Model(inputs, outputs, name=model.name)


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(d is None or isinstance(d, int) for d in value)
