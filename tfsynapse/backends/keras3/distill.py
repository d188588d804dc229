"""Knowledge distillation for Keras 3 models: ``tfsynapse.Distiller`` with two Keras 3 models.

The objective is the tf_keras ``Distiller``'s (both use ``backends/distillation.py``): ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * hard loss`` plus
the student's own regularisation losses (not the teacher's). The teacher runs in inference
mode outside the gradient tape. A ``KerasPrunedModel`` student is trained through this model's
``train_step``, not its own, so the pruning step, mask update and masking of its ``train_step``
run here around the optimizer step (once per step, in cross-replica context under a
distribution strategy).
"""

import keras

from tfsynapse.backends import tf
from tfsynapse.backends.distillation import DistillerBase, require_labels, soft_targets_loss
from tfsynapse.backends.keras3.pruning import KerasPrunedModel, _in_cross_replica, adapted_fit


class KerasDistiller(DistillerBase, keras.Model):
    """Trains ``student`` with the soft targets of a frozen ``teacher`` plus the hard labels.

    Built by ``tfsynapse.Distiller`` (which checks the pair and the numbers); the arguments
    and logs (``loss``, ``distillation_loss``, the compiled metrics of the student's outputs)
    are the tf_keras ``Distiller``'s. ``predict`` and ``__call__`` run the student only.
    """

    def __init__(self, student, teacher, temperature, alpha, from_logits, **kwargs):
        super().__init__(name=kwargs.pop("name", f"distiller_{student.name}"), **kwargs)
        self._setup(student, teacher, temperature, alpha, from_logits,
                    keras.metrics.Mean(name="distillation_loss"))

    @property
    def metrics(self):
        return super().metrics + [self._distillation_tracker]

    def _objective(self, x, y, sample_weight, training):
        require_labels(y, self._alpha)
        teacher_outputs = tf.stop_gradient(self._teacher(x, training=False))
        outputs = self._student(x, training=training)
        soft = soft_targets_loss(teacher_outputs, outputs, self._temperature, self._from_logits,
                                 sample_weight)
        loss = self._alpha * soft
        if self._alpha < 1.0:
            loss = loss + (1.0 - self._alpha) * self._compile_loss(y, outputs, sample_weight)
        if self._student.losses:
            loss = loss + tf.add_n([tf.cast(v, loss.dtype) for v in self._student.losses])
        self._distillation_tracker.update_state(soft, sample_weight=tf.shape(outputs)[0])
        return loss, outputs

    def fit(self, *args, **kwargs):
        """``Model.fit``; tfsynapse's callbacks may be passed, as to a pruned model's ``fit``;
        with a pruned student, warns at the end when its schedule never applied its target
        (as the tf_keras ``Distiller`` does through ``UpdatePruningStep``)."""
        return adapted_fit(self, super().fit, args, kwargs)

    def _pruned_student(self):
        return isinstance(self._student, KerasPrunedModel)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self._pruned_student():
            _in_cross_replica(self._student._advance)
        variables = self._student.trainable_variables
        with tf.GradientTape() as tape:
            loss, outputs = self._objective(x, y, sample_weight, training=True)
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        if self._pruned_student():
            _in_cross_replica(self._student._mask_weights)
        return self._logs(loss, y, outputs, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        loss, outputs = self._objective(x, y, sample_weight, training=False)
        return self._logs(loss, y, outputs, sample_weight)

    def _logs(self, loss, y, outputs, sample_weight):
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(outputs)[0])
        if y is not None and self._compile_metrics is not None:
            self._compile_metrics.update_state(y, outputs, sample_weight)
        return self.get_metrics_result()

    def get_config(self):
        raise NotImplementedError("a Distiller is not saved; save distiller.student "
                                  "(tfsynapse.strip_pruning(distiller.student) when pruned).")
