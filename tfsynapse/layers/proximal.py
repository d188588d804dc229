"""The Synaptic Strength paper's sparsity training: an L1 penalty that really reaches zero.

Adding ``lambda * sum |s|`` to the loss and following its subgradient makes small strengths
oscillate around zero instead of reaching it (``sign(0)`` pushes them across every step), and
Adam's per-parameter scaling turns the penalty into a constant-size push that ignores lambda's
balance with the task loss. ``ProximalL1`` instead takes the **proximal step** of the L1 term
after every optimizer update (ISTA-style soft thresholding):

    s <- sign(s) * max(|s| - tau, 0),    tau = lambda * lr_t / (1 - momentum)

so strengths whose task gradient stays below lambda land on exact zeros and stay there.
**(choice)** ``1 / (1 - momentum)`` is SGD-with-momentum's effective step size: with it, a
strength stays at zero exactly when ``|dL/ds| <= lambda`` in steady state, the optimality
condition of ``L + lambda * sum |s|``; without it momentum would weaken the penalty tenfold
at momentum 0.9. Train the L1 phase with SGD (momentum or not); with an adaptive optimizer
(Adam, RMSprop, ...) the step is heuristic and the callback warns.

``hold_columns=True`` also holds the scale of every strength column that a following
BatchNormalization makes free (``column_scale``): without it, L1 shrinks whole output columns
to zero at no cost to the loss instead of selecting connections. **(choice)** It is off by
default: measured (benchmark section ``accuracy_l1``, seeds 0-2), the held phase keeps more
accuracy before pruning but, pruned to 94-98% of connections and fine-tuned two epochs, it
ends 1.1-2.1 points below the step as written (95% CIs below 0; not resolved at 90%) and
removes far fewer MACs (the emptied columns are channels the step as written removes whole).

Works with either Keras: it is a tf_keras callback, and Keras 3's ``fit`` calls a callback's
hooks by name, so the same object serves a Keras 3 model (also inside a pruned model's fit).
"""

import math
import numbers
import warnings

from tfsynapse import backends
from tfsynapse.backends import tf
from tfsynapse.backends.tf_keras import keras
from tfsynapse.layers.column_scale import free_columns, rescale_columns


def _synaptic_layers(model):
    backend = backends.backend_of(model)
    return backend.layers_of_type(model, backend.SynapticConv2D)


def synaptic_strengths(model):
    """The strength variables of every ``SynapticConv2D`` in ``model`` (wrappers included).

    Args:
      model: a tf_keras or Keras 3 model.

    Returns:
      A list of variables, each once.
    """
    return [layer.strength for layer in _synaptic_layers(model) if layer.built]


def _is_sgd(optimizer):
    """Whether the optimizer's step is lr * gradient (plus momentum): SGD of either Keras,
    the legacy one included, or a subclass."""
    return any(cls.__name__ == "SGD" for cls in type(optimizer).__mro__)


def strength_sparsity(model):
    """The fraction of synaptic strengths that are exactly zero.

    Args:
      model: a tf_keras or Keras 3 model with ``SynapticConv2D`` layers.

    Returns:
      A float in [0, 1] (0.0 when there are no strengths).
    """
    strengths = synaptic_strengths(model)
    total = sum(int(tf.size(s)) for s in strengths)
    if not total:
        return 0.0
    zeros = sum(int(tf.reduce_sum(tf.cast(tf.equal(s, 0.0), tf.int32))) for s in strengths)
    return zeros / total


class ProximalL1(keras.callbacks.Callback):
    """Soft-thresholds every synaptic strength after each training batch (proximal L1).

    Use it for the L1 phase of the Synaptic Strength procedure: ``to_synaptic(model)`` (no
    ``l1=``: the penalty must not also be in the loss), ``fit`` with this callback and an
    SGD optimizer, then prune by one global strength threshold and fine-tune.

    Args:
      l1: lambda, the weight of ``sum |s|`` in the objective (per sample-mean loss); typical
        values 1e-4 .. 1e-2; sweep them on validation data (see docs/methods.md).
      momentum_correction: divide the step by ``1 - momentum`` for SGD with momentum (see the
        module docstring); False applies ``lambda * lr`` as is.
      hold_columns: keep every strength column whose scale a following BatchNormalization
        makes free at unit norm, before the phase and after every step,
        compensating the BN's moving statistics exactly (``column_scale``); the penalty then
        selects connections within columns instead of shrinking whole columns. False (the
        default): the paper's step as written (columns collapse under BN, which prunes whole
        channels; see docs/methods.md for what each measured).

    Attributes (after the start of training):
      held_layers: names of the layers whose columns are held.
      kept_layers: ``{name: reason}`` of the synaptic layers whose columns keep their scale.

    Logs ``strength_sparsity`` (fraction of exact zeros) at the end of every epoch.

    Raises:
      ValueError: ``l1`` is not a finite positive number; at the start of training, the model
        has no ``SynapticConv2D`` or its strengths also carry an L1 regularizer.
    """

    works_with_keras3 = True  # a Keras 3 pruned model's fit takes it too

    def __init__(self, l1, momentum_correction=True, hold_columns=False):
        super().__init__()
        if isinstance(l1, bool) or not isinstance(l1, numbers.Real) or not l1 > 0 \
                or not math.isfinite(l1):
            raise ValueError(f"l1 must be a finite positive number, got {l1!r}.")
        self.l1 = float(l1)
        self.momentum_correction = bool(momentum_correction)
        self.hold_columns = bool(hold_columns)
        self.held_layers, self.kept_layers = [], {}
        self._held = []
        self._strengths = []
        self._step = None

    def on_train_begin(self, logs=None):
        self._strengths = synaptic_strengths(self.model)
        if not self._strengths:
            raise ValueError("ProximalL1 found no SynapticConv2D layer in the model: convert it "
                             "first with tfsynapse.to_synaptic(model).")
        doubled = [layer.name for layer in _synaptic_layers(self.model)
                   if layer.strength_regularizer is not None]
        if doubled:
            raise ValueError(
                f"the strengths of {doubled[:3]} also carry an L1 regularizer in the loss; the "
                "proximal step is the L1 penalty. Convert with tfsynapse.to_synaptic(model) "
                "without l1= (or l1=0) when training with ProximalL1.")
        self._hold(self.model)
        optimizer = self.model.optimizer
        factor = 1.0
        if _is_sgd(optimizer):
            momentum = float(getattr(optimizer, "momentum", 0.0) or 0.0)
            if self.momentum_correction and momentum > 0:
                factor = 1.0 / (1.0 - momentum)
        else:
            warnings.warn(
                f"tfsynapse: ProximalL1 with {type(optimizer).__name__}: the proximal step "
                "uses its base learning rate, but an adaptive optimizer rescales every "
                "gradient, so lambda no longer balances the task loss as intended. Train the "
                "L1 phase with keras.optimizers.SGD(momentum=0.9).", stacklevel=2)
        self._step = self._make_step(optimizer, self.l1 * factor,
                                     backends.backend_of(self.model).learning_rate_of(optimizer))

    def _hold(self, model):
        """Finds the held columns and brings them to unit norm once, before the first step."""
        self._held, self.held_layers, self.kept_layers = [], [], {}
        if not self.hold_columns:
            return
        self._held, self.kept_layers = free_columns(model)
        self.held_layers = [pair.conv.name for pair in self._held]
        if self._held and self.kept_layers:
            warnings.warn(
                f"tfsynapse: ProximalL1 holds the strength columns of {len(self._held)} layers "
                f"at unit norm (BatchNormalization makes their scale free) but not those of "
                f"{len(self.kept_layers)} others ({dict(list(self.kept_layers.items())[:3])}): "
                "their strengths keep their own scale, so one global threshold compares the "
                "two kinds at different scales. Prune with scope='layer' or per-layer ratios, "
                "or leave hold_columns=False.", stacklevel=3)
        rescale_columns(self._held)

    def _make_step(self, optimizer, scale, rate):
        strengths = self._strengths
        held = self._held
        # Updates taken since the last proximal step: more than one when the model is
        # compiled with steps_per_execution > 1 (Keras then calls on_train_batch_end once per
        # execution); soft-thresholding by the sum of their steps is what one proximal step
        # per update would do when the gradient steps between them are small.
        done = tf.Variable(tf.cast(optimizer.iterations, tf.int64), trainable=False)

        @tf.function
        def step():
            iterations = tf.cast(optimizer.iterations, tf.int64)
            updates = tf.cast(tf.maximum(iterations - done, 0), tf.float32)
            done.assign(iterations)
            lr = rate
            if callable(lr):  # a LearningRateSchedule: the rate of the update just taken
                lr = lr(tf.maximum(iterations - 1, 0))
            tau = tf.cast(lr, tf.float32) * scale * updates
            for s in strengths:
                s.assign(tf.sign(s) * tf.nn.relu(tf.abs(s) - tf.cast(tau, s.dtype)))
            rescale_columns(held)

        return step

    def on_train_batch_end(self, batch, logs=None):
        self._step()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["strength_sparsity"] = strength_sparsity(self.model)
