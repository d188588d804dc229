"""ProximalL1's held columns (tfsynapse/layers/column_scale.py), on tf_keras and Keras 3: which
columns a BatchNormalization makes free, the exactness of rescaling them, and the mechanism:
the plain step kills whole columns where the held step selects connections within them."""

import warnings

import numpy as np
import pytest

import tfsynapse
from conftest import synaptic_net
from tfsynapse.layers.column_scale import free_columns, rescale_columns


def _net(K, widths=(12, 12), epsilon=1e-3):
    """conv -> BN -> ReLU twice (both columns free), then GAP and Dense; synaptic form."""
    L = K.layers
    inputs = K.Input((8, 8, 2))
    x = inputs
    for i, width in enumerate(widths):
        x = L.Conv2D(width, 3, padding="same", name=f"c{i + 1}")(x)
        x = L.BatchNormalization(epsilon=epsilon, name=f"bn{i + 1}")(x)
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return tfsynapse.to_synaptic(K.Model(inputs, L.Dense(3)(x)))


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 2)).astype("float32"), rng.integers(0, 3, n)


def test_free_columns_are_those_feeding_one_batchnorm_and_others_say_why(K):
    L = K.layers
    inputs = K.Input((8, 8, 4))
    a = L.Conv2D(4, 3, padding="same", name="to_bn")(inputs)
    a = L.BatchNormalization(name="bn")(a)
    b = L.Conv2D(4, 3, padding="same", activation="relu", name="relu_first")(a)
    b = L.BatchNormalization(name="bn_after_relu")(b)
    c = L.Conv2D(4, 3, padding="same", name="to_add")(b)
    d = L.Add()([c, a])
    e = L.Conv2D(4, 3, padding="same", name="to_two")(d)
    f = L.BatchNormalization(name="bn_e")(e)
    g = L.Add()([f, e])
    out = L.Conv2D(2, 1, name="to_output")(g)
    model = tfsynapse.to_synaptic(K.Model(inputs, out), fold_batchnorm=False)
    held, kept = free_columns(model)
    assert [(h.conv.name, h.norm.name) for h in held] == [("to_bn", "bn")]
    assert set(kept) == {"relu_first", "to_add", "to_two", "to_output"}
    assert "activation 'relu'" in kept["relu_first"]
    assert "not to one BatchNormalization" in kept["to_add"]
    assert "not to one BatchNormalization" in kept["to_two"]
    assert "model output" in kept["to_output"]
    # through tfmot's pruning wrappers, the same columns
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=0)
    wrapped = tfsynapse.prune_synaptic(model, schedule, criterion="synaptic_strength",
                                       granularity="connection")
    assert [h.conv.name for h in free_columns(wrapped)[0]] == ["to_bn"]


def test_a_shared_convolution_or_batchnorm_is_held_only_when_every_call_agrees(K):
    L = K.layers
    a, b = K.Input((8, 8, 2)), K.Input((8, 8, 2))
    twin, twin_bn = L.Conv2D(4, 3, padding="same", name="twin"), L.BatchNormalization(name="twin_bn")
    siamese = L.Add()([twin_bn(twin(a)), twin_bn(twin(b))])  # same conv into the same BN
    loose = L.Conv2D(4, 3, padding="same", name="loose")
    loose_a = L.BatchNormalization(name="loose_bn")(loose(a))
    loose_b = L.ReLU()(loose(b))  # the second call's scale reaches the loss
    one_bn = L.BatchNormalization(name="one_bn")
    x = one_bn(L.Conv2D(4, 3, padding="same", name="first")(siamese))
    y = one_bn(L.Conv2D(4, 3, padding="same", name="second")(loose_a))  # a BN for two convs
    out = L.GlobalAveragePooling2D()(L.Concatenate()([x, y, loose_b]))
    model = tfsynapse.to_synaptic(K.Model([a, b], out), fold_batchnorm=False)
    held, kept = free_columns(model)
    assert [(h.conv.name, h.norm.name) for h in held] == [("twin", "twin_bn")]
    assert "not to one BatchNormalization" in kept["loose"]
    assert "also normalises another layer's output" in kept["first"]
    assert "also normalises another layer's output" in kept["second"]


def test_rescaling_sets_unit_norm_and_keeps_the_function(K):
    # BN's epsilon is the one thing the rescaling changes (it resists small pre-BN variances):
    # 1e-7 makes the check tight; with the default 1e-3 the difference is epsilon's alone
    model = _net(K, widths=(6, 10), epsilon=1e-7)
    rng = np.random.default_rng(1)
    held, _ = free_columns(model)
    assert [h.conv.name for h in held] == ["c1", "c2"]
    for pair in held:  # a trained-looking state: strengths and BN statistics far from defaults
        pair.conv.strength.assign(rng.uniform(0.01, 0.3, pair.conv.strength.shape).astype("float32"))
        width = pair.norm.moving_mean.shape[0]
        pair.norm.moving_mean.assign(rng.normal(0, 0.2, width).astype("float32"))
        pair.norm.moving_variance.assign(rng.uniform(0.02, 0.2, width).astype("float32"))
    x, _ = _data(16)
    training = model(x, training=True).numpy()  # (this call moves BN's statistics: first)
    inference = model(x, training=False).numpy()
    means = {h.conv.name: h.norm.moving_mean.numpy() for h in held}
    norms = {h.conv.name: np.linalg.norm(h.conv.strength.numpy(), axis=0) for h in held}
    rescale_columns(held)
    for pair in held:
        s = pair.conv.strength.numpy()
        np.testing.assert_allclose(np.linalg.norm(s, axis=0), 1.0, rtol=1e-5)
        ratio = 1.0 / norms[pair.conv.name]
        np.testing.assert_allclose(pair.norm.moving_mean.numpy(), means[pair.conv.name] * ratio,
                                   rtol=1e-5)
    scale = np.abs(inference).max()
    assert np.abs(model(x, training=False).numpy() - inference).max() < 1e-4 * scale
    assert np.abs(model(x, training=True).numpy() - training).max() < 1e-4 * scale
    inference = model(x, training=False).numpy()
    # the compensation is what keeps inference: rescaling the columns alone changes it
    for pair in held:
        pair.conv.strength.assign(pair.conv.strength * 2.0)
    assert np.abs(model(x, training=False).numpy() - inference).max() > 5e-2 * scale


def test_the_plain_step_kills_columns_where_the_held_step_selects_connections(K):
    x, y = _data()
    dead, zeros = {}, {}
    for hold in (False, True):
        K.utils.set_random_seed(0)
        model = _net(K)
        model.compile(K.optimizers.SGD(0.05, momentum=0.9),
                      K.losses.SparseCategoricalCrossentropy(from_logits=True))
        callback = tfsynapse.ProximalL1(0.1, hold_columns=hold)
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback])
        s = model.get_layer("c2").strength.numpy()
        dead[hold], zeros[hold] = (s == 0).all(axis=0).mean(), (s == 0).mean()
        if hold:
            assert callback.held_layers == ["c1", "c2"] and callback.kept_layers == {}
            alive = ~(s == 0).all(axis=0)
            np.testing.assert_allclose(np.linalg.norm(s[:, alive], axis=0), 1.0, rtol=1e-4)
        else:
            assert callback.held_layers == []
    assert dead[False] >= 0.9, dead  # the plain step: whole columns zero
    assert dead[True] == 0.0, dead  # held: no column dies ...
    assert 0.1 < zeros[True] < 0.9, zeros  # ... and L1 chose connections inside them


def test_a_model_with_free_and_bound_columns_warns_with_the_layers(K):
    model = synaptic_net(K, filters=4)
    model.compile(K.optimizers.SGD(0.01, momentum=0.9),
                  K.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_, y_ = _data(8)
    with pytest.warns(UserWarning, match=r"of 1 layers .* not those of 1 others .*'c2'"):
        model.fit(x_, y_, verbose=0, callbacks=[tfsynapse.ProximalL1(1e-3, hold_columns=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = tfsynapse.ProximalL1(1e-3)  # the paper's step: nothing held
        model.fit(x_, y_, verbose=0, callbacks=[default])
    assert default.hold_columns is False and default.held_layers == []
