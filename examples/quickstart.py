"""tfsynapse quickstart: train, prune during fit, shrink, and ship a small, fast int8 model.

    python examples/quickstart.py                                # D-Score filter pruning
    python examples/quickstart.py --criterion=synaptic_strength  # the Synaptic Strength procedure
    python examples/quickstart.py --sensitivity                  # D-Score's per-group ratios
    python examples/quickstart.py --backend=keras3               # the same on Keras 3
    python examples/quickstart.py --dataset=cifar10              # needs the internet (tfds)

Offline by default: scikit-learn's handwritten digits, upsampled to 32x32. Steps:
1. train a small CNN with BatchNormalization (the dense model), and the **equal-budget
   control**: the same dense model trained as many more epochs as pruning fine-tunes;
2. prune while fine-tuning, with the dense model as a distillation teacher:
   * D-Score family (default, ``--criterion=dscore|dstep|dstep_gm|l1|fpgm|...``): whole
     filters, ``--ratio`` of every dependency group, removed gradually during ``fit``
     (``prune_synaptic`` + ``PolynomialDecay``; D-Score re-ranks at every pruning step). With
     ``--sensitivity``, the D-Score paper's per-group ratios instead (one-shot sensitivity
     scored on a validation split, BatchNormalization recalibrated on training images,
     ``--max_drop`` points allowed; the group ratios then feed ``layer_sparsity`` with
     ``only_listed=True``);
   * Synaptic Strength (``--criterion=synaptic_strength``): ``to_synaptic``, an L1 phase with
     ``ProximalL1`` (exact zeros), one global strength threshold at ``--sparsity`` of the
     connections, fine-tuning with the masks kept; a channel dies once all its connections do;
3. ``strip_pruning``, ``shrink`` (channels really removed);
4. int8 TFLite export of the dense and the shrunk model, checked and timed in LiteRT.
``--backend=keras3`` runs every step on a Keras 3 model (``import keras``; no tfmot: the pruned
model advances its own pruning step, so ``fit`` needs no ``UpdatePruningStep``).
Everything lands in ``--output_dir``: the .tflite files, results.json/results.md and plots.
"""

import json
import os

from absl import app, flags, logging

import quickstart_plots  # examples/, beside this script

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", "tf_keras", ["tf_keras", "keras3"],
                  "Which Keras builds the models: tf_keras (Keras 2, pruning through tfmot) or "
                  "keras3 (`import keras`, TensorFlow backend).")
flags.DEFINE_enum("dataset", "digits", ["digits", "fashion_mnist", "cifar10"], "Training data.")
flags.DEFINE_string("criterion", "dscore",
                    "A filter criterion (dscore, dstep, dstep_gm, fpgm, l1, l2, bn_scale, random) "
                    "or synaptic_strength (connections).")
flags.DEFINE_float("ratio", 0.5, "Filter path: fraction of every group's filters removed.")
flags.DEFINE_boolean("sensitivity", False, "Filter path: per-group ratios from the D-Score "
                     "paper's sensitivity analysis instead of --ratio.")
flags.DEFINE_float("max_drop", 0.01, "--sensitivity: accuracy drop allowed per group, one-shot "
                   "(0.01 = 1 point below the baseline; an absolute floor).")
flags.DEFINE_float("sparsity", 0.95, "Synaptic path: fraction of connections pruned.")
flags.DEFINE_float("l1", 2e-3, "Synaptic path: lambda of ProximalL1 in the L1 phase.")
flags.DEFINE_boolean("distill", True, "Fine-tune with the dense model as teacher.")
flags.DEFINE_float("alpha", 0.9, "--distill: weight of the soft-target loss (1 - alpha: labels).")
flags.DEFINE_float("temperature", 4.0, "--distill: softmax temperature of the soft targets.")
flags.DEFINE_float("finetune_lr", 1e-3, "Filter path: Adam learning rate of fine-tuning (cosine "
                   "decay to 0; the control uses the same).")
flags.DEFINE_integer("epochs", 12, "Training epochs of the dense model.")
flags.DEFINE_integer("finetune_epochs", 16, "Epochs of pruning and fine-tuning (and of the "
                     "control's extra training).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_boolean("quick", False, "A fast smoke run (CI): 2+2 epochs, fewer timing runs.")
flags.DEFINE_string("output_dir", "out/quickstart", "Where results, plots and .tflite files go.")
flags.DEFINE_boolean("verbose", False, "Show TensorFlow's native start-up, converter and LiteRT "
                     "messages (hidden by default).")


def load_data():
    from tfsynapse import datasets

    if FLAGS.dataset == "digits":
        return datasets.load_digits(size=32, seed=FLAGS.seed)
    if FLAGS.dataset == "fashion_mnist":
        return datasets.load_fashion_mnist()
    return datasets.load_tfds("cifar10")


def keras_module():
    """The Keras chosen by ``--backend``."""
    from tfsynapse import backends

    return backends.get(FLAGS.backend).keras


def compile_model(model, lr, sgd=False, decay_steps=None):
    """Adam (or SGD with momentum), the rate decaying to 0 over ``decay_steps`` when given."""
    keras = keras_module()
    if decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps)
    optimizer = keras.optimizers.SGD(lr, momentum=0.9) if sgd else keras.optimizers.Adam(lr)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=256), -1) == y))


class History:
    """Per fine-tuning epoch: the pruned fraction and validation accuracy (for the plot)."""

    def __init__(self, pruned, x_val, y_val, measure):
        keras = keras_module()
        history = self
        self.epochs, self.sparsity, self.accuracy = [], [], []

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                history.epochs.append(len(history.epochs) + 1)
                history.sparsity.append(measure(pruned))
                history.accuracy.append(accuracy(pruned, x_val, y_val))
                print(f"  epoch {history.epochs[-1]}: pruned {history.sparsity[-1]:.1%}, "
                      f"validation accuracy {history.accuracy[-1]:.2%}")

        self.callback = _Callback()


def fine_tune(pruned, teacher, train, val, epochs, lr, callbacks, sgd=False):
    """``fit`` of a pruned model (cosine decay), through a distiller when ``--distill``."""
    import tfsynapse

    student = (tfsynapse.Distiller(pruned, teacher, temperature=FLAGS.temperature,
                                   alpha=FLAGS.alpha) if FLAGS.distill else pruned)
    compile_model(student, lr, sgd=sgd, decay_steps=_steps(train, epochs))
    # tfmot's wrappers need UpdatePruningStep; a Keras 3 pruned model counts its own steps
    stepper = [tfsynapse.UpdatePruningStep()] if FLAGS.backend == "tf_keras" else []
    student.fit(*train, batch_size=FLAGS.batch_size, epochs=epochs, verbose=0,
                callbacks=stepper + list(callbacks))


def synaptic_path(base, dense, train, val, steps_per_epoch, out):
    """The Synaptic Strength paper's procedure: L1 phase, global threshold, fine-tuning."""
    import numpy as np

    import tfsynapse

    synaptic, report = tfsynapse.to_synaptic(base, return_report=True)
    print(report)
    before = np.concatenate([s.numpy().ravel() for s in tfsynapse.layers.synaptic_strengths(synaptic)])
    l1_epochs = max(1, FLAGS.finetune_epochs // 2)
    compile_model(synaptic, 0.01, sgd=True)
    synaptic.fit(*train, batch_size=FLAGS.batch_size, epochs=l1_epochs, verbose=0,
                 callbacks=[tfsynapse.ProximalL1(FLAGS.l1)])
    print(f"L1 phase ({l1_epochs} epochs, lambda {FLAGS.l1:g}): "
          f"{tfsynapse.strength_sparsity(synaptic):.1%} of the strengths are exactly zero")
    schedule = tfsynapse.ConstantSparsity(FLAGS.sparsity, begin_step=1, frequency=10**9)
    pruned = tfsynapse.prune_synaptic(synaptic, schedule, criterion="synaptic_strength",
                                      granularity="connection", scope="global")
    history = History(pruned, *val, lambda m: m.pruned_fraction())
    fine_tune(pruned, dense, train, val, FLAGS.finetune_epochs - l1_epochs, 0.005,
              [history.callback], sgd=True)
    stripped = tfsynapse.strip_pruning(pruned)
    after = np.concatenate([s.numpy().ravel() for s in tfsynapse.layers.synaptic_strengths(stripped)])
    quickstart_plots.plot_strengths(before, after, os.path.join(out, "strengths.png"))
    return tfsynapse.from_synaptic(stripped), history


def filter_path(base, dense, train, val, steps_per_epoch, out):
    """D-Score family: whole filters, gradually during fit (uniform or sensitivity ratios)."""
    import tfsynapse

    x_val, y_val = val
    ratios = None
    if FLAGS.sensitivity:
        table = tfsynapse.sensitivity_analysis(
            dense, lambda m: accuracy(m, x_val, y_val), criterion=FLAGS.criterion, step=0.1,
            max_ratio=0.9, recalibration_data=train[0], verbose=1)
        table.to_json(os.path.join(out, "sensitivity.json"))
        tfsynapse.plot_sensitivity(table, os.path.join(out, "sensitivity.png"),
                                   title=f"{FLAGS.criterion} sensitivity (BN recalibrated)")
        ratios = tfsynapse.ratios_from_sensitivity(table, max_drop=FLAGS.max_drop)
        print("per-group pruning ratios:", {k: round(v, 2) for k, v in ratios.items()})
        if not any(ratios.values()):
            print(f"no group can lose filters within {FLAGS.max_drop:g}; raise --max_drop")
            return dense, None
    final = max(ratios.values()) if ratios else FLAGS.ratio
    total = FLAGS.finetune_epochs * steps_per_epoch
    schedule = tfsynapse.PolynomialDecay(0.0, final, begin_step=0, end_step=max(1, int(0.6 * total)),
                                         frequency=max(1, steps_per_epoch // 2))
    pruned = tfsynapse.prune_synaptic(base, schedule, criterion=FLAGS.criterion,
                                      granularity="filter", scope="layer", layer_sparsity=ratios,
                                      only_listed=ratios is not None)
    history = History(pruned, x_val, y_val, lambda m: m.pruned_fraction())
    fine_tune(pruned, dense, train, val, FLAGS.finetune_epochs, FLAGS.finetune_lr,
              [history.callback])
    return tfsynapse.strip_pruning(pruned), history


def check_flags():
    """Refuses flags this run would not read (the path chosen by --criterion, --sensitivity
    and --distill), so that no option is ignored silently.

    Raises:
      app.UsageError: names the flags and why they are unused.
    """
    if FLAGS.criterion == "synaptic_strength":
        unused = {"sensitivity": "filter criteria only", "max_drop": "filter criteria only",
                  "ratio": "filter criteria only; use --sparsity"}
    else:
        unused = {"sparsity": "synaptic_strength only; use --ratio",
                  "l1": "synaptic_strength only"}
        unused.update({"ratio": "--sensitivity chooses per-group ratios"} if FLAGS.sensitivity
                      else {"max_drop": "it needs --sensitivity"})
    if not FLAGS.distill:
        unused.update(alpha="--nodistill", temperature="--nodistill")
    given = sorted(name for name in unused if FLAGS[name].present)
    if given:
        raise app.UsageError("not used by this run: " + "; ".join(
            f"--{name} ({unused[name]})" for name in given) + ". Drop them.")


def main(argv):
    del argv
    check_flags()
    logging.set_verbosity(logging.WARNING)
    import numpy as np

    from tfsynapse.quiet import import_tensorflow_quietly, native_stderr_hidden

    import_tensorflow_quietly(not FLAGS.verbose)
    import tflite_export
    import tfsynapse

    keras = keras_module()
    if FLAGS.quick:
        FLAGS.epochs, FLAGS.finetune_epochs = min(FLAGS.epochs, 2), min(FLAGS.finetune_epochs, 2)
    keras.utils.set_random_seed(FLAGS.seed)
    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = load_data()
    cut = int(len(x_train) * 0.85)  # a validation split for sensitivity and monitoring
    train, val = (x_train[:cut], y_train[:cut]), (x_train[cut:], y_train[cut:])
    classes = int(max(y_train.max(), y_test.max()) + 1)
    print(f"{FLAGS.backend}; data: {FLAGS.dataset}, {len(train[0])} train / {len(val[0])} validation / "
          f"{len(x_test)} test images of shape {x_train.shape[1:]}")

    from tfsynapse.models import conv_bn_cnn

    dense = compile_model(conv_bn_cnn(x_train.shape[1:], classes, name="quickstart_cnn",
                                      backend=FLAGS.backend), 2e-3,
                          decay_steps=_steps(train, FLAGS.epochs))
    dense.fit(*train, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=0)
    dense_acc = accuracy(dense, x_test, y_test)
    print(f"dense: test accuracy {dense_acc:.2%} after {FLAGS.epochs} epochs")
    control = compile_model(keras.models.clone_model(dense), FLAGS.finetune_lr,
                            decay_steps=_steps(train, FLAGS.finetune_epochs))
    control.set_weights(dense.get_weights())
    control.fit(*train, batch_size=FLAGS.batch_size, epochs=FLAGS.finetune_epochs, verbose=0)
    control_acc = accuracy(control, x_test, y_test)
    print(f"equal-budget control (dense + {FLAGS.finetune_epochs} epochs): {control_acc:.2%}")

    steps_per_epoch = int(np.ceil(len(train[0]) / FLAGS.batch_size))
    path = synaptic_path if FLAGS.criterion == "synaptic_strength" else filter_path
    # prune_synaptic wraps (and trains) the layers of the model it is given, as tfmot does:
    # prune a copy, so that the dense model stays the teacher and the reference.
    base = keras.models.clone_model(dense)
    base.set_weights(dense.get_weights())
    pruned, history = path(base, dense, train, val, steps_per_epoch, out)
    pruned_acc = accuracy(pruned, x_test, y_test)
    sparsity = tfsynapse.connection_sparsity(pruned)[0]
    small, report = tfsynapse.shrink(pruned, return_report=True, verbose=1)

    with native_stderr_hidden(not FLAGS.verbose):  # converter and LiteRT chatter
        calibration = [x_train[i:i + 1] for i in range(0, min(len(x_train), 400), 4)]
        files, latency = {}, {}
        for name, model in (("dense", dense), ("shrunk", small)):
            files[name] = os.path.join(out, f"{name}_int8.tflite")
            tflite_export.convert(model, quantize="int8", representative_dataset=calibration,
                                  output=files[name])
        for name, timing in _latencies(files).items():
            latency[name] = timing
        check = tflite_export.verify(files["shrunk"], small, x_test)
        rows = {
            "backend": FLAGS.backend, "dataset": FLAGS.dataset, "criterion": FLAGS.criterion,
            "method": ("synaptic strength, " if FLAGS.criterion == "synaptic_strength" else "") + (
                f"{FLAGS.sparsity:.0%} of connections" if FLAGS.criterion == "synaptic_strength"
                else "sensitivity ratios" if FLAGS.sensitivity else f"{FLAGS.ratio:.0%} of filters"),
            "distilled": FLAGS.distill, "epochs": FLAGS.epochs, "finetune_epochs": FLAGS.finetune_epochs,
            "accuracy_dense_keras": dense_acc, "accuracy_control_keras": control_acc,
            "accuracy_pruned_keras": pruned_acc,
            "accuracy_dense_int8": _tflite_accuracy(files["dense"], x_test, y_test),
            "accuracy_int8_tflite": _tflite_accuracy(files["shrunk"], x_test, y_test),
            "int8_top1_agreement": check["top1_agreement"],
            "params_dense": report.params_before, "params_shrunk": report.params_after,
            "macs_dense": report.macs_before, "macs_shrunk": report.macs_after,
            "connection_sparsity": sparsity,
            "channels_removed": int(sum(report.removed_units.values())),
            "file_bytes_dense_int8": os.path.getsize(files["dense"]),
            "file_bytes_shrunk_int8": os.path.getsize(files["shrunk"]),
            "latency_ms_dense_int8": latency["dense"], "latency_ms_shrunk_int8": latency["shrunk"],
        }
    rows["speedup_int8"] = rows["latency_ms_dense_int8"] / rows["latency_ms_shrunk_int8"]
    rows["size_ratio_int8"] = rows["file_bytes_dense_int8"] / rows["file_bytes_shrunk_int8"]
    write_results(rows, out)
    if history is not None and history.epochs:
        quickstart_plots.plot_training(
            history, os.path.join(out, "training.png"),
            "connections" if FLAGS.criterion == "synaptic_strength" else "channels")
    quickstart_plots.plot_channels(report, dense, os.path.join(out, "channels.png"))
    print(f"\nwrote {out}/shrunk_int8.tflite, results.json, results.md and plots")


def _steps(train, epochs):
    return max(1, epochs * -(-len(train[0]) // FLAGS.batch_size))


def _latencies(files):
    """Median LiteRT latency (ms, 1 thread) of each file, timed in alternating rounds."""
    import numpy as np

    import tflite_export

    rounds = 3 if FLAGS.quick else 7
    runs = 20 if FLAGS.quick else 100
    samples = {name: [] for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            samples[name].append(tflite_export.benchmark(path, num_threads=1, runs=runs)["median_ms"])
    return {name: float(np.median(values)) for name, values in samples.items()}


def _tflite_accuracy(path, x, y):
    import numpy as np

    import tflite_export

    return float(np.mean(np.argmax(tflite_export.predict(path, x), -1) == y))


def write_results(rows, out):
    def fmt(key, value):
        if key.startswith(("accuracy", "int8_top1", "connection")):
            return f"{value:.2%}"
        if key.startswith("latency"):
            return f"{value:.4f}"  # sub-millisecond models: keep three significant digits
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| metric | dense | pruned + shrunk |", "|---|---|---|"]
    pairs = [("accuracy (Keras)", "accuracy_dense_keras", "accuracy_pruned_keras"),
             ("accuracy (int8 TFLite)", "accuracy_dense_int8", "accuracy_int8_tflite"),
             ("parameters", "params_dense", "params_shrunk"),
             ("MACs", "macs_dense", "macs_shrunk"),
             ("int8 .tflite bytes", "file_bytes_dense_int8", "file_bytes_shrunk_int8"),
             ("LiteRT int8 latency, ms (1 thread)", "latency_ms_dense_int8", "latency_ms_shrunk_int8")]
    for label, a, b in pairs:
        lines.append(f"| {label} | {fmt(a, rows[a])} | {fmt(b, rows[b])} |")
    lines.append(f"| equal-budget control (Keras) | {fmt('accuracy', rows['accuracy_control_keras'])} | |")
    lines.append(f"| int8 speedup / file size ratio | | {rows['speedup_int8']:.2f}x / "
                 f"{rows['size_ratio_int8']:.2f}x |")
    lines.append(f"| int8 top-1 agreement with Keras | | {fmt('int8_top1', rows['int8_top1_agreement'])} |")
    lines.append(f"| connection sparsity | | {fmt('connection', rows['connection_sparsity'])} |")
    lines.append(f"| channels removed | | {rows['channels_removed']} |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(out, "results.md"), "w") as handle:
        handle.write(f"# quickstart: {rows['backend']}, {rows['dataset']}, {rows['criterion']} "
                     f"({rows['method']})"
                     f"\n\n{table}\n")
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    app.run(main)
