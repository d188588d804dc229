"""Sparsity statistics of a (possibly wrapped) model, for logs, plots and reports."""

import numpy as np

from tfsynapse.backends import backend_of
from tfsynapse.backends.tf_keras import pruning_wrapper
from tfsynapse.graph import rule_for


def _effective(layer):
    """``{weight: value}`` with masks applied when ``layer`` is a pruning wrapper."""
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        values = {id(w): w.numpy() for w in layer.layer.weights}
        for weight, mask, _ in layer.pruning_vars:
            values[id(weight)] = values[id(weight)] * mask.numpy()
        return layer.layer, values
    return layer, {id(w): w.numpy() for w in layer.weights}


def connection_sparsity(model):
    """The fraction of dead connections ``K[..., i, j]`` over the model's convolutions.

    A connection is dead when its kernel slice is all zero (or, in a SynapticConv2D, when its
    strength is zero). Masks of pruning wrappers are taken into account.

    Args:
      model: a tf_keras model, wrapped or not.

    Returns:
      ``(overall fraction, {layer name: fraction})``; ``(0.0, {})`` without convolutions.
    """
    per_layer, dead, total = {}, 0, 0
    for layer in _all_layers(model):
        inner, values = _effective(layer)
        rule = rule_for(inner)
        kernel = rule.connection_kernel(inner) if rule is not None else None
        if kernel is None:
            continue
        kernel = values[id(kernel)]
        conn = ~np.any(kernel != 0, axis=tuple(range(kernel.ndim - 2)))
        strength = rule.connection_strength(inner)
        if strength is not None:
            conn |= values[id(strength)] == 0
        per_layer[inner.name] = float(conn.mean())
        dead += int(conn.sum())
        total += conn.size
    return (dead / total if total else 0.0), per_layer


def _all_layers(model):
    for layer in model.layers:
        if backend_of(layer, "layer").is_model(layer):  # a nested model, either Keras
            yield from _all_layers(layer)
        else:
            yield layer
