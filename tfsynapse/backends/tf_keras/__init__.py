"""The one binding to the Keras implementation (tf_keras, Keras 2) and to tfmot.

Every other module imports ``keras``, ``tf`` and the tfmot pieces from here, so that a second
backend can be added in one place. tfmot 0.8.1 only wraps tf_keras models; importing it sets
``TF_USE_LEGACY_KERAS=1``.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tfsynapse.backends import (  # noqa: E402, F401
    builtin_class_path, is_framework_function, unique_names)
from tfsynapse.backends.base import RawOp  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras.src.engine import functional as keras_functional  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: E402
    prunable_layer,
    prune,
    pruning_callbacks,
    pruning_impl,
    pruning_schedule,
    pruning_wrapper,
)

__all__ = [
    "tf",
    "keras",
    "keras_functional",
    "prunable_layer",
    "prune",
    "pruning_callbacks",
    "pruning_impl",
    "pruning_schedule",
    "pruning_wrapper",
    "check_model",
    "register_custom_objects",
    "user_functions_scope",
    "is_framework_function",
    "half_precision_layers",
    "learning_rate_of",
    "unwrap",
    "has_pruning_wrappers",
    "refuse_pruning_wrappers",
    "strip",
    "raw_operation",
    "io_structure",
    "export_saved_model",
    "is_quantize_aware",
    "quantize_model",
    "SynapticConv2D",
    "Distiller",
    "PrunedModel",
    "StructuredPruneWrapper",
    "collect_wrappers",
    "custom_objects",
    "pruned_model",
    "pruned_model_in",
    "rename",
    "sublayers",
    "trace_call",
    "trace_model",
    "require_update_step",
    "schedule_holder",
]

_KERAS3_MESSAGE = (
    "{what} is a Keras 3 object ({cls}), and this function works on tf_keras (Keras 2) models "
    "only so far. Keras 3 models work with dependency_groups, count_macs, count_params, "
    "prune_once and prune_synaptic (every criterion), strip_pruning, recalibrate_batchnorm, "
    "sensitivity_analysis, PruningProgress, ProximalL1, to_synaptic/from_synaptic, shrink, "
    "tflite_export.convert/verify, Distiller (two Keras 3 models) and the CLI; "
    "quantisation-aware training (tfmot's quantize_model) and tfmot's own callbacks take "
    "tf_keras models (build the model with `import tf_keras as keras`, pip install tf-keras)."
)


def _is_keras3(obj):
    module = type(obj).__module__ or ""
    return module == "keras" or module.startswith("keras.") or module.startswith("keras.src")


def check_model(model, what="model", require_built=True):
    """Validates that ``model`` is a built tf_keras Sequential or functional model.

    Args:
      model: the object a user handed to a public function.
      what: how to name the object in error messages.
      require_built: also demand that the model has been built (has weights and shapes).

    Returns:
      The model, unchanged.

    Raises:
      TypeError: the object is a Keras 3 model or layer, or not a Keras model at all.
      ValueError: the model is subclassed, or not built.
    """
    if _is_keras3(model):
        raise TypeError(_KERAS3_MESSAGE.format(what=what, cls=type(model).__name__))
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{what} must be a tf_keras.Model (Sequential or functional), got "
            f"{type(model).__name__}."
        )
    if not getattr(model, "_is_graph_network", False) and not isinstance(model, keras.Sequential):
        raise ValueError(
            f"{what} ({type(model).__name__}) is a subclassed model: tfsynapse needs the layer "
            "graph, which subclassed models do not expose. Rebuild it with the functional API "
            "(keras.Model(inputs, outputs)) or as a keras.Sequential, then load its weights."
        )
    if require_built and (not model.built or not getattr(model, "_is_graph_network", False)):
        raise ValueError(
            f"{what} is not built: give its first layer an input shape "
            "(keras.Input(shape=...) or input_shape=...) or call model.build(input_shape) first."
        )
    return model


def layers_of_type(model, layer_class):
    """Every layer of ``model`` that is a ``layer_class``, once each, in discovery order.

    Nested models and layers inside pruning wrappers are included (``model.submodules``).

    Args:
      model: a tf_keras model.
      layer_class: a layer class (or a tuple of classes).

    Returns:
      A list of layers.
    """
    found, seen = [], set()
    for layer in [model] + list(model.submodules):
        if isinstance(layer, layer_class) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def register_custom_objects(objects):
    """Makes ``objects`` ({class name: class}) known to every ``keras.models.load_model``.

    tf_keras resolves a nested custom layer only through custom objects (for an unknown one it
    hands back its class name as a string, and loading fails with "'str' object is not
    callable"), so tfsynapse registers its classes globally when its packages are imported.
    """
    keras.utils.get_custom_objects().update(objects)


def user_functions_scope(model):
    """A custom-object scope holding the plain Python functions the model's layers use.

    Keras serialises a function (an ``activation=`` given as a callable) by its name only, so
    ``clone_model`` and ``from_config`` cannot rebuild such a layer without it in custom
    objects. tfsynapse copies and rebuilds models (``prune_once``, ``shrink``,
    ``strip_pruning``), so it lends Keras the functions the model already holds.

    Args:
      model: a tf_keras model.

    Returns:
      A ``keras.utils.custom_object_scope``.
    """
    functions = {}
    for layer in model.submodules:
        fn = getattr(layer, "activation", None)
        if callable(fn) and hasattr(fn, "__name__") and not is_framework_function(fn):
            functions[fn.__name__] = fn
    return keras.utils.custom_object_scope(functions)


def learning_rate_of(optimizer):
    """The rate of the optimizer's last update: a variable (tf_keras keeps a schedule's current
    rate in one), or a legacy optimizer's schedule, to call with that update's step."""
    return optimizer.learning_rate


def half_precision_layers(model):
    """Names of the layers of ``model`` that compute in float16 or bfloat16 (mixed precision)."""
    return [layer.name for layer in model.submodules if isinstance(layer, keras.layers.Layer)
            and getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32")
            in ("float16", "bfloat16")]



def unwrap(layer):
    """The layer a pruning wrapper wraps (recursively); the layer itself otherwise."""
    while isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        layer = layer.layer
    return layer


def quantize_model(model):
    """tfmot's ``quantize_model`` (quantisation-aware training), imported on first use."""
    from tensorflow_model_optimization.python.core.quantization.keras import (  # noqa: PLC0415
        quantize,
    )

    return quantize.quantize_model(model)


def load_model(path):
    """Loads a tf_keras model file or SavedModel (tfsynapse/tfmot pruning wrappers included:
    their classes are registered when this backend is imported)."""
    return keras.models.load_model(path, compile=False)


def export_saved_model(model, path):
    """The model's own serving signature as a TensorFlow SavedModel (what the TFLite converter's
    ``from_keras_model`` converts)."""
    tf.saved_model.save(model, path)


def is_quantize_aware(model):
    """Whether ``model`` holds tfmot fake-quantisation layers (``quantize_model``)."""
    return any(type(layer).__name__ in _QAT_WRAPPERS for layer in model.submodules)


_QAT_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")


def strip(model):
    """The plain functional model of a wrapped one, the wrappers' masks applied one last time
    (tfmot's ``strip_pruning``, with the model's Python functions in scope)."""
    for wrapper in pruning_wrapper.collect_prunable_layers(model):
        for weight, mask, _ in wrapper.pruning_vars:
            weight.assign(weight * mask)
    with user_functions_scope(model):
        return prune.strip_pruning(model)  # clones into a plain functional Model


SAVE_FORMATS = ("keras", "h5", "savedmodel")  # what save_model writes and load_model reads


def save_model(model, path, fmt):
    """Saves to ``path`` as ``fmt`` ('keras', 'h5' or 'savedmodel')."""
    model.save(path, save_format="tf" if fmt == "savedmodel" else fmt)


def has_pruning_wrappers(model):
    """Whether any layer of ``model`` is wrapped for pruning (tfmot's or tfsynapse's)."""
    return bool(pruning_wrapper.collect_prunable_layers(model))


def refuse_pruning_wrappers(model):
    """Refuses a model whose layers are already wrapped for pruning (tfmot's or tfsynapse's).

    Raises:
      ValueError: naming the first wrapped layer and the call that unwraps it.
    """
    for layer in model.submodules:
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            raise ValueError(
                f"layer '{layer.name}' is already wrapped for pruning; call "
                "tfsynapse.strip_pruning(model) first."
            )


# ---------------------------------------------------------------------------------------------
# The graph interface (the same functions exist in every backend; see tfsynapse.backends)

NAME = "tf_keras"


def is_graph_model(layer):
    """Whether ``layer`` is a model with a layer graph (functional or Sequential)."""
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def is_model(layer):
    """Whether ``layer`` is a Keras model of any kind (subclassed included)."""
    return isinstance(layer, keras.Model)


def is_layer(obj):
    """Whether ``obj`` is a Keras layer (with a config and weights)."""
    return isinstance(obj, keras.layers.Layer)


def call_nodes(model):
    """``(layer, node)`` for every call recorded in a graph model, in execution order."""
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or isinstance(node.layer, keras.layers.InputLayer):
                continue
            yield node.layer, node


def node_tensors(node):
    """``(input tensors, output tensors)`` of a call node, as flat lists."""
    return list(node.keras_inputs), tf.nest.flatten(node.outputs)


def node_arguments(node):
    """``(args, kwargs)`` the layer was called with (symbolic tensors inside)."""
    return node.call_args, node.call_kwargs


def model_io(model):
    """``(inputs, outputs)`` of a graph model as flat lists of symbolic tensors."""
    return list(model.inputs), list(model.outputs)


def io_structure(model):
    """``(inputs, outputs)`` of a graph model in the structures it was built with (a tensor,
    a list, a dict); their flattened order is ``model_io``'s."""
    inputs = getattr(model, "_nested_inputs", None)
    outputs = getattr(model, "_nested_outputs", None)
    if inputs is None or outputs is None:
        return list(model.inputs), list(model.outputs)
    return inputs, outputs


def input_names(model):
    """The names of the model's inputs, in ``model.inputs`` order."""
    return list(model.input_names)


def output_names(model):
    """The names of the model's outputs (their layers'), in ``model.outputs`` order, made
    unique (``backends.unique_names``)."""
    return unique_names(list(model.output_names))


def tf_variables(model):
    """The model's variables as TensorFlow variables (what a SavedModel must track)."""
    return list(model.variables)


def flat_outputs(outputs):
    """A model call's result (a tensor, list, tuple or dict) as a list in ``model.outputs``
    order (tf_keras flattens dicts by sorted key, as ``tf.nest`` does)."""
    return tf.nest.flatten(outputs)


def single_input(model):
    """False: tf_keras models take their inputs as a list (a single array is accepted too)."""
    return False


def single_output(model):
    """Whether the model returns one tensor (rather than a list, tuple or dict of them)."""
    return not isinstance(getattr(model, "_nested_outputs", None), (list, tuple))


def is_symbolic(obj):
    """Whether ``obj`` is a symbolic Keras tensor (False for constants and eager tensors)."""
    return tf.is_tensor(obj) and keras.backend.is_keras_tensor(obj)


def new_input(tensor):
    """A new ``keras.Input`` like the symbolic ``tensor`` (shape with batch, dtype, name)."""
    return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                       name=tensor.name.split(":")[0].split("/")[0])


def new_model(inputs, outputs, name):
    """A functional model."""
    return keras.Model(inputs, outputs, name=name)


def raw_operation(layer):
    """A ``RawOp`` for a ``TFOpLambda`` (a raw TensorFlow call recorded in a functional model),
    else None."""
    if type(layer).__name__ != "TFOpLambda" or not is_layer(layer):
        return None

    def axis(args, kwargs):
        return kwargs.get("axis", args[1] if len(args) > 1 else None)

    return RawOp(layer.symbol, layer.function, axis)


def class_path(layer):
    """The key of built-in rules for Keras's own classes (see ``backends.builtin_class_path``)."""
    return builtin_class_path(layer, "tf_keras")


# The backend's own classes, defined with the names above (kept last: they import them).
from tfsynapse.backends.tf_keras.layers import SynapticConv2D  # noqa: E402
from tfsynapse.backends.tf_keras.pruned_model import (  # noqa: E402
    PrunedModel,
    collect_wrappers,
    pruned_model,
    pruned_model_in,
    require_update_step,
    schedule_holder,
)
from tfsynapse.backends.tf_keras.wrapper import StructuredPruneWrapper  # noqa: E402
from tfsynapse.backends.tf_keras.distill import Distiller  # noqa: E402
from tfsynapse.backends.tf_keras.tracing import rename, sublayers, trace_call, trace_model  # noqa: E402


def custom_objects():
    """Every class a tf_keras model saved by tfsynapse may hold: its wrappers, pruned model,
    schedules and layers (and tfmot's wrapper)."""
    return {
        "StructuredPruneWrapper": StructuredPruneWrapper,
        "PrunedModel": PrunedModel,
        "PruneLowMagnitude": pruning_wrapper.PruneLowMagnitude,
        "ConstantSparsity": pruning_schedule.ConstantSparsity,
        "PolynomialDecay": pruning_schedule.PolynomialDecay,
        "SynapticConv2D": SynapticConv2D,
    }


# tf_keras resolves a nested custom class only through custom objects: from now on a plain
# ``load_model`` finds tfsynapse's classes in this process.
register_custom_objects(custom_objects())
