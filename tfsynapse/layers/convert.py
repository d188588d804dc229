"""to_synaptic / from_synaptic: move a model into the trainable synaptic form and back.

``to_synaptic`` replaces every Conv2D (groups=1) by a SynapticConv2D with ``V = K`` and
``s = ||K_ij||`` (exactly the same kernel), then folds BatchNormalization scales into the next
convolutions' strengths where that is exact: for ``y = act(gamma * x_hat + beta)`` with a
positively homogeneous ``act`` (ReLU, LeakyReLU, linear) and ``gamma > 0``,
``act(gamma * x_hat + beta) = gamma * act(x_hat + beta / gamma)``, so the BN keeps only its
shift ``beta / gamma`` (``scale=False``) and ``gamma_i`` multiplies ``s_ij`` of every consumer.
A negative ``gamma_i`` first flips channel ``i``'s sign upstream (the producing filter, its bias
and the BN moving mean). Where this is not exact (ReLU6, swish, sigmoid on the path; a consumer
that is not a convolution, e.g. a residual add or a Dense head; a zero gamma; a producer shared
with other layers) the BN keeps its scale, and the returned report says why.
"""

import dataclasses

import numpy as np

from tfsynapse.backends import backend_of
from tfsynapse.graph import dependency_groups, replay, unwrap, functional_model
from tfsynapse.graph import rules as rules_lib
from tfsynapse.layers.synaptic import is_synaptic, synaptic_class, synaptic_weights_from_kernel


@dataclasses.dataclass
class SynapticReport:
    """What ``to_synaptic`` did.

    Attributes:
      converted: names of the Conv2D layers now SynapticConv2D.
      folded: ``{BN name: [consumer conv names]}`` whose scales moved into strengths.
      kept: ``{BN name: reason}`` of BatchNormalizations that keep their scale.
      flipped: ``{BN name: number of channels whose sign was flipped}``.
    """

    converted: list
    folded: dict
    kept: dict
    flipped: dict

    def __str__(self):
        lines = [f"{len(self.converted)} Conv2D -> SynapticConv2D; "
                 f"{len(self.folded)} BatchNormalization scales folded into strengths"]
        for name, why in self.kept.items():
            lines.append(f"  {name}: scale kept ({why})")
        return "\n".join(lines)


def _homogeneous(layer):
    rule = rules_lib.rule_for(layer)
    return rule is not None and rule.homogeneous(layer)


def _builtin(layer, name):
    """Whether ``layer`` is exactly Keras's own ``name`` class (either Keras)."""
    try:
        return backend_of(layer).class_path(layer) == name
    except TypeError:  # a raw value, not a Keras object
        return False


def _linear(layer):
    """Whether the layer's own activation is the identity (so -f(x) = f with negated weights)."""
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__name__", "") == "linear"


def _convertible(layer):
    return (_builtin(layer, "Conv2D") and layer.groups == 1
            and layer.data_format == "channels_last")


def _bn_folds(graph, outputs):
    """``{bn layer: (consumer convs, reason or None)}`` for every BatchNormalization."""
    consumers = {}
    producer = {}
    for lc in graph.calls:
        for key in lc.call.inputs:
            consumers.setdefault(key, []).append(lc)
        for key in lc.call.outputs:
            producer[key] = lc
    result = {}
    for lc in graph.calls:
        bn = unwrap(lc.call.layer)
        if not _builtin(bn, "BatchNormalization"):
            continue
        if bn.gamma is None:
            continue
        reason, convs = None, []
        frontier = list(lc.call.outputs)
        while frontier and reason is None:
            key = frontier.pop()
            if key in outputs:
                reason = "reaches a model output"
                break
            for nxt in consumers.get(key, []):
                layer = unwrap(nxt.call.layer)
                if _convertible(layer):
                    convs.append(layer)
                elif _homogeneous(layer) and len(nxt.call.inputs) == 1:
                    frontier.extend(nxt.call.outputs)
                else:
                    reason = (f"'{layer.name}' ({type(layer).__name__}) between the BN and a "
                              "convolution is not positively homogeneous or not a convolution")
                    break
        gamma = bn.gamma.numpy()
        if reason is None and not convs:
            reason = "no convolution consumes it"
        if reason is None and np.any(gamma == 0):
            reason = "a gamma is exactly zero"
        flips = np.nonzero(gamma < 0)[0]
        source = producer.get(lc.call.inputs[0]) if lc.call.inputs else None
        if reason is None and len(flips):
            src = unwrap(source.call.layer) if source is not None else None
            if src is None or not (_convertible(src) or is_synaptic(src)) or len(
                    consumers.get(source.call.outputs[0], [])) != 1:
                reason = "negative gammas, and the producer cannot be sign-flipped alone"
            elif not _linear(src):
                reason = (f"negative gammas, and the producer's activation "
                          f"'{src.activation.__name__}' does not commute with a sign flip")
        result[bn] = (convs, reason, flips, unwrap(source.call.layer) if source is not None else None)
    return result


def to_synaptic(model, l1=0.0, fold_batchnorm=True, return_report=False):
    """Converts a model with Conv2D (+ BatchNormalization) to the synaptic form.

    Args:
      model: a built functional or Sequential model, tf_keras or Keras 3 (left untouched).
      l1: coefficient of an L1 penalty on all strengths added to the loss (0, the default,
        adds none). Prefer ``tfsynapse.ProximalL1(l1)`` as a ``fit`` callback: its proximal
        step gives exact zeros, where the loss penalty's subgradient only oscillates around
        them.
      fold_batchnorm: move BN scales into strengths where exact (see the module docstring).
      return_report: also return a ``SynapticReport``.

    Returns:
      The new model (same function, to float tolerance), or ``(model, report)``.

    Raises:
      TypeError / ValueError: as ``check_model``; ``l1`` negative.
    """
    model = functional_model(model)  # a subclassed model: its traced graph
    backend = backend_of(model)
    backend.check_model(model)
    if l1 < 0:
        raise ValueError(f"l1 must be >= 0, got {l1}.")
    graph = dependency_groups(model)
    outputs = set(graph.flat.outputs)
    folds = _bn_folds(graph, outputs) if fold_batchnorm else {}
    report = SynapticReport(converted=[], folded={}, kept={}, flipped={})
    scale_in = {}  # conv layer -> per-input-channel gamma to multiply into strengths
    sign_out = {}  # producer layer -> per-output-channel sign
    fold_bn = set()
    for bn, (convs, reason, flips, source) in folds.items():
        if reason is not None:
            report.kept[bn.name] = reason
            continue
        fold_bn.add(bn)
        report.folded[bn.name] = [c.name for c in convs]
        gamma = bn.gamma.numpy()
        for conv in convs:
            scale_in[conv] = scale_in.get(conv, 1.0) * np.abs(gamma)
        if len(flips):
            sign = np.ones_like(gamma)
            sign[flips] = -1.0
            sign_out[source] = sign
            report.flipped[bn.name] = int(len(flips))
    regularizer = backend.keras.regularizers.L1(l1) if l1 > 0 else None
    synaptic = synaptic_class(model)

    def new_layer(layer):
        if _convertible(layer):
            config = layer.get_config()
            config.pop("groups", None)
            report.converted.append(layer.name)
            return synaptic.from_config({**config, "strength_regularizer": regularizer})
        if layer in fold_bn:
            return type(layer).from_config({**layer.get_config(), "scale": False})
        return None

    def new_weights(old):
        weights = [w.copy() for w in old.get_weights()]
        sign = sign_out.get(old)
        if _convertible(old):
            kernel = weights[0] * (sign if sign is not None else 1.0)
            direction, strength = synaptic_weights_from_kernel(kernel)
            if old in scale_in:
                strength = strength * scale_in[old][:, None]
            rest = weights[1:]
            if sign is not None and rest:
                rest[0] = rest[0] * sign
            return [direction, strength, *rest]
        if old in fold_bn:
            if not old.center:  # no beta: the folded layer stays without a shift
                gamma, mean, var = weights
                flip = np.where(gamma < 0, -1.0, 1.0).astype(gamma.dtype)
                return [mean * flip, var]
            gamma, beta, mean, var = weights
            flip = np.where(gamma < 0, -1.0, 1.0).astype(gamma.dtype)
            return [beta / np.abs(gamma), mean * flip, var]
        if is_synaptic(old) and sign is not None:
            weights[0] = weights[0] * sign
            if old.use_bias:
                weights[2] = weights[2] * sign
        return weights

    new_model = _rebuild(model, new_layer, new_weights)
    return (new_model, report) if return_report else new_model


def from_synaptic(model):
    """Turns every SynapticConv2D back into a plain Conv2D with ``K = s * V / ||V||``.

    Args:
      model: a built tf_keras or Keras 3 model (left untouched).

    Returns:
      A new model without synaptic layers (BatchNormalizations keep ``scale=False``), ready
      for ``shrink`` and TFLite export.

    Raises:
      TypeError / ValueError: as ``check_model``.
    """
    model = functional_model(model)  # a subclassed model: its traced graph
    backend = backend_of(model)
    backend.check_model(model)

    def new_layer(layer):
        if not is_synaptic(layer):
            return None
        config = layer.get_config()
        config.pop("strength_regularizer", None)
        config.pop("strength_initializer", None)
        return backend.keras.layers.Conv2D.from_config(config)

    def new_weights(old):
        if not is_synaptic(old):
            return old.get_weights()
        rest = [old.bias.numpy()] if old.use_bias else []
        return [np.asarray(old.effective_kernel()), *rest]

    return _rebuild(model, new_layer, new_weights)


def _rebuild(model, new_layer, new_weights):
    """A copy of ``model`` with layers replaced by ``new_layer(layer)`` (None: a plain copy)
    and weights set from ``new_weights(old layer)``."""
    made = []

    backend = backend_of(model)

    def make_layer(layer):
        layer = unwrap(layer)
        if not backend.is_layer(layer):  # a raw operation: no weights, nothing to convert
            return layer
        new = new_layer(layer)
        if new is None:
            new = type(layer).from_config(layer.get_config())
        made.append((layer, new))
        return new

    rebuilt = replay(model, make_layer)
    for old, new in made:
        new.set_weights(new_weights(old))
    return rebuilt
