"""ResNet-20/56 on CIFAR-10 with Synaptic Strength or D-Score pruning, for users with data and time.

    python examples/cifar10_resnet.py --depth=56 --method=synaptic --epochs=160 --finetune_epochs=40
    python examples/cifar10_resnet.py --depth=20 --method=dscore --threshold=0.97

CIFAR-10 comes from TensorFlow Datasets (internet needed once); ``--fake_data`` runs the same
pipeline on random images to check an installation offline. The networks are the CIFAR ResNets
of He et al. (3 stages of 16/32/64 channels, n blocks each, depth 6n+2) with 1x1 projection
shortcuts where the shape changes; their residual adds make one dependency group per stage,
which tfsynapse prunes as a whole (``--residual=skip`` leaves them, as the D-Score paper does).

Expected numbers (not measured on this project's 2-core CI machine, which has no internet):
with the usual schedule (SGD 0.1, momentum 0.9, weight decay 1e-4, 160+ epochs, crop+flip)
ResNet-20 reaches about 91-92% and ResNet-56 about 93% test accuracy (He et al., 2016). The
Synaptic Strength paper reports up to 96% of connections pruned on CIFAR-10 ResNets without
accuracy loss; D-Score reports ~0.1-0.2 points of loss at ~65% FLOPs reduction on VGG-16. Expect
hours per run on a CPU; use a GPU.
"""

import os

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_enum("depth", "20", ["20", "56"], "ResNet depth (6n+2).")
flags.DEFINE_enum("method", "synaptic", ["synaptic", "dscore", "dstep", "dstep_gm", "l1", "fpgm"],
                  "synaptic: connection pruning by synaptic strength; else filter pruning.")
flags.DEFINE_float("sparsity", 0.9, "Synaptic: target connection sparsity.")
flags.DEFINE_float("threshold", 0.97, "Filter methods: keep this fraction of validation accuracy.")
flags.DEFINE_enum("residual", "group", ["group", "skip"], "Prune residual groups, or leave them.")
flags.DEFINE_integer("epochs", 160, "Training epochs.")
flags.DEFINE_integer("finetune_epochs", 40, "Pruning + fine-tuning epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("l1", 1e-4, "L1 on synaptic strengths.")
flags.DEFINE_boolean("fake_data", False, "Random images instead of CIFAR-10 (offline check).")
flags.DEFINE_string("output_dir", "out/cifar10_resnet", "Where the model and .tflite go.")
flags.DEFINE_boolean("verbose", False, "Show TensorFlow's native start-up and converter "
                     "messages (hidden by default).")


def resnet(depth, classes=10):
    """The CIFAR ResNet of depth 6n+2 (He et al., 2016), with projection shortcuts."""
    from tfsynapse.backends.tf_keras import keras

    L = keras.layers
    n = (depth - 2) // 6
    reg = keras.regularizers.L2(1e-4)
    inputs = keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, kernel_regularizer=reg)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            y = L.Conv2D(width, 3, stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
            y = L.ReLU()(L.BatchNormalization()(y))
            y = L.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg)(y)
            y = L.BatchNormalization()(y)
            if stride != 1 or x.shape[-1] != width:
                x = L.BatchNormalization()(L.Conv2D(width, 1, stride, use_bias=False)(x))
            x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(classes)(x), name=f"resnet{depth}")


def data():
    import numpy as np

    if FLAGS.fake_data:
        rng = np.random.default_rng(0)
        make = lambda n: (rng.random((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n))  # noqa: E731
        return make(512), make(128)
    from tfsynapse.datasets import load_tfds

    return load_tfds("cifar10")


def pipeline(x, y, train):
    from tfsynapse.backends.tf_keras import tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        def augment(image, label):
            image = tf.image.random_flip_left_right(image)
            image = tf.image.random_crop(tf.image.resize_with_crop_or_pad(image, 40, 40), (32, 32, 3))
            return image, label

        ds = ds.shuffle(10000).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np

    from tfsynapse.quiet import import_tensorflow_quietly, native_stderr_hidden

    import_tensorflow_quietly(not FLAGS.verbose)
    import tflite_export
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    (x_train, y_train), (x_test, y_test) = data()
    cut = int(len(x_train) * 0.9)
    train = pipeline(x_train[:cut], y_train[:cut], True)
    val_x, val_y = x_train[cut:], y_train[cut:]
    steps = int(np.ceil(cut / FLAGS.batch_size))

    def compiled(model, lr, epochs):
        schedule = keras.optimizers.schedules.CosineDecay(lr, max(1, epochs * steps))
        model.compile(keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    def accuracy(model, x, y):
        return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), -1) == y))

    model = compiled(resnet(int(FLAGS.depth)), 0.1, FLAGS.epochs)
    model.fit(train, epochs=FLAGS.epochs, validation_data=(val_x, val_y), verbose=2)
    print(f"dense test accuracy {accuracy(model, x_test, y_test):.2%}")
    callbacks = [tfsynapse.UpdatePruningStep()]
    if FLAGS.method == "synaptic":
        model = tfsynapse.to_synaptic(model, l1=FLAGS.l1)
        schedule = tfsynapse.PolynomialDecay(0.0, FLAGS.sparsity, 0, int(FLAGS.finetune_epochs * steps * 0.7),
                                             frequency=max(1, steps // 2))
        pruned = tfsynapse.prune_synaptic(model, schedule, max_pruning_ratio=min(0.99, FLAGS.sparsity + 0.08),
                                          residual=FLAGS.residual)
    else:
        table = tfsynapse.sensitivity_analysis(model, lambda m: accuracy(m, val_x, val_y),
                                               criterion=FLAGS.method, step=0.1, max_ratio=0.9,
                                               residual=FLAGS.residual)
        ratios = tfsynapse.ratios_from_sensitivity(table, FLAGS.threshold)
        target = max(ratios.values()) or 0.1
        pruned = tfsynapse.prune_synaptic(model, tfsynapse.ConstantSparsity(target, 0, frequency=steps),
                                          criterion=FLAGS.method, granularity="filter", scope="layer",
                                          layer_sparsity=ratios, residual=FLAGS.residual)
    compiled(pruned, 0.01, FLAGS.finetune_epochs).fit(
        train, epochs=FLAGS.finetune_epochs, validation_data=(val_x, val_y), verbose=2, callbacks=callbacks)
    stripped = tfsynapse.strip_pruning(pruned)
    if FLAGS.method == "synaptic":
        stripped = tfsynapse.from_synaptic(stripped)
    small, report = tfsynapse.shrink(stripped, return_report=True)
    print(report.table())
    print(f"pruned test accuracy {accuracy(small, x_test, y_test):.2%}; connection sparsity "
          f"{tfsynapse.connection_sparsity(stripped)[0]:.1%}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    small.save(os.path.join(FLAGS.output_dir, "pruned.keras"))
    path = os.path.join(FLAGS.output_dir, "pruned_int8.tflite")
    with native_stderr_hidden(not FLAGS.verbose):  # converter and LiteRT chatter
        tflite_export.convert(small, "int8", representative_dataset=x_train[:256:2], output=path)
        predicted = np.argmax(tflite_export.predict(path, x_test), -1)
    print(f"int8 test accuracy {np.mean(predicted == y_test):.2%}; wrote {path}")


if __name__ == "__main__":
    app.run(main)
