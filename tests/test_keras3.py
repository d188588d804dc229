"""Keras 3 (``import keras``, TensorFlow backend) through the backend seam.

The same architecture built in tf_keras and in Keras 3, with the same weights, must give the same
dependency groups, the same MACs and parameters, the same pruned units for every criterion, and
a shrunk model equal to the masked one. A Keras 3 zoo from ``keras.applications`` checks real
architectures (more with ``TFSYNAPSE_ZOO=all``).
"""

import warnings

import keras
import numpy as np
import pytest

import tfsynapse
from conftest import randomize_bn, zoo_cases, zoo_prune_and_shrink
from tfsynapse import backends
from tfsynapse.backends.tf_keras import keras as tf_keras
from tfsynapse.graph import count_macs, count_params, dependency_groups

CRITERIA = [("l1", "filter"), ("l2", "filter"), ("dscore", "filter"), ("bn_scale", "filter"),
            ("fpgm", "filter"), ("random", "filter"), ("l1", "connection"),
            ("synaptic_strength", "connection")]


def _build(K, ops_relu):
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


def _key(layer, weight):
    name = weight.name.split("/")[-1].split(":")[0]
    return f"{layer.name}/{'kernel' if name == 'depthwise_kernel' else name}"  # tf_keras's name


def _leaf_weights(model):
    """``(key, variable)`` for every weight of every layer, nested models included."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if hasattr(layer, "layers"):
            stack.extend(layer.layers)
            continue
        for w in layer.weights:
            yield _key(layer, w), w


def _weights(model):
    return {key: np.asarray(w.numpy()) for key, w in _leaf_weights(model)}


def _set_weights(model, values):
    for key, w in _leaf_weights(model):
        w.assign(values[key])


@pytest.fixture(scope="module")
def twins():
    """The probe architecture in tf_keras and in Keras 3, with the same weights."""
    legacy = randomize_bn(_build(tf_keras, lambda t: tf_keras.layers.Activation("relu")(t)))
    modern = _build(keras, keras.ops.relu)
    _set_weights(modern, _weights(legacy))
    return legacy, modern


def _x(model, n=2, seed=0):
    shape = (n,) + tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_the_backend_is_told_from_the_model(twins):
    legacy, modern = twins
    assert backends.backend_of(legacy).NAME == "tf_keras"
    assert backends.backend_of(modern).NAME == "keras3"
    assert backends.backend_of(modern.layers[1]).NAME == "keras3"
    with pytest.raises(TypeError, match="must be a Keras model"):
        backends.backend_of(np.zeros(3))


def test_same_outputs_before_pruning(twins):
    legacy, modern = twins
    x = _x(legacy)
    np.testing.assert_allclose(np.asarray(modern(x)), np.asarray(legacy(x)), atol=1e-5)


def test_same_groups_macs_and_params(twins):
    legacy, modern = twins
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer and op of the probe has a rule
        g_legacy, g_modern = dependency_groups(legacy), dependency_groups(modern)
    describe = lambda g: sorted((grp.size, grp.prunable, tuple(sorted(grp.producers)))  # noqa: E731
                                for grp in g)
    assert describe(g_modern) == describe(g_legacy)
    assert len(g_modern.prunable_groups) >= 3
    assert count_macs(g_modern) == count_macs(g_legacy) > 0
    assert count_params(g_modern) == count_params(g_legacy) == modern.count_params()


@pytest.mark.parametrize("criterion,granularity", CRITERIA)
def test_same_units_pruned_and_masked_equals_shrunk(twins, criterion, granularity):
    legacy, modern = twins
    kwargs = dict(criterion=criterion, granularity=granularity, seed=3)
    p_legacy = tfsynapse.prune_once(legacy, 0.5, **kwargs)
    p_modern = tfsynapse.prune_once(modern, 0.5, **kwargs)
    assert backends.backend_name(p_modern) == "keras3"
    w_legacy, w_modern = _weights(p_legacy), _weights(p_modern)
    assert w_legacy.keys() == w_modern.keys()
    for name in w_legacy:  # zero exactly where the tf_keras twin is zero
        np.testing.assert_array_equal(w_modern[name] == 0, w_legacy[name] == 0, err_msg=name)
    small, report = tfsynapse.shrink(p_modern, return_report=True)
    x = _x(modern, 4, seed=1)
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(p_modern(x)), atol=1e-5)
    assert backends.backend_name(small) == "keras3"
    assert small.count_params() == report.params_after <= report.params_before
    assert report.macs_after == count_macs(small) <= report.macs_before
    if granularity == "filter":  # (connection pruning at 50% leaves no channel without inputs)
        assert report.macs_after < report.macs_before
    assert report.macs_after == tfsynapse.shrink(p_legacy, return_report=True)[1].macs_after


def test_sequential_model_prunes_and_shrinks():
    model = keras.Sequential([
        keras.Input((10, 10, 2)), keras.layers.Conv2D(8, 3, activation="relu", name="a"),
        keras.layers.Conv2D(8, 3, activation="relu", name="b"), keras.layers.Flatten(),
        keras.layers.Dense(3, name="out")])
    pruned = tfsynapse.prune_once(model, 0.5)
    small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.channels == {"a": (8, 4), "b": (8, 4)}
    x = _x(model)
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(pruned(x)), atol=1e-5)


def test_keras3_models_are_refused_clearly_where_not_supported_yet(twins):
    _, modern = twins
    schedule = tfsynapse.ConstantSparsity(0.5, 0)
    with pytest.raises(TypeError, match="prune_once .* and shrink"):
        tfsynapse.prune_synaptic(modern, schedule)


ZOO_FAST = ("MobileNetV2", "ResNet50", "EfficientNetB0", "ConvNeXtTiny")
ZOO_ALL = sorted(name for name in dir(keras.applications)
                 if name[0].isupper() and callable(getattr(keras.applications, name)))
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


@pytest.mark.parametrize("name", list(zoo_cases(ZOO_ALL, ZOO_FAST)))
def test_keras3_zoo_masked_equals_shrunk(name):
    size = MIN_SIZE.get(name, 32)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    _, small, report, _ = zoo_prune_and_shrink(model, name)
    assert small.count_params() == report.params_after
