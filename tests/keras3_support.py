"""What the Keras 3 tests share: the probe architecture built as twins in tf_keras and in
Keras 3 with the same weights, a small Keras 3 CNN and its data (imported by test_keras3*.py)."""

import keras
import numpy as np
import pytest

from conftest import randomize_bn, weight_name
from tfsynapse.backends.tf_keras import keras as tf_keras


def build_probe(K, ops_relu):
    """Residual add (an operator), a raw relu op, concatenation, depthwise, an SE gate and a
    nested Sequential: the patterns whose channel coupling differs from a plain chain."""
    L = K.layers
    i = K.Input((12, 12, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(16, 3, padding="same", name="branch")(x)
    y = L.BatchNormalization(name="branch_bn")(y)
    x = ops_relu(x + y)
    z = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    z = L.Conv2D(8, 1, name="pw")(z)
    se = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(z)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    z = L.Multiply(name="se_gate")([z, se])
    x = L.Concatenate(name="concat")([x, z])
    inner = K.Sequential([K.Input((12, 12, 24)), L.Conv2D(12, 1, name="inner_conv"),
                          L.BatchNormalization(name="inner_bn"), L.ReLU(name="inner_relu")],
                         name="inner")
    x = inner(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return K.Model(i, L.Dense(5, name="head")(x), name="probe")


def weight_key(layer, weight):
    name = weight_name(weight)
    return f"{layer.name}/{'kernel' if name == 'depthwise_kernel' else name}"  # tf_keras's name


def _leafweights_of(model):
    """``(key, variable)`` for every weight of every layer, nested models included."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if hasattr(layer, "layers"):
            stack.extend(layer.layers)
            continue
        for w in layer.weights:
            yield weight_key(layer, w), w


def weights_of(model):
    """``{layer/weight: array}`` of every leaf layer (nested models included)."""
    return {key: np.asarray(w.numpy()) for key, w in _leafweights_of(model)}


def set_weights_of(model, values):
    """Assigns ``weights_of``-keyed ``values`` to ``model``."""
    for key, w in _leafweights_of(model):
        w.assign(values[key])


@pytest.fixture(scope="module")
def twins():
    """The probe architecture in tf_keras and in Keras 3, with the same weights."""
    legacy = randomize_bn(build_probe(tf_keras, lambda t: tf_keras.layers.Activation("relu")(t)))
    modern = build_probe(keras, keras.ops.relu)
    set_weights_of(modern, weights_of(legacy))
    return legacy, modern


def small_keras3(seed=0):
    """Conv-BN-Conv-GAP-Dense on 10x10x1 in Keras 3 (16 filters each), seeded."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((10, 10, 1), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu", name="a")(i)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(4, name="out")(x))


def keras3_data(n=128, seed=0):
    """``n`` random 10x10x1 images and labels of 4 classes."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10, 10, 1)).astype("float32"), rng.integers(0, 4, n)


def compile_keras3(model, lr=1e-3):
    """Adam and sparse cross-entropy on logits; returns the model."""
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def save_npy(folder, array):
    """Saves ``array`` as calibration.npy in ``folder``; returns its path."""
    path = str(folder / "calibration.npy")
    np.save(path, array)
    return path
