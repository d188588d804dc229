"""Channel rules for raw tensor operations recorded in functional models.

tf_keras records raw TensorFlow calls (``x + 3.0``, ``tf.nn.relu(x)``) as ``TFOpLambda``
layers; Keras 3 records ``keras.ops`` calls (and operators on its tensors) as operations
(``keras.src.ops.numpy.Add``, ``...nn.Relu``). The backend describes each as a ``RawOp``
(``backend.raw_operation``: the TensorFlow symbol it computes, a callable, its reduction axis),
and the symbol is matched against small tables here; anything else has no rule.
"""

import numpy as np

from tfsynapse.backends import backend_name, get, tf
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
    "math.square", "nn.dropout", "nn.hard_sigmoid", "nn.hard_silu",
}
_REDUCE = {"math.reduce_mean", "math.reduce_max", "math.reduce_sum", "math.reduce_min"}
# moves values within each channel (checked numerically per call): padding, and a reshape
# that keeps the last axis (a row-major reshape keeps every element's last-axis index then)
_SPATIAL = {"pad", "reshape"}
_MATMUL = {"linalg.matmul", "__operators__.matmul"}
_MIXING = {"transpose", "nn.softmax", "math.softmax"}  # reorder or mix channels: frozen


def _raw_op(layer):
    """The layer's ``RawOp`` from its backend, or None (not a recorded raw operation)."""
    name = backend_name(layer)
    return get(name).raw_operation(layer) if name else None


def _symbol(layer):
    """The TensorFlow symbol of a recorded operation, or None."""
    op = _raw_op(layer)
    return op.symbol if op is not None else None


def _zeros_like_keras(obj):
    if is_keras_tensor(obj):
        shape = [1] + [1 if d is None else int(d) for d in obj.shape[1:]]
        return tf.zeros(shape, obj.dtype)
    return obj


class TFOpRule(rules_lib.Rule):
    """Elementwise TF ops with one tensor (and scalar constants), binary merges, reductions."""

    def propagate(self, ctx):
        symbol = _symbol(ctx.layer)
        tensors = ctx.inputs
        if symbol in _MIXING:
            return rules_lib.Freeze(f"TF op '{symbol}' reorders or mixes channels").propagate(ctx)
        if symbol in _REDUCE:
            return self._reduce(ctx)
        if symbol in _SPATIAL and len(tensors) == 1:
            return self._spatial(ctx, symbol)
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
        flat = tf.nest.flatten((ctx.call.args, ctx.call.kwargs))
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
        args = tf.nest.map_structure(_zeros_like_keras, ctx.call.args)
        kwargs = tf.nest.map_structure(_zeros_like_keras, ctx.call.kwargs)
        function = _raw_op(ctx.layer).function
        out = np.asarray(function(*args, **kwargs))
        width = len(ctx.inputs[0])
        out = np.broadcast_to(out, out.shape[:-1] + (width,)) if out.ndim else np.full((width,), out)
        return np.all(out.reshape(-1, width) == 0, axis=0)

    @staticmethod
    def _spatial(ctx, symbol):
        """An op that should only move values inside each channel (padding, a reshape that
        keeps the last axis): run it on a batch whose channel ``c`` holds ``c + 1`` everywhere;
        channels pass only when every output channel ``c`` holds nothing but ``c + 1`` and
        zeros (zero padding). A reshape's target names the channel count: it passes only when
        the backend can rebuild it for fewer (``RawOp.resized``)."""
        if symbol == "reshape" and _raw_op(ctx.layer).resized is None:
            return rules_lib.Freeze("a raw reshape's target shape names the channel count "
                                    "(keras.layers.Reshape can be rebuilt narrower)").propagate(ctx)
        width = len(ctx.inputs[0])
        shape = [1] + [1 if d is None else int(d) for d in ctx.input_shapes[0][1:]]
        marker = np.broadcast_to(np.arange(1, width + 1, dtype=np.float32), shape)

        def feed(obj):
            return tf.constant(marker) if is_keras_tensor(obj) else obj

        args = tf.nest.map_structure(feed, ctx.call.args)
        kwargs = tf.nest.map_structure(feed, ctx.call.kwargs)
        try:
            out = np.asarray(_raw_op(ctx.layer).function(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - e.g. a shape that needs the real batch
            return rules_lib.Freeze(f"TF op '{symbol}' could not be checked on one sample "
                                    f"({type(error).__name__})").propagate(ctx)
        if out.ndim == 0 or out.shape[-1] != width:
            return rules_lib.Freeze(f"TF op '{symbol}' changes the channel axis").propagate(ctx)
        values = out.reshape(-1, width)
        expected = np.arange(1, width + 1, dtype=np.float32)
        if not np.all((values == expected) | (values == 0)):
            return rules_lib.Freeze(f"TF op '{symbol}' mixes or fills channels").propagate(ctx)
        return [ctx.inputs[0]]

    @staticmethod
    def _reduce(ctx):
        axis = _raw_op(ctx.layer).axis(ctx.call.args, ctx.call.kwargs)
        rank = ctx.input_shapes[0].rank
        axes = [axis] if isinstance(axis, int) else list(axis or [])
        if axis is None or any(a % rank == rank - 1 for a in axes):
            return rules_lib.Freeze("reduces over the channel axis").propagate(ctx)
        return [ctx.inputs[0]]


class MatmulRule(rules_lib.Freeze):
    """A matrix product of two tensors (attention's scores and weighted sum written with ops):
    channels are frozen through it (it mixes them), its multiply-accumulates are counted."""

    def __init__(self):
        super().__init__("a matrix product mixes channels")

    def call_macs(self, layer, input_shapes, output_shapes, shape_of):
        """``prod(output's non-batch dims) * k`` for ``(..., n, k) @ (..., k, m)``, batch 1."""
        if not input_shapes or not output_shapes or input_shapes[0].rank is None:
            return 0
        inner = input_shapes[0][-1]
        dims = list(output_shapes[0])[1:]
        if inner is None or any(d is None for d in dims):
            return 0
        return int(np.prod(dims, dtype=np.int64)) * int(inner)


_RULE = TFOpRule()
_MATMUL_RULE = MatmulRule()


def rule_for_tf_op(layer):
    """The op rule if ``layer`` records an operation whose symbol is in the tables, else None."""
    symbol = _symbol(layer)
    if symbol in _MATMUL:
        return _MATMUL_RULE
    if symbol is not None and (symbol in _BINARY or symbol in _UNARY or symbol in _REDUCE
                               or symbol in _SPATIAL or symbol in _MIXING):
        return _RULE
    return None
