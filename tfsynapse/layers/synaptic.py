"""SynapticConv2D: a convolution whose every connection carries an explicit synaptic strength.

Lin, Zhong, Wu, Yan, "Synaptic Strength for Convolutional Neural Network", NeurIPS 2018:
the kernel of the connection from input channel ``i`` to output channel ``j`` is a unit-norm
direction times a strength, ``K[:, :, i, j] = s_ij * V[:, :, i, j] / ||V[:, :, i, j]||``, and an
L1 penalty on ``s`` makes the strengths sparse. ``s`` has shape ``(C_in, C_out)``. Each backend
defines the layer for its Keras (``backends/tf_keras/layers.py``, ``backends/keras3/layers.py``:
the same weights, names and order, so one channel rule serves both); this module holds what
is common.

Only a Conv2D counterpart is provided. For Dense the reparameterisation degenerates (each
connection is one weight, so ``s_ij = |w_ij|`` is plain magnitude pruning); a depthwise
convolution has one connection per channel, so its "connections" are channels, which the
filter-level groups already prune.
"""

import numpy as np

from tfsynapse.backends import backend_name, backend_of, get
from tfsynapse.backends.synaptic_weights import EPSILON
from tfsynapse.backends.tf_keras.layers import SynapticConv2D

__all__ = ["SynapticConv2D", "is_synaptic", "synaptic_class", "synaptic_weights_from_kernel"]


def synaptic_weights_from_kernel(kernel):
    """``(V, s)`` such that ``s * V / ||V||`` equals ``kernel`` (``V = kernel``, ``s = ||K_ij||``).

    Args:
      kernel: numpy kernel ``(kh, kw, C_in, C_out)``.

    Returns:
      ``(direction, strength)`` numpy arrays.
    """
    strength = np.sqrt(np.sum(np.square(kernel), axis=(0, 1)) + EPSILON)
    return kernel.astype(np.float32), strength.astype(np.float32)


def synaptic_class(model_or_layer):
    """The SynapticConv2D class of the object's Keras (tf_keras or Keras 3)."""
    return backend_of(model_or_layer).SynapticConv2D


def is_synaptic(layer):
    """Whether ``layer`` is a SynapticConv2D of either Keras."""
    name = backend_name(layer)
    return name is not None and isinstance(layer, get(name).SynapticConv2D)
