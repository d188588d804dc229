"""Keras 3 (``import keras``, TensorFlow backend) through the backend seam.

The same architecture built in tf_keras and in Keras 3, with the same weights, must give the same
dependency groups, the same MACs and parameters, the same pruned units for every criterion, and
a shrunk model equal to the masked one. A Keras 3 zoo from ``keras.applications`` checks real
architectures (more with ``TFSYNAPSE_ZOO=all``).
"""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import randomize_bn, tensorboard_scalars, zoo_cases, zoo_prune_and_shrink
from tfsynapse import backends
from tfsynapse.backends import tf
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
    x = _x(shrunk_modern, 16, seed=2)
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
    x = _x(model, 8)
    gap = np.abs(tflite_export.predict(data, x) - np.asarray(model(x))).max()
    assert gap < 0.05 * np.abs(np.asarray(model(x))).max()


def test_keras3_dict_outputs_export_in_keras_order():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], {"y": keras.layers.Dense(2, name="d")(a),
                                 "z": keras.layers.Dense(1, name="e")(b)})
    xs = [_x(keras.Model(a, a), 5), _x(keras.Model(b, b), 5, seed=1)]
    data = tflite_export.convert(model)
    assert [o.shape for o in tflite_export.predict(data, xs)] == [(5, 2), (5, 1)]
    assert tflite_export.verify(data, model, xs)["max_abs_error"] < 1e-5


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


def _small_keras3(seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((10, 10, 1), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu", name="a")(i)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(4, name="out")(x))


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10, 10, 1)).astype("float32"), rng.integers(0, 4, n)


def _compile(model, lr=1e-3):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_keras3_prunes_during_fit_to_the_schedule_and_shrinks():
    x, y = _data()
    schedule = tfsynapse.fit_schedule(0.5, epochs=3, samples=len(x), batch_size=32)
    pruned = _compile(tfsynapse.prune_synaptic(_small_keras3(), schedule, criterion="dscore",
                                               granularity="filter", scope="layer"))
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert int(pruned.pruning_step.numpy()) == 3 * 4  # tfmot's count: the first step is 1
    keep = pruned.keep_plan()
    assert keep and all(k.mean() == 0.5 for k in keep.values())
    assert pruned.pruned_fraction() == pytest.approx(0.5)
    stripped = tfsynapse.strip_pruning(pruned)
    assert backends.backend_name(stripped) == "keras3" and not hasattr(stripped, "masks")
    small, report = tfsynapse.shrink(stripped, return_report=True)  # self-checks masked == shrunk
    assert report.channels == {"a": (16, 8), "b": (16, 8)}


def test_keras3_connection_pruning_during_fit_reaches_its_target():
    x, y = _data()
    schedule = tfsynapse.fit_schedule(0.6, epochs=2, samples=len(x), batch_size=32)
    pruned = _compile(tfsynapse.prune_synaptic(_small_keras3(), schedule))  # synaptic, global
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert pruned.pruned_fraction() == pytest.approx(0.6, abs=0.02)
    stripped = tfsynapse.strip_pruning(pruned)
    np.testing.assert_allclose(np.asarray(stripped(x[:4])), np.asarray(pruned(x[:4])), atol=1e-6)


def test_keras3_masks_at_the_first_step_are_prune_once_masks():
    """With a learning rate of 0, one training step only computes the masks: they must zero
    exactly what prune_once zeroes (the same plan and criterion, either path)."""
    model = _small_keras3(seed=1)
    once = tfsynapse.prune_once(model, 0.5, criterion="l1")
    pruned = _compile(tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 1),
                                               criterion="l1", granularity="filter",
                                               scope="layer"), lr=0.0)
    pruned.fit(*_data(32), epochs=1, batch_size=32, verbose=0)
    for layer in ("a", "bn", "b"):
        for w_once, w_fit in zip(once.get_layer(layer).trainable_weights,
                                 pruned.get_layer(layer).trainable_weights):  # (BN statistics move)
            np.testing.assert_array_equal(w_once.numpy() == 0, w_fit.numpy() == 0, err_msg=layer)


def test_keras3_saved_mid_schedule_resumes_with_the_same_step_and_masks(tmp_path):
    x, y = _data()
    schedule = tfsynapse.PolynomialDecay(0.0, 0.5, 0, 8, frequency=1)
    pruned = _compile(tfsynapse.prune_synaptic(_small_keras3(), schedule))
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = str(tmp_path / "mid.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded).__name__ == "KerasPrunedModel"
    assert int(loaded.pruning_step.numpy()) == int(pruned.pruning_step.numpy()) == 4
    for a, b in zip(pruned.masks, loaded.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert loaded.pruning_options.to_config() == pruned.pruning_options.to_config()
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)  # the schedule goes on from step 4
    assert int(loaded.pruning_step.numpy()) == 8
    assert 0.0 < 1 - np.mean(np.concatenate([m.numpy().ravel() for m in loaded.masks]))


def test_keras3_fit_refuses_tf_keras_callbacks_but_takes_tfsynapse_ones():
    from tfsynapse.backends.tf_keras import keras as tf_keras, pruning_callbacks  # noqa: PLC0415

    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=1, frequency=1)
    pruned = _compile(tfsynapse.prune_synaptic(_small_keras3(), schedule))
    for callback in (tf_keras.callbacks.LambdaCallback(), pruning_callbacks.UpdatePruningStep()):
        with pytest.raises(ValueError, match="is not a Keras 3 callback"):
            pruned.fit(*_data(32), epochs=1, callbacks=[callback], verbose=0)
    pruned.fit(*_data(32), epochs=1, callbacks=[tfsynapse.UpdatePruningStep()], verbose=0)
    assert pruned.pruned_fraction() > 0


def test_keras3_batchnorm_recalibration_matches_tf_keras(twins):
    legacy, modern = twins
    x = _x(legacy, 64, seed=5)
    p_legacy = tfsynapse.prune_once(legacy, 0.5, data=x, recalibration_steps=4)
    p_modern = tfsynapse.prune_once(modern, 0.5, data=x, recalibration_steps=4)
    for name in ("stem_bn", "branch_bn", "inner_bn"):
        got, want = _weights(p_modern), _weights(p_legacy)
        for stat in ("moving_mean", "moving_variance"):
            key = f"{name}/{stat}"
            assert not np.allclose(got[key], _weights(modern)[key])  # recalibrated
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_keras3_files_through_the_cli(tmp_path, capsys):
    from tfsynapse import cli  # noqa: PLC0415
    from tfsynapse.backends import name_for_file as file_backend  # noqa: PLC0415

    path = str(tmp_path / "k3.keras")
    _small_keras3().save(path)
    assert file_backend(path) == "keras3"
    assert cli.main(["inspect", path]) == 0
    assert "prunable" in capsys.readouterr().out
    pruned, small = str(tmp_path / "pruned.keras"), str(tmp_path / "small.keras")
    assert cli.main(["prune", path, "--sparsity", "0.5", "-o", pruned]) == 0
    assert cli.main(["shrink", pruned, "-o", small]) == 0
    model = keras.saving.load_model(small)
    assert backends.backend_name(model) == "keras3" and model.get_layer("a").filters == 8
    assert cli.main(["export", small, "--quantize", "int8", "--calibration",
                     _save_npy(tmp_path, _data(16)[0]), "-o", str(tmp_path / "m.tflite")]) == 0
    assert cli.main(["shrink", pruned, "-o", str(tmp_path / "saved_model_dir")]) == 1
    assert "Keras 3 models are saved as .keras files" in capsys.readouterr().err


def _save_npy(folder, array):
    path = str(folder / "calibration.npy")
    np.save(path, array)
    return path


def test_keras3_sensitivity_analysis_matches_tf_keras(twins):
    legacy, modern = twins
    x = _x(legacy, 8, seed=6)

    def evaluate(model):  # agreement with the dense model's outputs: higher is better
        return -float(np.abs(np.asarray(model(x, training=False)) - reference).mean())

    reference = np.asarray(legacy(x, training=False))
    before = _weights(modern)
    t_legacy = tfsynapse.sensitivity_analysis(legacy, evaluate, step=0.25, verbose=0)
    t_modern = tfsynapse.sensitivity_analysis(modern, evaluate, step=0.25, verbose=0)
    assert t_modern.groups() == t_legacy.groups() and len(t_modern.groups()) >= 3
    assert t_modern.baseline_macs == t_legacy.baseline_macs
    for name, (ratios, metrics) in t_legacy.curves().items():
        got_ratios, got_metrics = t_modern.curves()[name]
        np.testing.assert_allclose(got_ratios, ratios)
        np.testing.assert_allclose(got_metrics, metrics, atol=1e-5, err_msg=name)
    for key, value in _weights(modern).items():  # restored bit-identical
        np.testing.assert_array_equal(value, before[key], err_msg=key)


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, tfsynapse
    import sys; sys.path.insert(0, {tests!r})
    from test_keras3 import _small_keras3, _data, _compile
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        pruned = _compile(tfsynapse.prune_synaptic(
            _small_keras3(), tfsynapse.ConstantSparsity(0.5, 0, frequency=2), criterion="l1",
            granularity="filter", scope="layer"))
    x, y = _data(32)
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert int(pruned.pruning_step.numpy()) == 8, pruned.pruning_step.numpy()
    for mask in pruned.masks:
        replicas = [v.numpy() for v in mask.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
    for (_, _, weight, _), mask in zip(pruned.mask_plan.masked_weights, pruned.masks):
        for value in weight.value.values:  # every replica's copy is zero where the mask is
            assert not np.any(value.numpy() * (mask.numpy() == 0))
    assert pruned.pruned_fraction() == 0.5
    print("MIRRORED_OK")
""")


def test_keras3_fit_under_mirrored_strategy_keeps_replicas_identical(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED.format(tests=os.path.dirname(__file__)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300)
    assert "MIRRORED_OK" in result.stdout, result.stderr[-3000:]


def test_keras3_progress_lines_and_the_short_schedule_warning(tmp_path, capsys):
    x, y = _data()
    pruned = _compile(tfsynapse.prune_synaptic(
        _small_keras3(), tfsynapse.fit_schedule(0.5, epochs=2, samples=len(x), batch_size=32),
        criterion="l1", granularity="filter", scope="layer"))
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0,
               callbacks=[tfsynapse.PruningProgress(log_dir=str(tmp_path / "tb"))])
    out = capsys.readouterr().out
    assert "pruning: epoch 2: 50.0% of prunable channels pruned" in out, out
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert scalars["pruning/pruned_fraction"][-1] == pytest.approx(0.5, abs=1e-6)
    per_weight = tfsynapse.mask_sparsity(pruned)  # what tfmot's PruningSummaries shows
    assert set(per_weight) >= {"a/kernel", "b/kernel"}
    for name, value in per_weight.items():
        assert scalars[f"sparsity/{name}"][-1] == pytest.approx(value, abs=1e-6), name
    assert max(per_weight.values()) > 0.3
    too_long = _compile(tfsynapse.prune_synaptic(
        _small_keras3(), tfsynapse.PolynomialDecay(0.0, 0.5, 0, 1000, frequency=10)))
    with pytest.warns(UserWarning, match=r"applied .* sparsity, not its target 50.0%"):
        too_long.fit(x, y, epochs=1, batch_size=32, verbose=0)


def test_keras3_synaptic_form_matches_tf_keras_and_round_trips(twins, tmp_path):
    legacy, modern = twins
    x = _x(legacy, 4, seed=7)
    s_legacy, r_legacy = tfsynapse.to_synaptic(legacy, return_report=True)
    s_modern, r_modern = tfsynapse.to_synaptic(modern, l1=1e-4, return_report=True)
    assert (r_modern.converted, r_modern.folded, sorted(r_modern.kept)) == \
        (r_legacy.converted, r_legacy.folded, sorted(r_legacy.kept))  # (the ops' names differ)
    assert r_modern.converted
    small = randomize_bn(_small_keras3(), negative_gammas=False)
    folded, report = tfsynapse.to_synaptic(small, return_report=True)
    assert report.folded == {"bn": ["b"]}  # the BN scale moved into b's strengths
    x_small = _data(4)[0]
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


def test_keras3_synaptic_strength_pruning_of_the_synaptic_form():
    x, y = _data()
    synaptic = tfsynapse.to_synaptic(_small_keras3())
    schedule = tfsynapse.fit_schedule(0.6, epochs=2, samples=len(x), batch_size=32)
    pruned = _compile(tfsynapse.prune_synaptic(synaptic, schedule))
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert pruned.pruned_fraction() == pytest.approx(0.6, abs=0.02)
    plain = tfsynapse.from_synaptic(tfsynapse.strip_pruning(pruned))
    small = tfsynapse.shrink(plain)  # self-checked
    assert tfsynapse.count_macs(small) <= tfsynapse.count_macs(plain)


def test_keras3_distillation_trains_a_pruned_student_and_leaves_the_teacher():
    x, y = _data()
    teacher = _compile(_small_keras3(seed=3))
    teacher.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = _weights(teacher)
    schedule = tfsynapse.fit_schedule(0.5, epochs=2, samples=len(x), batch_size=32)
    student = tfsynapse.prune_synaptic(_small_keras3(seed=4), schedule, criterion="l1",
                                       granularity="filter", scope="layer")
    distiller = tfsynapse.Distiller(student, teacher, temperature=2.0, alpha=0.7)
    assert type(distiller).__name__ == "KerasDistiller" and distiller.student is student
    distiller.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)
    soft = history.history["distillation_loss"]
    assert {"loss", "distillation_loss", "accuracy"} <= set(history.history)
    assert soft[-1] < soft[0]  # the student moves towards the teacher
    assert int(student.pruning_step.numpy()) == 8 and student.pruned_fraction() == 0.5
    for key, value in _weights(teacher).items():  # the teacher never changes
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    small = tfsynapse.shrink(tfsynapse.strip_pruning(student))
    assert small.get_layer("a").filters == 8


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
