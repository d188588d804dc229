"""The weights of a SynapticConv2D, made the same way in either Keras (``add_weight`` has the
same keywords in tf_keras and Keras 3), so both layers hold the same variables in one order."""


def add_synaptic_weights(layer, channels):
    """Creates ``layer.direction`` ``(kh, kw, C_in, C_out)``, ``layer.strength``
    ``(C_in, C_out)`` and ``layer.bias`` (or None), from the layer's Conv2D settings.

    Args:
      layer: a SynapticConv2D being built.
      channels: its input channels ``C_in``.
    """
    layer.direction = layer.add_weight(
        name="direction", shape=tuple(layer.kernel_size) + (channels, layer.filters),
        initializer=layer.kernel_initializer, constraint=layer.kernel_constraint,
        trainable=True, dtype=layer.dtype)
    layer.strength = layer.add_weight(
        name="strength", shape=(channels, layer.filters), initializer=layer.strength_initializer,
        regularizer=layer.strength_regularizer, trainable=True, dtype=layer.dtype)
    layer.bias = None
    if layer.use_bias:
        layer.bias = layer.add_weight(
            name="bias", shape=(layer.filters,), initializer=layer.bias_initializer,
            regularizer=layer.bias_regularizer, constraint=layer.bias_constraint,
            trainable=True, dtype=layer.dtype)
