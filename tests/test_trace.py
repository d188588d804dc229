"""Composite layers and subclassed models are traced into their sublayers (both Keras); what
cannot be traced stays opaque with its reason, and the counters say what they did not count."""


import numpy as np
import pytest

import tfsynapse
from conftest import normal
from tfsynapse.graph import trace as trace_lib

# 16x16x4 input: stem 3x3 conv 4->8, two residual blocks of two 3x3 convs 8->8, GAP, Dense 8->3
STEM_MACS = 16 * 16 * 9 * 4 * 8
BLOCK_MACS = 2 * 16 * 16 * 9 * 8 * 8
DENSE_MACS = 8 * 3


def _relu(K):
    return K.ops.relu if hasattr(K, "ops") else K.activations.relu


def block_class(K, sublayer_names=None):
    """A residual block written as one layer (no get_config of its own, as users write them)."""

    class Block(K.layers.Layer):
        def __init__(self, filters, **kwargs):
            super().__init__(**kwargs)
            names = sublayer_names or (None, None, None)
            self.c1 = K.layers.Conv2D(filters, 3, padding="same", name=names[0])
            self.bn = K.layers.BatchNormalization(name=names[1])
            self.c2 = K.layers.Conv2D(filters, 3, padding="same", name=names[2])

        def call(self, x, training=None):
            y = _relu(K)(self.bn(self.c1(x), training=training))
            return _relu(K)(K.layers.Add()([x, self.c2(y)]))

    return Block


def blocks_model(K, block=None):
    block = block or block_class(K)
    inputs = K.Input((16, 16, 4))
    x = K.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = block(8, name="b1")(x)
    x = block(8, name="b2")(x)
    outputs = K.layers.Dense(3, name="head")(K.layers.GlobalAveragePooling2D()(x))
    return K.Model(inputs, outputs)


def subclassed_model(K):
    Block = block_class(K)

    class Net(K.Model):
        def __init__(self):
            super().__init__()
            self.stem = K.layers.Conv2D(8, 3, padding="same")
            self.b1, self.b2 = Block(8), Block(8)
            self.pool = K.layers.GlobalAveragePooling2D()
            self.head = K.layers.Dense(3)

        def call(self, x):
            return self.head(self.pool(self.b2(self.b1(self.stem(x)))))

    net = Net()
    net(np.zeros((1, 16, 16, 4), np.float32))
    return net


def _data(n=4):
    return normal(n, 16, 16, 4, seed=1)


def _randomize(model):
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) if "variance" not in
                       v.name else rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                       for w, v in zip(model.get_weights(), model.weights)])
    return model


def _stem_group(graph):
    return next(g for g in graph.groups if "stem" in g.producers
                or any(p.startswith("conv2d") for p in g.producers[:1]) and g.size == 8
                and len(g.producers) == 3)


def test_a_model_of_composite_blocks_is_counted_and_coupled_through_them(K):
    model = blocks_model(K)
    assert tfsynapse.count_macs(model) == STEM_MACS + 2 * BLOCK_MACS + DENSE_MACS
    assert tfsynapse.count_params(model) == model.count_params()
    graph = tfsynapse.dependency_groups(model)
    residual = graph.group_of_layer("stem")
    # the stem and each block's second conv write the residual stream: one group
    assert residual.prunable and len(residual.producers) == 3
    inner = [g for g in graph.groups if g.prunable and g is not residual]
    assert len(inner) == 2 and all(g.size == 8 for g in inner)  # each block's first conv
    summary = graph.summary()
    assert "traced into their layers: 2 (b1, b2)" in summary


def test_prune_once_and_shrink_work_on_composite_blocks_exactly(K):
    model = _randomize(blocks_model(K))
    data = _data()
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")  # Block has no get_config
    small = tfsynapse.shrink(pruned)
    np.testing.assert_allclose(np.asarray(small(data)), np.asarray(pruned(data)),
                               rtol=1e-4, atol=1e-5 * float(np.abs(pruned(data)).max()))
    assert not [layer for layer in small.layers if type(layer).__name__ == "Block"]
    assert tfsynapse.count_macs(small) < 0.35 * tfsynapse.count_macs(model)
    # the user's model is untouched
    assert np.abs(np.asarray(model(data)) - np.asarray(pruned(data))).max() > 1e-3


def test_a_subclassed_model_is_traced_into_a_functional_model_of_its_layers(K):
    net = _randomize(subclassed_model(K))
    data = _data()
    functional = tfsynapse.functional_model(net)
    assert functional is not net and not isinstance(functional, type(net))
    np.testing.assert_array_equal(np.asarray(functional(data)), np.asarray(net(data)))
    assert tfsynapse.count_macs(net) == STEM_MACS + 2 * BLOCK_MACS + DENSE_MACS
    small = tfsynapse.shrink(tfsynapse.prune_once(net, 0.5, criterion="l1"))
    assert tfsynapse.count_macs(small) < 0.35 * tfsynapse.count_macs(net)
    import tflite_export  # noqa: PLC0415

    want = np.asarray(small(data))
    lite = tflite_export.predict(tflite_export.convert(small), data)
    np.testing.assert_allclose(lite, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_a_subclassed_model_prunes_during_fit_and_shrinks_to_what_it_computed(K):
    net = subclassed_model(K)
    pruned = tfsynapse.prune_synaptic(net, tfsynapse.ConstantSparsity(0.5, 0, frequency=1),
                                      criterion="l1", granularity="filter")
    pruned.compile("sgd", "mse")
    data = _data(8)
    pruned.fit(data, np.zeros((8, 3), np.float32), epochs=1, verbose=0,
               callbacks=[tfsynapse.UpdatePruningStep()])
    stripped = tfsynapse.strip_pruning(pruned)
    small = tfsynapse.shrink(stripped)
    scale = float(np.abs(np.asarray(stripped(data))).max())
    np.testing.assert_allclose(np.asarray(small(data)), np.asarray(stripped(data)),
                               atol=1e-5 * max(scale, 1e-3))
    assert tfsynapse.count_macs(small) < 0.6 * tfsynapse.count_macs(net)


def test_budgets_sensitivity_and_synaptic_layers_work_on_a_subclassed_model(K):
    net = _randomize(subclassed_model(K))
    data = _data(8)
    budget = 0.5 * tfsynapse.count_macs(net)
    pruned, report = tfsynapse.prune_to_budget(net, macs=budget, return_report=True)
    small = tfsynapse.shrink(pruned)
    assert tfsynapse.count_macs(small) == report.predicted <= budget
    table = tfsynapse.sensitivity_analysis(
        net, lambda m: -float(np.mean(np.square(np.asarray(m(data))))), step=0.45,
        max_ratio=0.9, verbose=0)
    assert len(table.groups()) == 3  # the residual stream and each block's inner conv
    synaptic = tfsynapse.to_synaptic(net)
    assert sum(type(layer).__name__ == "SynapticConv2D" for layer in synaptic.layers) == 5
    np.testing.assert_allclose(np.asarray(synaptic(data)), np.asarray(net(data)), rtol=1e-4,
                               atol=1e-5 * float(np.abs(np.asarray(net(data))).max()))


def test_an_unbuilt_subclassed_model_is_refused_with_what_to_do(K):
    Block = block_class(K)

    class Net(K.Model):
        def __init__(self):
            super().__init__()
            self.b = Block(4)

        def call(self, x):
            return self.b(x)

    with pytest.raises(ValueError, match="subclassed model.*not known.*call it once"):
        tfsynapse.dependency_groups(Net())


def test_a_subclassed_model_with_a_weight_outside_its_layers_is_refused_by_name(K):
    class Scaled(K.Model):
        def __init__(self):
            super().__init__()
            self.conv = K.layers.Conv2D(8, 1)
            self.pool = K.layers.GlobalAveragePooling2D()
            self.scale = self.add_weight(name="gain", shape=(8,), initializer="ones")

        def call(self, x):
            return self.pool(self.conv(x) * self.scale)

    net = Scaled()
    net(_data(1))
    with pytest.raises(ValueError, match=r"holds 1 weight\(s\) of its own \(gain\) outside "
                                         "its layers"):
        tfsynapse.count_params(net)


def _branchy(K):
    class Branchy(K.layers.Layer):
        """Python control flow on a tensor's value: cannot be traced."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = K.layers.Conv2D(8, 3, padding="same")

        def call(self, x):
            if x[0, 0, 0, 0] > 0:
                return self.conv(x)
            return x

        def build(self, input_shape):  # Keras 3 cannot build it by running call
            self.conv.build(input_shape)

        def compute_output_shape(self, input_shape):  # nor infer its output shape
            return input_shape

    return Branchy


def test_a_layer_that_cannot_be_traced_stays_opaque_and_is_never_counted_silently(K):
    inputs = K.Input((16, 16, 4))
    x = K.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = _branchy(K)(name="branchy")(x)
    model = K.Model(inputs, K.layers.Dense(3)(K.layers.GlobalAveragePooling2D()(x)))
    with pytest.warns(UserWarning, match="'branchy' .* stays opaque: branchy: not traced: its "
                                         "call failed on symbolic inputs"):
        graph = tfsynapse.dependency_groups(model)
    assert not graph.group_of_layer("stem").prunable
    assert "opaque (frozen, called whole): branchy: not traced" in graph.summary()
    with pytest.warns(UserWarning, match=r"counted 73,752 MACs without 1 layer\(s\).*"
                                         r"584 weights: 'branchy'"):
        assert tfsynapse.count_macs(graph) == STEM_MACS + DENSE_MACS


def test_a_layer_using_its_own_weight_stays_opaque_with_the_weight_named(K):
    class Scaled(K.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = K.layers.Conv2D(8, 1)

        def build(self, shape):
            self.scale = self.add_weight(name="scale", shape=(8,), initializer="ones")

        def call(self, x):
            return self.conv(x) * self.scale

    model = _one_layer_model(K, Scaled(name="scaled"))
    with pytest.warns(UserWarning, match="holds 1 weight\\(s\\) of its own \\(scale\\)"):
        tfsynapse.dependency_groups(model)


def _one_layer_model(K, layer):
    inputs = K.Input((16, 16, 4))
    x = layer(K.layers.Conv2D(8, 3, padding="same", name="stem")(inputs))
    return K.Model(inputs, K.layers.Dense(3)(K.layers.GlobalAveragePooling2D()(x)))


def test_a_trace_that_computes_something_else_is_refused_with_the_gap(K):
    class Noisy(K.layers.Layer):
        """Draws a Python random factor per call: a trace freezes one draw."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = K.layers.Conv2D(8, 1)
            self.rng = np.random.default_rng(0)

        def call(self, x):
            return self.conv(x) * float(self.rng.uniform(1.0, 2.0))

    with pytest.warns(UserWarning, match="not traced: the traced graph differs from the layer's "
                                         "output by"):
        graph = tfsynapse.dependency_groups(_one_layer_model(K, Noisy(name="noisy")))
    assert "noisy" in graph.flat.tracer.opaque


def test_keep_opaque_switches_tracing_off_for_a_class_or_one_layer(K):
    Block = block_class(K)
    model = blocks_model(K, Block)
    try:
        tfsynapse.keep_opaque(model.get_layer("b2"))
        with pytest.warns(UserWarning, match="'b2'.*kept opaque by tfsynapse.keep_opaque"):
            graph = tfsynapse.dependency_groups(model)
        assert list(graph.flat.tracer.traced) == ["b1"]
        tfsynapse.keep_opaque(Block)
        with pytest.warns(UserWarning, match="'b1'.*kept opaque"):
            assert not tfsynapse.dependency_groups(model).flat.tracer.traced
    finally:
        trace_lib._OPAQUE_CLASSES.discard(Block)
    with pytest.raises(TypeError, match="layer classes or layers"):
        tfsynapse.keep_opaque("b1")


def test_sublayers_with_the_name_of_another_layer_are_renamed_and_reported(K):
    model = _randomize(blocks_model(K, block_class(K, sublayer_names=("conv_a", "bn", "conv_b"))))
    graph = tfsynapse.dependency_groups(model)
    assert list(graph.flat.tracer.traced) == ["b1", "b2"]
    assert graph.flat.tracer.renamed == {"conv_a in b2": "b2_conv_a", "bn in b2": "b2_bn",
                                         "conv_b in b2": "b2_conv_b"}
    assert "renamed to keep layer names unique: 'conv_a in b2' -> 'b2_conv_a'" in graph.summary()
    assert graph.group_of_layer("b2_conv_a").prunable
    data = _data()
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
    small = tfsynapse.shrink(pruned)
    np.testing.assert_allclose(np.asarray(small(data)), np.asarray(pruned(data)),
                               rtol=1e-4, atol=1e-5 * float(np.abs(pruned(data)).max()))


def test_traces_are_cached_per_layer_and_call_shape(K):
    model = blocks_model(K)
    tfsynapse.dependency_groups(model)
    block = model.get_layer("b1")
    first = dict(trace_lib._TRACES[block])
    tfsynapse.count_macs(model)
    assert trace_lib._TRACES[block] == first and len(first) == 1


def _se_block_class(K):
    mean = (lambda t: K.ops.mean(t, axis=(1, 2), keepdims=True)) if hasattr(K, "ops") else \
        (lambda t: __import__("tensorflow").reduce_mean(t, axis=(1, 2), keepdims=True))

    class SEBlock(K.layers.Layer):
        """Conv-BN-ReLU-Conv with squeeze-excitation and a residual, written as one layer."""

        def __init__(self, filters, **kwargs):
            super().__init__(**kwargs)
            self.c1 = K.layers.Conv2D(filters * 2, 3, padding="same")
            self.bn = K.layers.BatchNormalization()
            self.c2 = K.layers.Conv2D(filters, 3, padding="same")
            self.squeeze = K.layers.Dense(4, activation="relu")
            self.excite = K.layers.Dense(filters, activation="sigmoid")

        def call(self, x):
            y = self.c2(_relu(K)(self.bn(self.c1(x))))
            return x + y * self.excite(self.squeeze(mean(y)))

    return SEBlock


def test_user_blocks_with_residual_and_squeeze_excitation_prune_shrink_and_export(K):
    import tflite_export  # noqa: PLC0415

    model = _randomize(blocks_model(K, _se_block_class(K)))
    graph = tfsynapse.dependency_groups(model)
    assert list(graph.flat.tracer.traced) == ["b1", "b2"] and not graph.flat.tracer.opaque
    # inside each block: the expanded conv and the squeeze Dense are groups of their own; the
    # second conv and the excitation are coupled with the residual stream (stem's group)
    sizes = sorted(g.size for g in graph.prunable_groups)
    assert sizes == [4, 4, 8, 16, 16], sizes
    data = _data()
    small = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5, criterion="l1"))
    assert tfsynapse.count_macs(small) < 0.4 * tfsynapse.count_macs(model)
    lite = tflite_export.predict(tflite_export.convert(small), data)
    want = np.asarray(small(data))
    np.testing.assert_allclose(lite, want, rtol=0, atol=1e-4 * np.abs(want).max())
