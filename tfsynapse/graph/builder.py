"""Builds the dependency groups of a model (tf_keras or Keras 3) from the per-layer rules."""

import dataclasses
import warnings

import numpy as np

from tfsynapse.backends import backend_of, unwrap
from tfsynapse.graph import rules as rules_lib
from tfsynapse.graph import tf_ops
from tfsynapse.graph.channels import Atoms, ChannelMap
from tfsynapse.graph.groups import ROLES, DependencyGraph, Group, Member, Slot
from tfsynapse.graph.trace import functional_model
from tfsynapse.graph.walk import flatten_calls

class UnsupportedLayerError(ValueError):
    """A layer without a channel rule was met in strict mode."""


@dataclasses.dataclass
class LayerCall:
    """What the graph recorded for one layer call (used for counting and for rebuilding)."""

    call: object
    rule: object
    inputs: list
    outputs: list


class CallContext:
    """What a rule sees of one layer call, and the operations it may perform."""

    def __init__(self, builder, call, inputs):
        self._builder = builder
        self.call = call
        self.layer = unwrap(call.layer)
        self.inputs = inputs
        self.input_shapes = call.input_shapes
        self.output_shapes = call.output_shapes

    def output_channels(self, index=0):
        """The channel count of output ``index``."""
        return _channels(self.output_shapes[index])

    def new_space(self, size, index=0):
        """A new channel space of ``size`` atoms created by this layer (shared across calls)."""
        return self._builder.new_space(self.layer, index, int(size))

    def slot(self, weight, axis, cmap, role, zero_required):
        """Declares that ``weight``'s ``axis`` holds the channels of ``cmap``."""
        self._builder.add_slot(self.layer, weight, axis, cmap, role, zero_required)

    def union(self, a, b):
        """Couples two channel maps position by position."""
        self._builder.atoms.union(a.atoms, b.atoms)

    def freeze(self, cmap, reason):
        """Marks the channels of ``cmap`` as not prunable, for ``reason``."""
        self._builder.atoms.freeze(cmap.atoms, reason)

    def frozen_maps(self, reason):
        """New frozen channel spaces, one per output, for layers whose outputs cannot be pruned."""
        maps = []
        for i, shape in enumerate(self.output_shapes):
            atoms = self._builder.atoms.new_space(_channels(shape), (self.layer.name, i))
            self._builder.atoms.freeze(atoms, reason)
            maps.append(ChannelMap.of(atoms, False))
        return maps


def _channels(shape):
    if shape.rank is None or shape.rank == 0:
        return 1
    dim = shape[-1]
    return 1 if dim is None else int(dim)


class _Builder:
    def __init__(self, strict):
        self.strict = strict
        self.atoms = Atoms()
        self._spaces = {}
        self.slots = {}
        self.unknown = []

    def new_space(self, layer, index, size):
        key = (id(layer), index)
        if key not in self._spaces:
            self._spaces[key] = ChannelMap.of(self.atoms.new_space(size, (layer.name, index)))
        return self._spaces[key]

    def add_slot(self, layer, weight, axis, cmap, role, zero_required):
        if role not in ROLES:
            raise ValueError(f"slot role must be one of {ROLES}, got {role!r}")
        index = _weight_index(layer, weight)
        axis = axis % len(weight.shape)
        if weight.shape[axis] != len(cmap):
            raise ValueError(
                f"rule for {layer.name} ({type(layer).__name__}) declared {len(cmap)} channels on "
                f"axis {axis} of {weight.name} with shape {weight.shape}"
            )
        key = (id(layer), index, axis)
        if key in self.slots:  # a shared layer: its calls see the same channels
            self.atoms.union(self.slots[key].atoms, cmap.atoms)
            return
        self.slots[key] = Slot(layer, weight, index, axis, role, zero_required, atoms=cmap.atoms)
        if role == "in":
            not_zero = cmap.atoms[~cmap.zero_ok]
            if len(not_zero):
                self.atoms.freeze(
                    not_zero,
                    f"pruned channels would not be zero at the input of {layer.name} "
                    "(an activation with f(0) != 0 or an offset lies between)",
                )


def _weight_index(layer, weight):
    for i, w in enumerate(layer.weights):
        if w is weight:
            return i
    raise ValueError(f"{weight.name} is not a weight of layer {layer.name}")


def _refuse_channels_first(flat):
    """Channel rules assume channels-last tensors; say so instead of failing inside a rule."""
    first = [unwrap(c.layer).name for c in flat.calls
             if getattr(unwrap(c.layer), "data_format", None) == "channels_first"]
    if first:
        raise ValueError(
            f"layer(s) {', '.join(first[:5])} use data_format='channels_first'; tfsynapse "
            "supports channels-last models only (TFLite runs channels-last too). Rebuild the "
            "model with data_format='channels_last' (the default) and transpose the weights "
            "that depend on the layout.")


def dependency_groups(model, strict=False):
    """Finds the groups of channels that must be pruned together in a model.

    Args:
      model: a built Sequential or functional model, tf_keras or Keras 3 (a subclassed one is
        traced: ``functional_model``; nested models are followed;
        tfsynapse/tfmot pruning wrappers are looked through).
      strict: if True, a layer with no registered rule raises instead of freezing the
        channels that reach it.

    Returns:
      A ``DependencyGraph`` (iterable of ``Group``).

    Raises:
      TypeError: not a Keras model.
      ValueError: an unbuilt model, or a subclassed one that cannot be traced
        (``functional_model``); a channels-first layer.
      UnsupportedLayerError: ``strict`` and a layer has no rule.
    """
    model = functional_model(model)
    backend_of(model).check_model(model)
    flat = flatten_calls(model)
    _refuse_channels_first(flat)
    builder = _Builder(strict)
    maps = {}
    for key, shape in zip(flat.inputs, flat.input_shapes):
        atoms = builder.atoms.new_space(_channels(shape), ("input", key))
        builder.atoms.freeze(atoms, "model input")
        maps[key] = ChannelMap.of(atoms)
    calls = []
    unknown = []
    for call in flat.calls:
        layer = unwrap(call.layer)
        rule = rules_lib.rule_for(layer)
        if rule is None:
            rule = _tf_op_rule(layer) or _unknown_rule(layer, strict, unknown,
                                                       flat.tracer.opaque.get(layer.name))
        inputs = [maps[k] for k in call.inputs]
        ctx = CallContext(builder, call, inputs)
        outputs = rules_lib.apply_fused_activation(rule, ctx, rule.propagate(ctx))
        if len(outputs) != len(call.outputs):
            raise ValueError(
                f"the rule for {layer.name} returned {len(outputs)} channel maps for "
                f"{len(call.outputs)} outputs"
            )
        for key, shape, cmap in zip(call.outputs, call.output_shapes, outputs):
            if len(cmap) != _channels(shape):
                raise ValueError(
                    f"the rule for {layer.name} ({type(layer).__name__}) produced {len(cmap)} "
                    f"channels for an output with shape {shape}"
                )
            maps[key] = cmap
        calls.append(LayerCall(call, rule, inputs, outputs))
    for key in flat.outputs:
        builder.atoms.freeze(maps[key].atoms, "reaches a model output")
    _warn_unknown(unknown, flat.tracer.opaque)
    groups, slots, atom_index = _finalize(builder, calls)
    return DependencyGraph(model, groups, slots, calls, flat, [n for n, _ in unknown], atom_index)


def _unknown_rule(layer, strict, unknown, opaque_reason):
    cls = type(layer).__name__
    if strict:
        raise UnsupportedLayerError(
            f"layer '{layer.name}' ({cls}) has no channel rule"
            + (f" and was not traced ({opaque_reason})" if opaque_reason else "")
            + ". Register one with tfsynapse.register_rule, or pass strict=False to freeze the "
            "channels that reach it.")
    unknown.append((layer.name, cls))
    return rules_lib.Unknown(opaque_reason or f"{layer.name}: no channel rule for {cls}")


def _warn_unknown(unknown, opaque):
    """One warning naming the layers without a rule; those left opaque by tracing with why."""
    if not unknown:
        return
    plain = [(n, c) for n, c in unknown if n not in opaque]
    parts = []
    if plain:
        parts.append("no channel rule for layer(s) "
                     + ", ".join(f"'{n}' ({c})" for n, c in plain))
    for name, cls in unknown:
        if name in opaque:
            parts.append(f"layer '{name}' ({cls}) stays opaque: {opaque[name]}")
    warnings.warn(
        "tfsynapse: " + "; ".join(parts) + ". The channels that reach them are frozen (not "
        "pruned). Register a rule with tfsynapse.register_rule(LayerClass) to prune through "
        "them.", stacklevel=3)


def _tf_op_rule(layer):
    return tf_ops.rule_for_tf_op(layer)


def _finalize(builder, calls):
    atoms = builder.atoms
    roots = atoms.roots()
    # Spaces linked through any united atom form one group.
    n_spaces = len(atoms.spaces)
    space_parent = list(range(n_spaces))

    def find(s):
        while space_parent[s] != s:
            space_parent[s] = space_parent[space_parent[s]]
            s = space_parent[s]
        return s

    for atom, root in enumerate(roots.tolist()):
        a, b = find(atoms.space_of(atom)), find(atoms.space_of(root))
        if a != b:
            space_parent[max(a, b)] = min(a, b)
    group_of_space = {}
    group_spaces = []
    for s in range(n_spaces):
        r = find(s)
        if r not in group_of_space:
            group_of_space[r] = len(group_spaces)
            group_spaces.append([])
        group_spaces[group_of_space[r]].append(s)
    # Units: classes of atoms inside a group, in order of first appearance.
    unit_of_root = {}
    group_units = []
    for g, spaces in enumerate(group_spaces):
        units = {}
        for s in spaces:
            _, start, size = atoms.spaces[s]
            for atom in range(start, start + size):
                root = int(roots[atom])
                if root not in units:
                    units[root] = len(units)
        unit_of_root.update(units)
        group_units.append(len(units))
    group_of_atom = np.array(
        [group_of_space[find(atoms.space_of(a))] for a in range(len(atoms))], dtype=np.int64
    )
    unit_of_atom = np.array([unit_of_root[int(r)] for r in roots], dtype=np.int64)
    reasons = [[] for _ in group_spaces]
    for atom, why in atoms.frozen.items():
        for reason in why:
            if reason not in reasons[group_of_atom[atom]]:
                reasons[group_of_atom[atom]].append(reason)
    slots = list(builder.slots.values())
    members = [[] for _ in group_spaces]
    for slot in slots:
        slot.group_of = group_of_atom[slot.atoms]
        slot.unit_of = unit_of_atom[slot.atoms]
        for g in np.unique(slot.group_of).tolist():
            positions = np.nonzero(slot.group_of == g)[0]
            members[g].append(Member(slot, positions, slot.unit_of[positions]))
    groups = []
    for g, spaces in enumerate(group_spaces):
        producers = [m for m in members[g] if m.slot.role == "out"]
        owner = atoms.spaces[spaces[0]][0]
        name = producers[0].layer.name if producers else f"{owner[0]}"
        if not producers and "model input" not in reasons[g]:
            reasons[g].append("no layer produces these channels")
        groups.append(
            Group(
                id=g,
                name=str(name),
                size=group_units[g],
                prunable=not reasons[g],
                reasons=reasons[g],
                members=members[g],
            )
        )
    return groups, slots, (group_of_atom, unit_of_atom)
