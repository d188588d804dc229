"""The mask planner: from weights and a target sparsity to a mask for every masked weight.

Everything here is vectorised TF, so the same code computes masks eagerly (one-shot pruning)
and inside ``model.fit``'s graph at a tfmot pruning step (under ``merge_call`` when
distributed). The index bookkeeping (which position of which weight is which unit of which
group) is precomputed once from the dependency graph, in numpy.

Scores come from the options' ``Criterion`` object (``criteria.registry``), which reads what it
needs from a ``GroupInputs`` or ``LayerInputs`` built here; nothing below names a criterion.

* filter granularity: a group's weights are the "super filter" made of every producer's output
  slice concatenated (the group lasso view: a residual group's channel is one unit). Scope
  'layer' prunes ``round(s * n)`` units per group (or lets a selecting criterion pick them);
  scope 'global' ranks all groups' units together after the criterion's ``comparable``.
* connection granularity: each convolution's ``(C_in, C_out)`` connections are scored by the
  criterion; a group's channel dies (its biases, BN gamma/beta and depthwise weights are
  masked) once all its outgoing connections in every consumer, or all its incoming connections
  in every producer, are dead. Kernels follow their connection masks only, so the measured
  connection sparsity is the schedule's; shrink removes the dead channels.

Every group or layer of ``n`` units loses at most ``round(max_pruning_ratio * n)`` of them
(the nearest whole unit, so a target of exactly ``max_pruning_ratio`` is always reachable; the
fraction removed can exceed the ratio by under half a unit) and keeps at least one.
"""

import numpy as np

from tfsynapse.backends import tf
from tfsynapse.criteria import lowest_k_mask, ranks
from tfsynapse.graph import unwrap
from tfsynapse.plan import rounding
from tfsynapse.plan.reachability import reachability
from tfsynapse.plan.scoring import Scoring

MASKED_ROLES = ("out", "in", "param")


class _GroupPlan:
    def __init__(self, group, factor, cap, round_to):
        self.group = group
        self.n = group.size
        self.factor = factor
        self.cap = cap
        self.round_to = round_to


class _ConnectionLayer:
    """A convolution pruned per connection: its kernel (and a synaptic layer's strengths)."""

    def __init__(self, layer, rule, slot_in, slot_out, factor, cap, weights):
        self.layer = layer
        self.rule = rule
        self.slot_in = slot_in
        self.slot_out = slot_out
        self.factor = factor
        self.cap = cap
        self.weights = weights  # {weight index: (in axis, out axis)} masked per connection
        self.shape = (slot_in.weight.shape[slot_in.axis], slot_out.weight.shape[slot_out.axis])
        self.n = self.shape[0] * self.shape[1]
        self.round_to = 1


class MaskPlan:
    """Computes structured masks for one model's dependency graph under fixed options.

    Attributes:
      graph: the ``DependencyGraph``.
      options: the ``PruningOptions``.
      groups: the group plans of the groups that may be pruned.
      frozen: ``{group name: reasons}`` of the groups left unpruned.
      masked_weights: ``[(layer, weight_index, weight, mask_shape)]`` of every weight to mask.
    """

    def __init__(self, graph, options):
        self.graph = graph
        self.options = options
        self.criterion = options.criterion_object
        self.scoring = Scoring(graph, options)
        self.frozen = {g.name: list(g.reasons) for g in graph if not g.prunable}
        self.groups = self._plan_groups()
        self.connection_layers = (
            self._plan_connections() if options.granularity == "connection" else []
        )
        self._build_indices()

    # ----------------------------------------------------------------- planning (numpy)
    def _factor(self, names):
        overrides = [self.options.layer_sparsity[n] for n in names if n in self.options.layer_sparsity]
        if not overrides:
            return 0.0 if self.options.only_listed else None
        return min(overrides) / self.options.final_sparsity

    def _plan_groups(self):
        opts = self.options
        plans = []
        for g in self.graph.prunable_groups:
            producers = g.producers
            why = None
            # the layers whose own output channels are the group's: producers, and the
            # layers the channels pass through (depthwise, BatchNormalization)
            owners = producers + [m.layer.name for m in g.by_role("param")]
            ignored = [name for name in owners if name in opts.ignored_layers]
            if ignored:
                why = f"ignored by the user ({', '.join(dict.fromkeys(ignored))})"
            elif opts.residual == "skip" and len(producers) > 1:
                why = "residual group left unpruned (residual='skip')"
            elif opts.granularity == "filter" and "batchnorm" in self.criterion.needs and not any(
                    m.slot.weight is getattr(m.layer, "gamma", None) for m in g.by_role("param")):
                why = f"criterion '{opts.criterion}' needs a BatchNormalization in the group"
            elif opts.granularity == "filter" and "connections" in self.criterion.needs \
                    and not self.scoring.has_connections(g):
                why = (f"criterion '{opts.criterion}' scores a filter by its incoming "
                       "connections, and no producer of this group is a convolution with "
                       "per-connection kernels (use a weight criterion such as 'l1' for it)")
            elif g.size < 2:
                why = "a single channel is never pruned"
            if why:
                self.frozen[g.name] = [why]
                continue
            cap = rounding.cap(opts.max_pruning_ratio, g.size)
            plans.append(_GroupPlan(g, self._factor(producers), cap, opts.round_to))
        return plans

    def _plan_connections(self):
        opts = self.options
        layers = []
        for lc in self.graph.calls:
            layer = unwrap(lc.call.layer)
            kernel = lc.rule.connection_kernel(layer)
            if layer.name in opts.ignored_layers or kernel is None:
                continue
            if any(c.layer is layer for c in layers):
                continue
            slots = {s.role: s for s in self.graph.slots_of(layer) if s.weight is kernel}
            if "in" not in slots or "out" not in slots:
                continue  # grouped convolutions have no per-connection input slot
            n = int(np.prod([kernel.shape[-2], kernel.shape[-1]]))
            cap = rounding.cap(opts.max_pruning_ratio, n)
            weights = {slots["in"].weight_index: (slots["in"].axis, slots["out"].axis)}
            strength = lc.rule.connection_strength(layer)
            if strength is not None:
                weights[_index_of(layer, strength)] = (0, 1)
            layers.append(_ConnectionLayer(layer, lc.rule, slots["in"], slots["out"],
                                           self._factor([layer.name]), cap, weights))
        return layers

    def _build_indices(self):
        """Offsets of every group's units in one concatenated keep vector, and per-slot gathers."""
        self._offset = {}
        total = 0
        for g in self.graph.groups:
            self._offset[g.id] = total
            total += g.size
        self._total_units = total
        self._planned_ids = {p.group.id for p in self.groups}
        by_weight = {}
        for slot in self.graph.slots:
            if slot.role not in MASKED_ROLES:
                continue
            index = np.array([self._offset[g] for g in slot.group_of.tolist()]) + slot.unit_of
            touches_plan = any(g in self._planned_ids for g in np.unique(slot.group_of).tolist())
            key = (id(slot.layer), slot.weight_index)
            entry = by_weight.setdefault(key, {"layer": slot.layer, "weight": slot.weight,
                                               "index": slot.weight_index, "axes": [],
                                               "active": False})
            entry["axes"].append((slot.axis, index.astype(np.int64), slot.role))
            entry["active"] |= touches_plan
        conn = {(id(c.layer), index): c for c in self.connection_layers for index in c.weights}
        self._weights = []
        for key, entry in by_weight.items():
            connection = conn.get(key)
            if not entry["active"] and connection is None:
                continue
            shape = [1] * len(entry["weight"].shape)
            for axis, _, _ in entry["axes"]:
                shape[axis] = entry["weight"].shape[axis]
            entry["connection"] = connection
            entry["mask_shape"] = tuple(shape)
            self._weights.append(entry)
        self._entry_of = {(id(e["layer"]), e["index"]): i for i, e in enumerate(self._weights)}

    @property
    def masked_weights(self):
        return [(e["layer"], e["index"], e["weight"], e["mask_shape"]) for e in self._weights]

    def reachability(self, sparsity):
        """How much of ``sparsity`` the caps and ``round_to`` let this plan reach (see
        ``tfsynapse.plan.reachability.reachability``)."""
        return reachability(self, sparsity)

    # ------------------------------------------------------------------- scoring (TF)
    # ------------------------------------------------------------------- selection (TF)
    def _targets(self, sparsity, factor, n, cap):
        s = sparsity * factor if factor is not None else sparsity
        return tf.clip_by_value(rounding.pruned_count(tf.convert_to_tensor(s), n), 0, cap)

    @staticmethod
    def _round_prune(k, n, round_to):
        return n - rounding.kept_after(k, n, round_to)

    def _filter_prune(self, sparsity):
        """``{group id: bool prune mask}`` at filter granularity."""
        opts = self.options
        result = {}
        if opts.scope == "layer" or not self.groups:
            for p in self.groups:
                k = self._round_prune(self._targets(sparsity, p.factor, p.n, p.cap), p.n, p.round_to)
                if self.criterion.selects:
                    result[p.group.id] = self.criterion.select(self.scoring.group_inputs(p.group), k)
                else:
                    result[p.group.id] = lowest_k_mask(self.scoring.filter_scores(p.group), k)
            return result
        pooled, fixed = [], []
        for p in self.groups:
            (fixed if p.factor is not None else pooled).append(p)
        for p in fixed:
            k = self._round_prune(self._targets(sparsity, p.factor, p.n, p.cap), p.n, p.round_to)
            result[p.group.id] = lowest_k_mask(self.scoring.filter_scores(p.group), k)
        if pooled:
            masks = self._global_select(
                [self.criterion.comparable(self.scoring.filter_scores(p.group)) for p in pooled],
                pooled, sparsity)
            result.update({p.group.id: m for p, m in zip(pooled, masks)})
        return result

    def _global_select(self, scores, plans, sparsity):
        """One threshold over every plan's units; each keeps at least ``n - cap`` of them.

        Returns:
          One bool prune mask per plan (units rounded by the plan's ``round_to``).
        """
        in_rank = [ranks(s) for s in scores]
        eligible = [tf.where(r < p.cap, s, tf.fill(tf.shape(s), np.inf)) for r, s, p in
                    zip(in_rank, scores, plans)]
        flat = tf.concat(eligible, axis=0)
        total = sum(p.n for p in plans)
        k = tf.minimum(rounding.pruned_count(tf.convert_to_tensor(sparsity), total),
                       sum(p.cap for p in plans))
        chosen = lowest_k_mask(flat, k)
        masks = []
        start = 0
        for p, r in zip(plans, in_rank):
            count = tf.reduce_sum(tf.cast(chosen[start:start + p.n], tf.int32))
            start += p.n
            masks.append(r < self._round_prune(count, p.n, p.round_to))
        return masks

    def _connection_prune(self, sparsity):
        """``{id(layer): bool prune matrix [C_in, C_out]}`` at connection granularity."""
        opts = self.options
        layers = self.connection_layers
        scores = {id(c.layer): tf.reshape(self.scoring.connection_scores(c.layer), [-1])
                  for c in layers}
        result = {}
        pooled = []
        for c in layers:
            if opts.scope == "layer" or c.factor is not None:
                k = self._targets(sparsity, c.factor, c.n, c.cap)
                result[id(c.layer)] = tf.reshape(lowest_k_mask(scores[id(c.layer)], k), c.shape)
            else:
                pooled.append(c)
        if pooled:
            masks = self._global_select([scores[id(c.layer)] for c in pooled], pooled, sparsity)
            for c, mask in zip(pooled, masks):
                result[id(c.layer)] = tf.reshape(mask, c.shape)
        return result

    def _dead_units_from_connections(self, conn_prune):
        """Units whose every consumer connection, or every producer connection, is pruned."""
        by_layer = {id(c.layer): c for c in self.connection_layers}
        result = {}
        for p in self.groups:
            g = p.group
            verdicts = []
            for role, reduce_axis in (("in", 1), ("out", 0)):
                members = [m for m in g.by_role(role) if len(m.slot.weight.shape) >= 2]
                if not members:
                    continue
                dead = tf.ones([g.size], tf.bool)
                usable = True
                for m in members:
                    c = by_layer.get(id(m.layer))
                    if c is None:
                        usable = False  # a layer that is not pruned per connection reads it
                        break
                    if m.slot is not (c.slot_in if role == "in" else c.slot_out):
                        continue  # a synaptic layer's strengths follow its kernel
                    line_dead = tf.reduce_all(conn_prune[id(m.layer)], axis=reduce_axis)
                    at_units = tf.scatter_nd(m.units[:, None], tf.cast(
                        tf.logical_not(tf.gather(line_dead, m.positions)), tf.int32), [g.size])
                    dead = tf.logical_and(dead, at_units == 0)
                if usable:
                    verdicts.append(dead)
            if verdicts:
                result[g.id] = tf.reduce_any(tf.stack(verdicts), axis=0)
        return result

    # ------------------------------------------------------------------------ masks (TF)
    def compute(self, sparsity):
        """Computes every mask for the target ``sparsity``.

        Args:
          sparsity: scalar (float or tensor), the target of the schedule at this step.

        Returns:
          A list of mask tensors, one per entry of ``masked_weights``, each of its
          ``mask_shape``, 1.0 where kept and 0.0 where pruned.
        """
        sparsity = tf.convert_to_tensor(sparsity, tf.float32)
        by_connection = self.options.granularity == "connection"
        if not by_connection:
            prune = self._filter_prune(sparsity)
            conn_prune = {}
        else:
            conn_prune = self._connection_prune(sparsity)
            prune = self._dead_units_from_connections(conn_prune)
        keep_parts = []
        for g in self.graph.groups:
            if g.id in prune:
                keep_parts.append(tf.logical_not(prune[g.id]))
            else:
                keep_parts.append(tf.ones([g.size], tf.bool))
        keep = tf.cast(tf.concat(keep_parts, axis=0), tf.float32)
        masks = []
        for entry in self._weights:
            shape = entry["mask_shape"]
            mask = tf.ones(shape, tf.float32)
            for axis, index, role in entry["axes"]:
                if by_connection and role in ("in", "out") and len(shape) > 1:
                    continue  # kernels follow their connection masks only
                axis_shape = [1] * len(shape)
                axis_shape[axis] = shape[axis]
                mask = mask * tf.reshape(tf.gather(keep, index), axis_shape)
            c = entry["connection"]
            if c is not None and id(c.layer) in conn_prune:
                in_axis, out_axis = c.weights[entry["index"]]
                conn_shape = [1] * len(shape)
                conn_shape[in_axis] = c.shape[0]
                conn_shape[out_axis] = c.shape[1]
                mask = mask * tf.reshape(1.0 - tf.cast(conn_prune[id(c.layer)], tf.float32), conn_shape)
            masks.append(tf.cast(mask, entry["weight"].dtype))
        return masks

    def keep_plan(self, masks=None, sparsity=None):
        """The units kept per group (for counting), from masks or from a target sparsity.

        Args:
          masks: masks as returned by ``compute`` (computed from ``sparsity`` if None).
          sparsity: the target, when ``masks`` is None.

        Returns:
          ``{group id: bool numpy array}`` for the planned groups.
        """
        if masks is None:
            masks = self.compute(sparsity)
        keep = {}
        for p in self.groups:
            g = p.group
            alive = np.zeros(g.size, bool)
            for m in g.by_role("out"):
                entry = self._entry(m.slot)
                if entry is None:
                    alive[:] = True
                    continue
                mask = np.asarray(masks[entry])
                rows = _moveaxis_np(mask, m.slot.axis)[m.positions]
                np.logical_or.at(alive, m.units, rows.reshape(len(m.positions), -1).any(axis=1))
            keep[g.id] = alive
        return keep

    def keep(self, masks):
        """The ``Keep`` value of ``masks``: ``{group name: bool array}``, True = unit kept,
        for every planned group (names, not ids: they are the same in the stripped model's
        graph, where ``shrink`` reads them); None at connection granularity, where a channel
        goes when all its connections are dead (the zeros say it)."""
        if self.options.granularity != "filter":
            return None
        by_id = self.keep_plan(masks)
        return {p.group.name: by_id[p.group.id] for p in self.groups}

    def _entry(self, slot):
        return self._entry_of.get((id(slot.layer), slot.weight_index))


def _moveaxis_np(array, axis):
    return np.moveaxis(array, axis, 0)


def _index_of(layer, weight):
    for i, w in enumerate(layer.weights):
        if w is weight:
            return i
    raise ValueError(f"{weight.name} is not a weight of {layer.name}")
