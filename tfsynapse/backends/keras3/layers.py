"""SynapticConv2D for Keras 3: the same layer as ``tfsynapse.layers.synaptic`` (tf_keras).

``K[:, :, i, j] = s_ij * V[:, :, i, j] / ||V[:, :, i, j]||`` with the strengths ``s`` of shape
``(C_in, C_out)`` (Lin et al., NeurIPS 2018; ``docs/methods.md``). Keras 3's ``Conv2D`` reads
its kernel through the ``kernel`` property, so overriding it makes every convolution use the
effective kernel. The weights are named and ordered as in the tf_keras layer
(``direction``, ``strength``, ``bias``), so one channel rule serves both.
"""

import keras

from tfsynapse.backends.synaptic_weights import (
    EPSILON,
    add_synaptic_weights,
    set_strength_options,
    strength_config,
)


@keras.saving.register_keras_serializable("tfsynapse")
class SynapticConv2D(keras.layers.Conv2D):
    """Conv2D with per-connection strengths: ``K = s * V / ||V||`` (norm over the kernel window).

    Args:
      filters, kernel_size, ...: as ``keras.layers.Conv2D`` (``groups`` must be 1).
      strength_regularizer: regularizer on the strengths, e.g. ``keras.regularizers.L1(1e-4)``.
      strength_initializer: initializer of ``s`` (default ones).
      **kwargs: the other Conv2D arguments. ``kernel_initializer`` initialises ``V``.
    """

    def __init__(self, filters, kernel_size, strength_regularizer=None,
                 strength_initializer="ones", **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        set_strength_options(self, keras, strength_regularizer, strength_initializer)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.input_spec = keras.layers.InputSpec(min_ndim=4, axes={-1: channels})
        self.compute_output_shape(input_shape)
        add_synaptic_weights(self, channels)
        self.built = True

    def effective_kernel(self):
        """The convolution kernel ``s * V / ||V||`` (the norm over each connection's window)."""
        ops = keras.ops
        norm = ops.sqrt(ops.sum(ops.square(self.direction), axis=(0, 1), keepdims=True) + EPSILON)
        return ops.expand_dims(ops.expand_dims(self.strength, 0), 0) * self.direction / norm

    @property
    def kernel(self):
        return self.effective_kernel()

    # Conv2D saves its own kernel and bias by position (for its quantized forms); this layer's
    # variables are direction, strength and bias: save and load them as any layer does.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        return strength_config(self, keras, super().get_config())
