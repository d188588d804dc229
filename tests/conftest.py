"""Shared pytest setup: quiet TensorFlow, deterministic seeds, small shared models."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfsynapse.backends.tf_keras import keras  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


def randomize_bn(model, rng=None, negative_gammas=True):
    """Gives every BatchNormalization random statistics (and some negative gammas); tf_keras or
    Keras 3."""
    rng = rng or np.random.default_rng(0)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ == "BatchNormalization":
            c = inner.moving_mean.shape[0]
            gamma = rng.uniform(0.5, 1.5, c) * (np.where(rng.random(c) < 0.3, -1, 1) if negative_gammas else 1)
            values = []
            for w in inner.weights:
                name = w.name.split("/")[-1].split(":")[0]
                values.append({
                    "gamma": gamma, "beta": rng.normal(0, 0.3, c),
                    "moving_mean": rng.normal(0, 0.3, c), "moving_variance": rng.uniform(0.5, 2.0, c),
                }[name])
            inner.set_weights(values)
        if hasattr(inner, "layers") and inner is not model:  # a nested model
            randomize_bn(inner, rng, negative_gammas)
    return model


def sequential_model(shape, *layers):
    """A functional model applying ``layers`` in order to an input of ``shape``."""
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def small_cnn(input_shape=(12, 12, 3), classes=5):
    """Conv-BN-ReLU x2 with a residual add, a depthwise conv, GAP and a Dense head."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(12, 1, name="c3")(x)
    x = keras.layers.ReLU(name="r3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, name="head")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture
def cnn():
    return randomize_bn(small_cnn())


def rand_inputs(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    shape = [n] + [int(d) for d in model.inputs[0].shape[1:]]
    return rng.normal(size=shape).astype(np.float32)


def zero_units(array, axis):
    """Indices along ``axis`` whose slices are entirely zero."""
    moved = np.moveaxis(np.asarray(array), axis, 0).reshape(array.shape[axis], -1)
    return np.nonzero(~np.any(moved != 0, axis=1))[0].tolist()


def weights_by_name(model):
    out = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        for w in inner.weights:
            out[f"{inner.name}/{w.name.split('/')[-1].split(':')[0]}"] = w.numpy()
    return out


def zoo_cases(names, fast):
    """pytest params for an architecture zoo: ``fast`` ones marked ``zoo``, the others also
    ``slow`` and skipped unless ``TFSYNAPSE_ZOO=all``."""
    run_all = os.environ.get("TFSYNAPSE_ZOO") == "all"
    for name in names:
        if name in fast:
            yield pytest.param(name, marks=pytest.mark.zoo)
        else:
            yield pytest.param(name, marks=[pytest.mark.zoo, pytest.mark.slow, pytest.mark.skipif(
                not run_all, reason="TFSYNAPSE_ZOO=all runs every architecture")])


def zoo_prune_and_shrink(model, name):
    """The zoo check shared by both backends: every layer has a rule, parameters count right,
    half the channels pruned (random or l1 by name), masked == shrunk, >= 30% MACs off.

    Returns:
      ``(pruned, shrunk, report, x)`` for further checks.
    """
    import tfsynapse  # noqa: PLC0415

    model = randomize_bn(model, negative_gammas=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer of these architectures lacks a rule
        graph = tfsynapse.dependency_groups(model)
    assert tfsynapse.count_params(graph) == model.count_params()
    pruned = tfsynapse.prune_once(model, 0.5, criterion="random" if len(name) % 2 else "l1")
    small, report = tfsynapse.shrink(pruned, return_report=True, check=False)
    x = np.random.default_rng(3).normal(size=(2,) + tuple(model.inputs[0].shape[1:]))
    x = x.astype("float32")
    masked, shrunk = np.asarray(pruned(x, training=False)), np.asarray(small(x, training=False))
    assert np.abs(shrunk - masked).max() <= 1e-3 * max(float(np.abs(masked).max()), 1e-6), name
    assert graph.prunable_groups and report.mac_reduction >= 0.3, report.table()
    return pruned, small, report, x
