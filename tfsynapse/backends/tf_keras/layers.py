"""SynapticConv2D for tf_keras: the same layer as ``backends/keras3/layers.py`` (Keras 3).

Lin, Zhong, Wu, Yan, "Synaptic Strength for Convolutional Neural Network", NeurIPS 2018:
the kernel of the connection from input channel ``i`` to output channel ``j`` is a unit-norm
direction times a strength, ``K[:, :, i, j] = s_ij * V[:, :, i, j] / ||V[:, :, i, j]||``, and an
L1 penalty on ``s`` makes the strengths sparse. ``s`` has shape ``(C_in, C_out)`` and is the
layer's prunable weight for tfmot (``PrunableLayer``).
"""

from tfsynapse.backends.synaptic_weights import (
    EPSILON,
    add_synaptic_weights,
    set_strength_options,
    strength_config,
)
from tfsynapse.backends.tf_keras import keras, prunable_layer, tf


class SynapticConv2D(keras.layers.Conv2D, prunable_layer.PrunableLayer):
    """Conv2D with per-connection strengths: ``K = s * V / ||V||`` (norm over the kernel window).

    Args:
      filters, kernel_size, ...: as ``keras.layers.Conv2D`` (``groups`` must be 1).
      strength_regularizer: regularizer on the strengths, e.g. ``keras.regularizers.L1(1e-4)``
        (the paper's sparsity penalty; it appears in ``model.losses``).
      strength_initializer: initializer of ``s`` (default ones).
      **kwargs: the other Conv2D arguments. ``kernel_initializer`` initialises ``V``.

    Attributes:
      direction: the variable ``V`` (kernel shape).
      strength: the variable ``s``, shape ``(C_in, C_out)``.
    """

    def __init__(self, filters, kernel_size, strength_regularizer=None,
                 strength_initializer="ones", **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        set_strength_options(self, keras, strength_regularizer, strength_initializer)

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        channels = self._get_input_channel(input_shape)
        self.compute_output_shape(input_shape)
        add_synaptic_weights(self, channels)
        self.input_spec = keras.layers.InputSpec(min_ndim=4, axes={self._get_channel_axis(): channels})
        self.built = True

    def effective_kernel(self):
        """The convolution kernel ``s * V / ||V||`` (the norm over each connection's window)."""
        norm = tf.sqrt(tf.reduce_sum(tf.square(self.direction), axis=[0, 1], keepdims=True) + EPSILON)
        return self.strength[None, None] * self.direction / norm

    @property
    def kernel(self):
        return self.effective_kernel()

    def get_prunable_weights(self):
        """The strengths: tfmot prunes connections by pruning ``s``."""
        return [self.strength]

    def get_config(self):
        return strength_config(self, keras, super().get_config())
