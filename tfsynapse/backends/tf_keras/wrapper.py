"""tfmot integration: a PruneLowMagnitude subclass whose masks are structured.

Each wrapper owns the masks of its own layer's weights (kernel, bias, BatchNormalization
gamma/beta, depthwise kernels ...) and applies them before every call, exactly as tfmot does,
so tfmot's ``UpdatePruningStep``, ``PruningSummaries`` and ``strip_pruning`` work unchanged.
The masks of the whole model are computed in one place: the *leader* wrapper (the first in
execution order) runs the model's ``MaskPlan`` at each pruning step of the schedule and
assigns every wrapper's masks (cross-replica, under a distribution strategy). Masks have the
weight's rank but size 1 on non-channel axes (``(1, 1, C_in, C_out)`` for a conv kernel).
"""

from tfsynapse.backends import weight_name
from tfsynapse.backends.tf_keras import keras, pruning_impl, pruning_wrapper, tf
from tfsynapse.backends.tf_keras import pruning_schedule as pruning_schedule_lib


class StructuredPruning(pruning_impl.Pruning):
    """``pruning_impl.Pruning`` whose mask update is delegated to the model's mask controller."""

    def __init__(self, wrapper, **kwargs):
        super().__init__(**kwargs)
        self._wrapper = wrapper

    def conditional_mask_update(self):
        controller = getattr(self._wrapper, "_controller", None)
        if not self._wrapper.leader or controller is None:
            return tf.no_op()
        schedule = self._pruning_schedule
        step = self._step_fn()

        def update_masks(distribution=None):
            should_prune, sparsity = schedule(step)

            def update():
                return controller.assign_masks(sparsity, distribution)

            return tf.cond(should_prune, update, tf.no_op)

        replica_context = tf.distribute.get_replica_context()
        if replica_context:
            return replica_context.merge_call(update_masks)
        return update_masks()


class StructuredPruneWrapper(pruning_wrapper.PruneLowMagnitude):
    """A tfmot pruning wrapper with structured (channel or connection) masks.

    Args:
      layer: the layer to wrap (any layer: its prunable weights are named by ``masked``).
      pruning_schedule: a tfmot ``PruningSchedule``.
      masked: ``[[weight_index, mask_shape], ...]``: which of ``layer.weights`` are masked, and
        the broadcastable shape of each mask.
      leader: whether this wrapper computes the masks of the whole model.
      **kwargs: passed to ``keras.layers.Wrapper``.
    """

    def __init__(self, layer, pruning_schedule=None, masked=(), leader=False, **kwargs):
        if pruning_schedule is None:
            pruning_schedule = pruning_schedule_lib.ConstantSparsity(0.5, 0)
        self.masked = [[int(i), [int(d) for d in shape]] for i, shape in masked]
        self.leader = bool(leader)
        self._controller = None
        if not hasattr(layer, "get_prunable_weights"):
            layer.get_prunable_weights = _prunable_weights_fn(layer, self.masked)
        kwargs.pop("block_size", None)
        kwargs.pop("block_pooling_type", None)
        super().__init__(layer, pruning_schedule=pruning_schedule, **kwargs)

    def build(self, input_shape):
        keras.layers.Wrapper.build(self, input_shape)
        weights = self.layer.weights
        prunable, pruning_vars = [], []
        for index, shape in self.masked:
            weight = weights[index]
            dtype = getattr(weight, "true_dtype", weight.dtype)
            short = weight_name(weight)
            mask = self.add_weight(f"{short}_mask", shape=shape, initializer="ones", dtype=dtype,
                                   trainable=False, aggregation=tf.VariableAggregation.MEAN)
            threshold = self.add_weight(f"{short}_threshold", shape=[], initializer="zeros", dtype=dtype,
                                        trainable=False, aggregation=tf.VariableAggregation.MEAN)
            prunable.append(weight)
            pruning_vars.append((weight, mask, threshold))
        # Assigned whole, as tfmot does, so that Keras tracks the same variables when a model
        # is built and when it is loaded.
        self.prunable_weights = prunable
        self.pruning_vars = pruning_vars
        self.pruning_step = self.add_weight(
            "pruning_step", shape=[], initializer=keras.initializers.Constant(-1),
            dtype=tf.int64, trainable=False)
        self.pruning_obj = StructuredPruning(
            wrapper=self,
            training_step_fn=lambda: self.pruning_step,
            pruning_vars=self.pruning_vars,
            pruning_schedule=self.pruning_schedule,
            block_size=(1, 1),
            block_pooling_type="AVG",
        )

    @property
    def masks(self):
        """The mask variables, in the order of ``masked``."""
        return [mask for _, mask, _ in self.pruning_vars]

    def get_config(self):
        config = super().get_config()
        config.update({"masked": self.masked, "leader": self.leader})
        return config


def _prunable_weights_fn(layer, masked):
    def get_prunable_weights():
        return [layer.weights[i] for i, _ in masked]

    return get_prunable_weights
