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

import tflite_export
import tfsynapse
from conftest import rand_inputs, randomize_bn, zoo_cases, zoo_prune_and_shrink
from keras3_support import (keras3_data, small_keras3, twins,  # noqa: F401 (a fixture)
                            weights_of)
from tfsynapse import backends
from tfsynapse.backends import tf
from tfsynapse.graph import count_macs, count_params, dependency_groups


CRITERIA = [("l1", "filter"), ("l2", "filter"), ("dscore", "filter"), ("bn_scale", "filter"),
            ("fpgm", "filter"), ("random", "filter"), ("l1", "connection"),
            ("synaptic_strength", "connection")]


def test_the_backend_is_told_from_the_model(twins):
    legacy, modern = twins
    assert backends.backend_of(legacy).NAME == "tf_keras"
    assert backends.backend_of(modern).NAME == "keras3"
    assert backends.backend_of(modern.layers[1]).NAME == "keras3"
    with pytest.raises(TypeError, match="must be a Keras model"):
        backends.backend_of(np.zeros(3))


def test_same_outputs_before_pruning(twins):
    legacy, modern = twins
    x = rand_inputs(legacy, 2)
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
    w_legacy, w_modern = weights_of(p_legacy), weights_of(p_modern)
    assert w_legacy.keys() == w_modern.keys()
    for name in w_legacy:  # zero exactly where the tf_keras twin is zero
        np.testing.assert_array_equal(w_modern[name] == 0, w_legacy[name] == 0, err_msg=name)
    small, report = tfsynapse.shrink(p_modern, return_report=True)
    x = rand_inputs(modern, 4, seed=1)
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
    x = rand_inputs(model, 2)
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(pruned(x)), atol=1e-5)


def test_keras3_models_are_refused_clearly_where_not_supported_yet(twins):
    _, modern = twins
    with pytest.raises(TypeError, match="takes tf_keras models only. Export it with "
                                        "post-training int8"):
        tflite_export.quantize_aware(modern)


@pytest.mark.parametrize("other", ["jax", "torch"])
def test_another_keras3_backend_is_refused_with_the_fix(twins, monkeypatch, other):
    """JAX and PyTorch are not installed here, so the backend Keras reports is faked: what is
    tested is tfsynapse's check, not a real JAX model."""
    _, modern = twins
    monkeypatch.setattr(keras.backend, "backend", lambda: other)
    with pytest.raises(RuntimeError, match=f"the '{other}' backend; .*KERAS_BACKEND=tensorflow"):
        tfsynapse.count_macs(modern)

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


@pytest.fixture(scope="module")
def shrunk_modern(twins):
    _, modern = twins
    return tfsynapse.shrink(tfsynapse.prune_once(modern, 0.5))


@pytest.mark.parametrize("quantize", [None, "float16", "dynamic", "int8"])
def test_keras3_export_in_every_mode_matches_keras(shrunk_modern, quantize):
    x = rand_inputs(shrunk_modern, 16, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = tflite_export.convert(shrunk_modern, quantize=quantize,
                                     representative_dataset=x if quantize == "int8" else None)
    # every weight of this small model is under the converter's 1024-element threshold
    said = [str(w.message) for w in caught if "left every weight float32" in str(w.message)]
    assert bool(said) == (quantize == "dynamic"), said
    report = tflite_export.verify(data, shrunk_modern, x)
    scale = float(np.abs(np.asarray(shrunk_modern(x))).max())
    tolerance = {None: 1e-4, "float16": 1e-2, "dynamic": 5e-2, "int8": 1e-1}[quantize]
    assert np.isfinite(report["max_abs_error"]) and report["max_abs_error"] <= tolerance * scale
    # the mode really changed the weights' storage (a mode that did nothing would pass above)
    from tflite_export._runtime import load_interpreter  # noqa: PLC0415

    kinds = {d["dtype"] for d in load_interpreter(data).get_tensor_details()
             if len(d["shape"]) >= 2 and np.prod(d["shape"]) >= 8}
    expected = {None: np.float32, "float16": np.float16, "dynamic": np.float32,
                "int8": np.int8}[quantize]
    assert expected in kinds, (quantize, kinds)


def test_keras3_dynamic_range_quantises_weights_above_the_converters_threshold():
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(32)(inputs)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 64 x 32 = 2048 weights: quantised, nothing to say
        data = tflite_export.convert(model, quantize="dynamic")
    from tflite_export._runtime import load_interpreter  # noqa: PLC0415

    details = load_interpreter(data).get_tensor_details()
    assert any(d["dtype"] == np.int8 and np.prod(d["shape"]) == 64 * 32 for d in details)
    assert not any(d["dtype"] == np.int8 and np.prod(d["shape"]) == 32 * 4 for d in details)
    x = rand_inputs(model, 8)
    gap = np.abs(tflite_export.predict(data, x) - np.asarray(model(x))).max()
    assert gap < 0.05 * np.abs(np.asarray(model(x))).max()


def test_keras3_dict_outputs_export_in_keras_order():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], {"y": keras.layers.Dense(2, name="d")(a),
                                 "z": keras.layers.Dense(1, name="e")(b)})
    xs = [rand_inputs(keras.Model(a, a), 5), rand_inputs(keras.Model(b, b), 5, seed=1)]
    data = tflite_export.convert(model)
    assert [o.shape for o in tflite_export.predict(data, xs)] == [(5, 2), (5, 1)]
    assert tflite_export.verify(data, model, xs)["max_abs_error"] < 1e-5


class _ThreeOutputs(keras.layers.Layer):
    """One layer, three outputs: Keras 3 names all three after the layer (keras-hub's HGNetV2
    backbone returns its stages so)."""

    def call(self, x):
        return x * 2.0, x + 1.0, keras.ops.mean(x, axis=-1, keepdims=True)


def test_several_outputs_of_one_layer_all_reach_the_tflite_file_in_order():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, list(_ThreeOutputs(name="three")(inputs)))
    assert model.output_names == ["three"] * 3  # keyed by name, two would be lost
    assert backends.backend_of(model).output_names(model) == ["three", "three_1", "three_2"]
    x = rand_inputs(model, 5)
    data = tflite_export.convert(model)
    assert [o.shape for o in tflite_export.predict(data, x)] == [(5, 4), (5, 4), (5, 1)]
    assert tflite_export.verify(data, model, x)["max_abs_error"] < 1e-5


def test_a_tflite_that_reads_variables_is_refused(tmp_path, twins):
    """A SavedModel whose function captures untracked variables converts into a .tflite that
    reads variables LiteRT never initialises (NaN outputs); the job refuses it."""
    from tflite_export import conversion_job  # noqa: PLC0415

    _, modern = twins
    spec = tf.TensorSpec([None, 12, 12, 3], tf.float32, name="image")
    function = tf.function(lambda x: {"head": modern(x, training=False)},
                           input_signature=[spec]).get_concrete_function()
    holder = tf.Module()
    holder.keras_variables = list(modern.variables)  # Keras 3 variables, not their tf.Variables
    tf.saved_model.save(holder, str(tmp_path / conversion_job.SAVED_MODEL), signatures=function)
    conversion_job.write_job(str(tmp_path), quantize=None, int8_io=False, sparse_weights=False,
                             input_names=["image"], output_names=["head"])
    conversion_job.run(str(tmp_path))
    with pytest.raises(RuntimeError, match="reads TensorFlow variables"):
        conversion_job.read_result(str(tmp_path))


def test_keras3_batchnorm_recalibration_matches_tf_keras(twins):
    """Through prune_once(data=) and recalibrate_batchnorm itself: the same statistics on both
    Keras, different from the dense model's, pruned channels still zero."""
    legacy, modern = twins
    x = rand_inputs(legacy, 64, seed=5)
    p_legacy = tfsynapse.prune_once(legacy, 0.5, data=x, recalibration_steps=4)
    p_modern = tfsynapse.prune_once(modern, 0.5, data=x, recalibration_steps=4)

    def same_recalibrated_statistics(rtol):
        got, want, dense = weights_of(p_modern), weights_of(p_legacy), weights_of(modern)
        for name in ("stem_bn", "branch_bn", "inner_bn"):
            for stat in ("moving_mean", "moving_variance"):
                key = f"{name}/{stat}"
                assert not np.allclose(got[key], dense[key], rtol=0.01)  # recalibrated
                np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-5,
                                           err_msg=key)

    same_recalibrated_statistics(1e-4)
    other = rand_inputs(legacy, 48, seed=8)
    assert tfsynapse.recalibrate_batchnorm(p_modern, other, batch_size=16) == 3
    assert tfsynapse.recalibrate_batchnorm(p_legacy, other, batch_size=16) == 3
    # tf_keras's moving variance is Bessel-corrected, Keras 3's is not: n / (n - 1) = 1 + 4.3e-4
    # for a batch of 16 12x12 maps (2,304 values a channel)
    same_recalibrated_statistics(6e-4)
    dead = np.nonzero(weights_of(p_modern)["stem_bn/gamma"] == 0)[0]
    assert len(dead) == 8 and not weights_of(p_modern)["stem_bn/beta"][dead].any()


def test_keras3_sensitivity_analysis_matches_tf_keras(twins):
    legacy, modern = twins
    x = rand_inputs(legacy, 8, seed=6)

    def evaluate(model):  # agreement with the dense model's outputs: higher is better
        return -float(np.abs(np.asarray(model(x, training=False)) - reference).mean())

    reference = np.asarray(legacy(x, training=False))
    before = weights_of(modern)
    t_legacy = tfsynapse.sensitivity_analysis(legacy, evaluate, step=0.25, verbose=0)
    t_modern = tfsynapse.sensitivity_analysis(modern, evaluate, step=0.25, verbose=0)
    assert t_modern.groups() == t_legacy.groups() and len(t_modern.groups()) >= 3
    assert t_modern.baseline_macs == t_legacy.baseline_macs
    for name, (ratios, metrics) in t_legacy.curves().items():
        got_ratios, got_metrics = t_modern.curves()[name]
        np.testing.assert_allclose(got_ratios, ratios)
        np.testing.assert_allclose(got_metrics, metrics, atol=1e-5, err_msg=name)
    for key, value in weights_of(modern).items():  # restored bit-identical
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    # each trial recalibrated on data: the same curves again, the model restored again
    calibration = rand_inputs(legacy, 32, seed=9)
    r_legacy, r_modern = (tfsynapse.sensitivity_analysis(
        model, evaluate, step=0.5, recalibration_data=calibration, recalibration_steps=2,
        verbose=0) for model in (legacy, modern))
    assert r_modern.settings["recalibration_steps"] == 2
    for name, (ratios, metrics) in r_legacy.curves().items():
        # the BN statistics are re-estimated in float32 by each Keras: 1e-4 apart after some
        # earlier tests (oneDNN's summation order), on losses of about 0.4
        np.testing.assert_allclose(r_modern.curves()[name][1], metrics, atol=5e-4, err_msg=name)
        assert not np.allclose(metrics, t_legacy.curves()[name][1][1::2])  # recalibrated
    for key, value in weights_of(modern).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_keras3_synaptic_form_matches_tf_keras_and_round_trips(twins, tmp_path):
    legacy, modern = twins
    x = rand_inputs(legacy, 4, seed=7)
    s_legacy, r_legacy = tfsynapse.to_synaptic(legacy, return_report=True)
    s_modern, r_modern = tfsynapse.to_synaptic(modern, l1=1e-4, return_report=True)
    assert (r_modern.converted, r_modern.folded, sorted(r_modern.kept)) == \
        (r_legacy.converted, r_legacy.folded, sorted(r_legacy.kept))  # (the ops' names differ)
    assert r_modern.converted
    small = randomize_bn(small_keras3(), negative_gammas=False)
    folded, report = tfsynapse.to_synaptic(small, return_report=True)
    assert report.folded == {"bn": ["b"]}  # the BN scale moved into b's strengths
    x_small = keras3_data(4)[0]
    np.testing.assert_allclose(np.asarray(folded(x_small)), np.asarray(small(x_small)), atol=1e-4)
    assert type(s_modern.get_layer("branch")).__name__ == "SynapticConv2D"
    assert backends.backend_name(s_modern.get_layer("branch")) == "keras3"
    np.testing.assert_allclose(np.asarray(s_modern(x)), np.asarray(modern(x)), atol=1e-4)
    np.testing.assert_allclose(np.asarray(s_modern(x)), np.asarray(s_legacy(x)), atol=1e-4)
    assert s_modern.losses  # the L1 penalty on the strengths
    path = str(tmp_path / "synaptic.keras")
    s_modern.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(s_modern(x)), atol=1e-6)
    back = tfsynapse.from_synaptic(loaded)
    assert not any(type(layer).__name__ == "SynapticConv2D" for layer in back.layers)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(modern(x)), atol=1e-4)


def test_keras3_distiller_refuses_mixed_keras(twins):
    legacy, modern = twins
    with pytest.raises(TypeError, match="same Keras"):
        tfsynapse.Distiller(modern, legacy)
    with pytest.raises(ValueError, match="same model"):
        tfsynapse.Distiller(modern, modern)


def test_keras3_layers_with_lora_enabled_are_counted_pruned_and_shrunk_exactly():
    """``enable_lora`` makes ``layer.kernel`` a sum (a tensor, not a weight): the rules use the
    base kernel and prune the LoRA factors with it (a's input rows, b's output columns)."""
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(16, 3, padding="same", name="conv")
    h = keras.layers.ReLU(name="relu")(conv(inputs))
    dense = keras.layers.Dense(12, name="dense")
    h = keras.layers.ReLU(name="relu2")(dense(keras.layers.GlobalAveragePooling2D(name="gap")(h)))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    rng = np.random.default_rng(0)
    for layer, rank in ((conv, 2), (dense, 4)):
        layer.enable_lora(rank)
        layer.lora_kernel_b.assign(rng.normal(size=layer.lora_kernel_b.shape).astype("float32"))
    lora_macs = (3 * 3 * 3 * 2) * 16 + (16 * 4) * 12  # a @ b merged once per call
    plain_macs = 8 * 8 * 3 * 3 * 3 * 16 + 16 * 12 + 12 * 3
    assert tfsynapse.count_macs(model) == plain_macs + lora_macs
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1", scope="layer")
    small = tfsynapse.shrink(pruned)
    assert small.get_layer("dense").lora_enabled and small.get_layer("conv").lora_enabled
    assert small.get_layer("conv").lora_kernel_b.shape == (2, 8)
    assert small.get_layer("dense").lora_kernel_a.shape == (8, 4)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(pruned(x)), atol=1e-5)
