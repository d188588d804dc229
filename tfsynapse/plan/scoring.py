"""What a criterion reads, and its scores checked: the planner's bridge to ``criteria``.

``Scoring`` builds the ``GroupInputs`` (a dependency group's super-filter weights, its
BatchNormalization scales, its producers' incoming connection scores) and ``LayerInputs`` (a
convolution's kernel as the model computes with it, the BatchNormalization before it, its
strengths) that a ``Criterion`` reads, asking each layer's rule which weight is its
connection kernel and what a reparameterised weight stands for. Every criterion's scores,
built-in or not, are checked for their shape and for NaN/inf, with the criterion and the
group or layer named.
"""

import zlib

import numpy as np

from tfsynapse.backends import tf
from tfsynapse.criteria.registry import GroupInputs, LayerInputs
from tfsynapse.graph import unwrap


class Scoring:
    """Scores of one model's groups and convolutions under one criterion.

    Args:
      graph: the ``DependencyGraph``.
      options: the ``PruningOptions`` (criterion object, seed).
    """

    def __init__(self, graph, options):
        self.graph = graph
        self.options = options
        self.criterion = options.criterion_object
        self._rules = {id(unwrap(lc.call.layer)): lc.rule for lc in graph.calls}

    def rule(self, layer):
        """The rule of ``layer`` in this graph."""
        return self._rules[id(layer)]

    def filter_matrix(self, group):
        blocks = []
        for m in group.by_role("out"):
            if len(m.slot.weight.shape) < 2:
                continue  # biases do not score
            weight = self._rules[id(m.layer)].effective_weight(m.layer, m.slot.weight)
            rows = tf.gather(_moveaxis_rows(weight, m.slot.axis), m.positions)
            blocks.append(_rows_per_unit(rows, m.units, group.size))
        if not blocks:
            return tf.zeros([group.size, 1])
        return tf.concat(blocks, axis=1)

    def group_inputs(self, group):
        return GroupInputs(
            group.name, group.size, self.options.seed + group.id,
            weights=lambda: self.filter_matrix(group),
            bn_scale=lambda: self._bn_scale(group),
            incoming=lambda criterion: self._incoming(group, criterion))

    def _bn_scale(self, group):
        total = tf.zeros([group.size])
        for m in group.by_role("param"):
            if m.slot.weight is getattr(m.layer, "gamma", None):
                values = tf.abs(tf.gather(m.slot.weight, m.positions))
                total += tf.scatter_nd(m.units[:, None], values, [group.size])
        return total

    def has_connections(self, group):
        """Whether any producer of ``group`` holds a per-connection kernel (what
        ``_incoming`` sums; Dense, separable, transposed and grouped layers do not)."""
        return any(self._rules[id(m.layer)].connection_kernel(m.layer) is m.slot.weight
                   for m in group.by_role("out"))

    def _incoming(self, group, criterion):
        total = tf.zeros([group.size])
        for m in group.by_role("out"):
            kernel = self._rules[id(m.layer)].connection_kernel(m.layer)
            if kernel is None or m.slot.weight is not kernel:
                continue  # Dense layers and biases have no connections here
            scores = self._checked(criterion.connection_scores(self.layer_inputs(m.layer)),
                                   list(kernel.shape[-2:]), f"layer '{m.layer.name}'")
            per_out = tf.reduce_sum(scores, axis=0)
            total += tf.scatter_nd(m.units[:, None], tf.gather(per_out, m.positions), [group.size])
        return total

    def layer_inputs(self, layer):
        def input_scale():
            bn = self.graph.upstream_batchnorm(layer)
            return bn.gamma if bn is not None and bn.gamma is not None else None

        rule = self._rules[id(layer)]
        # zlib.crc32, not hash(): str hashes change between processes (PYTHONHASHSEED).
        seed = self.options.seed + zlib.crc32(layer.name.encode()) % 9973
        return LayerInputs(
            layer.name, seed,
            kernel=lambda: rule.effective_weight(layer, rule.connection_kernel(layer)),
            input_scale=input_scale, strength=lambda: rule.connection_strength(layer))

    def filter_scores(self, group):
        """``[n]`` checked scores of one dependency group's units."""
        scores = self.criterion.filter_scores(self.group_inputs(group))
        return self._checked(scores, [group.size], f"dependency group '{group.name}'")

    def connection_scores(self, layer):
        """``[C_in, C_out]`` checked scores of one convolution's connections."""
        scores = self.criterion.connection_scores(self.layer_inputs(layer))
        kernel = self._rules[id(layer)].connection_kernel(layer)
        return self._checked(scores, list(kernel.shape[-2:]), f"layer '{layer.name}'")

    def _checked(self, scores, expected, where):
        """A criterion's scores, checked: the expected shape, finite values."""
        name = self.options.criterion
        scores = tf.cast(tf.convert_to_tensor(scores), tf.float32)
        shape = scores.shape
        if shape.rank is not None and (shape.rank != len(expected) or any(
                got is not None and got != want for got, want in zip(shape.as_list(), expected))):
            raise ValueError(
                f"criterion '{name}' returned scores of shape {shape.as_list()} for {where}; "
                f"expected {expected} (one score per "
                f"{'unit' if len(expected) == 1 else 'input/output channel pair'}).")
        message = f"criterion '{name}' returned NaN or inf scores for {where}"
        if tf.executing_eagerly():  # prune_once, sensitivity: a plain ValueError
            if not np.all(np.isfinite(scores.numpy())):
                raise ValueError(message + " (are the weights finite?).")
            return scores
        if shape.rank is None or None in shape.as_list():
            tf.debugging.assert_equal(tf.shape(scores), tf.constant(expected, tf.int32),
                                      message=f"criterion '{name}': wrong score shape for {where}")
        return tf.debugging.assert_all_finite(scores, message)


def _moveaxis_rows(weight, axis):
    """``weight`` with ``axis`` first, flattened to ``[axis_len, -1]``."""
    rank = len(weight.shape)
    perm = [axis] + [a for a in range(rank) if a != axis]
    return tf.reshape(tf.transpose(weight, perm), [weight.shape[axis], -1])


def _rows_per_unit(rows, units, size):
    """``[size, r * d]``: each unit's rows side by side (a unit may own several positions).

    A unit owns several positions of one weight axis when a grouped convolution couples a
    whole convolution group; its ``r`` rows are concatenated in position order, and units with
    fewer rows are padded with zeros (which add nothing to a norm or a positive/negative mass).
    """
    counts = np.bincount(units, minlength=size)
    per_unit = int(counts.max()) if len(units) else 1
    if per_unit == 1:
        return tf.scatter_nd(units[:, None], rows, [size, rows.shape[1]])
    order = np.argsort(units, kind="stable")
    rank = np.empty(len(units), np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(units)) - starts[units[order]]
    stacked = tf.scatter_nd(np.stack([units, rank], axis=1), rows, [size, per_unit, rows.shape[1]])
    return tf.reshape(stacked, [size, per_unit * rows.shape[1]])
