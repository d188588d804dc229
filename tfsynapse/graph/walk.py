"""A flat, topologically ordered view of a functional model's layer calls (either Keras).

Nested functional/Sequential models are inlined: their inner calls appear in place, and the
tensors that cross the model boundary share one key. Both the dependency-graph builder and
the model rebuilder (``replay``) read this view, so they can never disagree on the wiring.
"""

import dataclasses
import itertools

from tfsynapse.backends import backend_of, tf


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
    """A model's calls in execution order plus the keys of its inputs and outputs."""

    calls: list
    inputs: list
    outputs: list
    input_shapes: list
    output_shapes: list


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
    """Lists the layer calls of a functional model in execution order, nested models inlined.

    Args:
      model: a built functional or Sequential model (tf_keras or Keras 3).

    Returns:
      A ``FlatModel``; shapes are ``tf.TensorShape`` for either Keras.

    Raises:
      ValueError: a nested model is subclassed (has no layer graph).
    """
    backend = backend_of(model)
    counter = itertools.count()
    key_of = {}
    inputs, outputs = backend.model_io(model)
    for kt in inputs:
        key_of[id(kt)] = next(counter)
    calls = []
    _walk(backend, model, key_of, counter, calls)
    return FlatModel(
        calls=calls,
        inputs=[key_of[id(t)] for t in inputs],
        outputs=[key_of[id(t)] for t in outputs],
        input_shapes=[_shape(t) for t in inputs],
        output_shapes=[_shape(t) for t in outputs],
    )


def _walk(backend, model, key_of, counter, calls):
    for layer, node in backend.call_nodes(model):
        in_kts, out_kts = backend.node_tensors(node)
        if backend.is_model(layer):
            if not backend.is_graph_model(layer):
                raise ValueError(
                    f"nested model '{layer.name}' is a subclassed model: tfsynapse needs its "
                    "layer graph. Rebuild it with the functional API or as a Sequential."
                )
            inner_inputs, inner_outputs = backend.model_io(layer)
            if len(inner_inputs) != len(in_kts):
                raise ValueError(
                    f"nested model '{layer.name}' was called with {len(in_kts)} tensors but has "
                    f"{len(inner_inputs)} inputs; call it with one tensor per input."
                )
            for inner, outer in zip(inner_inputs, in_kts):
                key_of[id(inner)] = key_of[id(outer)]
            _walk(backend, layer, key_of, counter, calls)
            for inner, outer in zip(inner_outputs, out_kts):
                key_of[id(outer)] = key_of[id(inner)]
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


def replay(model, make_layer, name=None, model_fn=None):
    """Rebuilds a functional model call by call, with new layers where ``make_layer`` says.

    Nested models come out inlined (the result is flat). Layers for which ``make_layer``
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

