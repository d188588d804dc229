"""What the two SynapticConv2D classes (tf_keras, Keras 3) share: their strength settings,
config and weights, made the same way in either Keras (``add_weight``, ``regularizers`` and
``initializers`` have the same API in both), so both layers hold the same variables in one
order."""

EPSILON = 1e-12  # added under the square root of each connection's squared norm


def set_strength_options(layer, keras, regularizer, initializer):
    """Checks ``groups == 1`` and sets ``strength_regularizer`` / ``strength_initializer``.

    Args:
      layer: the SynapticConv2D being constructed (after ``Conv2D.__init__``).
      keras: its Keras module (tf_keras or keras).
      regularizer, initializer: the constructor's arguments.

    Raises:
      ValueError: a grouped convolution.
    """
    if layer.groups != 1:
        raise ValueError("SynapticConv2D does not support grouped convolutions (groups=1 only).")
    layer.strength_regularizer = keras.regularizers.get(regularizer)
    layer.strength_initializer = keras.initializers.get(initializer)


def strength_config(layer, keras, config):
    """``config`` (the Conv2D config) with the strength settings added."""
    config.update({
        "strength_regularizer": keras.regularizers.serialize(layer.strength_regularizer),
        "strength_initializer": keras.initializers.serialize(layer.strength_initializer),
    })
    return config


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
