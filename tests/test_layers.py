"""SynapticConv2D and the conversion to and from the synaptic form (Lin et al., NeurIPS 2018)."""

import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import both_backends, normal, randomize_bn
from tfsynapse.backends.tf_keras import keras, tf
from tfsynapse.layers.synaptic import is_synaptic, synaptic_class

L = keras.layers
backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


def test_reparameterized_layer_computes_conv_with_s_times_unit_direction(backend):
    SynapticConv2D = synaptic_class(keras.Input((1,)))  # noqa: N806 - this Keras' class
    layer = SynapticConv2D(5, 3, padding="same", strength_initializer="random_uniform")
    x = normal(2, 7, 7, 4)
    y = layer(x)
    v, s, b = (w.numpy() for w in layer.weights)
    kernel = s[None, None] * v / np.sqrt((v ** 2).sum(axis=(0, 1), keepdims=True) + 1e-12)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME") + b
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert layer.strength.shape == (4, 5)
    if backend == "tf_keras":  # tfmot's PrunableLayer interface
        assert layer.get_prunable_weights() == [layer.strength]


def relu_net(final_activation=None):
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(8, 3, padding="same", name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.LeakyReLU(0.2)(x)
    x = L.Conv2D(6, 3, padding="same", name="c3")(x)
    x = L.BatchNormalization(name="bn3")(x)
    x = L.Activation(final_activation or "relu")(x)
    x = L.Conv2D(6, 1, name="c4")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(4, name="head")(x))


def test_to_and_from_synaptic_preserve_outputs_with_negative_gammas():
    model = randomize_bn(relu_net())
    assert any((model.get_layer(n).gamma.numpy() < 0).any() for n in ("bn1", "bn2", "bn3"))
    synaptic, report = tfsynapse.to_synaptic(model, return_report=True)
    assert sorted(report.folded) == ["bn1", "bn2", "bn3"] and report.flipped and not report.kept
    assert all(not synaptic.get_layer(n).scale for n in ("bn1", "bn2", "bn3"))
    x = normal(4, 10, 10, 3, seed=1)
    np.testing.assert_allclose(synaptic(x), model(x), rtol=1e-4, atol=1e-5)
    plain = tfsynapse.from_synaptic(synaptic)
    assert not any(is_synaptic(l) for l in plain.layers)
    np.testing.assert_allclose(plain(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_batchnorm_without_beta_folds_exactly():
    inputs = keras.Input((10, 10, 3))
    h = L.Conv2D(6, 3, padding="same", name="c1")(inputs)
    h = L.BatchNormalization(center=False, name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(4, 3, padding="same", name="c2")(h)
    model = randomize_bn(keras.Model(inputs, L.GlobalAveragePooling2D()(h)))
    synaptic, report = tfsynapse.to_synaptic(model, return_report=True)
    assert sorted(report.folded) == ["bn1"] and report.flipped
    bn = synaptic.get_layer("bn1")
    assert not bn.scale and not bn.center
    x = normal(3, 10, 10, 3, seed=2)
    np.testing.assert_allclose(synaptic(x), model(x), rtol=1e-4, atol=1e-5)


def test_non_homogeneous_activation_keeps_the_bn_scale():
    model = randomize_bn(relu_net(final_activation="swish"))
    synaptic, report = tfsynapse.to_synaptic(model, return_report=True)
    assert "bn3" in report.kept and "homogeneous" in report.kept["bn3"]
    assert synaptic.get_layer("bn3").scale
    x = normal(2, 10, 10, 3, seed=1)
    np.testing.assert_allclose(synaptic(x), model(x), rtol=1e-4, atol=1e-5)


def test_negative_gammas_after_a_relu_producer_keep_the_bn_scale():
    """Flipping a channel's sign upstream is exact only through a linear producer: with
    Conv2D(activation='relu') -> BN(gamma < 0), -relu(z) != relu(-z), so the BN keeps its
    scale (the fold used to change the outputs by 0.07 here)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 1))
    x = L.Conv2D(16, 3, activation="relu", name="a")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D()(L.Conv2D(16, 3, activation="relu", name="b")(x))
    model = randomize_bn(keras.Model(inputs, L.Dense(4, name="out")(x)))
    assert np.any(model.get_layer("bn").gamma.numpy() < 0)
    synaptic, report = tfsynapse.to_synaptic(model, return_report=True)
    assert "relu" in report.kept["bn"] and not report.flipped
    x = normal(4, 10, 10, 1)
    np.testing.assert_allclose(synaptic(x), model(x), rtol=1e-4, atol=1e-5)


def test_l1_penalty_is_in_model_losses():
    synaptic = tfsynapse.to_synaptic(randomize_bn(relu_net()), l1=1e-3)
    strengths = [l.strength for l in synaptic.layers if is_synaptic(l)]
    assert len(strengths) == 4 and len(synaptic.losses) == 4
    expected = 1e-3 * sum(float(np.abs(s.numpy()).sum()) for s in strengths)
    assert float(tf.add_n(synaptic.losses)) == pytest.approx(expected, rel=1e-5)
    assert tfsynapse.to_synaptic(relu_net(), l1=0).losses == []


def test_global_connection_pruning_of_strengths_reaches_target(backend):
    synaptic = tfsynapse.to_synaptic(randomize_bn(relu_net()))
    schedule = tfsynapse.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=8, frequency=2)
    pruned = tfsynapse.prune_synaptic(synaptic, schedule, max_pruning_ratio=0.98)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 10, 10, 3)).astype("float32"), rng.integers(0, 4, 40)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stepper = [tfsynapse.UpdatePruningStep()] if backend == "tf_keras" else []  # tfmot's wrappers
    pruned.fit(x, y, batch_size=4, verbose=0, callbacks=stepper)
    stripped = tfsynapse.strip_pruning(pruned)
    strengths = [l.strength.numpy() for l in stripped.layers if is_synaptic(l)]
    fraction = np.mean(np.concatenate([s.ravel() for s in strengths]) == 0)
    assert abs(fraction - 0.9) <= 0.02
    assert all((s != 0).any() for s in strengths)  # no layer emptied
    small = tfsynapse.shrink(tfsynapse.from_synaptic(stripped))
    np.testing.assert_allclose(small(x[:4]), stripped(x[:4]), rtol=1e-4, atol=1e-5)


def test_post_hoc_synaptic_strength_uses_the_upstream_bn_gamma():
    model = randomize_bn(relu_net())
    graph = tfsynapse.dependency_groups(model)
    assert graph.upstream_batchnorm("c2").name == "bn1"
    assert graph.upstream_batchnorm("c1") is None
    from tfsynapse.plan import MaskPlan, PruningOptions  # noqa: PLC0415

    plan = MaskPlan(graph, PruningOptions(criterion="synaptic_strength", granularity="connection"))
    scores = plan.scoring.connection_scores(model.get_layer("c2")).numpy()
    kernel = model.get_layer("c2").kernel.numpy()
    gamma = model.get_layer("bn1").gamma.numpy()
    expected = np.abs(gamma)[:, None] * np.sqrt((kernel ** 2).sum(axis=(0, 1)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_synaptic_model_saves_loads_and_converts(tmp_path, fmt, backend):
    synaptic = tfsynapse.to_synaptic(randomize_bn(relu_net()))
    path = str(tmp_path / f"m.{fmt}")
    synaptic.save(path)
    with tfsynapse.prune_scope():
        loaded = keras.models.load_model(path)
    x = normal(3, 10, 10, 3, seed=2)
    np.testing.assert_allclose(loaded(x), synaptic(x), rtol=1e-5, atol=1e-6)
    flat = tflite_export.convert(loaded)
    assert tflite_export.verify(flat, loaded, x)["max_abs_error"] < 1e-4
