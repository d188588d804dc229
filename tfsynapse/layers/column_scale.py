"""Holding the scale of strength columns that a BatchNormalization makes free.

When a synaptic convolution feeds a BatchNormalization directly, multiplying output channel
``j``'s column of strengths ``s[:, j]`` by ``r`` multiplies that channel's pre-BN activations
by ``r``, and BN divides them back out: the loss cannot see the column's scale (up to BN's
epsilon), while the L1 penalty falls with it. Proximal L1 then shrinks whole columns to zero
for free instead of choosing among a column's connections (measured in the benchmark section
``accuracy_l1``: 53-76% of the middle layers' columns died).

**(choice)** ``hold_columns`` keeps each such column at unit norm, ``||s[:, j]|| = 1``: once
before the L1 phase, and again after every proximal step. The rescaling is exact: the BN's
moving mean (and the convolution's bias) is multiplied by the ratio ``r`` and its moving
variance by ``r**2``, so inference gives the same outputs up to BN's epsilon, and
training-mode BN is invariant to the rescaling. The penalty then acts on the shape of a
column (which connections carry it), not on its size. Why unit norm: with inputs normalised
by their own BNs, ``s_ij**2`` is then connection ``i``'s share of output ``j``'s pre-BN
signal, a quantity one global threshold can compare across layers; a narrow layer's
connections each carry a large share (a single-input column's connection carries all of it,
``|s| = 1``, the most a strength can be), a wide layer's a small one. An earlier choice,
root mean square 1 (``||s[:, j]|| = sqrt(C_in)``), put every layer on one scale regardless of
shares: the single-input first convolution of a grayscale VGG then had every strength
exactly 1, below the 90% global threshold, and was removed whole (chance accuracy; benchmark
section ``accuracy_l1``, lambda 2e-3, seed 0). A column whose every strength was thresholded
to zero stays zero (its channel is dead).

Columns of convolutions not followed directly by a BatchNormalization keep their scale: there
the loss sees it, and the paper's penalty acts as written.
"""

import dataclasses

from tfsynapse.backends import tf, unwrap
from tfsynapse.graph import dependency_groups
from tfsynapse.layers.synaptic import is_synaptic


@dataclasses.dataclass
class HeldColumns:
    """A synaptic convolution whose output columns are held, and the BN that makes them free.

    Attributes:
      conv: the SynapticConv2D.
      norm: the BatchNormalization that consumes its output (alone).
    """

    conv: object
    norm: object


def _is_batchnorm(layer):
    names = [cls.__name__ for cls in type(layer).__mro__]
    return "BatchNormalization" in names and hasattr(layer, "moving_variance")


def _linear(layer):
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__name__", "") == "linear"


def _channel_axis(bn):
    """Whether a BN normalises the last axis of a 4-D tensor (the channels), alone."""
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    return len(axes) == 1 and int(axes[0]) % 4 == 3


def free_columns(model):
    """Which synaptic convolutions' output-column scale the loss cannot see.

    Args:
      model: a built tf_keras or Keras 3 model (pruning wrappers are looked through).

    Returns:
      ``(held, kept)``: a list of ``HeldColumns``, and ``{layer name: reason}`` for every other
      synaptic convolution.
    """
    graph = dependency_groups(model)
    outputs = set(graph.flat.outputs)
    consumers, producer, calls_of = {}, {}, {}
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        calls_of.setdefault(id(layer), []).append(lc)
        for key in lc.call.inputs:
            consumers.setdefault(key, []).append(lc)
        for key in lc.call.outputs:
            producer[key] = layer
    held, kept, seen = [], {}, set()
    for lc in graph.calls:
        conv = unwrap(lc.call.layer)
        if not is_synaptic(conv) or id(conv) in seen:
            continue
        seen.add(id(conv))
        reason, norms = None, set()
        for call in calls_of[id(conv)]:  # a shared layer: every call must feed the same BN
            users = [unwrap(c.call.layer) for key in call.call.outputs
                     for c in consumers.get(key, [])]
            reason = reason or _call_reason(conv, call, users, outputs)
            norms.update(id(u) for u in users)
        if reason is None and len(norms) != 1:
            reason = "its calls feed different BatchNormalizations"
        if reason is None:
            bn = users[0]
            fed = {id(producer.get(key)) for call in calls_of[id(bn)] for key in call.call.inputs}
            if fed != {id(conv)}:
                reason = f"'{bn.name}' also normalises another layer's output"
        if reason is None:
            held.append(HeldColumns(conv, bn))
        else:
            kept[conv.name] = reason
    return held, kept


def _call_reason(conv, call, users, outputs):
    """Why one call of ``conv`` does not leave its column scale free, or None."""
    if not _linear(conv):
        return f"its own activation '{conv.activation.__name__}' comes before any BN"
    if any(key in outputs for key in call.call.outputs):
        return "its output is a model output"
    if len(users) != 1 or not _is_batchnorm(users[0]):
        names = ", ".join(f"'{u.name}'" for u in users[:3]) or "nothing"
        return f"its output goes to {names}, not to one BatchNormalization alone"
    if not _channel_axis(users[0]):
        return f"'{users[0].name}' normalises axis {users[0].axis}, not the channels"
    return None


def rescale_columns(held):
    """Brings every held column back to unit norm, compensating its BN (graph-safe).

    Args:
      held: a list of ``HeldColumns``.
    """
    for pair in held:
        s = pair.conv.strength
        norm = tf.sqrt(tf.reduce_sum(tf.square(tf.convert_to_tensor(s)), axis=0))
        ratio = tf.where(norm > 0, 1.0 / tf.maximum(norm, 1e-30), tf.ones_like(norm))
        s.assign(s * ratio)
        bn = pair.norm
        bn.moving_mean.assign(bn.moving_mean * tf.cast(ratio, bn.moving_mean.dtype))
        bn.moving_variance.assign(
            bn.moving_variance * tf.cast(tf.square(ratio), bn.moving_variance.dtype))
        if pair.conv.use_bias:
            pair.conv.bias.assign(pair.conv.bias * ratio)
