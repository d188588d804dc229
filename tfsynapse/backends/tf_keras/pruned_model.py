"""The pruned model: a functional tf_keras model that knows how to compute its own masks.

``PrunedModel`` is what ``prune_synaptic`` returns on tf_keras. On construction it takes the
``MaskPlan`` it was wrapped from; on loading (``.keras``, ``.h5`` or SavedModel) it asks the
planner (``provider.planner('make')``: the dependency graph of its own layers and the plan)
and hands a ``MaskController`` to its leader wrapper; so a reloaded model resumes with the same
step, masks and options.
"""

from tfsynapse.backends import provider
from tfsynapse.backends.tf_keras import keras, keras_functional, pruning_callbacks, pruning_wrapper, tf
from tfsynapse.backends.tf_keras.wrapper import StructuredPruneWrapper


class MaskController:
    """Assigns the plan's masks to the wrappers' mask variables."""

    def __init__(self, plan, mask_vars):
        self.plan = plan
        self.mask_vars = mask_vars

    def assign_masks(self, sparsity, distribution=None):
        """Computes every mask for ``sparsity`` and assigns it (cross-replica when distributed)."""
        masks = self.plan.compute(sparsity)
        ops = []
        for var, value in zip(self.mask_vars, masks):
            if distribution is not None:
                ops.append(distribution.extended.update(var, lambda v, x: v.assign(x), args=(value,)))
            else:
                ops.append(var.assign(value))
        return tf.group(ops)


def collect_wrappers(model):
    """Every ``StructuredPruneWrapper`` of ``model`` (nested models included)."""
    return [w for w in pruning_wrapper.collect_prunable_layers(model)
            if isinstance(w, StructuredPruneWrapper)]


def bind(model, options, plan=None):
    """Gives ``model``'s leader wrapper a controller for the plan (built when not given).

    Args:
      model: a functional model whose prunable layers are ``StructuredPruneWrapper``s.
      options: the ``PruningOptions`` the wrappers were made for, or its config.
      plan: the ``MaskPlan`` the wrappers were made from (``prune_synaptic`` passes its own:
        its graph holds the same layers and weights); None builds one (a loaded model).

    Returns:
      ``(plan, controller)``: the ``MaskPlan`` and the leader's ``MaskController``.

    Raises:
      ValueError: the wrappers do not match the plan (the model was edited after wrapping).
    """
    if plan is None:
        plan, options = provider.planner("make")(model, options)
    wrappers = {id(w.layer): w for w in collect_wrappers(model)}
    mask_vars = []
    for layer, index, _, shape in plan.masked_weights:
        wrapper = wrappers.get(id(layer))
        indices = [i for i, _ in wrapper.masked] if wrapper is not None else []
        if index not in indices:
            raise ValueError(
                f"layer '{layer.name}' should mask weight {index} {list(shape)} but its wrapper "
                f"masks {indices}; the model was changed after prune_synaptic. Prune the "
                "unwrapped model again."
            )
        mask_vars.append(wrapper.masks[indices.index(index)])
    leaders = [w for w in wrappers.values() if w.leader]
    if len(leaders) != 1:
        raise ValueError(f"expected exactly one leader wrapper, found {len(leaders)}.")
    controller = MaskController(plan, mask_vars)
    object.__setattr__(leaders[0], "_controller", controller)
    return plan, controller


def require_update_step(fit_args, fit_kwargs):
    """Raises unless ``fit``'s callbacks hold tfmot's (or tfsynapse's) ``UpdatePruningStep``.

    Args:
      fit_args, fit_kwargs: the arguments given to ``fit`` (``callbacks`` is its 6th).
    """
    callbacks = fit_kwargs.get("callbacks", fit_args[5] if len(fit_args) > 5 else None)
    items = callbacks.callbacks if hasattr(callbacks, "callbacks") else (callbacks or [])
    if not any(isinstance(c, pruning_callbacks.UpdatePruningStep) for c in items):
        raise ValueError(
            "a model from prune_synaptic trains only with the tfsynapse.UpdatePruningStep() "
            "callback (it advances the pruning step the schedule reads): "
            "model.fit(..., callbacks=[tfsynapse.UpdatePruningStep()]).")


class PrunedModel(provider.PrunedModelBase, keras.Model):
    """A functional model wrapped for structured pruning (see ``prune_synaptic``).

    Args:
      inputs: the model's input tensors.
      outputs: its output tensors.
      pruning_options: a ``PruningOptions`` or its config dict.
      name: the model's name.
      mask_plan: the ``MaskPlan`` the wrappers were made from, so that the graph and plan
        are not built again (None when the model is loaded: built from the model).
    """

    def __init__(self, inputs, outputs, pruning_options, name=None, mask_plan=None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.mask_plan, controller = bind(self, pruning_options, mask_plan)
        self._pruning_options = self.mask_plan.options
        object.__setattr__(self, "_mask_vars", controller.mask_vars)

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, refused up front without ``UpdatePruningStep``.

        Raises:
          ValueError: no ``tfsynapse.UpdatePruningStep()`` (or tfmot's) among the callbacks;
            without it the wrappers' step never advances and tfmot fails deep in ``fit``.
        """
        require_update_step(args, kwargs)
        return super().fit(*args, **kwargs)

    @property
    def pruning_options(self):
        return self._pruning_options

    def mask_values(self):
        """The current masks, as numpy arrays in ``mask_plan.masked_weights`` order."""
        return [v.numpy() for v in self._mask_vars]

    def get_config(self):
        config = keras_functional.get_network_config(
            self, config={"name": self.name, "trainable": self.trainable})
        config["pruning_options"] = self._pruning_options.to_config()
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras finds this class by its module path; the wrappers, schedules and layers inside
        # are registered globally when this backend is imported, so a plain ``load_model``
        # works without prune_scope().
        objects = {**keras.utils.get_custom_objects(), **(custom_objects or {})}
        config = dict(config)
        options = config.pop("pruning_options")
        with keras.utils.custom_object_scope(objects):
            inputs, outputs, _ = keras_functional.reconstruct_from_config(config, objects)
        return cls(inputs, outputs, options, name=config.get("name"))


def pruned_model(model, pruning_schedule, plan, replay):
    """The ``PrunedModel`` of ``model`` under ``plan``: the layers holding masked weights
    wrapped in ``StructuredPruneWrapper`` (sharing the layers, as tfmot's wrappers do), the
    first of them the leader that updates every mask.

    Args:
      model: the model the plan was made for.
      pruning_schedule: the tfmot schedule.
      plan: the ``MaskPlan`` (its ``options`` go into the model's config).
      replay: ``replay(model, make_layer, model_fn)``, the graph's model rebuilder (nested
        models inlined).
    """
    masked = {}
    for layer, index, _, shape in plan.masked_weights:
        masked.setdefault(id(layer), []).append([index, list(shape)])
    order = [c.layer for c in plan.graph.flat.calls if id(c.layer) in masked]
    leader = order[0]

    def make_layer(layer):
        if id(layer) not in masked:
            return layer
        return StructuredPruneWrapper(layer, pruning_schedule=pruning_schedule,
                                      masked=masked[id(layer)], leader=layer is leader)

    return replay(model, make_layer, model_fn=lambda i, o, n: PrunedModel(
        i, o, plan.options, name=n, mask_plan=plan))


def pruned_model_in(model):
    """``model`` if it is a ``PrunedModel``, else the ``PrunedModel`` inside it (the student
    of a ``Distiller``), else None."""
    if isinstance(model, PrunedModel):
        return model
    return next((m for m in model.submodules if isinstance(m, PrunedModel)), None)


def schedule_holder(model):
    """What holds the schedule and the step of a model being pruned: its leader wrapper (or
    its first tfmot wrapper); None for a model that is not being pruned."""
    wrappers = pruning_wrapper.collect_prunable_layers(model)
    if not wrappers:
        return None
    return next((w for w in wrappers if getattr(w, "leader", False)), wrappers[0])
