"""Pruning during ``fit`` for Keras 3 models, without tfmot's wrappers.

tfmot cannot wrap Keras 3 layers, so the Keras 3 pruned model holds the pruning state itself:
``KerasPrunedModel`` is a functional model over the original layers with a ``pruning_step``
and one mask variable per masked weight (the masks of the model's ``MaskPlan``, broadcastable
to the weight). Its ``train_step`` advances the step, asks the schedule whether this step
prunes, recomputes every mask then (all of them at once, as the tf_keras leader wrapper does),
and multiplies the masked weights by their masks after the optimizer's update (and right after
a mask update, before the forward pass), so a pruned unit is exactly zero whenever the model is
evaluated, saved or run forward.
Under ``tf.distribute`` this happens once per step in cross-replica context.
No callback is needed. The step and masks are variables of the model, so a ``.keras`` file saved
mid-schedule resumes with the same step and masks.

The masks come from the pruning package (``tfsynapse.pruning.fit`` registers the planner with
``provider.use_planner``), so this module needs no import from above the backends.
"""

import keras
from keras.src.models.functional import Functional

from tfsynapse.backends import provider, tf, weight_name
from tfsynapse.backends.keras3 import io_structure

def _schedules():
    from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: PLC0415
        pruning_schedule,
    )

    return pruning_schedule


def schedule_config(schedule):
    """A tfmot schedule as a JSON-able dict (tfmot's schedules are plain TensorFlow)."""
    return schedule.get_config()


def schedule_from_config(config):
    """The tfmot schedule a ``schedule_config`` describes: tfmot's own, or a subclass of
    ``PruningSchedule`` registered with Keras (``keras.saving.register_keras_serializable``,
    or in a ``keras.saving.custom_object_scope``)."""
    schedules = _schedules()
    name = config["class_name"]
    cls = getattr(schedules, name, None)
    if cls is None:  # in a custom_object_scope by its name, or registered with a package
        found = [keras.saving.get_registered_object(name)] + [
            c for c in keras.saving.get_custom_objects().values()
            if isinstance(c, type) and c.__name__ == name]
        cls = next((c for c in found if isinstance(c, type)
                    and issubclass(c, schedules.PruningSchedule)), None)
    if cls is None:
        raise ValueError(
            f"unknown pruning schedule {name!r} in a saved model: tfmot has ConstantSparsity and "
            f"PolynomialDecay; register your class with @keras.saving."
            f"register_keras_serializable() before loading, or load inside "
            f"keras.saving.custom_object_scope({{{name!r}: {name}}}).")
    return cls.from_config(config["config"])


@keras.saving.register_keras_serializable("tfsynapse")
class KerasPrunedModel(provider.PrunedModelBase, Functional):
    """A Keras 3 functional model that prunes itself during ``fit`` (see ``prune_synaptic``).

    Built with ``inputs``, ``outputs`` and the keyword arguments ``pruning_options`` (a
    ``PruningOptions`` config dict), ``pruning_schedule`` (a tfmot schedule or its config) and
    optionally ``mask_plan`` (the plan already built over these layers).
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        options = kwargs.pop("pruning_options")
        schedule = kwargs.pop("pruning_schedule")
        plan = kwargs.pop("mask_plan", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.pruning_schedule = (schedule_from_config(schedule) if isinstance(schedule, dict)
                                 else schedule)
        if plan is None:
            plan, options = provider.planner("make")(self, options)
        self.mask_plan = plan
        self._options_config = options if isinstance(options, dict) else options.to_config()
        # Counted as tfmot counts: the first training step is step 1, so a schedule behaves
        # the same on both backends (ConstantSparsity(t, begin_step=1) prunes at the first).
        self.pruning_step = self.add_weight(
            shape=(), dtype="int64", trainable=False, name="pruning_step",
            initializer=keras.initializers.Constant(0))
        self.masks = [
            self.add_weight(shape=tuple(shape), dtype=weight.dtype, trainable=False,
                            initializer="ones", name=f"{layer.name}_{weight_name(weight)}_mask")
            for layer, _, weight, shape in plan.masked_weights]

    def _masked(self):
        return [(weight, mask) for (_, _, weight, _), mask in zip(self.mask_plan.masked_weights,
                                                                   self.masks)]

    def apply_masks(self):
        """Multiplies every masked weight by its mask, in place."""
        self._mask_weights(None)

    def _mask_weights(self, strategy):
        for weight, mask in self._masked():
            _assign(strategy, weight, lambda v, mask=mask: v * tf.cast(mask, v.dtype))

    def _advance(self, strategy):
        """One training step's pruning: the step; on a pruning step, the masks and the weights.

        Between steps the weights are already masked (``train_step`` masks them after every
        optimizer update, and they are saved masked), so they need masking before the forward
        pass only when the masks have just changed.
        """
        _assign(strategy, self.pruning_step, lambda v: v + 1)
        should_prune, sparsity = self.pruning_schedule(tf.convert_to_tensor(self.pruning_step))

        def update():
            for mask, value in zip(self.masks, self.mask_plan.compute(sparsity)):
                _assign(strategy, mask, lambda v, value=value: tf.cast(value, v.dtype))
            self._mask_weights(strategy)
            return tf.constant(True)

        tf.cond(should_prune, update, lambda: tf.constant(False))

    def train_step(self, data):
        # Under tf.distribute, the step, masks and weights change once, in cross-replica
        # context (every replica then holds the same masks), as tfmot's wrappers do.
        _in_cross_replica(self._advance)
        logs = super().train_step(data)
        _in_cross_replica(self._mask_weights)
        return logs

    def fit(self, *args, **kwargs):
        """``Model.fit``; tfsynapse's ``PruningProgress`` may be passed (adapted), tf_keras
        callbacks may not; warns at the end when the schedule never applied its target."""
        return adapted_fit(self, super().fit, args, kwargs)

    def mask_values(self):
        """The current masks, as numpy arrays in ``mask_plan.masked_weights`` order."""
        return [m.numpy() for m in self.masks]

    @property
    def pruning_options(self):
        """The ``PruningOptions`` the masks are computed with."""
        return self.mask_plan.options

    def get_config(self):
        config = super().get_config()
        config["pruning_options"] = self._options_config
        config["pruning_schedule"] = schedule_config(self.pruning_schedule)
        return config


def pruned_model(model, pruning_schedule, plan, replay):
    """A ``KerasPrunedModel`` over ``model``'s layers (shared, as tfmot's wrappers share them);
    ``replay`` is not needed: no layer is wrapped."""
    inputs, outputs = io_structure(model)
    return KerasPrunedModel(inputs, outputs, name=model.name,
                            pruning_options=plan.options.to_config(),
                            pruning_schedule=pruning_schedule, mask_plan=plan)


def pruned_model_in(model):
    """``model`` if it is a ``KerasPrunedModel``, else the one inside it (the student of a
    ``KerasDistiller``), else None."""
    if isinstance(model, KerasPrunedModel):
        return model
    return next((m for m in getattr(model, "_flatten_layers", lambda: [])()
                 if isinstance(m, KerasPrunedModel)), None)


def schedule_holder(model):
    """What holds the schedule and the step: the ``KerasPrunedModel`` itself (or the one inside
    a distiller); None for a model that is not being pruned."""
    return pruned_model_in(model)


class _Adapted(keras.callbacks.Callback):
    """Runs a callback written for both Keras (``works_with_keras3``) inside Keras 3's fit."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def set_model(self, model):
        super().set_model(model)
        object.__setattr__(self.inner, "model", model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.params = params


for _hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_train_batch_begin", "on_train_batch_end"):
    setattr(_Adapted, _hook, lambda self, *a, _hook=_hook, **k: getattr(self.inner, _hook)(*a, **k))


def adapted_fit(model, fit, args, kwargs):
    """``fit(*args, **kwargs)`` with tfsynapse's callbacks adapted to Keras 3 (tf_keras ones
    refused), then, when ``model`` is or holds a ``KerasPrunedModel``, the end-of-fit check
    that its schedule applied its target (a warning with the numbers otherwise)."""
    args, kwargs = list(args), dict(kwargs)
    if len(args) > 5:
        kwargs["callbacks"] = args.pop(5)
    given = kwargs.get("callbacks") or []
    if isinstance(given, keras.callbacks.CallbackList):  # Keras 3's fit takes one too
        given = given.callbacks
    kwargs["callbacks"] = [_adapt(c) for c in given]
    history = fit(*args, **kwargs)
    if pruned_model_in(model) is not None:
        provider.planner("warn")(model, "fit")
    return history


def _adapt(callback):
    if isinstance(callback, keras.callbacks.Callback):
        return callback
    if getattr(callback, "works_with_keras3", False):
        return _Adapted(callback)
    raise ValueError(
        f"{type(callback).__name__} is not a Keras 3 callback. tfsynapse's UpdatePruningStep, "
        "PruningProgress (with log_dir= it also writes per-layer sparsity to TensorBoard, as "
        "tfmot's PruningSummaries does on tf_keras) and ProximalL1 work with either Keras; "
        "tfmot's own callbacks work with tf_keras models only.")


def strip(model):
    """A plain functional model over the same layers, masks applied one last time.

    Raises:
      ValueError: ``model`` is not a ``KerasPrunedModel``.
    """
    if not isinstance(model, KerasPrunedModel):
        held = "; for a distiller, strip its student: strip_pruning(distiller.student)" \
            if hasattr(model, "student") else ""
        raise ValueError(f"model '{model.name}' is not a Keras 3 model from prune_synaptic "
                         f"(nothing to strip: it has no pruning masks){held}.")
    model.apply_masks()
    return keras.Model(model._inputs_struct, model._outputs_struct, name=model.name)


def _in_cross_replica(fn):
    """Calls ``fn(strategy)`` once: through ``merge_call`` inside a replica of a distribution
    strategy, else ``fn(None)``."""
    context = tf.distribute.get_replica_context()
    if tf.distribute.has_strategy() and context is not None:
        return context.merge_call(fn)
    return fn(None)


def _assign(strategy, variable, value_fn):
    """``variable = value_fn(variable)``, on every replica's copy under a strategy."""
    target = getattr(variable, "value", variable)  # the tf.Variable under a Keras variable
    if strategy is None:
        target.assign(value_fn(target))
    else:
        strategy.extended.update(target, lambda v: v.assign(value_fn(v)), group=True)


