"""A flat, topologically ordered view of a model's layer calls (either Keras).

Nested functional/Sequential models are inlined: their inner calls appear in place, and the
tensors that cross the model boundary share one key. Composite layers and nested subclassed
models are traced into their sublayers and inlined the same way (``graph/trace.py``); a
subclassed model at the top is replaced by the functional model its call traces into. Both the
dependency-graph builder and the model rebuilder (``replay``) read this view, so they can never
disagree on the wiring.
"""

import dataclasses
import itertools
import warnings

from tfsynapse.backends import backend_of, tf, unwrap
from tfsynapse.graph.trace import Tracer, describe_error, functional_model, symbolic_sources


@dataclasses.dataclass
class Call:
    """One call of a layer inside the (flattened) model.

    Attributes:
      layer: the called layer (never a nested functional model; those are inlined).
      node: the Keras ``Node`` of the call.
      inputs: keys of the input tensors, in the node's order.
      outputs: keys of the output tensors, in the node's (flattened) order.
      input_shapes: ``tf.TensorShape`` per input.
      output_shapes: ``tf.TensorShape`` per output.
      arg_keys: ``{id(keras_tensor): key}`` for the tensors in the node's arguments.
      args, kwargs: the arguments of the call (symbolic tensors inside).
    """

    layer: object
    node: object
    inputs: list
    outputs: list
    input_shapes: list
    output_shapes: list
    arg_keys: dict
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FlatModel:
    """A model's calls in execution order plus the keys of its inputs and outputs.

    ``tracer`` reports the composite layers traced into their sublayers and those left opaque
    (``Tracer.traced``, ``Tracer.opaque``).
    """

    calls: list
    inputs: list
    outputs: list
    input_shapes: list
    output_shapes: list
    tracer: object = None


def is_keras_tensor(obj):
    """Whether ``obj`` is a symbolic Keras tensor of either Keras (False for constants)."""
    try:
        return backend_of(obj).is_symbolic(obj)
    except TypeError:
        return False


def is_functional(layer):
    """Whether ``layer`` is a model with a layer graph (functional or Sequential)."""
    try:
        return backend_of(layer).is_graph_model(layer)
    except TypeError:
        return False


def _shape(tensor):
    return tf.TensorShape(tensor.shape)


def flatten_calls(model):
    """Lists the layer calls of a model in execution order, nested models and composite layers
    inlined.

    Args:
      model: a built functional or Sequential model, or a subclassed model that traces
        (tf_keras or Keras 3).

    Returns:
      A ``FlatModel``; shapes are ``tf.TensorShape`` for either Keras.

    Raises:
      ValueError: a subclassed model that cannot be traced (``trace.functional_model``).
    """
    model = functional_model(model)
    backend = backend_of(model)
    counter = itertools.count()
    key_of = {}
    inputs, outputs = backend.model_io(model)
    for kt in inputs:
        key_of[id(kt)] = next(counter)
    calls = []
    names = {layer.name: id(layer) for layer, _ in backend.call_nodes(model)
             if backend.is_layer(layer)}
    tracer = Tracer(backend, names)
    _walk(backend, model, key_of, counter, calls, tracer)
    return FlatModel(
        calls=calls,
        inputs=[key_of[id(t)] for t in inputs],
        outputs=[key_of[id(t)] for t in outputs],
        input_shapes=[_shape(t) for t in inputs],
        output_shapes=[_shape(t) for t in outputs],
        tracer=tracer,
    )


def _walk(backend, model, key_of, counter, calls, tracer):
    nodes = list(backend.call_nodes(model))
    used = {id(t) for _, node in nodes for t in backend.node_tensors(node)[0]}
    used.update(id(t) for t in backend.model_io(model)[1])
    for layer, node in nodes:
        in_kts, out_kts = backend.node_tensors(node)
        inner = _inner_graph(backend, layer, node, in_kts, out_kts, used, tracer)
        if inner is not None:
            inner_model, sources, positions = inner
            inner_inputs, inner_outputs = backend.model_io(inner_model)
            for inner_kt, outer in zip(inner_inputs, sources):
                key_of[id(inner_kt)] = key_of[id(outer)]
            _walk(backend, inner_model, key_of, counter, calls, tracer)
            for inner_kt, position in zip(inner_outputs, positions):
                key_of[id(out_kts[position])] = key_of[id(inner_kt)]
            continue
        for kt in out_kts:
            key_of[id(kt)] = next(counter)
        args, kwargs = backend.node_arguments(node)
        calls.append(
            Call(
                layer=layer,
                node=node,
                inputs=[key_of[id(t)] for t in in_kts],
                outputs=[key_of[id(t)] for t in out_kts],
                input_shapes=[_shape(t) for t in in_kts],
                output_shapes=[_shape(t) for t in out_kts],
                arg_keys={id(t): key_of[id(t)] for t in in_kts},
                args=args,
                kwargs=kwargs,
            )
        )


def _inner_graph(backend, layer, node, in_kts, out_kts, used, tracer):
    """``(graph model, outer tensors its inputs stand for, positions of the call's outputs it
    gives)`` to inline for one call: a nested graph model's own, or a composite layer's traced
    graph; None to keep the call whole. ``used``: ids of the tensors the model consumes."""
    if backend.is_graph_model(layer):
        inner_inputs = backend.model_io(layer)[0]
        if len(inner_inputs) != len(in_kts):
            raise ValueError(
                f"nested model '{layer.name}' was called with {len(in_kts)} tensors but has "
                f"{len(inner_inputs)} inputs; call it with one tensor per input."
            )
        return layer, in_kts, range(len(out_kts))
    if not tracer.wants(layer):
        return None
    args, kwargs = backend.node_arguments(node)
    traced = tracer.trace(layer, args, kwargs)
    if traced is None:
        return None
    constants = [i for i in range(len(out_kts))
                 if i not in traced.positions and id(out_kts[i]) in used]
    if constants:  # a constant output would have no call to come from
        tracer.decline(layer, f"its output {constants[0]} is a constant (not computed from its "
                              "inputs) that the model uses")
        return None
    return traced.model, symbolic_sources(backend, args, kwargs), traced.positions


def replay(model, make_layer, name=None, model_fn=None):
    """Rebuilds a functional model call by call, with new layers where ``make_layer`` says.

    Nested models and traced composite layers come out inlined (the result is flat); a
    subclassed model is rebuilt from its traced graph. Layers for which ``make_layer``
    returns the layer itself are shared with ``model``.

    Args:
      model: a built functional or Sequential model (tf_keras or Keras 3).
      make_layer: ``fn(layer) -> layer``, called once per distinct layer, in execution order;
        the returned layer is called with the same arguments as the original.
      name: name of the new model (default: the old one's).
      model_fn: ``fn(inputs, outputs, name) -> model`` (default: a functional model).

    Returns:
      A new functional ``keras.Model``.
    """
    model = functional_model(model)
    backend = backend_of(model)
    flat = flatten_calls(model)
    inputs = []
    tensors = {}
    for key, kt in zip(flat.inputs, backend.model_io(model)[0]):
        new_input = backend.new_input(kt)
        tensors[key] = new_input
        inputs.append(new_input)
    made = {}
    for call in flat.calls:
        layer = call.layer
        if id(layer) not in made:
            made[id(layer)] = make_layer(layer)
        new_layer = made[id(layer)]

        def substitute(obj, call=call):
            if id(obj) in call.arg_keys and backend.is_symbolic(obj):
                return tensors[call.arg_keys[id(obj)]]
            return obj

        args = tf.nest.map_structure(substitute, call.args)
        kwargs = tf.nest.map_structure(substitute, call.kwargs)
        outputs = new_layer(*args, **kwargs)
        for key, tensor in zip(call.outputs, tf.nest.flatten(outputs)):
            tensors[key] = tensor
    outputs = [tensors[k] for k in flat.outputs]
    # the model's own structures (a tensor, a list, a dict by name) come back as they were
    input_structure, output_structure = backend.io_structure(model)
    inputs = tf.nest.pack_sequence_as(input_structure, inputs)
    outputs = tf.nest.pack_sequence_as(output_structure, outputs)
    model_fn = model_fn or backend.new_model
    return model_fn(inputs, outputs, name or model.name)



def layer_from_config(layer, change=None, may_share=False):
    """A new, unbuilt layer of ``layer``'s class from its config, changed by ``change``.

    When the config does not round-trip, the layer may be shared instead of copied: one with no
    weights (it holds no state; ``shrink``'s self-check guards one whose config had to change
    with its channels), or, with ``may_share`` and nothing to change, one with weights (with a
    warning: training either model then changes this layer in both).

    Args:
      layer: the layer to rebuild.
      change: optional ``fn(config) -> config`` (a rule's ``resize``).
      may_share: whether the caller never changes this layer's weights (a layer no rule
        covers), so that sharing it is correct.

    Returns:
      The new layer, or ``layer`` itself when it is shared.

    Raises:
      ValueError: a layer that must be rebuilt and whose ``get_config``/``from_config`` do not
        round-trip, with the layer and the cause named.
    """
    try:
        config = layer.get_config()
        return type(layer).from_config(change(config) if change else config)
    except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
        cause = describe_error(err, limit=300)
        if not layer.weights or (change is None and may_share):
            if layer.weights:
                warnings.warn(
                    f"tfsynapse: layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt "
                    f"from its config ({cause}); pruning leaves it unchanged, so the new model "
                    "shares it with the original: training either one changes this layer's "
                    "weights in both.", stacklevel=4)
            return layer
        raise ValueError(
            f"cannot rebuild layer '{layer.name}' ({type(layer).__name__}) from its config: "
            f"{cause}. Give the layer a get_config/from_config pair that round-trips (a "
            "lambda or a locally defined function as activation cannot be serialised: use a "
            "named function from a module, or a Keras activation)."
        ) from err


def copy_model(model, may_share=lambda layer: False):
    """A flat functional copy of ``model`` with new layers holding copies of its weights.

    Each layer is rebuilt from its own config, so composite layers traced into their sublayers
    need no ``get_config`` of their own; nested models come out inlined.

    Args:
      model: a built functional, Sequential or traceable subclassed model (either Keras).
      may_share: ``fn(layer) -> bool``: a layer the caller never changes, shared (with a
        warning) when its config does not round-trip (``layer_from_config``).

    Returns:
      A new functional model computing the same outputs, sharing with ``model`` only the layers
      ``layer_from_config`` shares.

    Raises:
      ValueError: a layer that cannot be rebuilt from its config (``layer_from_config``).
    """
    model = functional_model(model)
    backend = backend_of(model)
    made = []

    def make_layer(layer):
        layer = unwrap(layer)
        if not backend.is_layer(layer):  # a raw operation: no weights of its own
            return layer
        new = layer_from_config(layer, may_share=may_share(layer))
        made.append((layer, new))
        return new

    with backend.user_functions_scope(model):
        copy = replay(model, make_layer)
    for old, new in made:
        if new is not old:
            new.set_weights(old.get_weights())
    return copy
