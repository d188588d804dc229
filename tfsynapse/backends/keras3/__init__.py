"""The binding to Keras 3 (``import keras``) with its TensorFlow backend.

The only module that imports ``keras``. It implements the graph interface of
``tfsynapse.backends`` (the same functions as ``tfsynapse.backends.tf_keras``) on Keras 3's
functional models: ``Functional._nodes_by_depth``, ``Node.operation`` / ``input_tensors`` /
``output_tensors`` / ``arguments``; a ``Sequential`` is walked through the functional model it
builds. tfmot does not wrap Keras 3 layers, so nothing here imports it.
"""

import keras

from tfsynapse.backends import builtin_class_path, is_framework_function, tf, unique_names
from tfsynapse.backends.base import RawOp, Unsupported

NAME = "keras3"

__all__ = [
    "NAME", "keras", "tf", "check_model", "unwrap", "has_pruning_wrappers", "load_model",
    "save_model", "refuse_pruning_wrappers", "is_graph_model", "is_model", "is_layer",
    "graph_model", "call_nodes", "node_tensors", "node_arguments", "model_io", "input_names",
    "output_names", "flat_outputs", "tf_variables", "io_structure", "single_input",
    "single_output", "is_symbolic", "new_input", "new_model", "class_path", "layers_of_type",
    "user_functions_scope", "is_framework_function", "half_precision_layers",
    "learning_rate_of", "strip", "raw_operation", "SynapticConv2D", "Distiller", "KerasPrunedModel", "export_saved_model",
    "is_quantize_aware", "quantize_model",
    "pruned_model", "pruned_model_in", "schedule_holder", "rename", "sublayers", "trace_call", "trace_model",
]


def _require_tensorflow_backend():
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"Keras 3 runs with the {backend!r} backend; tfsynapse needs the TensorFlow backend "
            "(its TFLite export and its tensor code are TensorFlow). Set KERAS_BACKEND=tensorflow "
            "before importing keras.")


def check_model(model, what="model", require_built=True):
    """Validates that ``model`` is a built Keras 3 Sequential or functional model.

    Args:
      model: the object a user handed to a public function.
      what: how to name the object in error messages.
      require_built: also demand that the model has been built (has inputs and weights).

    Returns:
      The model, unchanged.

    Raises:
      TypeError: not a Keras 3 model.
      ValueError: a subclassed or unbuilt model.
      RuntimeError: Keras 3 runs with another backend than TensorFlow.
    """
    _require_tensorflow_backend()
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} must be a keras.Model (Sequential or functional), got "
                        f"{type(model).__name__}.")
    if not isinstance(model, (keras.Sequential, keras.src.models.functional.Functional)):
        raise ValueError(
            f"{what} ({type(model).__name__}) is a subclassed model: tfsynapse needs the layer "
            "graph, which subclassed models do not expose. Rebuild it with the functional API "
            "(keras.Model(inputs, outputs)) or as a keras.Sequential, then load its weights.")
    if require_built and graph_model(model) is None:
        raise ValueError(
            f"{what} is not built: give its first layer an input shape "
            "(keras.Input(shape=...)) or call model.build(input_shape) first.")
    return model


def unwrap(layer):
    """The layer itself: Keras 3 layers are masked in place, never wrapped."""
    return layer


def has_pruning_wrappers(model):
    """Whether ``model`` is being pruned (a ``KerasPrunedModel``: Keras 3 layers are never
    wrapped; the pruned model holds the masks)."""
    return isinstance(model, KerasPrunedModel)


def strip(model):
    """The plain functional model of a ``KerasPrunedModel``, its masks applied one last time.

    Raises:
      ValueError: ``model`` is not a ``KerasPrunedModel``.
    """
    return _pruning.strip(model)


def export_saved_model(model, path):
    """The model's serving signature as a TensorFlow SavedModel (Keras 3's ``export``)."""
    model.export(path, format="tf_saved_model", verbose=False)


def is_quantize_aware(model):
    """Always False: tfmot's quantisation-aware training cannot wrap Keras 3 layers."""
    return False


def quantize_model(model):
    """Refuses: tfmot's quantisation-aware training takes tf_keras models only.

    Raises:
      Unsupported: always (a TypeError), with what works on Keras 3.
    """
    raise Unsupported(
        f"model '{model.name}' is a Keras 3 model: quantisation-aware training (tfmot's "
        "quantize_model) takes tf_keras models only. Export it with post-training int8 "
        "instead: tflite_export.convert(model, quantize='int8', representative_dataset=...), "
        "or rebuild the model with `import tf_keras as keras` for QAT.")


def refuse_pruning_wrappers(model):
    """Refuses a model that is already being pruned (a ``KerasPrunedModel``).

    Raises:
      ValueError: naming the model and the call that makes it plain.
    """
    if has_pruning_wrappers(model):
        raise ValueError(f"model '{model.name}' is already being pruned; call "
                         "tfsynapse.strip_pruning(model) first.")


def load_model(path):
    """Loads a Keras 3 model file (tfsynapse's pruned models included once tfsynapse is
    imported)."""
    return keras.saving.load_model(path, compile=False)


SAVE_FORMATS = ("keras", "h5")  # what save_model writes and load_model reads back


def save_model(model, path, fmt):
    """Saves to ``path`` as ``fmt`` ('keras' or 'h5'; a SavedModel directory is refused: Keras 3
    saves models as .keras files and exports SavedModels for serving only)."""
    if fmt == "savedmodel":
        raise ValueError("Keras 3 models are saved as .keras files (a SavedModel directory "
                         "from Keras 3 is for serving and cannot be loaded back): use a .keras "
                         "output.")
    model.save(path)


def graph_model(model):
    """The functional model that holds the graph (a built Sequential's inner one), or None."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.src.models.functional.Functional):
        return model
    return None


def is_graph_model(layer):
    """Whether ``layer`` is a model with a layer graph (functional, or a built Sequential)."""
    return isinstance(layer, keras.Model) and graph_model(layer) is not None


def is_model(layer):
    """Whether ``layer`` is a Keras model of any kind (subclassed included)."""
    return isinstance(layer, keras.Model)


def is_layer(obj):
    """Whether ``obj`` is a Keras layer (a raw ``keras.ops`` operation is not)."""
    return isinstance(obj, keras.layers.Layer)


def call_nodes(model):
    """``(operation, node)`` for every call recorded in a graph model, in execution order."""
    functional = graph_model(model)
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.is_input or isinstance(node.operation, keras.layers.InputLayer):
                continue
            yield node.operation, node


def node_tensors(node):
    """``(input tensors, output tensors)`` of a call node, as flat lists."""
    return list(node.input_tensors), list(node.output_tensors)


def node_arguments(node):
    """``(args, kwargs)`` the operation was called with (symbolic tensors inside)."""
    return tuple(node.arguments.args), dict(node.arguments.kwargs)


def model_io(model):
    """``(inputs, outputs)`` of a graph model as flat lists of symbolic tensors."""
    functional = graph_model(model)
    return list(functional.inputs), tf.nest.flatten(functional.outputs)


def input_names(model):
    """The names of the model's inputs, in ``model.inputs`` order."""
    return [t.name for t in model_io(model)[0]]


def output_names(model):
    """The names of the model's outputs (their layers'), in ``model.outputs`` order, made
    unique (Keras 3 names every output of a several-output layer after the layer: keyed by
    name, all but one would be lost in an exported signature)."""
    names = getattr(graph_model(model), "output_names", None)
    if not names:
        names = [t._keras_history.operation.name for t in model_io(model)[1]]
    return unique_names(list(names))


def tf_variables(model):
    """The ``tf.Variable`` under each Keras 3 variable: a function traced for a SavedModel
    captures these, so they are what the SavedModel must track to freeze the weights."""
    return [v.value for v in model.variables]


def flat_outputs(outputs):
    """A model call's result (a tensor, list, tuple or dict) as a list in ``model.outputs``
    order (Keras 3 flattens dicts by sorted key, as ``tf.nest`` does)."""
    return tf.nest.flatten(outputs)


def io_structure(model):
    """``(inputs, outputs)`` of a graph model in the structures it was built with (a tensor,
    a list, a dict); their flattened order is ``model_io``'s."""
    functional = graph_model(model)
    return functional._inputs_struct, functional._outputs_struct


def single_input(model):
    """Whether the model takes one tensor (rather than a list, tuple or dict of them)."""
    return not isinstance(graph_model(model)._inputs_struct, (list, tuple, dict))


def single_output(model):
    """Whether the model returns one tensor (rather than a list, tuple or dict of them)."""
    return not isinstance(graph_model(model)._outputs_struct, (list, tuple))


def is_symbolic(obj):
    """Whether ``obj`` is a symbolic Keras 3 tensor."""
    return isinstance(obj, keras.KerasTensor)


def new_input(tensor):
    """A new ``keras.Input`` like the symbolic ``tensor`` (shape with batch, dtype, name)."""
    return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor.name)


def new_model(inputs, outputs, name):
    """A functional model."""
    return keras.Model(inputs, outputs, name=name)


# Keras 3 operation classes -> the TensorFlow symbol they compute.
_OPS = {
    "Add": "math.add", "Subtract": "math.subtract", "Multiply": "math.multiply",
    "Maximum": "math.maximum", "Minimum": "math.minimum", "Divide": "math.divide",
    "TrueDivide": "math.truediv", "Relu": "nn.relu", "Relu6": "nn.relu6", "Elu": "nn.elu",
    "Selu": "nn.selu", "LeakyRelu": "nn.leaky_relu", "Gelu": "nn.gelu", "Silu": "nn.silu",
    "Swish": "nn.swish", "Sigmoid": "math.sigmoid", "Tanh": "math.tanh",
    "Softplus": "nn.softplus", "Negative": "math.negative", "Absolute": "math.abs",
    "Square": "math.square", "HardSigmoid": "nn.hard_sigmoid", "HardSilu": "nn.hard_silu",
    "Mean": "math.reduce_mean", "Max": "math.reduce_max", "Sum": "math.reduce_sum",
    "Min": "math.reduce_min", "Pad": "pad", "Reshape": "reshape", "Matmul": "linalg.matmul",
    "Transpose": "transpose", "Softmax": "nn.softmax",
}


def raw_operation(layer):
    """A ``RawOp`` for a ``keras.ops`` operation recorded in a functional model (the
    operation object computes itself and holds its axis), else None."""
    if not (type(layer).__module__ or "").startswith("keras.src.ops."):
        return None
    return RawOp(_OPS.get(type(layer).__name__), layer,
                 lambda args, kwargs: getattr(layer, "axis", None), _resized(layer))


def _resized(operation):
    """``width -> a Reshape to the same target with ``width`` as its last entry`` for a
    ``keras.ops.reshape`` operation, else None."""
    target = getattr(operation, "newshape", None)
    if type(operation).__name__ != "Reshape" or not isinstance(target, (tuple, list)):
        return None
    return lambda width: type(operation)(tuple(target[:-1]) + (int(width),))


def class_path(layer):
    """The key of built-in rules for Keras's own classes (see ``backends.builtin_class_path``)."""
    return builtin_class_path(layer, "keras")


def user_functions_scope(model):
    """A custom-object scope holding the plain Python functions the model's layers use
    (Keras serialises a callable activation by name only; rebuilding needs it)."""
    functions = {}
    for layer in _submodules(model):
        fn = getattr(layer, "activation", None)
        if callable(fn) and hasattr(fn, "__name__") and not is_framework_function(fn):
            functions[fn.__name__] = fn
    return keras.saving.custom_object_scope(functions)


def learning_rate_of(optimizer):
    """The optimizer's learning rate: a variable, or a function of the step of the update just
    taken (a schedule; Keras 3's ``optimizer.learning_rate`` would evaluate it at the next step)."""
    rate = optimizer._learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return rate
    if callable(rate) and not isinstance(rate, keras.Variable):  # a function of no argument
        return lambda step: rate()
    return rate


def half_precision_layers(model):
    """Names of the layers of ``model`` that compute in float16 or bfloat16 (mixed precision)."""
    return [layer.name for layer in _submodules(model)
            if getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32")
            in ("float16", "bfloat16")]


def layers_of_type(model, layer_class):
    """Every layer of ``model`` that is a ``layer_class``, once each, nested models included."""
    return [layer for layer in _submodules(model) if isinstance(layer, layer_class)]


def _submodules(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]


# The backend's own classes (kept last, as in the tf_keras backend).
from tfsynapse.backends.keras3.layers import SynapticConv2D  # noqa: E402
from tfsynapse.backends.keras3 import pruning as _pruning  # noqa: E402
from tfsynapse.backends.keras3.distill import KerasDistiller as Distiller  # noqa: E402
from tfsynapse.backends.keras3.tracing import rename, sublayers, trace_call, trace_model  # noqa: E402
from tfsynapse.backends.keras3.pruning import (  # noqa: E402
    KerasPrunedModel,
    pruned_model,
    pruned_model_in,
    schedule_holder,
)
