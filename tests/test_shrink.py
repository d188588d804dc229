"""shrink: masked-versus-shrunk equality for every graph rule and on real architectures."""

import importlib

import numpy as np
import pytest

import tfsynapse
from conftest import both_backends, rand_inputs, randomize_bn, sequential_model, weight_name
from tfsynapse.backends.tf_keras import keras

L = keras.layers
backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


_seq = sequential_model


def conv_stack():
    return _seq((10, 10, 3), L.Conv2D(8, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
                L.Conv2D(8, 3, padding="same", use_bias=False), L.BatchNormalization(scale=False),
                L.LeakyReLU(), L.MaxPooling2D(), L.Conv2D(6, 1), L.ELU(), L.AveragePooling2D(2),
                L.Flatten(), L.Dense(7), L.PReLU(), L.Dropout(0.5), L.Dense(3))


def conv1d_3d():
    inputs = keras.Input((12, 4))
    x = L.Conv1D(8, 3, padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.Activation("swish")(x)
    x = L.SeparableConv1D(6, 3, depth_multiplier=2)(x)
    x = L.UpSampling1D()(x)
    x = L.ZeroPadding1D(1)(x)
    x = L.Cropping1D(1)(x)
    x = L.GlobalMaxPooling1D()(x)
    out1 = L.Dense(2)(x)
    vol = keras.Input((4, 4, 4, 2))
    y = L.Conv3D(6, 3, padding="same")(vol)
    y = L.ReLU()(y)
    y = L.Conv3DTranspose(5, 2, strides=2)(y)
    y = L.GlobalAveragePooling3D()(y)
    out2 = L.Dense(2)(y)
    return keras.Model([inputs, vol], [out1, out2])


def residual_concat():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    a = L.BatchNormalization()(a)
    a = L.ReLU()(a)
    b = L.Conv2D(8, 3, padding="same")(a)
    s = L.Subtract()([a, b])
    m = L.Maximum()([s, L.Conv2D(8, 1)(a)])
    n = L.Minimum()([m, L.Conv2D(8, 1)(a)])
    v = L.Average()([n, a])
    c = L.Concatenate()([v, L.Conv2D(4, 1)(a), inputs])
    c = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(c)
    c = L.BatchNormalization()(c)
    c = L.Conv2DTranspose(6, 3, strides=2, padding="same")(c)
    c = L.ZeroPadding2D(1)(c)
    c = L.Cropping2D(1)(c)
    c = L.UpSampling2D()(c)
    c = L.SeparableConv2D(5, 3)(c)
    c = L.GlobalAveragePooling2D()(c)
    return keras.Model(inputs, L.Dense(4)(c))


def squeeze_excite():
    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 255.0)(inputs)
    x = L.Conv2D(8, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("swish")(x)
    s = L.GlobalAveragePooling2D()(x)
    s = L.Reshape((1, 1, 8))(s)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.Conv2D(8, 1, activation="sigmoid")(s)
    x = L.Multiply()([x, s])
    x = L.Conv2D(6, 1)(x)
    x = L.BatchNormalization()(x)
    y = L.Conv2D(6, 1)(x)
    x = x + y
    x = x * 0.5
    x = L.ReLU(6.0)(x + 0.0)
    x = L.SpatialDropout2D(0.2)(x)
    x = L.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, L.Dense(3)(x))


def grouped_layernorm_nested():
    inner = keras.Sequential([keras.Input((6, 6, 4)), L.Conv2D(8, 1), L.BatchNormalization(),
                              L.ReLU()], name="inner")
    inputs = keras.Input((6, 6, 4))
    x = inner(inputs)
    x = L.Conv2D(8, 3, groups=2, padding="same")(x)
    x = L.Conv2D(6, 1)(x)
    x = L.LayerNormalization()(x)
    x = L.Conv2D(6, 1)(x)
    shared = L.Conv2D(4, 1)
    x = L.Add()([shared(x), shared(L.Conv2D(6, 1)(x))])
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(2)(x))


def grouped_blocks():
    """A RegNet-style block (1x1, grouped 3x3, SE, 1x1) and a ConvNeXt-style one (depthwise as
    ``Conv2D(groups=C)``, LayerNormalization, an MLP, LayerScale) on a residual stream."""
    package = "keras" if keras.__name__.startswith("keras") else "tf_keras"
    LayerScale = importlib.import_module(f"{package}.src.applications.convnext").LayerScale  # noqa: N806

    inputs = keras.Input((8, 8, 3))
    stem = L.Conv2D(12, 3, padding="same", name="stem")(inputs)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 1, name="reg_1x1")(stem)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, groups=4, padding="same", name="reg_g")(x)))
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(16, 1, activation="sigmoid")(L.Conv2D(4, 1, activation="relu")(s))
    x = L.Multiply()([x, s])
    x = L.BatchNormalization()(L.Conv2D(12, 1, name="reg_out")(x))
    x = L.ReLU()(x + stem)
    y = L.Conv2D(12, 5, groups=12, padding="same", name="cnx_dw")(x)
    y = L.LayerNormalization(epsilon=1e-6)(y)
    y = L.Activation("gelu")(L.Dense(24, name="cnx_up")(y))
    y = LayerScale(0.5, 12, name="cnx_scale")(L.Dense(12, name="cnx_down")(y))
    x = x + y
    return keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))


BUILDERS = [conv_stack, conv1d_3d, residual_concat, squeeze_excite, grouped_layernorm_nested,
            grouped_blocks]


def test_whole_convolution_groups_are_removed():
    model = randomize_bn(grouped_blocks())
    pruned = tfsynapse.prune_once(model, {"reg_1x1": 0.5}, criterion="dscore")
    small = tfsynapse.shrink(pruned)
    g = small.get_layer("reg_g")
    assert (g.filters, g.groups) == (8, 2)  # two of four groups of 4 channels go
    assert small.get_layer("reg_1x1").filters == 8
    assert g.kernel.shape == (3, 3, 4, 8)  # each remaining group still reads 4 channels
    x = _inputs(model)
    np.testing.assert_allclose(small(x), pruned(x), rtol=1e-4, atol=1e-5)


def test_layer_scale_is_pruned_with_its_channels():
    model = grouped_blocks()
    graph = tfsynapse.dependency_groups(model)
    (group,) = [g for g in graph if "cnx_scale" in g.layers]
    gamma = weight_name(model.get_layer("cnx_scale").weights[0])
    assert ("cnx_scale", gamma, "param") in group.describe()  # (Keras 3 leaves it unnamed)
    assert not group.prunable  # the residual stream is normalised across channels
    assert any("LayerNormalization" in r or "across channels" in r for r in group.reasons)
    assert graph.group_of_layer("cnx_up").prunable  # the MLP's hidden channels are


def _inputs(model, n=3):
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=[n] + [int(d) for d in t.shape[1:]]).astype("float32") for t in model.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


def _outputs(model, x):
    out = model(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("granularity", ["filter", "connection"])
def test_masked_equals_shrunk_for_every_rule(builder, granularity):
    model = randomize_bn(builder())
    criterion = "random" if granularity == "filter" else "kernel_norm"
    pruned = tfsynapse.prune_once(model, 0.5 if granularity == "filter" else 0.7,
                                  criterion=criterion, granularity=granularity, scope="layer")
    small, report = tfsynapse.shrink(pruned, return_report=True, check=False)
    x = _inputs(pruned)
    for a, b in zip(_outputs(pruned, x), _outputs(small, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    if granularity == "filter":  # connection pruning removes a channel only once all its links die
        assert report.macs_after < report.macs_before
    assert report.params_after == small.count_params()
    assert report.macs_after == tfsynapse.count_macs(small)  # the plan's count is the model's
    for layer in small.layers:
        for w in layer.weights:
            assert 0 not in w.shape, layer.name


def test_shrunk_weights_are_the_kept_slices():
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(5, 3, name="a")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    out = L.Conv2D(3, 1, name="b")(x)
    model = randomize_bn(keras.Model(inputs, out))
    kernel, bias = model.get_layer("a").get_weights()
    kernel[..., [1, 3]] = 0
    bias[[1, 3]] = 0
    model.get_layer("a").set_weights([kernel, bias])
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    gamma[[1, 3]] = 0
    beta[[1, 3]] = 0
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    small = tfsynapse.shrink(model)
    np.testing.assert_array_equal(small.get_layer("a").get_weights()[0], np.delete(kernel, [1, 3], axis=3))
    np.testing.assert_array_equal(small.get_layer("bn").get_weights()[2], np.delete(mean, [1, 3]))
    np.testing.assert_array_equal(small.get_layer("b").get_weights()[0],
                                  np.delete(model.get_layer("b").get_weights()[0], [1, 3], axis=2))
    np.testing.assert_array_equal(small.get_layer("b").get_weights()[1], model.get_layer("b").get_weights()[1])


def test_shrink_never_empties_a_layer_and_keeps_input_model(cnn):
    for layer in cnn.layers:  # zero everything prunable in group c1
        if layer.name in ("c1", "c2"):
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
        if layer.name in ("bn1", "bn2"):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g * 0, b * 0, m, v])
    before = [w.copy() for w in cnn.get_weights()]
    small = tfsynapse.shrink(cnn)
    assert small.get_layer("c1").filters == 1
    for a, b in zip(before, cnn.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_round_to_keeps_multiples(cnn):
    pruned = tfsynapse.prune_once(cnn, 0.75, criterion="l1")  # c1: 6 of 8 pruned, c3: 9 of 12
    small = tfsynapse.shrink(pruned, round_to=4)
    assert small.get_layer("c1").filters == 4 and small.get_layer("c3").filters == 4
    x = rand_inputs(cnn)
    np.testing.assert_allclose(small(x), pruned(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="round_to"):
        tfsynapse.shrink(pruned, round_to=0)


def test_shrink_accepts_a_wrapped_model(cnn, backend):
    pruned = tfsynapse.prune_synaptic(cnn, tfsynapse.ConstantSparsity(0.5, 0, frequency=1), criterion="l1",
                                      granularity="filter", scope="layer")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 12, 12, 3)).astype("float32"), rng.integers(0, 5, 16)
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stepper = [tfsynapse.UpdatePruningStep()] if backend == "tf_keras" else []  # tfmot's wrappers
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=stepper)
    small = tfsynapse.shrink(pruned)
    assert small.get_layer("c1").filters == 4
    np.testing.assert_allclose(small(x[:4]), pruned(x[:4]), rtol=1e-4, atol=1e-5)


def test_a_producer_whose_every_channel_is_pruned_keeps_one():
    """Found by the long random-architecture run: a 1-channel branch concatenated into a group."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", name="trunk")(inputs)
    x = L.Concatenate()([x, L.Conv2D(1, 1, name="branch")(x)])
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.Conv2D(9, 1, activation="sigmoid", name="gate")(s)
    x = L.Multiply()([x, s])
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    group = tfsynapse.dependency_groups(model).group_of_layer("branch")
    assert sorted(group.producers) == ["branch", "gate", "trunk"] and group.size == 9
    for layer in ("branch",):  # zero the branch's only channel everywhere it is made
        kernel, bias = model.get_layer(layer).get_weights()
        model.get_layer(layer).set_weights([kernel * 0, bias * 0])
    kernel, bias = model.get_layer("gate").get_weights()
    kernel[..., 8], bias[8] = 0, 0
    model.get_layer("gate").set_weights([kernel, bias])
    small = tfsynapse.shrink(model)
    assert small.get_layer("branch").filters == 1
    x = _inputs(model)
    np.testing.assert_allclose(small(x), model(x), rtol=1e-4, atol=1e-6)
