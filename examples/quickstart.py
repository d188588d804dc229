"""tfsynapse quickstart: train, prune during fit, shrink, and export an int8 TFLite model.

    python examples/quickstart.py                       # Synaptic Strength on the digits data
    python examples/quickstart.py --criterion=dscore    # D-Score with sensitivity analysis
    python examples/quickstart.py --dataset=cifar10     # needs the internet (tfds)

Offline by default: scikit-learn's handwritten digits, upsampled to 16x16. Steps:
1. train a small CNN with BatchNormalization;
2. Synaptic Strength: ``to_synaptic`` (BN scales into per-connection strengths, L1 on them),
   then ``prune_synaptic`` prunes connections by strength under a tfmot schedule (one global
   threshold) during fine-tuning. D-Score (``--criterion=dscore|dstep|dstep_gm|l1|...``):
   sensitivity analysis per dependency group, ratios at ``--threshold`` of the baseline,
   fine-tuning with the masks kept;
3. ``strip_pruning``, ``from_synaptic``, ``shrink`` (channels really removed);
4. int8 TFLite export, verified in LiteRT; latency of the dense and shrunk models.
Everything lands in ``--output_dir``: the .tflite files, results.json/results.md and plots.
"""

import json
import os

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", ["digits", "fashion_mnist", "cifar10"], "Training data.")
flags.DEFINE_string("criterion", "synaptic_strength",
                    "synaptic_strength (connections), or a filter criterion: dscore, dstep, "
                    "dstep_gm, fpgm, l1, l2, bn_scale, random.")
flags.DEFINE_float("sparsity", 0.9, "Target connection sparsity (Synaptic Strength path).")
flags.DEFINE_float("threshold", 0.95, "D-Score path: keep this fraction of the validation accuracy.")
flags.DEFINE_float("l1", 1e-4, "L1 coefficient on synaptic strengths.")
flags.DEFINE_integer("epochs", 12, "Training epochs of the dense model.")
flags.DEFINE_integer("finetune_epochs", 12, "Epochs of pruning and fine-tuning.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_boolean("quick", False, "A fast smoke run (CI): 2+2 epochs, fewer timing runs.")
flags.DEFINE_string("output_dir", "out/quickstart", "Where results, plots and .tflite files go.")


def load_data():
    from tfsynapse import datasets

    if FLAGS.dataset == "digits":
        return datasets.load_digits(size=32, seed=FLAGS.seed)
    if FLAGS.dataset == "fashion_mnist":
        return datasets.load_fashion_mnist()
    return datasets.load_tfds("cifar10")


def compile_model(model, lr):
    from tfsynapse._keras import keras

    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=256), -1) == y))


class History:
    """Per fine-tuning epoch: connection sparsity and validation accuracy (for the plot)."""

    def __init__(self, x_val, y_val):
        from tfsynapse._keras import keras

        import tfsynapse

        history = self
        self.epochs, self.sparsity, self.accuracy = [], [], []

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                history.epochs.append(epoch + 1)
                history.sparsity.append(tfsynapse.connection_sparsity(self.model)[0])
                history.accuracy.append(accuracy(self.model, x_val, y_val))
                print(f"  epoch {epoch + 1}: connection sparsity {history.sparsity[-1]:.1%}, "
                      f"validation accuracy {history.accuracy[-1]:.2%}")

        self.callback = _Callback()


def synaptic_path(dense, train, val, steps_per_epoch, history, out):
    """Synaptic Strength: trainable strengths, L1, global connection pruning during fit."""
    import numpy as np

    import tfsynapse

    synaptic, report = tfsynapse.to_synaptic(dense, l1=FLAGS.l1, return_report=True)
    print(report)
    before = np.concatenate([l.strength.numpy().ravel() for l in synaptic.layers
                             if isinstance(l, tfsynapse.SynapticConv2D)])
    total = FLAGS.finetune_epochs * steps_per_epoch
    schedule = tfsynapse.PolynomialDecay(0.0, FLAGS.sparsity, begin_step=0,
                                         end_step=max(1, int(total * 0.7)),
                                         frequency=max(1, steps_per_epoch // 4))
    pruned = tfsynapse.prune_synaptic(synaptic, schedule, criterion="synaptic_strength",
                                      granularity="connection", scope="global",
                                      max_pruning_ratio=min(0.99, FLAGS.sparsity + 0.08))
    compile_model(pruned, 1e-3)
    pruned.fit(*train, batch_size=FLAGS.batch_size, epochs=FLAGS.finetune_epochs,
               validation_data=val, verbose=2,
               callbacks=[tfsynapse.UpdatePruningStep(), history.callback,
                          tfsynapse.PruningSummaries(os.path.join(out, "logs"))])
    stripped = tfsynapse.strip_pruning(pruned)
    after = np.concatenate([l.strength.numpy().ravel() for l in stripped.layers
                            if isinstance(l, tfsynapse.SynapticConv2D)])
    plot_strengths(before, after, os.path.join(out, "strengths.png"))
    return tfsynapse.from_synaptic(stripped)


def filter_path(dense, train, val, steps_per_epoch, history, out):
    """D-Score family: sensitivity analysis, parallel pruning, fine-tuning with masks kept."""
    import tfsynapse

    x_val, y_val = val
    table = tfsynapse.sensitivity_analysis(dense, lambda m: accuracy(m, x_val, y_val),
                                           criterion=FLAGS.criterion, step=0.1, max_ratio=0.9)
    table.to_json(os.path.join(out, "sensitivity.json"))
    tfsynapse.plot_sensitivity(table, os.path.join(out, "sensitivity.png"),
                               title=f"{FLAGS.criterion} sensitivity")
    ratios = tfsynapse.ratios_from_sensitivity(table, FLAGS.threshold)
    print("per-group pruning ratios:", {k: round(v, 2) for k, v in ratios.items()})
    if not any(ratios.values()):
        print("no group can be pruned within the threshold; lower --threshold")
        return dense
    final = max(ratios.values())
    schedule = tfsynapse.ConstantSparsity(final, begin_step=0, frequency=max(1, steps_per_epoch))
    pruned = tfsynapse.prune_synaptic(dense, schedule, criterion=FLAGS.criterion,
                                      granularity="filter", scope="layer", layer_sparsity=ratios)
    compile_model(pruned, 5e-4)
    pruned.fit(*train, batch_size=FLAGS.batch_size, epochs=FLAGS.finetune_epochs,
               validation_data=val, verbose=2, callbacks=[tfsynapse.UpdatePruningStep(), history.callback])
    return tfsynapse.strip_pruning(pruned)


def plot_strengths(before, after, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, max(np.abs(before).max(), 1e-6), 60)
    ax.hist(np.abs(before), bins=bins, alpha=0.6, label="before pruning")
    ax.hist(np.abs(after[after != 0]), bins=bins, alpha=0.6, label="after (non-zero)")
    ax.set_xlabel("|synaptic strength|")
    ax.set_ylabel("connections")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.epochs, history.sparsity, "o-", label="connection sparsity")
    ax.plot(history.epochs, history.accuracy, "s-", label="validation accuracy")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_channels(report, dense, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [l.name for l in dense.layers if hasattr(l, "filters") or hasattr(l, "units")]
    before = [getattr(dense.get_layer(n), "filters", None) or dense.get_layer(n).units for n in names]
    after = [report.channels.get(n, (b, b))[1] for n, b in zip(names, before)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    positions = range(len(names))
    ax.bar([p - 0.2 for p in positions], before, width=0.4, label="dense")
    ax.bar([p + 0.2 for p in positions], after, width=0.4, label="shrunk")
    ax.set_xticks(list(positions), names, rotation=30)
    ax.set_ylabel("output channels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np

    import tflite_export
    import tfsynapse
    from tfsynapse._keras import keras

    if FLAGS.quick:
        FLAGS.epochs, FLAGS.finetune_epochs = min(FLAGS.epochs, 2), min(FLAGS.finetune_epochs, 2)
    keras.utils.set_random_seed(FLAGS.seed)
    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = load_data()
    cut = int(len(x_train) * 0.85)  # a validation split for sensitivity and monitoring
    train, val = (x_train[:cut], y_train[:cut]), (x_train[cut:], y_train[cut:])
    classes = int(max(y_train.max(), y_test.max()) + 1)
    print(f"data: {FLAGS.dataset}, {len(train[0])} train / {len(val[0])} validation / "
          f"{len(x_test)} test images of shape {x_train.shape[1:]}")

    from tfsynapse.models import conv_bn_cnn

    dense = compile_model(conv_bn_cnn(x_train.shape[1:], classes, name="quickstart_cnn"), 2e-3)
    dense.fit(*train, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, validation_data=val, verbose=2)
    dense_acc = accuracy(dense, x_test, y_test)
    print(f"dense test accuracy: {dense_acc:.2%}")

    steps_per_epoch = int(np.ceil(len(train[0]) / FLAGS.batch_size))
    history = History(*val)
    path = synaptic_path if FLAGS.criterion == "synaptic_strength" else filter_path
    pruned = path(dense, train, val, steps_per_epoch, history, out)
    pruned_acc = accuracy(pruned, x_test, y_test)
    sparsity = tfsynapse.connection_sparsity(pruned)[0]
    small, report = tfsynapse.shrink(pruned, return_report=True)
    print(report.table())

    calibration = [x_train[i:i + 1] for i in range(0, min(len(x_train), 400), 4)]
    files, latency = {}, {}
    for name, model in (("dense", dense), ("shrunk", small)):
        files[name] = os.path.join(out, f"{name}_int8.tflite")
        tflite_export.convert(model, quantize="int8", representative_dataset=calibration,
                              output=files[name])
        latency[name] = tflite_export.benchmark(files[name], num_threads=1,
                                                runs=20 if FLAGS.quick else 100)["median_ms"]
    check = tflite_export.verify(files["shrunk"], small, x_test)
    int8_acc = _tflite_accuracy(files["shrunk"], x_test, y_test)
    rows = {
        "dataset": FLAGS.dataset, "criterion": FLAGS.criterion,
        "accuracy_dense_keras": dense_acc, "accuracy_pruned_keras": pruned_acc,
        "accuracy_int8_tflite": int8_acc, "int8_top1_agreement": check["top1_agreement"],
        "params_dense": report.params_before, "params_shrunk": report.params_after,
        "macs_dense": report.macs_before, "macs_shrunk": report.macs_after,
        "connection_sparsity": sparsity,
        "channels_removed": int(sum(report.removed_units.values())),
        "file_bytes_dense_int8": os.path.getsize(files["dense"]),
        "file_bytes_shrunk_int8": os.path.getsize(files["shrunk"]),
        "latency_ms_dense_int8": latency["dense"], "latency_ms_shrunk_int8": latency["shrunk"],
    }
    write_results(rows, out)
    if history.epochs:
        plot_training(history, os.path.join(out, "training.png"))
    plot_channels(report, dense, os.path.join(out, "channels.png"))
    print(f"\nwrote {out}/shrunk_int8.tflite, results.json, results.md and plots")


def _tflite_accuracy(path, x, y):
    import numpy as np

    import tflite_export

    return float(np.mean(np.argmax(tflite_export.predict(path, x), -1) == y))


def write_results(rows, out):
    def fmt(key, value):
        if key.startswith(("accuracy", "int8_top1", "connection")):
            return f"{value:.2%}"
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| metric | dense | pruned + shrunk |", "|---|---|---|"]
    pairs = [("accuracy (Keras)", "accuracy_dense_keras", "accuracy_pruned_keras"),
             ("parameters", "params_dense", "params_shrunk"),
             ("MACs", "macs_dense", "macs_shrunk"),
             ("int8 .tflite bytes", "file_bytes_dense_int8", "file_bytes_shrunk_int8"),
             ("LiteRT int8 latency, ms (1 thread)", "latency_ms_dense_int8", "latency_ms_shrunk_int8")]
    for label, a, b in pairs:
        lines.append(f"| {label} | {fmt(a, rows[a])} | {fmt(b, rows[b])} |")
    lines.append(f"| accuracy (int8 TFLite) | | {fmt('accuracy', rows['accuracy_int8_tflite'])} |")
    lines.append(f"| int8 top-1 agreement with Keras | | {fmt('int8_top1', rows['int8_top1_agreement'])} |")
    lines.append(f"| connection sparsity | | {fmt('connection', rows['connection_sparsity'])} |")
    lines.append(f"| channels removed | | {rows['channels_removed']} |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(out, "results.md"), "w") as handle:
        handle.write(f"# quickstart: {rows['dataset']}, {rows['criterion']}\n\n{table}\n")
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    app.run(main)
