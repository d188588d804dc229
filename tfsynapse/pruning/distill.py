"""Knowledge distillation while fine-tuning a pruned model: the dense model as teacher.

``Distiller(student, teacher)`` is a Keras model whose ``fit`` trains ``student`` on

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * hard loss

(Hinton et al., 2015) plus the student's own regularisation losses, the hard loss being the one
given to ``compile``. The teacher is frozen: it runs in inference mode, outside the gradient
tape, and its weights are never handed to the optimizer.

The student may be a model from ``prune_synaptic``: the schedule, masks, ``UpdatePruningStep``,
``PruningProgress`` and ``strip_pruning(distiller.student)`` work as without distillation. The
distiller itself is the backend's (``backends/tf_keras/distill.py``,
``backends/keras3/distill.py``); this module checks the pair and the numbers.
"""

import math
import numbers

from tfsynapse.backends import backend_name, backend_of
from tfsynapse.backends.distillation import DistillerBase


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


class _DistillerType(type):
    """``tfsynapse.Distiller(...)`` builds the backend's distiller; ``isinstance`` and
    ``issubclass`` recognise either backend's (they share ``DistillerBase``)."""

    def __call__(cls, student, teacher, temperature=4.0, alpha=0.9, from_logits=True, **kwargs):
        return make_distiller(student, teacher, temperature, alpha, from_logits, **kwargs)

    def __instancecheck__(cls, obj):
        return isinstance(obj, DistillerBase)

    def __subclasscheck__(cls, subclass):
        return isinstance(subclass, type) and issubclass(subclass, DistillerBase)


class Distiller(metaclass=_DistillerType):
    """Trains a student with the soft targets of a frozen teacher plus the hard labels.

    ``tfsynapse.Distiller(student, teacher, temperature=4.0, alpha=0.9, from_logits=True,
    **kwargs)`` returns the distiller of the student's Keras (see ``make_distiller`` for the
    arguments); ``isinstance(d, tfsynapse.Distiller)`` holds for either Keras's distiller. To
    change the objective, subclass the backend's class (``tfsynapse.backends.get(name)
    .Distiller``).
    """


def make_distiller(student, teacher, temperature=4.0, alpha=0.9, from_logits=True, **kwargs):
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

    Either Keras: the distiller is the backend's (``backend.Distiller``: a tf_keras model, or
    Keras 3's ``KerasDistiller``), with the same objective, logs and arguments; a Keras 3
    pruned student advances its own pruning step.

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

    Returns:
      The distiller, a model of the student's Keras.

    Raises:
      TypeError: either model is not a Keras model, or the two are of different Keras.
      ValueError: either model is subclassed or unbuilt; the student is the teacher or shares
        weights with it; either model has several outputs; the output shapes differ; the
        temperature is not positive; alpha is outside [0, 1].
    """
    backend = backend_of(student, "the student")
    backend.check_model(student, "the student")
    if backend_name(teacher) != backend.NAME:
        raise TypeError(f"the student is a {backend.NAME} model but the teacher is "
                        f"{backend_name(teacher) or type(teacher).__name__}: distil between two "
                        "models of the same Keras.")
    backend.check_model(teacher, "the teacher")
    check_pair(student, teacher)
    return backend.Distiller(
        student, teacher, _number(temperature, "temperature", 0.0, math.inf, low_open=True),
        _number(alpha, "alpha", 0.0, 1.0, low_open=False), bool(from_logits), **kwargs)
