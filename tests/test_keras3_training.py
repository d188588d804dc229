"""Keras 3 training through the backend seam: pruning during ``fit`` to the schedule, saving
mid-schedule, callbacks, MirroredStrategy, progress lines, Synaptic Strength of the synaptic
form, distillation, and Keras 3 files through the command line."""

import textwrap

import keras
import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import run_script_until, tensorboard_scalars
from keras3_support import compile_keras3, keras3_data, save_npy, small_keras3, weights_of
from tfsynapse import backends


def test_keras3_prunes_during_fit_to_the_schedule_and_shrinks():
    x, y = keras3_data()
    schedule = tfsynapse.fit_schedule(0.5, epochs=3, samples=len(x), batch_size=32)
    pruned = compile_keras3(tfsynapse.prune_synaptic(small_keras3(), schedule, criterion="dscore",
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
    x, y = keras3_data()
    schedule = tfsynapse.fit_schedule(0.6, epochs=2, samples=len(x), batch_size=32)
    pruned = compile_keras3(tfsynapse.prune_synaptic(small_keras3(), schedule))  # synaptic, global
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert pruned.pruned_fraction() == pytest.approx(0.6, abs=0.02)
    stripped = tfsynapse.strip_pruning(pruned)
    np.testing.assert_allclose(np.asarray(stripped(x[:4])), np.asarray(pruned(x[:4])), atol=1e-6)


def test_keras3_masks_at_the_first_step_are_prune_once_masks():
    """With a learning rate of 0, one training step only computes the masks: they must zero
    exactly what prune_once zeroes (the same plan and criterion, either path)."""
    model = small_keras3(seed=1)
    once = tfsynapse.prune_once(model, 0.5, criterion="l1")
    pruned = compile_keras3(tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 1),
                                               criterion="l1", granularity="filter",
                                               scope="layer"), lr=0.0)
    pruned.fit(*keras3_data(32), epochs=1, batch_size=32, verbose=0)
    for layer in ("a", "bn", "b"):
        for w_once, w_fit in zip(once.get_layer(layer).trainable_weights,
                                 pruned.get_layer(layer).trainable_weights):  # (BN statistics move)
            np.testing.assert_array_equal(w_once.numpy() == 0, w_fit.numpy() == 0, err_msg=layer)


def test_keras3_saved_mid_schedule_resumes_with_the_same_step_and_masks(tmp_path):
    x, y = keras3_data()
    schedule = tfsynapse.PolynomialDecay(0.0, 0.5, 0, 8, frequency=1)
    pruned = compile_keras3(tfsynapse.prune_synaptic(small_keras3(), schedule))
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


class HalfWay(tfsynapse.ConstantSparsity):
    """A user's schedule: ConstantSparsity under another name."""


def test_keras3_a_users_schedule_loads_when_registered_and_says_how_when_not(tmp_path):
    pruned = tfsynapse.prune_synaptic(small_keras3(), HalfWay(0.5, begin_step=1))
    path = str(tmp_path / "custom.keras")
    pruned.save(path)
    with pytest.raises(ValueError, match=r"unknown pruning schedule 'HalfWay' .*"
                                         r"custom_object_scope\(\{'HalfWay': HalfWay\}\)"):
        keras.saving.load_model(path)
    with keras.saving.custom_object_scope({"HalfWay": HalfWay}):
        loaded = keras.saving.load_model(path)
    assert type(loaded.pruning_schedule) is HalfWay
    assert loaded.pruning_schedule.get_config() == pruned.pruning_schedule.get_config()
    if "tfsynapse_test>HalfWay" not in keras.saving.get_custom_objects():
        keras.saving.register_keras_serializable("tfsynapse_test")(HalfWay)
    assert type(keras.saving.load_model(path).pruning_schedule) is HalfWay  # registered


def test_keras3_fit_refuses_tf_keras_callbacks_but_takes_tfsynapse_ones(tmp_path):
    from tfsynapse.backends.tf_keras import keras as tf_keras, pruning_callbacks  # noqa: PLC0415

    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=1, frequency=1)
    pruned = compile_keras3(tfsynapse.prune_synaptic(small_keras3(), schedule))
    for callback in (tf_keras.callbacks.LambdaCallback(), pruning_callbacks.UpdatePruningStep(),
                     tfsynapse.PruningSummaries(log_dir=str(tmp_path))):
        with pytest.raises(ValueError, match="is not a Keras 3 callback"):
            pruned.fit(*keras3_data(32), epochs=1, callbacks=[callback], verbose=0)
    # PruningSummaries (tfmot's, tf_keras only) is refused with what does its job on Keras 3
    with pytest.raises(ValueError, match=r"PruningProgress \(with log_dir= it also writes "
                                         r"per-layer sparsity"):
        pruned.fit(*keras3_data(32), epochs=1, verbose=0,
                   callbacks=[tfsynapse.PruningSummaries(log_dir=str(tmp_path))])
    pruned.fit(*keras3_data(32), epochs=1, callbacks=[tfsynapse.UpdatePruningStep()], verbose=0)
    assert pruned.pruned_fraction() > 0


def test_keras3_files_through_the_cli(tmp_path, capsys):
    from tfsynapse import cli  # noqa: PLC0415
    from tfsynapse.backends import name_for_file as file_backend  # noqa: PLC0415

    path = str(tmp_path / "k3.keras")
    small_keras3().save(path)
    assert file_backend(path) == "keras3"
    assert cli.main(["inspect", path]) == 0
    assert "prunable" in capsys.readouterr().out
    pruned, small = str(tmp_path / "pruned.keras"), str(tmp_path / "small.keras")
    assert cli.main(["prune", path, "--sparsity", "0.5", "-o", pruned]) == 0
    assert cli.main(["shrink", pruned, "-o", small]) == 0
    model = keras.saving.load_model(small)
    assert backends.backend_name(model) == "keras3" and model.get_layer("a").filters == 8
    calibration = keras3_data(16)[0]
    assert cli.main(["export", small, "--quantize", "int8", "--calibration",
                     save_npy(tmp_path, calibration), "-o", str(tmp_path / "m.tflite")]) == 0
    report = tflite_export.verify(str(tmp_path / "m.tflite"), model, calibration)
    scale = float(np.abs(np.asarray(model(calibration))).max())
    assert report["max_abs_error"] <= 0.05 * scale, (report, scale)  # int8 steps, not a wrong model
    for command in (["shrink", pruned], ["prune", path, "--sparsity", "0.5"]):
        # refused before any work: a Keras 3 model is saved as .keras only
        assert cli.main([*command, "-o", str(tmp_path / "saved_model_dir")]) == 1
        err = capsys.readouterr().err
        assert "is a keras3 model, saved as a keras or h5 file only (not a savedmodel)" in err, err
        assert "saved_model_dir.keras" in err


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, tfsynapse
    import sys; sys.path.insert(0, {tests!r})
    from keras3_support import compile_keras3, keras3_data, small_keras3
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        pruned = compile_keras3(tfsynapse.prune_synaptic(
            small_keras3(), tfsynapse.ConstantSparsity(0.5, 0, frequency=2), criterion="l1",
            granularity="filter", scope="layer"))
    x, y = keras3_data(32)
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
    run_script_until(tmp_path, MIRRORED, "MIRRORED_OK")


def test_keras3_progress_lines_and_the_short_schedule_warning(tmp_path, capsys):
    x, y = keras3_data()
    pruned = compile_keras3(tfsynapse.prune_synaptic(
        small_keras3(), tfsynapse.fit_schedule(0.5, epochs=2, samples=len(x), batch_size=32),
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
    too_long = compile_keras3(tfsynapse.prune_synaptic(
        small_keras3(), tfsynapse.PolynomialDecay(0.0, 0.5, 0, 1000, frequency=10)))
    with pytest.warns(UserWarning, match=r"applied .* sparsity, not its target 50.0%"):
        too_long.fit(x, y, epochs=1, batch_size=32, verbose=0)
    # the first training step is step 1: an update due "at" step 0 never runs. Never trained,
    # or trained fewer steps than the frequency (100) from begin_step=0: nothing was pruned
    never = tfsynapse.prune_synaptic(small_keras3(), tfsynapse.ConstantSparsity(0.5, 0))
    with pytest.warns(UserWarning, match=r"applied 0.0% sparsity, not its target 50.0%"):
        tfsynapse.strip_pruning(never)
    short = compile_keras3(tfsynapse.prune_synaptic(small_keras3(),
                                                    tfsynapse.ConstantSparsity(0.5, 0)))
    with pytest.warns(UserWarning, match=r"applied 0.0% sparsity, not its target 50.0%"):
        short.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    # Keras 3's fit takes a CallbackList as well as a list
    progress = keras.callbacks.CallbackList([keras.callbacks.History()])
    too_long.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0, callbacks=progress)
    with pytest.raises(ValueError, match="nothing to strip: it has no pruning masks"):
        tfsynapse.strip_pruning(small_keras3())


def test_keras3_synaptic_strength_pruning_of_the_synaptic_form():
    x, y = keras3_data()
    synaptic = tfsynapse.to_synaptic(small_keras3())
    schedule = tfsynapse.fit_schedule(0.6, epochs=2, samples=len(x), batch_size=32)
    pruned = compile_keras3(tfsynapse.prune_synaptic(synaptic, schedule))
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert pruned.pruned_fraction() == pytest.approx(0.6, abs=0.02)
    plain = tfsynapse.from_synaptic(tfsynapse.strip_pruning(pruned))
    small = tfsynapse.shrink(plain)  # self-checked
    assert tfsynapse.count_macs(small) <= tfsynapse.count_macs(plain)


def test_keras3_distillation_trains_a_pruned_student_and_leaves_the_teacher():
    x, y = keras3_data()
    teacher = compile_keras3(small_keras3(seed=3))
    teacher.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = weights_of(teacher)
    schedule = tfsynapse.fit_schedule(0.5, epochs=2, samples=len(x), batch_size=32)
    student = tfsynapse.prune_synaptic(small_keras3(seed=4), schedule, criterion="l1",
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
    for key, value in weights_of(teacher).items():  # the teacher never changes
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    small = tfsynapse.shrink(tfsynapse.strip_pruning(student))
    assert small.get_layer("a").filters == 8
    # a schedule that the training stops short of is said at the end of the distiller's fit
    # too, with tfsynapse's callback accepted as on a pruned model
    short = tfsynapse.prune_synaptic(small_keras3(seed=4),
                                     tfsynapse.PolynomialDecay(0.0, 0.5, 0, 1000, frequency=10))
    distiller = tfsynapse.Distiller(short, teacher, temperature=2.0, alpha=0.7)
    distiller.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(UserWarning, match=r"applied .* sparsity, not its target 50.0%"):
        distiller.fit(x, y, epochs=1, batch_size=32, verbose=0,
                      callbacks=[tfsynapse.UpdatePruningStep()])
