"""Multiply-accumulate, parameter and activation counts, before or after a pruning plan.

MACs follow published model tables: convolutions, depthwise/separable convolutions,
transposed convolutions and dense layers only (batch size 1; BN, activations, pooling, adds
are not counted). ResNet50 at 224x224 counts 3.86 GMACs, MobileNetV2 1.0 about 300 M.
Composite layers and subclassed models are counted through their traced graph; a layer with
weights but no rule (one that could not be traced) is not counted, with a warning that names
it and its weights.
"""

import warnings

import numpy as np

from tfsynapse.backends import unwrap
from tfsynapse.graph import rules as rules_lib
from tfsynapse.graph.builder import dependency_groups
from tfsynapse.graph.groups import DependencyGraph


def _graph(model_or_graph):
    if isinstance(model_or_graph, DependencyGraph):
        return model_or_graph
    return dependency_groups(model_or_graph)


def _layer_keys(graph):
    """``{id(layer): key}`` for the per-layer tables: each layer's name, made unique
    (``name#2``, ...) in call order when layers of nested models share one, so that no layer's
    count replaces another's and every table names a layer alike."""
    keys, taken = {}, set()
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        if id(layer) in keys:
            continue
        key, n = layer.name, 2
        while key in taken:
            key, n = f"{layer.name}#{n}", n + 1
        keys[id(layer)] = key
        taken.add(key)
    return keys


def _plan_by_id(graph, keep):
    """``keep`` keyed by group id: ids pass, group names (the ``Keep`` value ``strip_pruning``
    attaches) are looked up; any other key, or a mask of the wrong length, is an error (a plan
    that matched nothing would count the dense model as if it were the pruned one)."""
    if not keep:
        return keep
    names = {g.name: g.id for g in graph.groups}
    by_id = {}
    for key, mask in keep.items():
        gid = names.get(key) if isinstance(key, str) else key
        if not isinstance(gid, (int, np.integer)) or not 0 <= gid < len(graph.groups):
            raise ValueError(
                f"the plan names group {key!r}, which this model does not have: key it by group "
                f"id (0-{len(graph.groups) - 1}) or group name (e.g. "
                f"{', '.join(repr(g.name) for g in list(graph.groups)[:3])}).")
        size = graph.groups[gid].size
        if np.asarray(mask).shape != (size,):
            raise ValueError(f"the plan's mask for group {key!r} has shape "
                             f"{np.asarray(mask).shape}; the group has {size} channels.")
        by_id[int(gid)] = mask
    return by_id


def kept_positions(slot, keep):
    """Bool array over ``slot``'s axis: which positions survive the plan ``keep``.

    Args:
      slot: a graph ``Slot``.
      keep: ``{group_id: bool array over the group's units}``; groups not named keep all.

    Returns:
      A bool numpy array with one entry per position of the slot's axis.
    """
    result = np.ones(len(slot.group_of), dtype=bool)
    if not keep:
        return result
    for g, mask in keep.items():
        where = slot.group_of == g
        if where.any():
            result[where] = np.asarray(mask, bool)[slot.unit_of[where]]
    return result


def effective_shapes(graph, keep):
    """``{(id(layer), weight index): shape after the plan}`` for every slotted weight."""
    shapes = {}
    for slot in graph.slots:
        key = (id(slot.layer), slot.weight_index)
        shape = shapes.get(key, list(slot.weight.shape))
        shape[slot.axis] = int(kept_positions(slot, keep).sum())
        shapes[key] = shape
    return shapes


def count_macs(model, keep=None, per_layer=False):
    """Counts the multiply-accumulates of one forward pass (batch 1).

    Args:
      model: a built model of either Keras (a subclassed one is traced), or a
        ``DependencyGraph`` of one.
      keep: optional pruning plan, ``{group id or name: bool array over units}`` (True =
        kept), to count the MACs the shrunk model will have.
      per_layer: also return a ``{layer name: MACs}`` dict.

    Returns:
      The total MACs (int), or ``(total, per_layer_dict)`` when ``per_layer``.

    Raises:
      ValueError: ``keep`` names a group the model does not have, or a mask of the wrong
        length.
    """
    graph = _graph(model)
    keep = _plan_by_id(graph, keep)
    shapes = effective_shapes(graph, keep)

    table, keys = {}, _layer_keys(graph)
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)

        def shape_of(weight, layer=layer):
            for i, w in enumerate(getattr(layer, "weights", ())):
                if w is weight:
                    return shapes.get((id(layer), i), list(weight.shape))
            return list(weight.shape)

        macs = lc.rule.call_macs(layer, lc.call.input_shapes, lc.call.output_shapes, shape_of)
        if macs:
            table[keys[id(layer)]] = table.get(keys[id(layer)], 0) + int(macs)
    total = int(sum(table.values()))
    _warn_uncounted(graph, total)
    _warn_unknown_dims(graph, table, keys, "count_macs")
    return (total, table) if per_layer else total


def _warn_unknown_dims(graph, table, keys, what):
    """A layer whose output has an unknown dimension besides the batch (an image model built
    on ``Input((None, None, 3))``, a sequence of any length) is counted as if that dimension
    were 1: say so, with the layers, since the total is then far below a real forward pass.
    ``table``: the per-layer counts, by ``keys``; ``what``: the counting function."""
    unknown = sorted({keys[id(unwrap(lc.call.layer))] for lc in graph.calls
                      if table.get(keys[id(unwrap(lc.call.layer))])
                      and any(d is None for shape in lc.call.output_shapes
                              for d in list(shape)[1:])})
    if unknown:
        warnings.warn(
            f"tfsynapse: {what} counted {len(unknown)} layer(s) whose output has an unknown "
            f"dimension besides the batch as if it were 1 (e.g. {', '.join(unknown[:3])}): the "
            "count is not that of a real input. Build the model on a fixed input shape, e.g. "
            "keras.Input((224, 224, 3)), to count it.", stacklevel=3)


def _warn_uncounted(graph, total):
    """Layers without a rule whose weights may do multiply-accumulates are not counted: say so
    with the numbers (a count that ignores part of a model must not look complete)."""
    missed = {}
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        weights = getattr(layer, "weights", None) or []
        if isinstance(lc.rule, rules_lib.Unknown) and weights:
            missed[layer.name] = sum(int(np.prod(w.shape, dtype=np.int64)) for w in weights)
    if not missed:
        return
    names = ", ".join(f"'{n}' ({w:,} weights)" for n, w in list(missed.items())[:5])
    warnings.warn(
        f"tfsynapse: count_macs counted {total:,} MACs without {len(missed)} layer(s) that have "
        f"no channel rule and hold {sum(missed.values()):,} weights: {names}"
        f"{' ...' if len(missed) > 5 else ''}. Their multiply-accumulates are not in the "
        "total; dependency_groups(model).summary() says why each was not traced (register a "
        "rule with tfsynapse.register_rule to count them).", stacklevel=3)


def count_params(model, keep=None, per_layer=False):
    """Counts parameters (trainable and not, like ``Model.count_params``), before or after a plan.

    Args:
      model: a built model of either Keras (a subclassed one is traced), or a
        ``DependencyGraph`` of one.
      keep: optional pruning plan, ``{group id or name: bool array over units}``.
      per_layer: also return a ``{layer name: params}`` dict.

    Returns:
      The total parameter count (int), or ``(total, per_layer_dict)``.

    Raises:
      ValueError: ``keep`` names a group the model does not have, or a mask of the wrong
        length.
    """
    graph = _graph(model)
    keep = _plan_by_id(graph, keep)
    shapes = effective_shapes(graph, keep)
    table, keys = {}, _layer_keys(graph)
    seen = set()
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        n = 0
        for i, w in enumerate(getattr(layer, "weights", ())):
            n += int(np.prod(shapes.get((id(layer), i), list(w.shape)), dtype=np.int64))
        table[keys[id(layer)]] = n
    total = int(sum(table.values()))
    return (total, table) if per_layer else total


def count_activations(model, keep=None, per_layer=False):
    """Counts the activation elements the compute layers read and write (batch 1).

    A convolution at full resolution moves far more data per MAC than one at 7x7: this count
    is the memory-traffic term of the latency model that guides a sensitivity allocation
    under a latency budget (``budget_latency_model``). Every call of a layer that has MACs
    (convolutions, depthwise, dense) counts its first input and its output, each as its
    spatial size times the channels the plan keeps (the fraction kept of the layer's input
    and output channel slots; a depthwise layer's channels pass through).

    Args:
      model: a built model, or a ``DependencyGraph`` of one.
      keep: optional pruning plan, ``{group id or name: bool array over units}``.
      per_layer: also return a ``{layer name: elements}`` dict.

    Returns:
      The total elements (int), or ``(total, per_layer_dict)``.

    Raises:
      ValueError: ``keep`` names a group the model does not have, or a mask of the wrong
        length.
    """
    graph = _graph(model)
    keep = _plan_by_id(graph, keep)
    fractions = {}  # id(layer) -> (input channels kept, output channels kept), as fractions
    for slot in graph.slots:
        if slot.role not in ("in", "out", "param"):
            continue
        positions = kept_positions(slot, keep)
        kept = float(positions.mean()) if positions.size else 1.0
        into, out = fractions.get(id(slot.layer), (None, None))
        if slot.role in ("in", "param") and into is None:
            into = kept
        if slot.role in ("out", "param") and out is None:
            out = kept
        fractions[id(slot.layer)] = (into, out)
    zero = lambda weight: list(weight.shape)  # noqa: E731 - only whether MACs are non-zero
    table, keys = {}, _layer_keys(graph)
    for lc in graph.calls:
        layer = unwrap(lc.call.layer)
        in_shape, out_shape = lc.call.input_shapes[0], lc.call.output_shapes[0]
        if not lc.rule.call_macs(layer, lc.call.input_shapes, lc.call.output_shapes, zero):
            continue
        into, out = fractions.get(id(layer), (None, None))
        elements = (_elements(in_shape) * (1.0 if into is None else into)
                    + _elements(out_shape) * (1.0 if out is None else out))
        table[keys[id(layer)]] = table.get(keys[id(layer)], 0) + int(round(elements))
    total = int(sum(table.values()))
    _warn_unknown_dims(graph, table, keys, "count_activations")
    return (total, table) if per_layer else total


def _elements(shape):
    """Elements of one sample of ``shape`` (the batch left out; an unknown dimension as 1)."""
    return float(np.prod([1 if d is None else d for d in list(shape)[1:]], dtype=np.float64))
