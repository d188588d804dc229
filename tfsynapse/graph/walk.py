"""A flat, topologically ordered view of a functional tf_keras model's layer calls.

Nested functional/Sequential models are inlined: their inner calls appear in place, and the
tensors that cross the model boundary share one key. Both the dependency-graph builder and
the model rebuilder (``replay``) read this view, so they can never disagree on the wiring.
"""

import dataclasses
import itertools

from tfsynapse.backends.tf_keras import keras, tf


@dataclasses.dataclass
class Call:
    """One call of a layer inside the (flattened) model.

    Attributes:
      layer: the called layer (never a nested functional model; those are inlined).
      node: the tf_keras ``Node`` of the call (holds the call's args and kwargs).
      inputs: keys of the input tensors, in ``node.keras_inputs`` order.
      outputs: keys of the output tensors, in ``tf.nest.flatten(node.outputs)`` order.
      input_shapes: ``tf.TensorShape`` per input.
      output_shapes: ``tf.TensorShape`` per output.
      arg_keys: ``{id(keras_tensor): key}`` for the tensors in the node's arguments.
    """

    layer: object
    node: object
    inputs: list
    outputs: list
    input_shapes: list
    output_shapes: list
    arg_keys: dict


@dataclasses.dataclass
class FlatModel:
    """A model's calls in execution order plus the keys of its inputs and outputs."""

    calls: list
    inputs: list
    outputs: list
    input_shapes: list
    output_shapes: list


def is_keras_tensor(obj):
    """Whether ``obj`` is a symbolic tf_keras tensor (False for constants and eager tensors)."""
    return tf.is_tensor(obj) and keras.backend.is_keras_tensor(obj)


def is_functional(layer):
    """Whether ``layer`` is a tf_keras model with a layer graph (functional or Sequential)."""
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def _ordered_nodes(model):
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            yield node


def flatten_calls(model):
    """Lists the layer calls of a functional model in execution order, nested models inlined.

    Args:
      model: a built functional or Sequential tf_keras model.

    Returns:
      A ``FlatModel``.

    Raises:
      ValueError: a nested model is subclassed (has no layer graph).
    """
    counter = itertools.count()
    key_of = {}
    for kt in model.inputs:
        key_of[id(kt)] = next(counter)
    calls = []
    _walk(model, key_of, counter, calls)
    return FlatModel(
        calls=calls,
        inputs=[key_of[id(t)] for t in model.inputs],
        outputs=[key_of[id(t)] for t in model.outputs],
        input_shapes=[t.shape for t in model.inputs],
        output_shapes=[t.shape for t in model.outputs],
    )


def _walk(model, key_of, counter, calls):
    for node in _ordered_nodes(model):
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer) or node.is_input:
            continue
        in_kts = list(node.keras_inputs)
        out_kts = tf.nest.flatten(node.outputs)
        if isinstance(layer, keras.Model):
            if not is_functional(layer):
                raise ValueError(
                    f"nested model '{layer.name}' is a subclassed model: tfsynapse needs its "
                    "layer graph. Rebuild it with the functional API or as a Sequential."
                )
            if len(layer.inputs) != len(in_kts):
                raise ValueError(
                    f"nested model '{layer.name}' was called with {len(in_kts)} tensors but has "
                    f"{len(layer.inputs)} inputs; call it with one tensor per input."
                )
            for inner, outer in zip(layer.inputs, in_kts):
                key_of[id(inner)] = key_of[id(outer)]
            _walk(layer, key_of, counter, calls)
            for inner, outer in zip(layer.outputs, out_kts):
                key_of[id(outer)] = key_of[id(inner)]
            continue
        for kt in out_kts:
            key_of[id(kt)] = next(counter)
        calls.append(
            Call(
                layer=layer,
                node=node,
                inputs=[key_of[id(t)] for t in in_kts],
                outputs=[key_of[id(t)] for t in out_kts],
                input_shapes=[t.shape for t in in_kts],
                output_shapes=[t.shape for t in out_kts],
                arg_keys={id(t): key_of[id(t)] for t in in_kts},
            )
        )


def replay(model, make_layer, name=None, model_fn=None):
    """Rebuilds a functional model call by call, with new layers where ``make_layer`` says.

    Nested models come out inlined (the result is flat). Layers for which ``make_layer``
    returns the layer itself are shared with ``model``.

    Args:
      model: a built functional or Sequential tf_keras model.
      make_layer: ``fn(layer) -> layer``, called once per distinct layer, in execution order;
        the returned layer is called with the same arguments as the original.
      name: name of the new model (default: the old one's).
      model_fn: ``fn(inputs, outputs, name) -> model`` (default: ``keras.Model``).

    Returns:
      A new functional ``keras.Model``.
    """
    flat = flatten_calls(model)
    inputs = []
    tensors = {}
    for key, kt in zip(flat.inputs, model.inputs):
        new_input = keras.Input(
            batch_shape=kt.shape, dtype=kt.dtype, name=kt.name.split(":")[0].split("/")[0]
        )
        tensors[key] = new_input
        inputs.append(new_input)
    made = {}
    for call in flat.calls:
        layer = call.layer
        if id(layer) not in made:
            made[id(layer)] = make_layer(layer)
        new_layer = made[id(layer)]

        def substitute(obj, call=call):
            if is_keras_tensor(obj) and id(obj) in call.arg_keys:
                return tensors[call.arg_keys[id(obj)]]
            return obj

        args = tf.nest.map_structure(substitute, call.node.call_args)
        kwargs = tf.nest.map_structure(substitute, call.node.call_kwargs)
        outputs = new_layer(*args, **kwargs)
        for key, tensor in zip(call.outputs, tf.nest.flatten(outputs)):
            tensors[key] = tensor
    outputs = [tensors[k] for k in flat.outputs]
    if len(outputs) == 1 and not isinstance(getattr(model, "_nested_outputs", None), (list, tuple)):
        outputs = outputs[0]  # a single-output model stays single-output
    model_fn = model_fn or (lambda i, o, n: keras.Model(i, o, name=n))
    return model_fn(inputs, outputs, name or model.name)

