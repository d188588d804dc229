"""Sparsity statistics of a (possibly wrapped) model, for logs, plots and reports."""

import numpy as np

from tfsynapse._keras import keras, pruning_wrapper
from tfsynapse.layers import SynapticConv2D


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
        if isinstance(inner, SynapticConv2D):
            conn = values[id(inner.strength)] == 0
            conn |= ~np.any(values[id(inner.direction)] != 0, axis=(0, 1))
        elif type(inner) in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
            kernel = values[id(inner.kernel)]
            conn = ~np.any(kernel != 0, axis=tuple(range(kernel.ndim - 2)))
        else:
            continue
        per_layer[inner.name] = float(conn.mean())
        dead += int(conn.sum())
        total += conn.size
    return (dead / total if total else 0.0), per_layer


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
