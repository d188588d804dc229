"""The structured pruning engine: masks, schedules, tfmot callbacks, save/load, errors."""

import os
import textwrap

import numpy as np
import pytest

import tfsynapse
from conftest import randomize_bn, run_script_until, small_cnn, weights_by_name, zero_units
from tfsynapse.backends.tf_keras import keras, pruning_wrapper
from tfsynapse.pruning import collect_wrappers

L = keras.layers


def graded_cnn():
    """small_cnn whose group-c1 channel j and group-c3 channel j have L1 growing with j."""
    model = randomize_bn(small_cnn(), negative_gammas=False)
    for name, n in (("c1", 8), ("c2", 8), ("c3", 12)):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        scale = np.arange(1, n + 1, dtype=np.float32)
        layer.set_weights([(0.5 + 0.1 * np.abs(kernel)) * scale, bias + 0.1])
    dw = model.get_layer("dw")
    dw.set_weights([dw.get_weights()[0], np.full(8, 0.1, np.float32)])
    return model


def test_prune_once_zeroes_whole_channels_everywhere():
    pruned = tfsynapse.prune_once(graded_cnn(), 0.5, criterion="l1")
    w = weights_by_name(pruned)
    for key in ("c1/kernel", "c2/kernel", "c1/bias", "c2/bias", "bn1/gamma", "bn1/beta",
                "bn2/gamma", "bn2/beta", "dw/bias"):
        assert zero_units(w[key], w[key].ndim - 1) == [0, 1, 2, 3], key
    assert zero_units(w["dw/depthwise_kernel"], 2) == [0, 1, 2, 3]
    assert zero_units(w["c2/kernel"], 2) == [0, 1, 2, 3]  # its input rows too
    assert zero_units(w["c3/kernel"], 2) == [0, 1, 2, 3]
    assert zero_units(w["c3/kernel"], 3) == list(range(6))
    assert zero_units(w["head/kernel"], 0) == list(range(6))
    assert zero_units(w["bn1/moving_variance"], 0) == []  # statistics are never masked


def test_prune_once_leaves_input_model_untouched(cnn):
    before = [w.copy() for w in cnn.get_weights()]
    tfsynapse.prune_once(cnn, 0.5)
    for a, b in zip(before, cnn.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("criterion", ["l1", "l2", "dscore", "dstep", "dstep_gm", "fpgm", "bn_scale", "random"])
def test_layer_scope_reaches_target_in_every_group(cnn, criterion):
    pruned = tfsynapse.prune_once(cnn, 0.5, criterion=criterion)
    w = weights_by_name(pruned)
    assert len(zero_units(w["c1/kernel"], 3)) == 4
    # bn_scale cannot score a group without BatchNormalization: c3's group stays whole.
    assert len(zero_units(w["c3/kernel"], 3)) == (0 if criterion == "bn_scale" else 6)


def test_max_ratio_and_round_to(cnn):
    with pytest.raises(ValueError, match=r"19 of 20 prunable channels \(95.0%\).*at most 10 \(50.0%\)"
                                         r".*max_pruning_ratio=0.5"):
        tfsynapse.prune_once(cnn, 0.95, max_pruning_ratio=0.5)
    w = weights_by_name(tfsynapse.prune_once(cnn, 0.5, max_pruning_ratio=0.5))
    assert len(zero_units(w["c1/kernel"], 3)) == 4 and len(zero_units(w["c3/kernel"], 3)) == 6
    w = weights_by_name(tfsynapse.prune_once(cnn, 0.6, round_to=4))
    # 8 -> round(4.8)=5 pruned, 3 kept -> rounded up to 4 kept; 12 -> 7 pruned, 5 kept -> 8 kept.
    assert len(zero_units(w["c1/kernel"], 3)) == 4 and len(zero_units(w["c3/kernel"], 3)) == 4


def test_global_scope_prunes_lowest_first_in_each_group_within_the_caps():
    """The split between groups is checked by hand in test_mechanisms.py (with the
    normalisation removed on purpose); here: the total, the order inside each group, the caps."""
    model = graded_cnn()
    pruned = tfsynapse.prune_once(model, 0.5, scope="global", criterion="l1")
    w = weights_by_name(pruned)
    c1, c3 = zero_units(w["c1/kernel"], 3), zero_units(w["c3/kernel"], 3)
    assert len(c1) + len(c3) == 10  # half of 8 + 12 channels
    assert c1 == list(range(len(c1))) and c3 == list(range(len(c3)))  # lowest first
    assert len(c1) <= 7 and len(c3) <= 10


def test_sparsity_dict_prunes_only_listed_groups(cnn):
    w = weights_by_name(tfsynapse.prune_once(cnn, {"c3": 0.25}))
    assert len(zero_units(w["c3/kernel"], 3)) == 3 and zero_units(w["c1/kernel"], 3) == []


def test_connection_pruning_global_reaches_target_without_emptying_layers(cnn):
    pruned = tfsynapse.prune_once(cnn, 0.8, granularity="connection", scope="global",
                                  criterion="kernel_norm")
    w = weights_by_name(pruned)
    dead = total = 0
    for name in ("c1", "c2", "c3"):
        kernel = w[f"{name}/kernel"]
        conn = np.abs(kernel).sum(axis=(0, 1)) == 0
        assert conn.mean() < 1.0, name
        dead += conn.sum()
        total += conn.size
    assert abs(dead / total - 0.8) <= 0.02 + 1.0 / total


def fit_pruned(pruned, x, y, epochs=1, callbacks=()):
    pruned.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=epochs, verbose=0,
               callbacks=[tfsynapse.UpdatePruningStep(), *callbacks])
    return pruned


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(32, 12, 12, 3)).astype("float32"), rng.integers(0, 5, 32)


@pytest.mark.parametrize("granularity,scope", [("filter", "layer"), ("filter", "global"),
                                               ("connection", "layer"), ("connection", "global")])
def test_fit_reaches_schedule_and_strip_keeps_exact_zeros(cnn, data, granularity, scope, tmp_path):
    schedule = tfsynapse.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=6, frequency=2)
    pruned = tfsynapse.prune_synaptic(cnn, schedule, criterion="l1" if granularity == "filter" else "kernel_norm",
                                      granularity=granularity, scope=scope)
    assert all(isinstance(w, pruning_wrapper.PruneLowMagnitude) for w in collect_wrappers(pruned))
    fit_pruned(pruned, *data, epochs=2, callbacks=[tfsynapse.PruningSummaries(str(tmp_path))])
    assert os.listdir(tmp_path)
    stripped = tfsynapse.strip_pruning(pruned)
    assert not pruning_wrapper.collect_prunable_layers(stripped)
    w = weights_by_name(stripped)
    if granularity == "filter":
        zeros = zero_units(w["c1/kernel"], 3) if scope == "layer" else None
        if scope == "layer":
            assert len(zeros) == 4
            for key in ("c1/bias", "bn1/gamma", "bn1/beta", "c2/bias", "dw/bias"):
                assert zero_units(w[key], 0) == zeros, key
        else:
            assert len(zero_units(w["c1/kernel"], 3)) + len(zero_units(w["c3/kernel"], 3)) == 10
    else:
        kernels = [w[f"{n}/kernel"] for n in ("c1", "c2", "c3")]
        conn = [np.abs(k).sum(axis=(0, 1)) == 0 for k in kernels]
        if scope == "layer":
            for c in conn:
                assert abs(c.mean() - 0.5) <= 1.0 / c.size + 1e-9
        else:
            frac = sum(c.sum() for c in conn) / sum(c.size for c in conn)
            assert abs(frac - 0.5) <= 0.02
    # the masked, stripped model and the shrunk one agree
    small = tfsynapse.shrink(stripped)
    x = data[0][:4]
    np.testing.assert_allclose(small(x), stripped(x), rtol=1e-4, atol=1e-5)


def mask_values(model):
    return [m.numpy() for w in collect_wrappers(model) for m in w.masks]


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_save_mid_schedule_and_resume(cnn, data, tmp_path, fmt):
    schedule = tfsynapse.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=12, frequency=2)
    pruned = fit_pruned(tfsynapse.prune_synaptic(cnn, schedule, criterion="l1",
                                                 granularity="filter", scope="layer"), *data)
    step = collect_wrappers(pruned)[0].pruning_step.numpy()
    assert 0 < step < 12
    path = str(tmp_path / ("model.keras" if fmt == "keras" else "model.h5" if fmt == "h5" else "sm"))
    pruned.save(path)
    with tfsynapse.prune_scope():
        loaded = keras.models.load_model(path)
    assert isinstance(loaded, tfsynapse.PrunedModel)
    assert collect_wrappers(loaded)[0].pruning_step.numpy() == step
    for a, b in zip(mask_values(pruned), mask_values(loaded)):
        np.testing.assert_array_equal(a, b)
    x = data[0][:4]
    np.testing.assert_allclose(loaded(x), pruned(x), rtol=1e-5, atol=1e-6)
    fit_pruned(loaded, *data, epochs=2)  # resumes to the end of the schedule
    w = weights_by_name(tfsynapse.strip_pruning(loaded))
    assert len(zero_units(w["c3/kernel"], 3)) == round(0.6 * 12)


def test_model_errors(cnn):
    import keras as keras3  # noqa: PLC0415

    schedule = tfsynapse.ConstantSparsity(0.5, 0)
    with pytest.raises(ValueError, match="nothing in this model can be pruned"):  # Keras 3 works
        tfsynapse.prune_synaptic(keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)]), schedule)

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        tfsynapse.prune_synaptic(Sub(), schedule)
    with pytest.raises(ValueError, match="not built"):
        tfsynapse.prune_once(keras.Sequential([L.Dense(2)]), 0.5)
    for bad in (1.0, -0.1, "half", None, {"c1": 1.5}):
        with pytest.raises(ValueError, match="sparsity"):
            tfsynapse.prune_once(cnn, bad)
    with pytest.raises(ValueError, match="round_to"):
        tfsynapse.prune_once(cnn, 0.5, round_to=0)
    with pytest.raises(ValueError, match="unknown criterion"):
        tfsynapse.prune_once(cnn, 0.5, criterion="nope")
    with pytest.raises(ValueError, match="per layer"):
        tfsynapse.prune_once(cnn, 0.5, criterion="dstep", scope="global")
    with pytest.raises(ValueError, match="not in the model"):
        tfsynapse.prune_once(cnn, 0.5, ignored_layers=["nope"])
    with pytest.raises(ValueError, match="PruningSchedule"):
        tfsynapse.prune_synaptic(cnn, 0.5)
    with pytest.raises(ValueError, match="granularity"):
        tfsynapse.prune_synaptic(cnn, schedule, granularity="kernel")
    wrapped = tfsynapse.prune_synaptic(cnn, schedule, criterion="l1", granularity="filter")
    with pytest.raises(ValueError, match="already wrapped"):
        tfsynapse.prune_synaptic(wrapped, schedule)


def test_custom_criterion_and_ignored_layers(cnn):
    def reverse_index(filters):
        from tfsynapse.backends.tf_keras import tf  # noqa: PLC0415

        return -tf.range(tf.shape(filters)[0], dtype=tf.float32)

    w = weights_by_name(tfsynapse.prune_once(cnn, 0.25, criterion=reverse_index, ignored_layers=["c3"]))
    assert zero_units(w["c1/kernel"], 3) == [6, 7]
    assert zero_units(w["c3/kernel"], 3) == []


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras
    from tfsynapse.pruning import collect_wrappers
    import sys; sys.path.insert(0, {tests!r})
    from conftest import small_cnn, randomize_bn
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = randomize_bn(small_cnn())
        pruned = tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 0, frequency=2),
                                          criterion="l1", granularity="filter", scope="global")
        pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 12, 12, 3)).astype("float32"), rng.integers(0, 5, 32)
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfsynapse.UpdatePruningStep()])
    pruned_any = False
    for w in collect_wrappers(pruned):
        for m in w.masks:
            replicas = [v.numpy() for v in m.values]
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1])
            pruned_any |= bool((replicas[0] == 0).any())
    assert pruned_any
    print("MIRRORED_OK")
""")


def test_fit_under_mirrored_strategy_keeps_replica_masks_identical(tmp_path):
    run_script_until(tmp_path, MIRRORED, "MIRRORED_OK")
