"""What ``tfsynapse prune`` does with ``--data``: accuracy before and after, fine-tuning.

One-shot pruning without training loses accuracy; with ``--data x.npy[,y.npy]`` the command
recalibrates BatchNormalization on ``x``, and with labels ``y`` it reports the accuracy of the
dense and the pruned model on those samples and can fine-tune for ``--finetune-epochs`` with
the pruned units held at zero. Accuracy is measured on the samples given (training data makes
it optimistic; pass held-out data to measure honestly).
"""

import numpy as np

from tfsynapse.backends import backend_of, tf

FINETUNE_BATCH = 32


def is_classifier(model, y):
    """Whether ``model`` outputs one class-score vector per sample that ``y`` can label
    (either Keras)."""
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        return False
    classes = int(model.outputs[0].shape[-1] or 0)
    if y.ndim == 2:
        return y.shape[1] == classes
    return y.ndim == 1 and classes > 1 and np.issubdtype(y.dtype, np.integer) \
        and 0 <= int(y.min()) and int(y.max()) < classes


def accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of a classifier on ``(x, y)`` (``y`` class ids or one-hot)."""
    predicted = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)
    labels = np.argmax(y, axis=-1) if y.ndim == 2 else y
    return float(np.mean(predicted == labels))


def _outputs_probabilities(model):
    layer = model.layers[-1]
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def _keep_zeros(keras, weights):
    """A callback of ``keras`` that multiplies every weight by its nonzero mask after each
    batch, so pruned units stay exactly zero."""
    pairs = [(w, tf.constant(np.asarray(w.numpy()) != 0, w.dtype)) for w in weights]

    class KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for weight, mask in pairs:
                weight.assign(weight * mask)

    return KeepZeros()


def finetune_keeping_zeros(model, x, y, epochs, learning_rate, verbose=2):
    """Fine-tunes a pruned classifier in place; weights that are exactly zero stay zero.

    Args:
      model: the pruned model (from ``prune_once``), tf_keras or Keras 3.
      x, y: samples and labels (class ids or one-hot).
      epochs: epochs of fine-tuning.
      learning_rate: Adam's learning rate.
      verbose: Keras' ``fit`` verbosity (2: one line per epoch).

    Returns:
      Keras' ``History``.
    """
    keras = backend_of(model).keras
    from_logits = not _outputs_probabilities(model)
    loss = (keras.losses.CategoricalCrossentropy(from_logits=from_logits) if y.ndim == 2 else
            keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    model.compile(keras.optimizers.Adam(learning_rate), loss, metrics=["accuracy"])
    keeper = _keep_zeros(keras, model.trainable_weights)
    return model.fit(x, y, epochs=epochs, batch_size=FINETUNE_BATCH, shuffle=True,
                     verbose=verbose, callbacks=[keeper])
