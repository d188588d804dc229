"""Hostile inputs get a correct result or a clear error: user criteria, non-finite values,
options given the wrong way (issue: reliability II, classes 1-3 and 9)."""

import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import both_backends, dead_filters, keras_of, normal, randomize_bn, small_cnn
from tfsynapse.backends.tf_keras import keras, tf

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


def _c1_pruned_filters(model):
    return set(dead_filters(model.get_layer("c1").get_weights()[0]))


# ------------------------------------------------------------ class 1: criterion identity
def test_each_model_keeps_the_callable_it_was_built_with(backend):
    model = randomize_bn(small_cnn())
    by_norm = lambda f: tf.reduce_sum(tf.abs(f), axis=1)  # noqa: E731
    by_minus_norm = lambda f: -tf.reduce_sum(tf.abs(f), axis=1)  # noqa: E731 - the same name
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=0)
    first = tfsynapse.prune_synaptic(model, schedule, criterion=by_norm, granularity="filter",
                                     scope="layer")
    second = tfsynapse.prune_synaptic(keras.models.clone_model(model), schedule,
                                      criterion=by_minus_norm, granularity="filter", scope="layer")
    assert first.pruning_options.criterion != second.pruning_options.criterion
    # the first model, built before the second lambda existed, still prunes by its own
    masks = first.mask_plan.compute(0.5)
    again = first.mask_plan.compute(0.5)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(masks, again))
    expected = tfsynapse.prune_once(model, 0.5, criterion=by_norm)
    opposite = tfsynapse.prune_once(model, 0.5, criterion=by_minus_norm)
    assert _c1_pruned_filters(expected) != _c1_pruned_filters(opposite)
    tfsynapse.pruning.apply_masks(first.mask_plan, masks)
    wrapped = first.get_layer("structured_prune_wrapper_c1" if backend == "tf_keras" else "c1")
    kernel = getattr(wrapped, "layer", wrapped).kernel.numpy()  # Keras 3 masks layers in place
    assert set(dead_filters(kernel)) == _c1_pruned_filters(expected)


def test_a_saved_model_says_which_criterion_it_needs(tmp_path):
    model = randomize_bn(small_cnn())

    def my_score(filters):
        return tf.reduce_sum(tf.abs(filters), axis=1)

    pruned = tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 0),
                                      criterion=my_score, granularity="filter")
    name = pruned.pruning_options.criterion
    pruned.save(tmp_path / "m.keras")
    registry = tfsynapse.criteria.registry
    saved = registry.unregister(name)
    try:
        with pytest.raises(ValueError, match=f"custom criterion '{name}'.*register_criterion"):
            keras.models.load_model(tmp_path / "m.keras")
    finally:
        registry.register(saved)
    assert keras.models.load_model(tmp_path / "m.keras").pruning_options.criterion == name
    with pytest.warns(UserWarning, match="now names another function"):
        tfsynapse.register_criterion(name, lambda f: -my_score(f))
    registry.register(saved)


# ------------------------------------------------------------ class 2: criterion output
@pytest.mark.parametrize("granularity", ["filter", "connection"])
def test_a_criterion_with_the_wrong_shape_or_non_finite_scores_is_named(granularity):
    model = randomize_bn(small_cnn())
    too_many = lambda x: tf.zeros([1000])  # noqa: E731
    with pytest.raises(ValueError, match=r"criterion '.*' returned scores of shape \[1000\] "
                                         r"for (dependency group|layer) '\w+'; expected \["):
        tfsynapse.prune_once(model, 0.5, criterion=too_many, granularity=granularity)
    infinite = lambda x: tf.ones(tf.shape(x)[:1] if granularity == "filter"  # noqa: E731
                                 else tf.shape(x)[-2:]) / 0.0
    with pytest.raises(ValueError, match="returned NaN or inf scores"):
        tfsynapse.prune_once(model, 0.5, criterion=infinite, granularity=granularity)


# ------------------------------------------------------------ class 3: non-finite values
def test_non_finite_weights_are_refused_with_the_layer_name():
    model = randomize_bn(small_cnn())
    kernel = model.get_layer("c3").get_weights()
    kernel[0][0, 0, 0, 0] = np.nan
    model.get_layer("c3").set_weights(kernel)
    with pytest.raises(ValueError, match=r"NaN or inf: c3 \(c3/kernel"):
        tfsynapse.prune_once(model, 0.5)
    with pytest.raises(ValueError, match="NaN or inf: c3"):
        tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 0), criterion="l1",
                                 granularity="filter")


def test_shrink_self_check_does_not_pass_nan():
    model = randomize_bn(small_cnn())
    pruned = tfsynapse.prune_once(model, 0.5)
    head = pruned.get_layer("head").get_weights()
    head[1][:] = np.inf
    pruned.get_layer("head").set_weights(head)
    with pytest.raises(ValueError, match=r"cannot verify .*non-finite weights: head"):
        tfsynapse.shrink(pruned)
    assert tfsynapse.shrink(pruned, check=False) is not None  # the user can opt out


def test_non_finite_calibration_data_is_refused_before_conversion():
    model = randomize_bn(small_cnn())
    data = normal(8, 12, 12, 3)
    data[5, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="holds 1 NaN or inf values"):
        tflite_export.convert(model, "int8", representative_dataset=data)
    batches = [data[:4] * 0, data[4:]]
    with pytest.raises(ValueError, match="batch 1 .*NaN or inf"):
        tflite_export.convert(model, "int8", representative_dataset=lambda: iter(batches))


# ------------------------------------------------------------ class 9: options given wrongly
def test_options_given_the_wrong_way_say_so(backend):
    model = randomize_bn(small_cnn())
    with pytest.raises(ValueError, match=r"list of layer names.*ignored_layers=\['c3'\]"):
        tfsynapse.prune_once(model, 0.5, ignored_layers="c3")
    with pytest.warns(UserWarning, match="round_to=64 .*0.0% of the 20 prunable channels"):
        tfsynapse.prune_once(model, 0.5, round_to=64)  # larger than every group: does nothing
    pruned = tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 0), criterion="l1",
                                      granularity="filter")
    pruned.compile("adam", "mse")
    x, y = np.zeros((4, 12, 12, 3), np.float32), np.zeros((4, 5), np.float32)
    if backend == "tf_keras":  # tfmot's wrappers need the callback to advance their step
        with pytest.raises(ValueError, match=r"UpdatePruningStep\(\)\]\)\.$"):
            pruned.fit(x, y, verbose=0)
    else:  # a Keras 3 pruned model advances its own step: fit needs no callback
        pruned.fit(x, y, batch_size=2, verbose=0)
        assert int(pruned.pruning_step.numpy()) == 2


# ------------------------------------------------------- classes 6-8: exports, dtypes, layout
def test_channels_first_is_refused_naming_data_format():
    inputs = keras.Input((3, 12, 12))
    x = keras.layers.Conv2D(8, 3, padding="same", data_format="channels_first", name="cf")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"cf use data_format='channels_first'.*channels_last"):
        tfsynapse.prune_once(model, 0.5)


def test_mixed_precision_is_refused_for_training_and_works_one_shot():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = small_cnn()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="mixed precision.*set_global_policy\\('float32'\\)"):
        tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 0), criterion="l1",
                                 granularity="filter")
    small = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5))  # checked at float16 tolerance
    assert tfsynapse.count_macs(small) < tfsynapse.count_macs(model)


def test_a_converted_model_that_does_not_load_is_not_written(tmp_path, monkeypatch):
    from tflite_export import _runtime

    model = randomize_bn(small_cnn())

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to prepare for XNNPACK")

    monkeypatch.setattr(_runtime, "load_interpreter", refuse)
    target = tmp_path / "m.tflite"
    with pytest.raises(RuntimeError, match="does not load in LiteRT: Failed to prepare.*"
                                           "Nothing was written"):
        tflite_export.convert(model, output=str(target), isolate=False)  # sees the patch
    assert list(tmp_path.iterdir()) == []


def segfault_job(directory):  # run in the conversion worker by the test below
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)  # what TensorFlow's converter did on an int8 GRU


@pytest.mark.keras_independent
def test_a_crashing_converter_does_not_kill_the_process(monkeypatch, tmp_path):
    from tflite_export import isolation

    with pytest.raises(isolation.ConverterCrash, match=r"crashed \(SIGSEGV\) in a worker"):
        isolation.run_isolated("test_hostile_inputs:segfault_job", str(tmp_path))
    # the next job gets a fresh worker; a real int8 GRU crashes TensorFlow 2.21's converter
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GRU(4)(inputs)))
    x = normal(4, 6, 3)
    try:
        lite = tflite_export.convert(model, "int8", representative_dataset=x, calibration_steps=1)
    except RuntimeError as err:  # what a crash must become (TensorFlow 2.21)
        assert "crashed on the" in str(err) and "worker process" in str(err)
    else:  # a TensorFlow that converts it: then the file must compute what Keras does
        want = np.asarray(model(x))
        report = tflite_export.verify(lite, model, x)
        assert report["max_abs_error"] <= 0.1 * np.abs(want).max(), report
    assert tflite_export.inspect(tflite_export.convert(small_cnn()))["inputs"]


def test_isolate_takes_a_bool():
    with pytest.raises(TypeError, match="isolate must be True or False"):
        tflite_export.convert(small_cnn(), isolate="yes")


# ------------------------------------------------------ class 4: a layer's own activation
def _centre(x):  # zero at zero, but mixes channels: not elementwise
    return x - tf.reduce_mean(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("activation,frozen_reason", [
    ("sigmoid", "f(0) != 0"), ("softmax", "fused activation 'softmax' mixes channels"),
    (_centre, "may mix channels"), ("relu", None)])
def test_fused_activations_are_part_of_the_channel_behaviour(activation, frozen_reason):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation=activation, name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    if callable(activation):
        with pytest.warns(UserWarning, match="'_centre' .*cannot prove elementwise"):
            graph = tfsynapse.dependency_groups(model)
    else:
        graph = tfsynapse.dependency_groups(model)
    group = graph.group_of_layer("c1")
    assert (group in graph.prunable_groups) == (frozen_reason is None)
    if frozen_reason:
        assert frozen_reason in graph.summary()
    small, report = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5), return_report=True)
    assert report.max_abs_error < 1e-4 and report.removed_units  # c2 (at least) still prunes


def test_an_activation_layer_from_a_python_callable_is_frozen_with_a_warning():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.Activation(_centre, name="centre")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.warns(UserWarning, match="layer 'centre' has the activation '_centre'"):
        graph = tfsynapse.dependency_groups(model)
    assert graph.group_of_layer("c1") not in graph.prunable_groups
    with pytest.warns(UserWarning):
        small, report = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5), return_report=True)
    assert "c1" not in report.removed_units and report.max_abs_error < 1e-4


# ------------------------------------------------------ class 5: outputs in every shape
def _two_outputs(as_dict):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same",
                                                                       name="c2")(x))
    zz, aa = keras.layers.Dense(2, name="zz")(pooled), keras.layers.Dense(3, name="aa")(pooled)
    return keras.Model(inputs, {"zz": zz, "aa": aa} if as_dict else [zz, aa])


def test_dict_outputs_shrink_and_masked_equals_shrunk():
    model = randomize_bn(_two_outputs(as_dict=True))
    small, report = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5), return_report=True)
    assert report.removed_units == {"c1": 4, "c2": 4} and report.max_abs_error < 1e-5
    assert set(small.output_names) == {"zz", "aa"}


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_predict_returns_outputs_in_keras_order(quantize):
    model = randomize_bn(_two_outputs(as_dict=False))  # 'zz' first: not the sorted order
    x = normal(4, 8, 8, 3)
    lite = tflite_export.convert(model, quantize, representative_dataset=x if quantize else None)
    outputs = tflite_export.predict(lite, x)
    assert [o.shape[-1] for o in outputs] == [2, 3]
    expected = model.predict(x, verbose=0)
    tolerance = 0.2 if quantize else 1e-4
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, atol=tolerance)
    assert [t["shape"][-1] for t in tflite_export.inspect(lite)["outputs"]] == [2, 3]


# ------------------------------------------------ options that would prune nothing, or wrongly
def _conv_then_dense(keras):
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(16, activation="relu", name="d1")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def test_pruning_that_would_do_nothing_or_score_zeros_says_so(backend):
    keras_ = keras_of(backend)
    mlp = keras_.Sequential([keras_.Input((20,)), keras_.layers.Dense(16, name="m1"),
                             keras_.layers.Dense(4, name="out")])
    per_connection = "granularity='connection' prunes the kernels of convolutions"
    with pytest.raises(ValueError, match=per_connection):  # the default granularity
        tfsynapse.prune_synaptic(mlp, tfsynapse.ConstantSparsity(0.5, begin_step=0))
    with pytest.raises(ValueError, match=per_connection):
        tfsynapse.prune_once(mlp, 0.5, granularity="connection")
    model = _conv_then_dense(keras_)
    with pytest.warns(UserWarning, match="'d1' will not be pruned: granularity='connection'"):
        tfsynapse.prune_once(model, {"c1": 0.5, "d1": 0.5}, granularity="connection")
    # a filter's synaptic strength sums its incoming connections: a Dense group has none, so
    # it is frozen with the reason, not scored zero and emptied first
    pruned = tfsynapse.prune_once(model, 0.5, criterion="synaptic_strength", scope="global")
    assert dead_filters(pruned.get_layer("d1").get_weights()[0]) == []
    assert len(dead_filters(pruned.get_layer("c1").get_weights()[0])) == 4
    plan = tfsynapse.plan.MaskPlan(tfsynapse.dependency_groups(model),
                                   tfsynapse.plan.options.PruningOptions(
                                       criterion="synaptic_strength"))
    assert any("scores a filter by its incoming connections" in " ".join(reasons)
               for reasons in plan.frozen.values())
    # prune_once, like prune_synaptic, refuses a model it cannot prune at all
    with pytest.raises(ValueError, match="nothing in this model can be pruned"):
        tfsynapse.prune_once(model, 0.5, ignored_layers=["c1", "d1"])
    tfsynapse.prune_once(model, 0.0, ignored_layers=["c1", "d1"])  # asks for nothing: fine
    with pytest.warns(UserWarning, match="recalibration_steps=5 is only used with data="):
        tfsynapse.prune_once(model, 0.5, recalibration_steps=5)
    with pytest.raises(ValueError, match="scope='global' ranks every unit against one target"):
        tfsynapse.prune_once(model, {"c1": 0.5}, scope="global")  # it pruned per layer


def test_a_mac_count_with_unknown_spatial_dimensions_is_a_warning(backend):
    keras_ = keras_of(backend)
    inputs = keras_.Input((None, None, 3))
    x = keras_.layers.Conv2D(8, 3, name="conv")(inputs)
    model = keras_.Model(inputs, keras_.layers.GlobalAveragePooling2D()(x))
    with pytest.warns(UserWarning, match=r"1 layer\(s\) whose output has an unknown dimension "
                                         r"besides the batch as if it were 1 \(e.g. conv\)"):
        tfsynapse.count_macs(model)
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fixed shape counts silently
        tfsynapse.count_macs(_conv_then_dense(keras_))
    # activations (the latency model's term) alike: counted as if 1, said, not a NaN crash
    from tfsynapse.graph.counting import count_activations  # noqa: PLC0415

    with pytest.warns(UserWarning, match=r"count_activations counted 1 layer\(s\) whose output "
                                         r"has an unknown dimension"):
        assert count_activations(model) == 3 + 8


def test_layers_of_nested_models_that_share_a_name_are_all_counted(backend):
    """Two sub-models, each with a Dense named 'fc': both are counted (the second under
    'fc#2'), and the total is Keras's own."""
    keras_ = keras_of(backend)

    def block(name):
        inputs = keras_.Input((6,))
        return keras_.Model(inputs, keras_.layers.Dense(6, name="fc")(inputs), name=name)

    inputs = keras_.Input((6,))
    model = keras_.Model(inputs, block("b2")(block("b1")(inputs)))
    total, table = tfsynapse.count_params(model, per_layer=True)
    assert total == model.count_params() == 84 and table == {"fc": 42, "fc#2": 42}
    macs, table = tfsynapse.count_macs(model, per_layer=True)
    assert macs == 72 and table == {"fc": 36, "fc#2": 36}
    # one key per layer in every table: a layer without MACs takes the name first
    norm = keras_.Model(inputs, keras_.layers.BatchNormalization(name="fc")(inputs), name="b0")
    model = keras_.Model(inputs, block("b1")(norm(inputs)))
    assert tfsynapse.count_params(model, per_layer=True)[1] == {"fc": 24, "fc#2": 42}
    assert tfsynapse.count_macs(model, per_layer=True)[1] == {"fc#2": 36}


def test_a_plan_is_counted_by_group_id_or_name_and_nothing_else(backend):
    """count_macs(model, keep) takes the Keep value strip_pruning attaches (group names) as
    well as ids; a key the model does not have, or a mask of the wrong length, is an error
    instead of a dense count."""
    graph = tfsynapse.dependency_groups(small_cnn())
    group = graph.prunable_groups[0]
    half = np.arange(group.size) < group.size // 2
    by_id = tfsynapse.count_macs(graph, {group.id: half})
    assert by_id == tfsynapse.count_macs(graph, {group.name: half}) < tfsynapse.count_macs(graph)
    with pytest.raises(ValueError, match=r"names group 'nope', which this model does not have"):
        tfsynapse.count_params(graph, {"nope": half})
    with pytest.raises(ValueError, match=r"has shape \(3,\); the group has"):
        tfsynapse.count_macs(graph, {group.id: np.ones(3, bool)})


def test_shrink_names_a_frozen_group_in_its_plan_as_frozen(backend):
    """A Keep value naming a group the graph freezes (the model's output) is not "another
    model's": the error says the group is frozen, and why."""
    model = small_cnn()
    graph = tfsynapse.dependency_groups(model)
    frozen = next(g for g in graph.groups if not g.prunable and g.reasons
                  and g.name in {layer.name for layer in model.layers})
    with pytest.raises(ValueError, match=rf"prunes group\(s\) \['{frozen.name}'\] that this "
                                         r"model's graph freezes"):
        tfsynapse.shrink(model, keep={frozen.name: np.ones(frozen.size, bool)})


def test_ignoring_a_layer_the_channels_pass_through_freezes_their_group(backend):
    """ignored_layers names a depthwise layer: the group whose channels it carries (the first
    convolution's filters) is frozen with that reason, not pruned around it."""
    keras_ = keras_of(backend)
    L = keras_.layers
    inputs = keras_.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="c1")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(8, 1, name="c2")(x)
    model = keras_.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1", scope="layer",
                                  ignored_layers=["dw"])
    assert dead_filters(pruned.get_layer("c1").get_weights()[0]) == []
    assert len(dead_filters(pruned.get_layer("c2").get_weights()[0])) == 4
    plan = tfsynapse.plan.MaskPlan(tfsynapse.dependency_groups(model),
                                   tfsynapse.plan.options.PruningOptions(ignored_layers=("dw",)))
    assert ["ignored by the user (dw)"] in plan.frozen.values()
