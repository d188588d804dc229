"""Per-layer channel rules and the registry users extend for their own layers.

A rule says, for one layer type, what the layer does with channels: which weights hold output
channels (it *produces* a new channel space), which hold input channels (it *consumes*), which
are per-channel parameters of channels that pass through, and how the output channel map
follows from the input maps. Rules never look at other layers; the builder chains them.

The base classes and the rules of layers that keep channels in place (activations,
normalisation, pooling) live here; ``producer_rules`` holds the layers that make channels
(convolutions, Dense) and ``shape_rules`` those that combine or rearrange them.

Register a rule for your own layer with::

    @tfsynapse.register_rule(MyLayer)
    class MyRule(tfsynapse.graph.PassThrough):  # or Producer, or a Rule of your own
        ...
"""

import warnings

import numpy as np

from tfsynapse.backends import backend_of, is_framework_function

_REGISTRY = {}  # user rules: {layer class: rule}
_BUILTINS = {}  # Keras's own layers, either backend: {class name: rule}


def register_rule(*layer_classes):
    """Registers a rule class for one or more layer classes (a class decorator).

    Args:
      *layer_classes: the Keras layer classes the rule applies to (matched exactly, not their
        subclasses).

    Returns:
      A decorator that registers and returns the rule class.

    Raises:
      TypeError: no layer class given, or an argument is not a class.
    """
    if not layer_classes:
        raise TypeError("register_rule needs at least one layer class.")
    for cls in layer_classes:
        if not isinstance(cls, type):
            raise TypeError(f"register_rule takes layer classes, got {cls!r}.")

    return _registering(_REGISTRY, layer_classes)


def _registering(table, keys):
    """A decorator that puts one rule (a class is instantiated once) under every key."""
    def decorator(rule_cls):
        rule = rule_cls() if isinstance(rule_cls, type) else rule_cls
        for key in keys:
            table[key] = rule
        return rule_cls

    return decorator


def register_builtin(*class_names):
    """Registers a rule for Keras's own layer classes of these names, in every backend.

    tf_keras and Keras 3 have the same layer classes under the same names; a built-in rule is
    found by the class name of a built-in layer (``class_path`` of the layer's backend), so no
    Keras is imported here.

    Args:
      *class_names: names of ``keras.layers`` classes.

    Returns:
      A decorator that registers and returns the rule class (or instance).
    """
    return _registering(_BUILTINS, class_names)


def rule_for(layer):
    """The rule for ``layer``: registered for exactly its class, or built in for its Keras class.

    Subclasses do not inherit their base's rule: a subclass may change what happens to channels,
    so it must be registered explicitly.
    """
    rule = _REGISTRY.get(type(layer))
    if rule is None:
        try:
            name = backend_of(layer).class_path(layer)
        except TypeError:  # not a Keras object
            return None
        rule = _BUILTINS.get(name) if name else None
    return rule


def channel_axis_is_last(axis, rank):
    """Whether ``axis`` (int, list or tuple) designates exactly the last axis of a rank-``rank`` tensor."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis in (-1, rank - 1)


class Rule:
    """Base class: a layer type's channel behaviour.

    A rule owns everything tfsynapse knows about its layer type: how channels flow
    (``propagate``), how the layer is rebuilt narrower (``resize``), its multiply-accumulates
    (``macs``), and which kernel holds prunable input->output connections
    (``connection_kernel``, ``connection_strength``, ``effective_weight``). A rule for a user's
    layer gets counting and connection pruning by overriding these.

    Attributes:
      kind: a short label of the layer's computation ('conv', 'dense', ...; None for layers
        with no multiply-accumulates worth counting); shrink reports channel changes of
        layers with a kind.
      transparent: True for layers that neither mix nor rescale channels (activations,
        pooling, dropout, padding); the synaptic-strength criterion looks through them for the
        BatchNormalization that produced a convolution's input channels.
    """

    kind = None
    transparent = False

    def propagate(self, ctx):
        """Registers the layer's channel slots and returns its output channel maps.

        Args:
          ctx: a ``CallContext`` (the layer, its input maps and shapes, and the builder's
            operations: ``new_space``, ``slot``, ``union``, ``freeze``, ``frozen_maps``).

        Returns:
          A list with one ``ChannelMap`` per output tensor.
        """
        raise NotImplementedError

    def resize(self, config, out_channels):
        """Returns the layer config for a layer that now has ``out_channels`` output channels."""
        return config

    def rebuild_config(self, layer, config, out_channels, shape_of):
        """The config of ``layer`` rebuilt after pruning (``shrink``).

        Args:
          layer: the layer.
          config: its ``get_config()``.
          out_channels: its first output's channel count after pruning.
          shape_of: ``shape_of(weight) -> list``, a weight's shape after pruning.

        Returns:
          The new config; by default ``resize(config, out_channels)``. A rule whose layer's
          config follows another axis than the output's (attention heads) overrides this.
        """
        return self.resize(config, out_channels)

    def macs(self, layer, in_shape, out_shape, shape_of):
        """Multiply-accumulates of one call (batch 1); 0 unless the layer has a kernel.

        Args:
          layer: the layer.
          in_shape, out_shape: the call's first input and output shapes (batch first).
          shape_of: ``shape_of(weight) -> list``, a weight's shape after the pruning plan.
        """
        return 0

    def call_macs(self, layer, input_shapes, output_shapes, shape_of):
        """Multiply-accumulates of one call with all its input and output shapes; by default
        ``macs`` of the first ones (a rule whose cost depends on several inputs overrides it)."""
        return self.macs(layer, input_shapes[0], output_shapes[0], shape_of)

    def connection_kernel(self, layer):
        """The ``(..., C_in, C_out)`` kernel whose connections can be pruned, or None."""
        return None

    def connection_strength(self, layer):
        """A ``[C_in, C_out]`` weight with one strength per connection, masked with them, or None."""
        return None

    def effective_weight(self, layer, weight):
        """The tensor a weight stands for when scoring (a reparameterised kernel's product)."""
        return weight

    def homogeneous(self, layer):
        """Whether the layer commutes with a positive per-channel scale: f(a x) = a f(x), a > 0.

        ``to_synaptic`` folds a BatchNormalization's scale into the strengths of the
        convolutions it feeds only through layers for which this holds.
        """
        return False


def _prod(dims):
    return int(np.prod([1 if d is None else int(d) for d in dims], dtype=np.int64))


class Unknown(Rule):
    """No rule: every channel that reaches the layer is frozen, its outputs are new frozen spaces."""

    def __init__(self, reason):
        self.reason = reason

    def propagate(self, ctx):
        for cmap in ctx.inputs:
            ctx.freeze(cmap, self.reason)
        return ctx.frozen_maps(self.reason)


class Freeze(Rule):
    """A known layer through which channels cannot be pruned (it mixes or reorders them)."""

    def __init__(self, reason):
        self.reason = reason

    def propagate(self, ctx):
        for cmap in ctx.inputs:
            ctx.freeze(cmap, f"{ctx.layer.name}: {self.reason}")
        return ctx.frozen_maps(f"{ctx.layer.name}: {self.reason}")


class PassThrough(Rule):
    """Channels pass unchanged (dropout, pooling, padding, cropping, upsampling, noise, ...)."""

    transparent = True

    def propagate(self, ctx):
        return [ctx.inputs[0]]

    def homogeneous(self, layer):
        return True


def zero_preserving(fn, shape):
    """Whether an elementwise function maps zeros to zeros, per channel.

    Args:
      fn: callable on a float tensor.
      shape: the input shape with the batch dimension (None dims are taken as 1).

    Returns:
      A bool array over the last axis.
    """
    concrete = [1] + [1 if d is None else int(d) for d in list(shape)[1:]]
    out = np.asarray(fn(np.zeros(concrete, np.float32)))
    out = out.reshape(-1, out.shape[-1]) if out.ndim else out.reshape(1, 1)
    return np.all(out == 0, axis=0)


class Elementwise(PassThrough):
    """An elementwise activation: channels pass; f(0) is checked numerically per channel."""

    def propagate(self, ctx):
        cmap = ctx.inputs[0]
        keeps_zero = zero_preserving(ctx.layer, ctx.input_shapes[0])
        return [cmap.with_zero_ok(cmap.zero_ok & keeps_zero)]

    def homogeneous(self, layer):
        """Checked numerically on values across [-6, 6] (relu6 or a threshold fail it)."""
        x = np.linspace(-6.0, 6.0, 49, dtype=np.float32).reshape(1, -1)
        fx = np.asarray(layer(x))
        return all(np.allclose(np.asarray(layer(a * x)), a * fx, rtol=1e-5, atol=1e-6)
                   for a in (0.25, 3.0))


class ActivationRule(Elementwise):
    """``Activation``: elementwise unless the function mixes channels (softmax)."""

    def propagate(self, ctx):
        reason = _not_elementwise(ctx.layer, ctx.layer.activation, "activation")
        if reason:
            for cmap in ctx.inputs:
                ctx.freeze(cmap, reason)
            return ctx.frozen_maps(reason)
        return super().propagate(ctx)


def _not_elementwise(layer, fn, what):
    """Why ``fn`` cannot be treated as elementwise (a freeze reason), or None.

    Keras' and TensorFlow's activations are elementwise except the softmax family. Any other
    callable may mix channels (a normalisation over the last axis is zero at zero and still
    mixes), which a numerical check at zero cannot see: it is frozen, with a warning.
    """
    name = getattr(fn, "__name__", type(fn).__name__)
    if "softmax" in name:
        return f"{layer.name}: {what} '{name}' mixes channels"
    if is_framework_function(fn):
        return None
    module = getattr(fn, "__module__", "") or ""
    warnings.warn(
        f"tfsynapse: layer '{layer.name}' has the {what} '{name}' from {module or 'unknown'}, "
        "which tfsynapse cannot prove elementwise: the channels around it are frozen (not "
        "pruned). Use a Keras activation, or register a rule for the layer.", stacklevel=4)
    return f"{layer.name}: {what} '{name}' is a Python callable that may mix channels"


def apply_fused_activation(rule, ctx, outputs):
    """A layer's own ``activation=`` is part of its channel behaviour.

    ``Conv2D(..., activation="sigmoid")`` turns a pruned (zero) channel into a constant 0.5,
    and a fused softmax mixes every output channel; rules look at layer types, so the
    builder applies this after every rule whose layer carries an activation of its own
    (elementwise rules already evaluate theirs). A softmax, or a Python callable that may mix
    channels, freezes the outputs (the callable with a warning); a Keras/TensorFlow
    activation is evaluated at zero, per channel, and a channel with f(0) != 0 no longer reads
    as zero downstream; one that cannot be evaluated freezes the outputs with its name.

    Returns:
      The output channel maps, with ``zero_ok`` narrowed where f(0) != 0.
    """
    fn = getattr(ctx.layer, "activation", None)
    if fn is None or not callable(fn) or isinstance(rule, Elementwise) or not outputs:
        return outputs
    name = getattr(fn, "__name__", type(fn).__name__)
    if name == "linear":
        return outputs
    reason = _not_elementwise(ctx.layer, fn, "fused activation")
    if reason:
        for cmap in outputs:
            ctx.freeze(cmap, reason)
        return outputs
    result = []
    for cmap, shape in zip(outputs, ctx.output_shapes):
        try:
            keeps_zero = zero_preserving(fn, shape)
        except Exception:  # noqa: BLE001 - an arbitrary user callable
            ctx.freeze(cmap, f"{ctx.layer.name}: fused activation '{name}' could not be "
                             "evaluated at zero")
            result.append(cmap)
            continue
        result.append(cmap.with_zero_ok(cmap.zero_ok & keeps_zero))
    return result


class PReLURule(Elementwise):
    """PReLU: elementwise, with a per-channel ``alpha`` unless the channel axis is shared."""

    def propagate(self, ctx):
        (out,) = super().propagate(ctx)
        alpha = ctx.layer.alpha
        if alpha.shape[-1] == len(out) and len(out) > 1:
            ctx.slot(alpha, len(alpha.shape) - 1, out, "param", zero_required=False)
        return [out]


class BatchNormRule(PassThrough):
    """BatchNormalization over the channel axis: per-channel gamma, beta and statistics.

    With gamma and beta masked, a pruned channel leaves the layer as exactly zero whatever
    enters it; without gamma (``scale=False``) the moving mean is masked too.
    """

    transparent = False

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        if not channel_axis_is_last(layer.axis, ctx.input_shapes[0].rank):
            return Freeze("normalizes over an axis other than the channel axis").propagate(ctx)
        if layer.gamma is not None:
            ctx.slot(layer.gamma, 0, cmap, "param", zero_required=True)
        if layer.beta is not None:
            ctx.slot(layer.beta, 0, cmap, "param", zero_required=True)
        ctx.slot(layer.moving_mean, 0, cmap, "param" if layer.gamma is None else "stat",
                 zero_required=layer.gamma is None)
        ctx.slot(layer.moving_variance, 0, cmap, "stat", zero_required=False)
        return [cmap.with_zero_ok(True) if layer.gamma is not None else cmap]


class NormalizationRule(PassThrough):
    """``Normalization`` (input standardisation): per-channel mean/variance, f(0) != 0."""

    transparent = False

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        axis = layer.axis if layer.axis is not None else ()
        if tuple(axis) not in ((-1,), (ctx.input_shapes[0].rank - 1,)):
            return Freeze("normalizes over an axis other than the channel axis").propagate(ctx)
        weights = [getattr(layer, n, None) for n in ("adapt_mean", "adapt_variance")]
        if any(w is None or not any(w is v for v in layer.weights) for w in weights):
            return Freeze("normalizes with per-channel constants").propagate(ctx)
        for weight in weights:
            ctx.slot(weight, len(weight.shape) - 1, cmap, "stat", zero_required=False)
        return [cmap.with_zero_ok(False)]


class RescalingRule(PassThrough):
    """``Rescaling``: x * scale + offset with scalar scale/offset; a non-zero offset breaks zeros."""

    transparent = False

    def propagate(self, ctx):
        scale, offset = np.asarray(ctx.layer.scale), np.asarray(ctx.layer.offset)
        if scale.size > 1 or offset.size > 1:
            return Freeze("per-channel scale/offset constants").propagate(ctx)
        cmap = ctx.inputs[0]
        return [cmap if float(offset) == 0.0 else cmap.with_zero_ok(False)]


_PASS = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "Masking", "Identity",
)
register_builtin(*_PASS)(PassThrough)
register_builtin("ReLU", "LeakyReLU", "ELU", "ThresholdedReLU")(Elementwise)
register_builtin("Activation")(ActivationRule)
register_builtin("PReLU")(PReLURule)
register_builtin("Softmax")(Freeze("softmax over the channel axis mixes channels"))
register_builtin("BatchNormalization")(BatchNormRule)
register_builtin("Normalization")(NormalizationRule)
register_builtin("Rescaling")(RescalingRule)
