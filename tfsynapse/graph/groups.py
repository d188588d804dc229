"""The result of ``dependency_groups``: groups of coupled channels, the weight slots they index,
and the ``DependencyGraph`` that holds them with the model's calls."""

import dataclasses

import numpy as np

from tfsynapse.backends import unwrap, weight_name
from tfsynapse.graph.rules import BatchNormRule

ROLES = ("out", "in", "param", "stat")


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
        return weight_name(self.weight)

    def __repr__(self):
        return (
            f"Slot({self.layer.name}.{self.weight_name}[axis {self.axis}], {self.role}, "
            f"{len(self.group_of) if self.group_of is not None else len(self.atoms)} positions)"
        )


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
        if lc is not None and isinstance(lc.rule, BatchNormRule):
            return unwrap(lc.call.layer)
        return None

    def slots_of(self, layer):
        """The slots of one layer (by object or name)."""
        name = layer if isinstance(layer, str) else unwrap(layer).name
        return [s for s in self.slots if s.layer.name == name]

    def summary(self):
        """A printable table of the groups, then the layers traced into their sublayers and
        those left opaque (with the reason)."""
        lines = [f"{'id':>4}  {'group':<32} {'channels':>8}  {'state':<9} producers / reason"]
        for g in self.groups:
            state = "prunable" if g.prunable else "frozen"
            detail = ", ".join(g.producers[:4]) + (" ..." if len(g.producers) > 4 else "")
            if not g.prunable:
                detail = g.reasons[0] if g.reasons else ""
            lines.append(f"{g.id:>4}  {g.name[:32]:<32} {g.size:>8}  {state:<9} {detail}")
        tracer = getattr(self.flat, "tracer", None)
        if tracer is not None:
            lines.extend(tracer.summary_lines())
        return "\n".join(lines)
