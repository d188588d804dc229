"""Reliability: many workers, interrupted training, int8 edge cases, hostile inputs."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import randomize_bn, small_cnn
from tfsynapse.backends.tf_keras import keras

L = keras.layers
TESTS = os.path.dirname(os.path.abspath(__file__))

WORKER = textwrap.dedent("""
    import json, os, sys
    index, ports, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index}})
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, TESTS_DIR)
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras
    from tfsynapse.pruning import collect_wrappers
    from conftest import small_cnn
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = small_cnn()
        model.load_weights(os.path.join(out, "init.h5"))
        pruned = tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(0.5, 1, frequency=2),
                                          criterion="l1", granularity="filter", scope="global")
        pruned.compile(keras.optimizers.SGD(0.05),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = np.load(os.path.join(out, "data.npz"))
    first = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                first["masks"] = [m.numpy() for w in collect_wrappers(pruned) for m in w.masks]

    pruned.fit(data["x"], data["y"], batch_size=16, epochs=1, shuffle=False, verbose=0,
               callbacks=[tfsynapse.UpdatePruningStep(), Snapshot()])
    final = [m.numpy() for w in collect_wrappers(pruned) for m in w.masks]
    np.savez(os.path.join(out, f"worker{index}.npz"),
             *[np.asarray(a) for a in first["masks"] + final], count=len(final))
    print("WORKER_DONE", index)
""")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_gives_identical_masks(tmp_path):
    model = small_cnn()
    model.save_weights(str(tmp_path / "init.h5"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(64, 12, 12, 3)).astype("float32"),
             y=rng.integers(0, 5, 64))
    script = tmp_path / "worker.py"
    script.write_text(f"TESTS_DIR = {TESTS!r}\n" + WORKER)
    ports = ",".join(map(str, _free_ports(2)))
    procs = [subprocess.Popen([sys.executable, str(script), str(i), ports, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and "WORKER_DONE" in out, err[-3000:]
    runs = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    count = int(runs[0]["count"])
    arrays = [[r[f"arr_{j}"] for j in range(2 * count)] for r in runs]
    for a, b in zip(*arrays):  # both workers: identical masks after the first and last step
        np.testing.assert_array_equal(a, b)
    # The first pruning step scored the initial weights: it equals a single-process run.
    reference = tfsynapse.prune_once(model, 0.5, criterion="l1", scope="global")
    graph = tfsynapse.dependency_groups(reference)
    kernel_zero = {layer.name: ~np.any(layer.kernel.numpy() != 0, axis=(0, 1, 2))
                   for layer in reference.layers if isinstance(layer, L.Conv2D) and layer.name != "dw"}
    first = arrays[0][:count]
    assert sum(int((m == 0).sum()) for m in first) > 0 and len(graph.prunable_groups) == 2
    # c1's bias mask (the 2nd mask of the first wrapper) marks exactly the reference's zeros
    assert np.array_equal(first[1] == 0, kernel_zero["c1"])


RESUME = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    sys.path.insert(0, TESTS_DIR)
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras
    from tfsynapse.pruning import collect_wrappers
    from conftest import small_cnn
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 12, 12, 3)).astype("float32"), rng.integers(0, 5, 32)

    def fresh():
        keras.utils.set_random_seed(0)
        model = small_cnn()
        pruned = tfsynapse.prune_synaptic(
            model, tfsynapse.PolynomialDecay(0.0, 0.6, 0, end_step=12, frequency=2),
            criterion="l1", granularity="filter", scope="layer")
        pruned.compile(keras.optimizers.SGD(0.05),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return pruned

    def state(model):
        return [v.numpy() for v in model.weights]

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated crash")

    kw = dict(batch_size=8, shuffle=False, verbose=0)
    whole = fresh()
    whole.fit(x, y, epochs=4, callbacks=[tfsynapse.UpdatePruningStep()], **kw)
    # BackupAndRestore: crash after epoch 2, resume in a new model object.
    backup = os.path.join(out, "backup")
    try:
        fresh().fit(x, y, epochs=4, callbacks=[tfsynapse.UpdatePruningStep(), Crash(),
                    keras.callbacks.BackupAndRestore(backup)], **kw)
    except KeyboardInterrupt:
        pass
    resumed = fresh()
    resumed.fit(x, y, epochs=4, callbacks=[tfsynapse.UpdatePruningStep(),
                keras.callbacks.BackupAndRestore(backup)], **kw)
    # tf.train.Checkpoint: save after 2 epochs, restore into a new model object, continue.
    first = fresh()
    first.fit(x, y, epochs=2, callbacks=[tfsynapse.UpdatePruningStep()], **kw)
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).save(os.path.join(out, "ckpt"))
    second = fresh()
    second.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0, shuffle=False,
               callbacks=[tfsynapse.UpdatePruningStep()])  # builds the optimizer's slots
    tf.train.Checkpoint(model=second, optimizer=second.optimizer).restore(path)
    second.fit(x, y, epochs=4, initial_epoch=2, callbacks=[tfsynapse.UpdatePruningStep()], **kw)
    for name, model in (("backup", resumed), ("checkpoint", second)):
        for a, b in zip(state(whole), state(model)):
            np.testing.assert_array_equal(a, b, err_msg=name)
    print("RESUME_OK", int(collect_wrappers(whole)[0].pruning_step.numpy()))
""")


def test_interrupted_training_resumes_to_the_same_masks_and_weights(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(f"TESTS_DIR = {TESTS!r}\n" + RESUME)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert "RESUME_OK 16" in result.stdout, result.stderr[-3000:]


def _calibration(model, n=16):
    rng = np.random.default_rng(0)
    return [rng.normal(size=[1] + [int(d) for d in model.inputs[0].shape[1:]]).astype("float32")
            for _ in range(n)]


def test_int8_export_of_groups_pruned_to_the_floor_and_constant_channels():
    model = randomize_bn(small_cnn())
    pruned = tfsynapse.prune_once(model, 0.9, criterion="l1", max_pruning_ratio=1.0)  # 7 of 8, 11 of 12
    small = tfsynapse.shrink(pruned)
    assert small.get_layer("c1").filters == 1 and small.get_layer("c3").filters == 1
    # a constant channel: a filter with zero weights but a bias
    kernel, bias = small.get_layer("c3").get_weights()
    small.get_layer("c3").set_weights([np.zeros_like(kernel), bias + 1.0])
    lite = tflite_export.convert(small, quantize="int8", representative_dataset=_calibration(small))
    x = np.concatenate(_calibration(small, 8))
    expected = np.asarray(small(x))  # measured 0.0016 of the output scale
    assert np.abs(tflite_export.predict(lite, x) - expected).max() < 0.01 * np.abs(expected).max()


def test_int8_export_with_extreme_weight_scales():
    model = randomize_bn(small_cnn())
    c1 = model.get_layer("c1")
    kernel, bias = c1.get_weights()
    kernel[..., 0] *= 1e6
    kernel[..., 1] *= 1e-6
    c1.set_weights([kernel, bias])
    lite = tflite_export.convert(model, quantize="int8", representative_dataset=_calibration(model))
    x = np.concatenate(_calibration(model, 8))
    out, expected = tflite_export.predict(lite, x), np.asarray(model(x))
    # per-channel scales keep both extremes: measured 0.019 of the output scale
    assert np.abs(out - expected).max() < 0.06 * np.abs(expected).max()


def test_channel_reordering_ops_freeze_instead_of_breaking():
    inputs = keras.Input((6, 6, 4))
    x = L.Conv2D(8, 1, name="a")(inputs)
    x = L.Permute((1, 3, 2), name="swap")(x)  # channels move to another axis
    x = L.Conv2D(3, 1, name="b")(x)
    y = L.Conv2D(6, 1, name="c")(inputs)
    y = L.Reshape((6, 12, 3), name="fold")(y)  # channels split into space
    out = L.Concatenate()([L.Flatten()(x), L.Flatten()(y)])
    model = keras.Model(inputs, L.Dense(2)(out))
    graph = tfsynapse.dependency_groups(model)
    assert not graph.group_of_layer("a").prunable and "channel axis" in graph.group_of_layer("a").reasons[0]
    assert not graph.group_of_layer("c").prunable
    small = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5, criterion="random"))
    assert small.get_layer("a").filters == 8 and small.get_layer("c").filters == 6


def test_schedule_ending_before_it_begins_is_refused(cnn):
    from tfsynapse.backends.tf_keras import pruning_schedule  # noqa: PLC0415

    schedule = pruning_schedule.ConstantSparsity(0.5, begin_step=10)
    schedule.end_step = 5  # tfmot's own constructor would refuse; a hand-edited one is caught too
    with pytest.raises(ValueError, match="before it begins"):
        tfsynapse.prune_synaptic(cnn, schedule)


def test_shared_layers_are_supported_end_to_end():
    inputs = keras.Input((8, 8, 3))
    stem = L.Conv2D(6, 3, padding="same", name="stem")
    shared = L.Conv2D(6, 3, padding="same", name="shared")
    a = shared(stem(inputs))
    b = shared(L.ReLU()(a))
    out = L.GlobalAveragePooling2D()(L.Add()([a, b]))
    model = randomize_bn(keras.Model(inputs, L.Dense(2)(out)))
    small = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5, criterion="l1"))
    assert small.get_layer("shared").filters == 3
    json.dumps(small.get_config())  # a valid, serialisable model
