"""Tracing Keras 3 layers and subclassed models into graphs of their sublayers and ops.

On Keras 3, calling a layer or a ``keras.ops`` function on symbolic tensors records a node, so
running a composite layer's ``call`` on fresh ``keras.Input`` tensors records the calls it is
made of; a functional model over them is the layer's graph. ``graph/trace.py`` decides what to
trace and checks the result.
"""

import contextlib

import keras

from tfsynapse.backends import tracing as shared
from tfsynapse.backends.keras3 import is_symbolic
from tfsynapse.backends.tracing import sublayers


def rename(layer, name):
    """Gives ``layer`` a new name (a traced sublayer whose name another layer of the model has).
    """
    layer.name = name


def trace_call(layer, args, kwargs, may_inline=None, renamed=None):
    """``layer.call`` run on fresh symbolic inputs (``backends.tracing.trace_call``).

    A sublayer whose call returns something other than tensors (keras-hub's transformer blocks
    return ``(x, None)``) cannot be recorded as a node of Keras 3's graph; while tracing, such a
    sublayer's own ``call`` runs in place when ``may_inline(sublayer)``, so the layers and ops
    it is made of are recorded instead. Their names must stay unique in the graph: a layer
    whose name an earlier one of the trace has is renamed ``<inlined layer>_<name>``, and
    ``renamed`` (a dict) gets ``{'old in inlined layer': new}``.
    """
    with _inlining(may_inline or (lambda sublayer: False),
                   {} if renamed is None else renamed), _batch_reshapes():
        return shared.trace_call(keras, is_symbolic, layer, args, kwargs)


@contextlib.contextmanager
def _batch_reshapes():
    """Within: ``keras.ops.reshape`` of a symbolic tensor to a shape whose first entry is None
    (the batch size read from a symbolic shape, as keras-hub's MiT does) reshapes to ``-1`` in
    its place, every other entry resolved from the tensor's known per-sample size; Keras would
    record the None, and the traced graph could not run on any batch."""
    reshape = keras.ops.reshape

    def batch_reshape(x, newshape):
        if is_symbolic(x) and isinstance(newshape, (tuple, list)) and len(newshape) \
                and newshape[0] is None and x.shape[0] is None:
            newshape = _per_sample(tuple(x.shape[1:]), tuple(newshape[1:])) or newshape
        return reshape(x, newshape)

    keras.ops.reshape = batch_reshape
    try:
        yield
    finally:
        keras.ops.reshape = reshape


def _per_sample(sample_shape, rest):
    """``(-1, *rest)`` with a -1 in ``rest`` resolved from ``sample_shape`` (all known), or
    None when the shape cannot be resolved that way."""
    if any(d is None for d in sample_shape) or any(not isinstance(d, int) for d in rest):
        return None
    size = 1
    for d in sample_shape:
        size *= d
    known = 1
    for d in rest:
        known *= d if d != -1 else 1
    if list(rest).count(-1) > 1 or known == 0 or size % known:
        return None
    return (-1,) + tuple(size // known if d == -1 else d for d in rest)


@contextlib.contextmanager
def _inlining(may_inline, renamed):
    """Within: a layer call that Keras refuses to record for a non-tensor output runs the
    layer's ``call`` in place, when ``may_inline(layer)``."""
    layer_class = keras.layers.Layer
    record = layer_class.__call__
    seen = set()  # names of the layers recorded so far

    def call(self, *args, **kwargs):
        try:
            outputs = record(self, *args, **kwargs)
        except ValueError as error:
            if "outputs must be tensors" not in str(error) or not may_inline(self):
                raise
            for sub in sublayers(self):
                if sub.name in seen:
                    old, sub.name = sub.name, f"{self.name}_{sub.name}"
                    renamed[f"{old} in {self.name}"] = sub.name
            return self.call(*args, **kwargs)
        seen.add(self.name)
        return outputs

    layer_class.__call__ = call
    try:
        yield
    finally:
        layer_class.__call__ = record


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
