"""Knowledge distillation while fine-tuning a pruned model: the dense model as teacher.

``Distiller(student, teacher)`` is a Keras model whose ``fit`` trains ``student`` on

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * hard loss

(Hinton et al., 2015) plus the student's own regularisation losses, the hard loss being the one
given to ``compile``. The teacher is frozen: it runs in inference mode, outside the gradient
tape, and its weights are never handed to the optimizer.

The student may be a model from ``prune_synaptic``: tfmot's ``UpdatePruningStep`` collects the
wrappers of the models nested in ``fit``'s model, so it finds the student's through the
distiller (the student is its first layer) and the schedule, masks, ``PruningSummaries`` and
``strip_pruning(distiller.student)`` work as without distillation.
"""

import math
import numbers

from tfsynapse.backends import backend_name
from tfsynapse.backends.distillation import (
    require_hard_loss,
    require_labels,
    soft_targets_loss,
)
from tfsynapse.backends.tf_keras import check_model, keras, tf

def _number(value, name, low, high, low_open):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (low_open and value == low):
        interval = f"({low:g}, inf)" if low_open else f"[{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")
    return float(value)


def check_pair(student, teacher):
    """Refuses a student/teacher pair that cannot be distilled (either Keras).

    Raises:
      ValueError: the student is the teacher or shares weights with it; several outputs;
        different output shapes.
    """
    if student is teacher:
        raise ValueError("the student and the teacher are the same model; pass the dense "
                         "model as teacher and the pruned one as student.")
    teacher_ids = {id(v) for v in teacher.weights}
    shared = [v.name for v in student.weights if id(v) in teacher_ids]
    if shared:
        raise ValueError(
            f"the student shares {len(shared)} weights with the teacher (e.g. {shared[0]}), "
            "so training it would change the teacher too (prune_synaptic wraps the layers of "
            "the model it is given, as tfmot does). Prune a copy: base = "
            "keras.models.clone_model(dense); base.set_weights(dense.get_weights()); "
            "student = prune_synaptic(base, ...).")
    if len(student.outputs) != 1 or len(teacher.outputs) != 1:
        raise ValueError("Distiller needs single-output models (the class scores); got "
                         f"{len(student.outputs)} student and {len(teacher.outputs)} teacher "
                         "outputs.")
    s_shape = tuple(student.outputs[0].shape[1:])
    t_shape = tuple(teacher.outputs[0].shape[1:])
    if s_shape != t_shape:
        raise ValueError(f"the student's output shape {s_shape} differs from the teacher's "
                         f"{t_shape}; both must score the same classes.")


def _keras3_distiller(student, teacher, temperature=4.0, alpha=0.9, from_logits=True, **kwargs):
    from tfsynapse.backends import backend_of  # noqa: PLC0415
    from tfsynapse.backends.keras3_distill import KerasDistiller  # noqa: PLC0415

    backend = backend_of(student)
    backend.check_model(student, "the student")
    if backend_name(teacher) != "keras3":
        raise TypeError("the student is a Keras 3 model but the teacher is not: distil "
                        "between two models of the same Keras.")
    backend.check_model(teacher, "the teacher")
    check_pair(student, teacher)
    return KerasDistiller(
        student, teacher, _number(temperature, "temperature", 0.0, math.inf, low_open=True),
        _number(alpha, "alpha", 0.0, 1.0, low_open=False), bool(from_logits),
        **kwargs)


class Distiller(keras.Model):
    """Trains ``student`` with the soft targets of a frozen ``teacher`` plus the hard labels.

    Compile it like the student (``distiller.compile(optimizer, loss, metrics=[...])``), the
    ``loss`` being the hard (label) loss, then ``fit`` it with the usual callbacks
    (``tfsynapse.UpdatePruningStep()`` for a pruned student). Logs: ``loss`` is the whole
    objective above (with the teacher, also in ``evaluate`` and as ``val_loss``),
    ``distillation_loss`` the soft term ``T^2 * KL`` alone, and the compiled metrics are
    computed on the student's outputs (add the hard loss as a metric to log it alone).
    ``predict`` and ``__call__`` run the student only. Save ``distiller.student``, not the
    distiller (whose ``save_weights`` needs the TF checkpoint format, not ``.h5``, when the two
    models have the same name).

    Keras 3: ``Distiller(student, teacher)`` with two Keras 3 models returns a
    ``KerasDistiller`` (``tfsynapse.backends.keras3_distill``): the same objective, logs and
    arguments; a ``KerasPrunedModel`` student advances its own pruning step (no callback).

    Args:
      student: the model to train (from ``prune_synaptic``, stripped, shrunk or
        dense), functional or Sequential, with one output.
      teacher: the model giving the soft targets (usually the dense model before
        pruning), with the student's output shape. It must not share weights with the
        student: ``prune_synaptic`` wraps the layers of the model it is given, so prune a
        copy of the teacher.
      temperature: the softmax temperature T > 0 (higher: softer targets).
      alpha: the weight in [0, 1] of the distillation term (0: plain training on the labels;
        1: the teacher only, and ``fit`` then accepts data without labels).
      from_logits: True when both models output logits; False when both end in a softmax
        (their outputs are then taken as probabilities and turned into log-probabilities).
      **kwargs: passed to ``keras.Model`` (e.g. ``name``).

    Raises:
      TypeError: either model is a Keras 3 object or not a tf_keras model.
      ValueError: either model is subclassed or unbuilt; the student is the teacher or shares
        weights with it; either model has several outputs; the output shapes differ; the
        temperature is not positive; alpha is outside [0, 1].
    """

    def __new__(cls, student=None, teacher=None, *args, **kwargs):
        if backend_name(student) == "keras3":  # Keras 3: the same objective, its own trainer
            return _keras3_distiller(student, teacher, *args, **kwargs)
        return super().__new__(cls, student, teacher, *args, **kwargs)

    def __init__(self, student, teacher, temperature=4.0, alpha=0.9, from_logits=True, **kwargs):
        check_model(student, "the student")
        check_model(teacher, "the teacher")
        check_pair(student, teacher)
        temperature = _number(temperature, "temperature", 0.0, math.inf, low_open=True)
        alpha = _number(alpha, "alpha", 0.0, 1.0, low_open=False)
        super().__init__(name=kwargs.pop("name", f"distiller_{student.name}"), **kwargs)
        # The student first: UpdatePruningStep reads the step of the first wrapper it finds.
        self._student = student
        self._teacher = teacher
        self._temperature = temperature
        self._alpha = alpha
        self._from_logits = bool(from_logits)
        self._distillation_tracker = keras.metrics.Mean(name="distillation_loss")
        self.built = True  # both models are built: summary(), save_weights() work before fit

    # Read-only: fit traces its step once, so a later change would be silently ignored.
    @property
    def student(self):
        """The model being trained (its weights are the ones ``fit`` changes)."""
        return self._student

    @property
    def teacher(self):
        """The frozen model giving the soft targets."""
        return self._teacher

    @property
    def temperature(self):
        """The softmax temperature T."""
        return self._temperature

    @property
    def alpha(self):
        """The weight of the distillation term."""
        return self._alpha

    @property
    def from_logits(self):
        """Whether the models output logits (else probabilities)."""
        return self._from_logits

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``; a student from ``prune_synaptic`` needs ``UpdatePruningStep``.

        Raises:
          ValueError: the student is a ``PrunedModel`` and no ``UpdatePruningStep`` is given.
        """
        from tfsynapse.pruning.model import PrunedModel, require_update_step  # noqa: PLC0415

        if isinstance(self.student, PrunedModel):
            require_update_step(args, kwargs)
        return super().fit(*args, **kwargs)

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
