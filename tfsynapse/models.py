"""Small reference models shared by the examples and the benchmarks."""

from tfsynapse import backends


def conv_bn_cnn(input_shape, classes, widths=(32, 64, 64, 128), name="conv_bn_cnn",
                backend="tf_keras"):
    """A plain Conv-BN-ReLU classifier: the quickstart's and the benchmarks' network.

    Four 3x3 convolutions without bias, each followed by BatchNormalization (momentum 0.9, so
    short trainings get usable statistics) and ReLU; max-pooling after the 2nd and 3rd; global
    average pooling and a Dense head that outputs logits.

    Args:
      input_shape: ``(height, width, channels)``.
      classes: the number of classes.
      widths: the four convolutions' filter counts.
      name: the model's name.
      backend: ``'tf_keras'`` (Keras 2, for tfmot) or ``'keras3'`` (``import keras``).

    Returns:
      A functional model of that Keras.

    Raises:
      ValueError: an unknown backend.
    """
    keras = backends.get(backend).keras
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate(widths):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = L.ReLU(name=f"relu{i + 1}")(x)
        if i in (1, 2):
            x = L.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
