"""Builds the dependency groups of a tf_keras model from the per-layer rules."""

import dataclasses
import warnings

import numpy as np

from tfsynapse.backends.tf_keras import check_model, keras
from tfsynapse.graph import rules as rules_lib
from tfsynapse.graph import tf_ops
from tfsynapse.graph.channels import Atoms, ChannelMap
from tfsynapse.graph.walk import flatten_calls

ROLES = ("out", "in", "param", "stat")


class UnsupportedLayerError(ValueError):
    """A layer without a channel rule was met in strict mode."""


def unwrap(layer):
    """The layer a pruning wrapper wraps (recursively); the layer itself otherwise."""
    while isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "pruning_step"):
        layer = layer.layer
    return layer


@dataclasses.dataclass
class Slot:
    """One axis of one weight whose positions are channels of dependency groups.

    Attributes:
      layer: the layer owning the weight (unwrapped).
      weight: the ``tf.Variable``.
      weight_index: its index in ``layer.weights``.
      axis: the (non-negative) axis of ``weight`` that indexes channels.
      role: 'out' (a producer's output channels), 'in' (a consumer's input channels), 'param'
        (a per-channel parameter of a channel passing through, masked with it) or 'stat'
        (per-channel statistics, removed with the channel but never masked).
      zero_required: whether these positions must be zero for a pruned channel to be zero.
      group_of: per position, the id of the group the channel belongs to.
      unit_of: per position, the channel's unit index inside that group.
    """

    layer: object
    weight: object
    weight_index: int
    axis: int
    role: str
    zero_required: bool
    group_of: np.ndarray = None
    unit_of: np.ndarray = None
    atoms: np.ndarray = None

    @property
    def weight_name(self):
        return _short_name(self.weight)

    def __repr__(self):
        return (
            f"Slot({self.layer.name}.{self.weight_name}[axis {self.axis}], {self.role}, "
            f"{len(self.group_of) if self.group_of is not None else len(self.atoms)} positions)"
        )


def _short_name(weight):
    name = weight.name.split(":")[0]
    return name.rsplit("/", 1)[-1]


@dataclasses.dataclass
class Member:
    """A group's share of one slot: which positions along the slot's axis are which units."""

    slot: Slot
    positions: np.ndarray
    units: np.ndarray

    @property
    def layer(self):
        return self.slot.layer

    @property
    def role(self):
        return self.slot.role

    def describe(self):
        return (self.slot.layer.name, self.slot.weight_name, self.slot.role)


@dataclasses.dataclass
class Group:
    """A set of channels that must be pruned together.

    Attributes:
      id: index in the graph's group list.
      name: the first producing layer's name (or the input's, for model inputs).
      size: the number of units (channels) of the group.
      prunable: False if any of its channels is frozen.
      reasons: why it is frozen.
      members: the ``Member`` list (every weight axis that holds the group's channels).
    """

    id: int
    name: str
    size: int
    prunable: bool
    reasons: list
    members: list

    def by_role(self, role):
        """The members of one role ('out', 'in', 'param', 'stat')."""
        return [m for m in self.members if m.slot.role == role]

    @property
    def producers(self):
        """Names of the layers that create the group's channels, in execution order."""
        return _unique(m.layer.name for m in self.by_role("out"))

    @property
    def consumers(self):
        """Names of the layers that read the group's channels as input channels."""
        return _unique(m.layer.name for m in self.by_role("in"))

    @property
    def layers(self):
        return _unique(m.layer.name for m in self.members)

    def describe(self):
        """A list of ``(layer name, weight name, role)``, one per member, for reading and tests."""
        return [m.describe() for m in self.members]

    def __repr__(self):
        state = "prunable" if self.prunable else "frozen: " + "; ".join(self.reasons[:2])
        return (
            f"Group({self.id}, '{self.name}', {self.size} channels, {state}, "
            f"producers={self.producers}, consumers={self.consumers})"
        )


def _unique(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


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
        axis = axis % weight.shape.rank
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


class DependencyGraph:
    """The dependency groups of a model, with everything needed to mask, count and shrink.

    Iterating it yields the ``Group`` objects; ``len`` counts them.

    Attributes:
      model: the model it was built from.
      groups: list of ``Group``.
      slots: list of ``Slot`` (every channel-indexed weight axis).
      calls: list of ``LayerCall`` in execution order.
      flat: the ``FlatModel`` (calls in execution order, nested models inlined).
      unknown_layers: names of layers met without a rule.
    """

    def __init__(self, model, groups, slots, calls, flat, unknown_layers, atom_index):
        self.model = model
        self._group_of_atom, self._unit_of_atom = atom_index
        self.groups = groups
        self.slots = slots
        self.calls = calls
        self.flat = flat
        self.unknown_layers = unknown_layers

    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, index):
        return self.groups[index]

    def locate(self, cmap):
        """``(group ids, unit indices)`` arrays for the positions of a ``ChannelMap``."""
        return self._group_of_atom[cmap.atoms], self._unit_of_atom[cmap.atoms]

    @property
    def prunable_groups(self):
        return [g for g in self.groups if g.prunable]

    def group_of_layer(self, layer_name):
        """The group whose channels ``layer_name`` produces, or None."""
        for group in self.groups:
            if layer_name in group.producers:
                return group
        return None

    def _producers(self):
        """``{tensor key: LayerCall that produced it}``, built once."""
        if getattr(self, "_producer_of", None) is None:
            self._producer_of = {key: lc for lc in self.calls for key in lc.call.outputs}
        return self._producer_of

    def upstream_batchnorm(self, layer):
        """The BatchNormalization that scales ``layer``'s input channels, looking through
        layers that neither mix nor rescale channels (activations, pooling, dropout, padding).

        Args:
          layer: a layer of the model (or its name).

        Returns:
          The BatchNormalization layer, or None when there is none (or the layer is shared).
        """
        name = layer if isinstance(layer, str) else unwrap(layer).name
        producer = self._producers()
        mine = [lc for lc in self.calls if unwrap(lc.call.layer).name == name]
        if len(mine) != 1 or not mine[0].call.inputs:
            return None
        lc = producer.get(mine[0].call.inputs[0])
        while lc is not None and getattr(lc.rule, "transparent", False):
            lc = producer.get(lc.call.inputs[0]) if lc.call.inputs else None
        if lc is not None and isinstance(unwrap(lc.call.layer), keras.layers.BatchNormalization):
            return unwrap(lc.call.layer)
        return None

    def slots_of(self, layer):
        """The slots of one layer (by object or name)."""
        name = layer if isinstance(layer, str) else unwrap(layer).name
        return [s for s in self.slots if s.layer.name == name]

    def summary(self):
        """A printable table of the groups."""
        lines = [f"{'id':>4}  {'group':<32} {'channels':>8}  {'state':<9} producers / reason"]
        for g in self.groups:
            state = "prunable" if g.prunable else "frozen"
            detail = ", ".join(g.producers[:4]) + (" ..." if len(g.producers) > 4 else "")
            if not g.prunable:
                detail = g.reasons[0] if g.reasons else ""
            lines.append(f"{g.id:>4}  {g.name[:32]:<32} {g.size:>8}  {state:<9} {detail}")
        return "\n".join(lines)


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
    """Finds the groups of channels that must be pruned together in a tf_keras model.

    Args:
      model: a built tf_keras Sequential or functional model (nested models are followed;
        tfsynapse/tfmot pruning wrappers are looked through).
      strict: if True, a layer with no registered rule raises instead of freezing the
        channels that reach it.

    Returns:
      A ``DependencyGraph`` (iterable of ``Group``).

    Raises:
      TypeError: a Keras 3 model or not a model.
      ValueError: a subclassed or unbuilt model; a channels-first layer.
      UnsupportedLayerError: ``strict`` and a layer has no rule.
    """
    check_model(model)
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
            rule = _tf_op_rule(layer) or _unknown_rule(layer, strict, unknown)
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
    if unknown:
        warnings.warn(
            "tfsynapse: no channel rule for layer(s) "
            + ", ".join(f"'{n}' ({c})" for n, c in unknown)
            + ": the channels that reach them are frozen (not pruned). Register a rule with "
            "tfsynapse.register_rule(LayerClass) to prune through them.",
            stacklevel=2,
        )
    groups, slots, atom_index = _finalize(builder, calls)
    return DependencyGraph(model, groups, slots, calls, flat, [n for n, _ in unknown], atom_index)


def _unknown_rule(layer, strict, unknown):
    cls = type(layer).__name__
    if strict:
        raise UnsupportedLayerError(
            f"layer '{layer.name}' ({cls}) has no channel rule. Register one with "
            "tfsynapse.register_rule, or pass strict=False to freeze the channels that reach it."
        )
    unknown.append((layer.name, cls))
    return rules_lib.Unknown(f"{layer.name}: no channel rule for {cls}")


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
