"""Tracing a layer's call into a functional graph: the part both backends share.

Calling a layer or an op on symbolic tensors records a node in either Keras (Keras 3 records
``keras.ops``; tf_keras turns TensorFlow ops into op layers), so a composite layer's ``call``
run on fresh ``Input`` tensors records the calls it is made of. ``graph/trace.py`` decides what
to trace and checks the result; each backend binds these functions to its Keras.
"""

from tfsynapse.backends import tf


def sublayers(layer):
    """The layers ``layer`` holds directly (attributes, lists, dicts), not itself."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def symbolic_sources(is_symbolic, args, kwargs):
    """The distinct symbolic tensors of a call's arguments, in order of first appearance."""
    seen, sources = set(), []
    for obj in tf.nest.flatten((tuple(args), dict(kwargs))):
        if is_symbolic(obj) and id(obj) not in seen:
            seen.add(id(obj))
            sources.append(obj)
    return sources


def trace_call(keras, is_symbolic, layer, args, kwargs):
    """Runs ``layer.call`` on fresh symbolic inputs and returns the graph it records.

    Args:
      keras: the Keras module (``Input``, ``Model``).
      is_symbolic: that Keras's test for a symbolic tensor.
      layer: the layer (or subclassed model) to trace.
      args, kwargs: the arguments of one recorded call (symbolic tensors inside).

    Returns:
      ``(graph_model, sources, positions)``: a functional model whose inputs stand, in order, for
      the distinct symbolic tensors ``sources`` of ``args``/``kwargs``, and whose outputs are
      the call's flat outputs at ``positions``. An output that is not computed from the inputs
      (a constant, such as an empty tensor a keras-hub encoder returns in place of its
      attention scores) is left out of the graph; ``positions`` says which ones it has.

    Raises:
      ValueError: no output of the call is computed from its inputs.
      Exception: whatever the layer's ``call`` or the functional model raise.
    """
    sources = symbolic_sources(is_symbolic, args, kwargs)
    fresh = {id(t): keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype) for t in sources}

    def swap(obj):
        return fresh.get(id(obj), obj) if is_symbolic(obj) else obj

    new_args, new_kwargs = tf.nest.map_structure(swap, (tuple(args), dict(kwargs)))
    flat = tf.nest.flatten(layer.call(*new_args, **new_kwargs))
    positions = [i for i, out in enumerate(flat) if is_symbolic(out)]
    if not positions:
        raise ValueError("none of its outputs is computed from its inputs")
    inputs = [fresh[id(t)] for t in sources]
    outputs = [flat[i] for i in positions]
    model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0],
                        name=f"{layer.name}_traced")
    return model, sources, positions
