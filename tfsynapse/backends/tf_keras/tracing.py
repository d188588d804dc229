"""Tracing tf_keras layers and subclassed models into graphs of their sublayers and ops.

On tf_keras, calling a layer on symbolic tensors records a node, and a TensorFlow op applied to
them becomes a ``TFOpLambda`` layer, so running a composite layer's ``call`` on fresh
``Input`` tensors records the calls it is made of; a functional model over them is the layer's
graph. ``graph/trace.py`` decides what to trace and checks the result.
"""

from tfsynapse.backends import tracing as shared
from tfsynapse.backends.tf_keras import is_symbolic, keras, tf
from tfsynapse.backends.tracing import sublayers  # noqa: F401 - part of the backend


def rename(layer, name):
    """Gives ``layer`` a new name (a traced sublayer whose name another layer of the model has).
    """
    layer._name = name


def trace_call(layer, args, kwargs, may_inline=None, renamed=None):
    """``layer.call`` run on fresh symbolic inputs (``backends.tracing.trace_call``);
    ``may_inline`` and ``renamed`` are not needed here (tf_keras records a layer call whatever
    it returns)."""
    del may_inline, renamed
    return shared.trace_call(keras, is_symbolic, layer, args, kwargs)


def trace_model(model):
    """A functional model of a subclassed model's ``call``, on inputs of the spec it was first
    called with (or the shape it was built with, float32).

    Raises:
      ValueError: the model was never built or called.
      Exception: whatever the model's ``call`` raises on symbolic inputs.
    """
    spec = getattr(model, "_saved_model_inputs_spec", None)
    if spec is None:
        shape = getattr(model, "_build_input_shape", None)
        if shape is None:
            raise ValueError(
                f"the input shape of subclassed model '{model.name}' is not known (never "
                "built): call it once on a batch, or model.build(input_shape).")
        if _is_shape(shape):
            spec = tf.TensorSpec(tf.TensorShape(shape), tf.float32)
        else:
            spec = [tf.TensorSpec(tf.TensorShape(s), tf.float32) for s in shape]
    inputs = tf.nest.map_structure(
        lambda s: keras.Input(batch_shape=tuple(s.shape), dtype=s.dtype), spec)
    outputs = model.call(inputs)
    return keras.Model(inputs, outputs, name=model.name)


def _is_shape(value):
    if isinstance(value, tf.TensorShape):
        return True
    return isinstance(value, (tuple, list)) and all(d is None or isinstance(d, int) for d in value)
