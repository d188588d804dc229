"""shrink(): remove pruned channels for real.

A channel (a unit of a prunable dependency group) is removable when it provably contributes
nothing: either everything that makes it is zero (the producers' filter slices and biases,
and the BatchNormalization gamma/beta and depthwise biases it passes through), so it is zero
wherever it flows; or every consumer reads it through all-zero weights. Removable channels are
deleted from every member of the group; connection-level zeros inside kept channels stay.
"""

import dataclasses

import numpy as np

from tfsynapse.backends import backend_of, provider, tf, weight_path
from tfsynapse.graph import (
    count_macs, count_params, dependency_groups, effective_shapes, functional_model, kept_positions,
    layer_from_config, replay, unwrap,
)
from tfsynapse.plan import keep as keep_value


@dataclasses.dataclass
class ShrinkReport:
    """What ``shrink`` removed.

    Attributes:
      channels: ``{layer name: (channels before, channels after)}`` for layers whose output
        width changed.
      macs_before, macs_after: multiply-accumulates of one forward pass (batch 1).
      params_before, params_after: parameter counts.
      removed_units: ``{group name: number of channels removed}``.
      max_abs_error: the largest output difference seen in the self-check (None if skipped).
    """

    channels: dict
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    removed_units: dict
    max_abs_error: float = None

    @property
    def mac_reduction(self):
        """Fraction of MACs removed."""
        return 1.0 - self.macs_after / max(self.macs_before, 1)

    @property
    def param_reduction(self):
        """Fraction of parameters removed."""
        return 1.0 - self.params_after / max(self.params_before, 1)

    def table(self):
        """A printable per-layer table and totals."""
        lines = [f"{'layer':<40} {'before':>7} {'after':>7}"]
        for name, (before, after) in self.channels.items():
            lines.append(f"{name[:40]:<40} {before:>7} {after:>7}")
        lines.append(
            f"MACs {self.macs_before:,} -> {self.macs_after:,} (-{self.mac_reduction:.1%}); "
            f"params {self.params_before:,} -> {self.params_after:,} (-{self.param_reduction:.1%})"
        )
        if self.max_abs_error is not None:
            lines.append(f"self-check: max abs output difference {self.max_abs_error:.3g}")
        return "\n".join(lines)


def _is_zero(array, axis, positions):
    taken = np.take(array, positions, axis=axis)
    moved = np.moveaxis(taken, axis, 0).reshape(len(positions), -1)
    return ~np.any(moved != 0, axis=1)


def removable_units(graph, values):
    """Which units of each prunable group can be removed without changing the outputs.

    Args:
      graph: the model's ``DependencyGraph``.
      values: ``{(id(layer), weight index): numpy array}`` of the current weights.

    Returns:
      ``{group id: bool array}``, True = removable.
    """
    result = {}
    for g in graph.prunable_groups:
        made_zero = np.ones(g.size, bool)
        required = [m for m in g.members if m.slot.zero_required]
        for m in required:
            zero = _is_zero(values[(id(m.layer), m.slot.weight_index)], m.slot.axis, m.positions)
            seen_alive = np.zeros(g.size, bool)
            np.logical_or.at(seen_alive, m.units, ~zero)
            made_zero &= ~seen_alive
        if not required:
            made_zero[:] = False
        ignored = np.ones(g.size, bool)
        consumers = {}
        for m in g.by_role("in"):
            consumers.setdefault(id(m.layer), []).append(m)
        for members in consumers.values():
            ignored_here = np.zeros(g.size, bool)
            for m in members:
                zero = _is_zero(values[(id(m.layer), m.slot.weight_index)], m.slot.axis, m.positions)
                alive = np.zeros(g.size, bool)
                np.logical_or.at(alive, m.units, ~zero)
                ignored_here |= ~alive
            ignored &= ignored_here
        if not consumers:
            ignored[:] = False
        result[g.id] = made_zero | ignored
    return result


def _keep_plan(graph, removable, round_to, planned=None):
    """``{group id: bool array}`` of the units that stay: the plan's ``Keep`` value when
    ``planned`` is given (its removals checked against the zeros), else every unit that is
    not removable; counts rounded up to ``round_to``.

    Raises:
      ValueError: ``planned`` removes a unit whose weights are not zero, or does not fit a
        group's size.
    """
    if planned is not None:
        unknown = sorted(set(planned) - {g.name for g in graph.prunable_groups})
        frozen = {g.name: g.reasons for g in graph.groups if not g.prunable}
        named = [name for name in unknown if name in frozen]
        if named:
            raise ValueError(
                f"keep prunes group(s) {named[:3]} that this model's graph freezes "
                f"({'; '.join(frozen[named[0]])[:200]}): shrink cannot remove their channels. "
                "Keep them whole, or build the model so the group can be pruned (see "
                "dependency_groups(model).summary()).")
        if unknown:
            raise ValueError(f"keep names {len(unknown)} group(s) this model does not have "
                             f"({unknown[:3]}): the Keep value belongs to another model.")
    keep = {}
    for g in graph.prunable_groups:
        kept = ~removable[g.id] if planned is None else _planned(g, planned, removable[g.id])
        if not kept.any():
            kept[0] = True  # never a zero-width layer
        short = (-int(kept.sum())) % round_to
        for unit in np.nonzero(~kept)[0][:short]:
            kept[unit] = True
        if not kept.all():
            keep[g.id] = kept
    _keep_every_output_nonempty(graph, keep)
    return keep


def _planned(group, planned, removable):
    """The kept units ``planned`` names for ``group``; a group it does not name (frozen,
    ignored or left out of the plan) goes by the zeros contract."""
    kept = planned.get(group.name)
    if kept is None:
        return ~removable
    kept = np.asarray(kept, bool)
    if kept.shape != (group.size,):
        raise ValueError(f"keep gives {kept.size} units for group '{group.name}', which has "
                         f"{group.size}: the Keep value belongs to another model.")
    alive = ~kept & ~removable
    if alive.any():
        raise ValueError(
            f"keep removes {int(alive.sum())} unit(s) of group '{group.name}' (e.g. unit "
            f"{int(np.nonzero(alive)[0][0])}) whose weights are not zero, so removing them would "
            "change the outputs. Apply the masks first (tfsynapse.strip_pruning), or pass "
            "keep=None to remove only what is zero.")
    return kept


def _keep_every_output_nonempty(graph, keep):
    """Revives one (all-zero, so harmless) channel of any layer output that would be empty.

    A group can span several producers (a concatenation added to another tensor), so one
    producer may lose every channel it writes even though the group keeps some.
    """
    for lc in graph.calls:
        for cmap in lc.outputs:
            groups, units = graph.locate(cmap)
            alive = [g not in keep or keep[g][u] for g, u in zip(groups.tolist(), units.tolist())]
            if len(alive) and not any(alive):
                keep[int(groups[0])][int(units[0])] = True


ATTACHED = "attached"  # shrink's default ``keep``: the Keep value strip_pruning attached


def shrink(model, round_to=1, return_report=False, check=True, rtol=1e-4, verbose=0,
           keep=ATTACHED):
    """Returns a new model with every removable pruned channel physically removed.

    Args:
      model: a pruned tf_keras or Keras 3 model: stripped, one-shot (``prune_once``), or
        still wrapped (its masks are applied and the wrappers removed first). It is not
        modified otherwise.
      round_to: keep each group's channel count a multiple of this (some all-zero channels
        then stay) so SIMD kernels run full width.
      return_report: also return a ``ShrinkReport``.
      check: run both models on one random batch and raise if their outputs differ.
      rtol: the relative tolerance of that check (relative to the largest output magnitude;
        at least 1e-2 for a model computing in float16/bfloat16).
      verbose: 1 prints the report's table (channels per layer, MACs and parameters before
        and after, the self-check's error).
      keep: the plan's ``Keep`` value, ``{group name: bool array}`` (True = kept), as a pruned
        model's ``keep()`` gives it: the groups it names lose exactly the units it does not
        keep (checked to be zero), the others go by the zeros contract. Default: the value
        ``strip_pruning`` attached to ``model`` (or the wrapped model's own), if any. None:
        the zeros contract everywhere (every unit whose weights are zero is removed).

    Returns:
      A new functional model of the same Keras (nested models inlined), or
      ``(model, report)``.

    Raises:
      TypeError / ValueError: as ``check_model``; ``round_to`` < 1; a layer that cannot be
        rebuilt from its config; a ``keep`` that removes a unit whose weights are not zero;
        outputs with NaN or inf in the self-check (it cannot verify them).
      RuntimeError: the self-check found different outputs (a bug: please report it).
    """
    model = functional_model(model)  # a subclassed model: its traced graph
    backend = backend_of(model)
    backend.check_model(model)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}.")
    if backend.has_pruning_wrappers(model):
        pruned = backend.pruned_model_in(model)
        if keep is ATTACHED and pruned is model:
            keep = pruned.keep()
        provider.planner("warn")(model, "shrink")  # as strip_pruning does
        model = backend.strip(model)
    if keep is ATTACHED:
        keep = keep_value.attached(model)
    graph = dependency_groups(model)
    values = _weight_values(graph)
    keep = _keep_plan(graph, removable_units(graph, values), round_to, planned=keep)
    out_width = _output_widths(graph, keep)
    rules = {id(unwrap(lc.call.layer)): lc.rule for lc in graph.calls}
    new_model, made = _rebuild(model, backend, rules, out_width, graph, keep)
    _copy_weights(made, values, graph, keep)
    report = ShrinkReport(
        channels={old.name: out_width[id(old)] for old, _ in made
                  if out_width[id(old)][0] != out_width[id(old)][1] and rules[id(old)].kind},
        # counted from the plan on the graph already built (tests check it equals the new model)
        macs_before=count_macs(graph), macs_after=count_macs(graph, keep),
        params_before=count_params(graph), params_after=count_params(graph, keep),
        removed_units={graph.groups[g].name: int((~m).sum()) for g, m in keep.items()},
    )
    if check:
        report.max_abs_error = _self_check(model, new_model, rtol)
    if verbose:
        print(report.table(), flush=True)
    return (new_model, report) if return_report else new_model


def _weight_values(graph):
    """``{(id(layer), weight index): numpy array}`` of every layer's weights."""
    values = {}
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        for i, w in enumerate(getattr(layer, "weights", ())):
            values[(id(layer), i)] = np.asarray(w.numpy())
    return values


def _output_widths(graph, keep):
    """``{id(layer): (channels before, channels after)}`` of each layer's first output."""
    out_width = {}
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        groups, units = graph.locate(lc.outputs[0])
        kept = np.ones(len(groups), bool)
        for g, mask in keep.items():
            where = groups == g
            kept[where] = mask[units[where]]
        out_width[id(layer)] = (len(kept), int(kept.sum()))
    return out_width


def _rebuild(model, backend, rules, out_width, graph, keep):
    """The model replayed with every layer rebuilt from its config (resized by its rule).

    Returns:
      ``(new model, [(old layer, new layer)])``.

    Raises:
      ValueError: a layer that cannot be rebuilt from its config, named.
    """
    made = []
    slotted = {id(slot.layer) for slot in graph.slots}  # layers whose weights lose positions
    shapes = effective_shapes(graph, keep)

    def make_layer(layer):
        layer = unwrap(layer)
        if not backend.is_layer(layer):  # a raw operation: no weights, no channels of its own
            op = backend.raw_operation(layer)
            before, after = out_width[id(layer)]
            if op is not None and op.resized is not None and after != before:
                return op.resized(after)  # a reshape whose target names the channel count
            return layer
        before, after = out_width[id(layer)]
        index = {id(w): i for i, w in enumerate(layer.weights)}

        def shape_of(weight):
            return shapes.get((id(layer), index.get(id(weight))), list(weight.shape))

        def change(config):
            return rules[id(layer)].rebuild_config(layer, config, after, shape_of)

        narrower = after != before or any(
            shapes.get((id(layer), i), list(w.shape)) != list(w.shape)
            for i, w in enumerate(layer.weights))
        new = layer_from_config(layer, change if narrower else None,
                                may_share=id(layer) not in slotted)
        made.append((layer, new))
        return new

    with backend.user_functions_scope(model):
        return replay(model, make_layer), made


def _copy_weights(made, values, graph, keep):
    """Sets each new layer's weights: the old ones with the removed positions taken out."""
    slots_by_weight = {}
    for slot in graph.slots:
        slots_by_weight.setdefault((id(slot.layer), slot.weight_index), []).append(slot)
    for old, new in made:
        arrays = []
        for i in range(len(old.weights)):
            array = values[(id(old), i)]
            for slot in slots_by_weight.get((id(old), i), []):
                array = np.take(array, np.nonzero(kept_positions(slot, keep))[0], axis=slot.axis)
            arrays.append(array)
        new.set_weights(arrays)


def _self_check(model, new_model, rtol):
    if backend_of(model).half_precision_layers(model):
        rtol = max(rtol, 1e-2)  # half-precision compute: float16 rounding, not a difference
    rng = np.random.default_rng(0)
    backend = backend_of(model)
    inputs = []
    for t in backend.model_io(model)[0]:
        shape = [2] + [1 if d is None else int(d) for d in t.shape[1:]]
        dtype = tf.as_dtype(t.dtype)
        if dtype.is_integer:
            inputs.append(np.zeros(shape, dtype.as_numpy_dtype))
        else:
            inputs.append(rng.normal(size=shape).astype(dtype.as_numpy_dtype))
    # in the model's own input structure: a dict of inputs is fed by name, not by position
    inputs = tf.nest.pack_sequence_as(backend.io_structure(model)[0], inputs)
    before = [np.asarray(o) for o in _as_list(model(inputs, training=False))]
    after = [np.asarray(o) for o in _as_list(new_model(inputs, training=False))]
    if not all(np.all(np.isfinite(o)) for o in before + after):
        # NaN compares false with everything: a check that cannot see NaN must not pass.
        bad = [weight_path(w) for w in model.weights if tf.as_dtype(w.dtype).is_floating
               and not np.all(np.isfinite(w.numpy()))]
        raise ValueError(
            "shrink cannot verify the shrunk model: the outputs on a random batch hold NaN or "
            "inf (" + ("non-finite weights: " + ", ".join(bad[:5]) if bad else
                       "the weights are finite; the model overflows on random inputs") +
            "). Fix the weights (or pass check=False to skip the check).")
    worst = 0.0
    for b, a in zip(before, after):
        err = float(np.max(np.abs(b - a))) if b.size else 0.0
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-6)
        if err > rtol * scale + 1e-6:
            raise RuntimeError(
                f"shrink changed the model's outputs (max abs error {err:.3g}, output scale "
                f"{scale:.3g}). This is a tfsynapse bug; please report it with the model."
            )
        worst = max(worst, err)
    return worst


def _as_list(outputs):
    """Every output tensor, flattened (lists, tuples, dicts and nests of them)."""
    return tf.nest.flatten(outputs)
