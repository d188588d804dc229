"""Dependency graph: exact group contents per rule on toy models, and consistency on real ones."""


import numpy as np
import pytest

from conftest import both_backends, sequential_model
from tfsynapse.backends.tf_keras import keras
from tfsynapse.graph import UnsupportedLayerError, count_macs, count_params, dependency_groups

L = keras.layers
backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


def members(group):
    return sorted(set(group.describe()))


def group_named(graph, name):
    for g in graph:
        if g.name == name:
            return g
    raise AssertionError(f"no group {name}: {[g.name for g in graph]}")


def seq(*layers, shape=(8, 8, 3)):
    return sequential_model(shape, *layers)


def test_conv_bn_conv_group_members():
    model = seq(L.Conv2D(4, 3, name="a"), L.BatchNormalization(name="bn"), L.ReLU(name="r"),
                L.Conv2D(5, 1, name="b"))
    graph = dependency_groups(model)
    g = group_named(graph, "a")
    assert g.size == 4 and g.prunable
    assert members(g) == sorted([
        ("a", "kernel", "out"), ("a", "bias", "out"), ("bn", "gamma", "param"),
        ("bn", "beta", "param"), ("bn", "moving_mean", "stat"),
        ("bn", "moving_variance", "stat"), ("b", "kernel", "in"),
    ])
    out = group_named(graph, "b")
    assert not out.prunable and "reaches a model output" in out.reasons


def test_residual_add_couples_producers_and_depthwise(cnn, backend):
    graph = dependency_groups(cnn)
    g = group_named(graph, "c1")
    assert g.size == 8 and g.prunable
    assert g.producers == ["c1", "c2"]
    assert g.consumers == ["c2", "c3"]
    depthwise = "depthwise_kernel" if backend == "tf_keras" else "kernel"  # Keras 3's name
    assert ("dw", depthwise, "param") in members(g)
    assert ("dw", "bias", "param") in members(g)
    assert ("bn2", "gamma", "param") in members(g)
    for m in g.members:
        assert sorted(m.units.tolist()) == list(range(8))
    head = group_named(graph, "c3")
    assert members(head) == sorted([("c3", "kernel", "out"), ("c3", "bias", "out"),
                                    ("head", "kernel", "in")])


def test_concatenate_offsets():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Conv2D(6, 1, name="b")(inputs)
    x = L.Concatenate(name="cat")([a, b])
    out = L.Conv2D(3, 1, name="c")(x)
    graph = dependency_groups(keras.Model(inputs, out))
    ga, gb = group_named(graph, "a"), group_named(graph, "b")
    (ma,) = [m for m in ga.members if m.layer.name == "c"]
    (mb,) = [m for m in gb.members if m.layer.name == "c"]
    assert ma.positions.tolist() == [0, 1, 2, 3] and ma.units.tolist() == [0, 1, 2, 3]
    assert mb.positions.tolist() == list(range(4, 10)) and mb.units.tolist() == list(range(6))


def test_flatten_into_dense_tiles_channels():
    model = seq(L.Conv2D(3, 3, name="conv"), L.Flatten(name="flat"), L.Dense(2, name="fc"),
                shape=(6, 6, 1))
    g = group_named(dependency_groups(model), "conv")
    (fc,) = [m for m in g.members if m.layer.name == "fc"]
    assert fc.slot.axis == 0 and len(fc.positions) == 4 * 4 * 3
    assert fc.positions[fc.units == 0].tolist() == list(range(0, 48, 3))
    assert fc.positions[fc.units == 2].tolist() == list(range(2, 48, 3))


def test_depthwise_multiplier_repeats_channels():
    model = seq(L.Conv2D(3, 1, name="conv"), L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
                L.Conv2D(4, 1, name="pw"), L.Flatten())
    g = group_named(dependency_groups(model), "conv")
    (pw,) = [m for m in g.members if m.layer.name == "pw"]
    assert pw.units.tolist() == [0, 0, 1, 1, 2, 2]
    (dwb,) = [m for m in g.members if m.describe() == ("dw", "bias", "param")]
    assert dwb.units.tolist() == [0, 0, 1, 1, 2, 2]


def test_separable_conv_consumes_and_produces():
    model = seq(L.Conv2D(4, 1, name="conv"), L.SeparableConv2D(5, 3, depth_multiplier=2, name="sep"),
                L.Conv2D(2, 1, name="last"))
    graph = dependency_groups(model)
    g = group_named(graph, "conv")
    assert ("sep", "depthwise_kernel", "in") in members(g)
    (pw,) = [m for m in g.members if m.describe() == ("sep", "pointwise_kernel", "in")]
    assert pw.units.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    s = group_named(graph, "sep")
    assert members(s) == sorted([("sep", "pointwise_kernel", "out"), ("sep", "bias", "out"),
                                 ("last", "kernel", "in")])


def test_a_grouped_conv_unit_is_one_whole_convolution_group():
    model = seq(L.Conv2D(6, 1, name="a"), L.Conv2D(9, 3, groups=3, name="g"), L.Conv2D(2, 1, name="z"))
    graph = dependency_groups(model)
    g = group_named(graph, "a")
    assert g.prunable and g.size == 3 and sorted(g.producers) == ["a", "g"]
    (a_out,) = [m for m in g.members if m.describe() == ("a", "kernel", "out")]
    assert a_out.units.tolist() == [0, 0, 1, 1, 2, 2]  # 2 input channels per convolution group
    (g_out,) = [m for m in g.members if m.describe() == ("g", "kernel", "out")]
    assert g_out.units.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 3 output channels per group
    assert ("z", "kernel", "in") in [m.describe() for m in g.members]
    assert not any(m.describe()[:2] == ("g", "kernel") and m.role == "in" for m in g.members)


def test_a_grouped_conv_fed_by_a_frozen_tensor_is_frozen_with_it():
    model = seq(L.Conv2D(4, 3, groups=2, name="g"), L.Conv2D(2, 1, name="z"), shape=(8, 8, 4))
    assert not group_named(dependency_groups(model), "g").prunable  # the model input is frozen


def se_model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.Activation("swish", name="act")(x)
    s = L.GlobalAveragePooling2D(name="gap")(x)
    s = L.Reshape((1, 1, 8), name="reshape")(s)
    s = L.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="expand")(s)
    x = L.Multiply(name="excite")([x, s])
    out = L.Conv2D(4, 1, name="proj")(x)
    return keras.Model(inputs, out)


def test_squeeze_excitation_gate_is_coupled_and_prunable():
    graph = dependency_groups(se_model())
    g = group_named(graph, "conv")
    assert g.prunable, g.reasons
    assert g.producers == ["conv", "expand"]
    assert g.consumers == ["reduce", "proj"]
    assert group_named(graph, "reduce").prunable


def test_activation_with_nonzero_f0_before_a_consumer_freezes():
    model = seq(L.Conv2D(4, 1, name="a"), L.Activation("sigmoid"), L.Conv2D(2, 1, name="b"))
    g = group_named(dependency_groups(model), "a")
    assert not g.prunable and "not be zero" in g.reasons[0]


def test_softmax_over_channels_freezes():
    model = seq(L.Conv2D(4, 1, name="a"), L.Softmax(), L.Conv2D(2, 1, name="b"))
    assert not group_named(dependency_groups(model), "a").prunable


def test_layer_norm_freezes():
    model = seq(L.Conv2D(4, 1, name="a"), L.LayerNormalization(), L.Conv2D(2, 1, name="b"))
    g = group_named(dependency_groups(model), "a")
    assert not g.prunable and "across channels" in g.reasons[0]


def test_unknown_layer_warns_and_freezes_or_raises_in_strict_mode():
    model = seq(L.Conv2D(4, 1, name="a"), L.Lambda(lambda t: t * 2, name="lam"), L.Conv2D(2, 1))
    with pytest.warns(UserWarning, match="'lam'.*register_rule"):
        graph = dependency_groups(model)
    assert not group_named(graph, "a").prunable
    with pytest.raises(UnsupportedLayerError, match="lam"):
        dependency_groups(model, strict=True)


def test_nested_model_is_followed():
    inner = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(4, 1, name="ic"),
                              L.BatchNormalization(name="ibn"), L.ReLU()], name="inner")
    inputs = keras.Input((6, 6, 3))
    out = L.Conv2D(2, 1, name="after")(inner(inputs))
    g = group_named(dependency_groups(keras.Model(inputs, out)), "ic")
    assert g.prunable and ("ibn", "gamma", "param") in members(g)
    assert g.consumers == ["after"]


def test_shared_layer_couples_its_inputs():
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Conv2D(4, 1, name="b")(inputs)
    shared = L.Conv2D(3, 1, name="shared")
    out = L.Add()([shared(a), shared(b)])
    out = L.Conv2D(2, 1, name="z")(out)
    graph = dependency_groups(keras.Model(inputs, out))
    g = graph.group_of_layer("a")
    assert g is graph.group_of_layer("b")
    assert sorted(g.producers) == ["a", "b"] and g.size == 4


def test_prelu_transpose_and_tf_ops():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="a")(inputs)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = L.Conv2DTranspose(5, 2, strides=2, name="up")(x)
    x = x * 0.5
    y = L.Conv2D(3, 1, name="b")(x)
    z = L.Conv2D(3, 1, name="c")(y + 3.0)
    graph = dependency_groups(keras.Model(inputs, z))
    a = group_named(graph, "a")
    assert ("prelu", "alpha", "param") in members(a) and ("up", "kernel", "in") in members(a)
    (up_out,) = [m for m in group_named(graph, "up").members if m.describe() == ("up", "kernel", "out")]
    assert up_out.slot.axis == 2
    assert group_named(graph, "up").prunable  # x * 0.5 keeps zeros
    assert not group_named(graph, "b").prunable  # y + 3.0 does not


def test_model_errors():
    import keras as keras3  # noqa: PLC0415

    with pytest.raises(ValueError, match="not built"):  # Keras 3 works, built (test_keras3.py)
        dependency_groups(keras3.Sequential([keras3.layers.Dense(2)]))
    with pytest.raises(TypeError, match="must be a Keras model"):
        dependency_groups("model.keras")

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        dependency_groups(Sub())
    with pytest.raises(ValueError, match="not built"):
        dependency_groups(keras.Sequential([L.Dense(2)]))


def test_count_macs_and_params_by_hand():
    model = seq(L.Conv2D(4, 3, name="a"), L.DepthwiseConv2D(3, name="dw"), L.Flatten(),
                L.Dense(2, name="fc"), shape=(8, 8, 3))
    # a: 6x6 out, 3*3*3*4 per pixel = 108*36; dw: 4x4 out, 3*3*4 = 36*16; fc: 64 -> 2.
    assert count_macs(model) == 108 * 36 + 36 * 16 + 64 * 2
    graph = dependency_groups(model)
    g = group_named(graph, "a")
    keep = {g.id: np.array([True, False, True, False])}
    assert count_macs(graph, keep) == 54 * 36 + 18 * 16 + 32 * 2
    # a: 3*3*3*2 + 2, dw: 3*3*2 + 2, fc: 32*2 + 2
    assert count_params(graph, keep) == (54 + 2) + (18 + 2) + (64 + 2)
    assert count_params(model) == model.count_params()
