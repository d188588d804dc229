"""The Keras-agnostic pieces of knowledge distillation, shared by the tf_keras ``Distiller``
(``backends/tf_keras/distill.py``) and the Keras 3 one (``backends/keras3/distill.py``): the
soft loss, the checks of the hard loss and the labels, and ``DistillerBase``: the state,
properties, ``compile`` and ``call`` both distillers have."""

from tfsynapse.backends import tf

_EPSILON = 1e-7


def soft_targets_loss(teacher_outputs, student_outputs, temperature, from_logits,
                      sample_weight=None):
    """``T^2 * KL(teacher || student)`` at temperature T, averaged over the batch.

    Args:
      teacher_outputs: the teacher's logits (or probabilities), ``[batch, ..., classes]``.
      student_outputs: the student's, same shape.
      temperature: T.
      from_logits: False when the outputs are probabilities.
      sample_weight: optional per-sample weights, ``[batch]`` (or the outputs' shape
        without the class axis); the weighted sum is divided by the number of samples,
        as Keras losses do.

    Returns:
      A float32 scalar tensor.
    """
    def log_probabilities(outputs):
        outputs = tf.cast(outputs, tf.float32)
        if not from_logits:  # softmax(log p / T) is p^(1/T), renormalised
            outputs = tf.math.log(tf.maximum(outputs, _EPSILON))
        return tf.nn.log_softmax(outputs / temperature, axis=-1)

    log_t = log_probabilities(teacher_outputs)
    log_s = log_probabilities(student_outputs)
    kl = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)
    if sample_weight is not None:
        weights = tf.cast(sample_weight, kl.dtype)
        if weights.shape.rank == kl.shape.rank + 1:
            weights = tf.squeeze(weights, -1)
        while weights.shape.rank < kl.shape.rank:
            weights = weights[..., None]
        kl = kl * weights
    return tf.reduce_mean(kl) * temperature ** 2


def require_hard_loss(loss, alpha):
    """Raises ValueError when ``compile`` gets no hard (label) loss while ``alpha < 1``."""
    if loss is None and alpha < 1.0:
        raise ValueError(f"compile needs the hard (label) loss when alpha < 1 (alpha is "
                         f"{alpha:g}), e.g. loss=keras.losses."
                         "SparseCategoricalCrossentropy(from_logits=True).")


def require_labels(y, alpha):
    """Raises ValueError when the data have no labels while ``alpha < 1``."""
    if y is None and alpha < 1.0:
        raise ValueError(f"the data have no labels, but alpha={alpha:g} < 1 needs them "
                         "for the hard loss; give (x, y) or use alpha=1.")


class DistillerBase:
    """What both Keras' distillers share; mixed in before their ``keras.Model``.

    ``_setup`` (called by the distiller's ``__init__`` after ``Model.__init__``) keeps the pair
    and the numbers; the properties are read-only (``fit`` traces its step once, so a later
    change would be silently ignored); ``compile`` checks the hard loss; ``call`` (``predict``,
    ``__call__``) runs the student only.
    """

    def _setup(self, student, teacher, temperature, alpha, from_logits, tracker):
        # The student first: tf_keras's UpdatePruningStep reads the first wrapper it finds.
        self._student = student
        self._teacher = teacher
        self._temperature = temperature
        self._alpha = alpha
        self._from_logits = bool(from_logits)
        self._distillation_tracker = tracker

    student = property(lambda self: self._student,
                       doc="The model being trained (its weights are the ones fit changes).")
    teacher = property(lambda self: self._teacher, doc="The frozen model giving soft targets.")
    temperature = property(lambda self: self._temperature, doc="The softmax temperature T.")
    alpha = property(lambda self: self._alpha, doc="The weight of the distillation term.")
    from_logits = property(lambda self: self._from_logits,
                           doc="Whether the models output logits (else probabilities).")

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """``keras.Model.compile``; ``loss`` is the hard loss on the labels.

        Args:
          optimizer: the optimizer (of the student's trainable weights).
          loss: the hard loss, e.g. ``SparseCategoricalCrossentropy(from_logits=True)``;
            may be None only when ``alpha`` is 1.
          metrics: metrics of the student's outputs against the labels.
          **kwargs: passed to ``keras.Model.compile``.

        Raises:
          ValueError: no loss while alpha < 1.
        """
        require_hard_loss(loss, self._alpha)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self._student(inputs, training=training)
