"""Connection (kernel-level) importance criteria for convolutions and dense layers.

A kernel ``K`` has shape ``(..spatial.., C_in, C_out)`` (Keras layout; a Dense kernel has no
spatial axes); connection ``(i, j)`` is the slice ``K[..., i, j]``. Every function returns a
float32 ``[C_in, C_out]`` tensor, built from vectorised TF ops (graph and distribution safe).
"""

from tfsynapse.backends import tf
from tfsynapse.criteria.filters import _as_float

__all__ = [
    "kernel_norm",
    "connection_l1",
    "synaptic_strength",
    "strength_magnitude",
]


def _as_kernel(kernel):
    kernel = _as_float(kernel)
    if kernel.shape.rank is None or kernel.shape.rank < 2:
        raise ValueError(
            f"kernel must have shape (..spatial.., C_in, C_out) with at least 2 dimensions, got "
            f"shape {kernel.shape}."
        )
    return kernel


def _spatial_axes(kernel):
    return list(range(kernel.shape.rank - 2))


def kernel_norm(kernel):
    """L2 norm of every connection's kernel slice, ``||K[..., i, j]||_2``.

    Args:
      kernel: float array or tensor ``(..spatial.., C_in, C_out)``.

    Returns:
      float32 tensor ``[C_in, C_out]`` (``|K|`` for a Dense kernel).

    Raises:
      ValueError: ``kernel`` has fewer than 2 dimensions.
    """
    kernel = _as_kernel(kernel)
    norms = tf.sqrt(tf.reduce_sum(tf.square(kernel), axis=_spatial_axes(kernel)))
    return tf.cast(norms, tf.float32)


def connection_l1(kernel):
    """L1 norm of every connection's kernel slice, ``sum |K[..., i, j]|``.

    Args:
      kernel: float array or tensor ``(..spatial.., C_in, C_out)``.

    Returns:
      float32 tensor ``[C_in, C_out]``.

    Raises:
      ValueError: ``kernel`` has fewer than 2 dimensions.
    """
    kernel = _as_kernel(kernel)
    return tf.cast(tf.reduce_sum(tf.abs(kernel), axis=_spatial_axes(kernel)), tf.float32)


def synaptic_strength(kernel, input_scale=None):
    """Post-hoc synaptic strength (Lin et al., "Synaptic Strength for CNN", NeurIPS 2018).

    ``s_ij = |gamma_i| * ||K[..., i, j]||_2`` where ``gamma_i`` is the scale of the
    BatchNormalization that produced input channel ``i``. Inputs are normalised, so the strength
    is comparable across layers (one global threshold).

    Args:
      kernel: float array or tensor ``(..spatial.., C_in, C_out)``.
      input_scale: optional float vector ``[C_in]`` of the producing BN's gammas; None means no
        such BN (all ones).

    Returns:
      float32 tensor ``[C_in, C_out]``.

    Raises:
      ValueError: ``kernel`` has fewer than 2 dimensions, or ``input_scale`` is not a vector of
        length ``C_in``.
    """
    norms = kernel_norm(kernel)
    if input_scale is None:
        return norms
    scale = tf.cast(_as_float(input_scale), tf.float32)
    if scale.shape.rank != 1 or scale.shape[0] not in (None, norms.shape[0]):
        raise ValueError(
            f"input_scale must be a vector of {norms.shape[0]} gammas (one per input channel), "
            f"got shape {scale.shape}."
        )
    return tf.abs(scale)[:, None] * norms


def strength_magnitude(strength):
    """Magnitude ``|s_ij|`` of the trainable strength matrix of a synaptic layer.

    Args:
      strength: float array or tensor ``[C_in, C_out]``, the layer's strength variable.

    Returns:
      float32 tensor ``[C_in, C_out]``.
    """
    return tf.cast(tf.abs(_as_float(strength)), tf.float32)
