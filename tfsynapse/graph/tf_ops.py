"""Channel rules for TF-op layers (``TFOpLambda``), as used by ``tf_keras.applications``.

Functional models record raw TensorFlow calls (``x + 3.0``, ``tf.nn.relu(x)``) as TFOpLambda
layers. Each is matched by its TF symbol against small tables; anything else has no rule.
"""

import numpy as np

from tfsynapse.backends.tf_keras import keras, tf
from tfsynapse.graph import rules as rules_lib
from tfsynapse.graph.shape_rules import MergeRule
from tfsynapse.graph.walk import is_keras_tensor

_BINARY = {
    "__operators__.add": False, "math.add": False, "math.add_n": False,
    "math.subtract": False, "__operators__.sub": False,
    "math.maximum": False, "math.minimum": False,
    "math.multiply": True, "math.truediv": False, "math.divide": False,
}
_UNARY = {
    "nn.relu", "nn.relu6", "nn.elu", "nn.selu", "nn.leaky_relu", "nn.gelu", "nn.silu", "nn.swish",
    "math.sigmoid", "math.tanh", "nn.softplus", "math.negative", "identity", "math.abs",
    "math.square", "nn.dropout",
}
_REDUCE = {"math.reduce_mean", "math.reduce_max", "math.reduce_sum", "math.reduce_min"}


def _tf_op_layer_class():
    for module in (keras.layers, getattr(keras.layers, "core", None)):
        cls = getattr(module, "TFOpLambda", None) if module is not None else None
        if cls is not None:
            return cls
    from tf_keras.src.layers.core.tf_op_layer import TFOpLambda  # noqa: PLC0415

    return TFOpLambda


TFOpLambda = _tf_op_layer_class()


def _zeros_like_keras(obj):
    if is_keras_tensor(obj):
        shape = [1] + [1 if d is None else int(d) for d in obj.shape[1:]]
        return tf.zeros(shape, obj.dtype)
    return obj


class TFOpRule(rules_lib.Rule):
    """Elementwise TF ops with one tensor (and scalar constants), binary merges, reductions."""

    def propagate(self, ctx):
        symbol = ctx.layer.symbol
        tensors = ctx.inputs
        if symbol in _REDUCE:
            return self._reduce(ctx)
        if len(tensors) >= 2 and symbol in _BINARY:
            return MergeRule(zero_if_any=_BINARY[symbol]).propagate(ctx)
        if len(tensors) == 1 and (symbol in _UNARY or symbol in _BINARY):
            if not self._constants_are_scalars(ctx):
                return rules_lib.Freeze("combines channels with a per-channel constant").propagate(ctx)
            cmap = tensors[0]
            keeps_zero = self._keeps_zero(ctx)
            return [cmap.with_zero_ok(cmap.zero_ok & keeps_zero)]
        return rules_lib.Freeze(f"TF op '{symbol}' has no channel rule").propagate(ctx)

    @staticmethod
    def _constants_are_scalars(ctx):
        flat = tf.nest.flatten((ctx.call.node.call_args, ctx.call.node.call_kwargs))
        for obj in flat:
            if is_keras_tensor(obj) or obj is None or isinstance(obj, (str, bool)):
                continue
            try:
                if np.size(np.asarray(obj)) > 1:
                    return False
            except (TypeError, ValueError):
                return False
        return True

    @staticmethod
    def _keeps_zero(ctx):
        node = ctx.call.node
        args = tf.nest.map_structure(lambda o: _zeros_like_keras(o), node.call_args)
        kwargs = tf.nest.map_structure(lambda o: _zeros_like_keras(o), node.call_kwargs)
        out = np.asarray(ctx.layer.function(*args, **kwargs))
        width = len(ctx.inputs[0])
        out = np.broadcast_to(out, out.shape[:-1] + (width,)) if out.ndim else np.full((width,), out)
        return np.all(out.reshape(-1, width) == 0, axis=0)

    @staticmethod
    def _reduce(ctx):
        node = ctx.call.node
        axis = node.call_kwargs.get("axis", node.call_args[1] if len(node.call_args) > 1 else None)
        rank = ctx.input_shapes[0].rank
        axes = [axis] if isinstance(axis, int) else list(axis or [])
        if axis is None or any(a % rank == rank - 1 for a in axes):
            return rules_lib.Freeze("reduces over the channel axis").propagate(ctx)
        return [ctx.inputs[0]]


_RULE = TFOpRule()


def rule_for_tf_op(layer):
    """The TF-op rule if ``layer`` is a TFOpLambda whose symbol is in the tables, else None."""
    if isinstance(layer, TFOpLambda) and (
        layer.symbol in _BINARY or layer.symbol in _UNARY or layer.symbol in _REDUCE
    ):
        return _RULE
    return None
