"""One-shot structured pruning of a tf_keras.applications model, shrunk and exported to TFLite.

    python examples/keras_applications.py --model=MobileNetV2 --sparsity=0.5 --criterion=dscore

Offline by default (``weights=None``: random weights, real architecture); ``--weights`` loads a
weights file of yours. Prints the dependency groups, the MAC/parameter reduction, the
masked-versus-shrunk output error and the LiteRT latency of the dense and shrunk models.
"""

import os

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "MobileNetV2", "A tf_keras.applications constructor name.")
flags.DEFINE_string("weights", None, "Optional weights file for the model (default: random).")
flags.DEFINE_integer("size", 160, "Input height and width.")
flags.DEFINE_float("sparsity", 0.5, "Fraction of channels pruned per group.")
flags.DEFINE_string("criterion", "dscore", "Filter criterion (l1, l2, dscore, dstep, dstep_gm, fpgm, bn_scale, random).")
flags.DEFINE_integer("round_to", 8, "Keep channel counts multiples of this.")
flags.DEFINE_string("quantize", None, "TFLite quantization: none, dynamic, float16 or int8.")
flags.DEFINE_integer("threads", 1, "LiteRT threads for the latency measurement.")
flags.DEFINE_integer("runs", 20, "Timed LiteRT runs per model.")
flags.DEFINE_string("output_dir", "out/keras_applications", "Where the .tflite files go.")
flags.DEFINE_boolean("verbose", False, "Show TensorFlow's native start-up and converter "
                     "messages (hidden by default).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np

    from tfsynapse.quiet import import_tensorflow_quietly, native_stderr_hidden

    import_tensorflow_quietly(not FLAGS.verbose)
    import tflite_export
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    constructor = getattr(keras.applications, FLAGS.model, None)
    if constructor is None:
        raise app.UsageError(f"tf_keras.applications has no model named {FLAGS.model!r}.")
    model = constructor(weights=None, input_shape=(FLAGS.size, FLAGS.size, 3))
    if FLAGS.weights:
        model.load_weights(FLAGS.weights)
    graph = tfsynapse.dependency_groups(model)
    print(f"{FLAGS.model}: {len(graph)} dependency groups, {len(graph.prunable_groups)} prunable, "
          f"{tfsynapse.count_macs(graph) / 1e6:.1f} M MACs")
    pruned = tfsynapse.prune_once(model, FLAGS.sparsity, criterion=FLAGS.criterion,
                                  round_to=FLAGS.round_to)
    small, report = tfsynapse.shrink(pruned, return_report=True)
    print(report.table().splitlines()[-1])
    print(f"shrunk vs masked max abs error: {report.max_abs_error:.2e}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    quantize = None if FLAGS.quantize in (None, "none") else FLAGS.quantize
    rng = np.random.default_rng(0)
    calibration = [rng.normal(size=(1, FLAGS.size, FLAGS.size, 3)).astype("float32") for _ in range(8)]
    rows = []
    for name, m in (("dense", model), ("shrunk", small)):
        path = os.path.join(FLAGS.output_dir, f"{FLAGS.model}_{name}.tflite")
        with native_stderr_hidden(not FLAGS.verbose):  # converter and LiteRT chatter
            tflite_export.convert(m, quantize=quantize, output=path,
                                  representative_dataset=calibration if quantize == "int8" else None)
            bench = tflite_export.benchmark(path, num_threads=FLAGS.threads, runs=FLAGS.runs)
        rows.append((name, os.path.getsize(path), bench["median_ms"]))
    print(f"{'model':<8} {'size':>12} {'median ms':>10}")
    for name, size, ms in rows:
        print(f"{name:<8} {size:>12,} {ms:>10.3f}")
    print(f"speedup {rows[0][2] / rows[1][2]:.2f}x for a {report.mac_reduction:.1%} MAC reduction")


if __name__ == "__main__":
    app.run(main)
