"""Knowledge distillation for tf_keras models: ``tfsynapse.Distiller`` with two tf_keras models.

The objective (``backends/distillation.py``, shared with Keras 3's ``KerasDistiller``):
``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard loss``
plus the student's own regularisation losses. The teacher runs in inference mode outside the
gradient tape. tfmot's ``UpdatePruningStep`` collects the wrappers of the models nested in
``fit``'s model, so it finds a pruned student's through the distiller (the student is its first
layer).
"""

from tfsynapse.backends.distillation import DistillerBase, require_labels, soft_targets_loss
from tfsynapse.backends.tf_keras import keras, tf
from tfsynapse.backends.tf_keras.pruned_model import PrunedModel, require_update_step


class Distiller(DistillerBase, keras.Model):
    """Trains ``student`` with the soft targets of a frozen ``teacher`` plus the hard labels.

    Built by ``tfsynapse.Distiller`` (which checks the pair and the numbers); see its
    docstring for the arguments and logs. ``predict`` and ``__call__`` run the student only.
    """

    def __init__(self, student, teacher, temperature, alpha, from_logits, **kwargs):
        super().__init__(name=kwargs.pop("name", f"distiller_{student.name}"), **kwargs)
        self._setup(student, teacher, temperature, alpha, from_logits,
                    keras.metrics.Mean(name="distillation_loss"))
        self.built = True  # both models are built: summary(), save_weights() work before fit

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``; a student from ``prune_synaptic`` needs ``UpdatePruningStep``.

        Raises:
          ValueError: the student is a ``PrunedModel`` and no ``UpdatePruningStep`` is given.
        """
        if isinstance(self.student, PrunedModel):
            require_update_step(args, kwargs)
        return super().fit(*args, **kwargs)

    def distillation_loss(self, teacher_outputs, student_outputs, sample_weight=None):
        """``T^2 * KL(teacher || student)`` at temperature T, averaged over the batch (see
        ``soft_targets_loss``)."""
        return soft_targets_loss(teacher_outputs, student_outputs, self._temperature,
                                 self._from_logits, sample_weight)

    def _objective(self, x, y, sample_weight, training):
        """The total loss (scaled for distribution, for gradients) and the student's outputs."""
        require_labels(y, self._alpha)
        teacher_outputs = tf.stop_gradient(self._teacher(x, training=False))
        outputs = self._student(x, training=training)
        soft = self.distillation_loss(teacher_outputs, outputs, sample_weight)
        # The hard loss goes through compiled_loss (its reduction, mask, distribution scaling
        # and the 'loss' tracker); (1 - alpha) scales it through the sample weights, which
        # every Keras loss is linear in. The soft term and the student's regularisers go in
        # as extra losses: compiled_loss scales them for distribution and tracks their sum.
        hard_weight = sample_weight
        if self._alpha > 0.0:
            if hard_weight is None:
                hard_weight = tf.ones(tf.shape(outputs)[:1])
            hard_weight = tf.convert_to_tensor(hard_weight)
            hard_weight = hard_weight * tf.cast(1.0 - self._alpha, hard_weight.dtype)
        extra = [self._alpha * soft] + list(self._student.losses)
        loss = self.compiled_loss(y, outputs, hard_weight, regularization_losses=extra)
        self._distillation_tracker.update_state(soft, sample_weight=tf.shape(outputs)[0])
        return loss, outputs

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss, outputs = self._objective(x, y, sample_weight, training=True)
        self.optimizer.minimize(loss, self._student.trainable_variables, tape=tape)
        return self._logs(y, outputs, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, outputs = self._objective(x, y, sample_weight, training=False)
        return self._logs(y, outputs, sample_weight)

    def _logs(self, y, outputs, sample_weight):
        if y is not None:
            self.compiled_metrics.update_state(y, outputs, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        raise NotImplementedError("a Distiller is not saved; save distiller.student "
                                  "(tfsynapse.strip_pruning(distiller.student) when pruned).")
