"""The interface every backend implements: what tfsynapse asks of a Keras.

A backend is a package under ``tfsynapse/backends/`` (``tf_keras``, ``keras3``) whose module
provides every member of ``Backend`` with the signatures below. ``backends.get(name)`` and
``backends.backend_of(obj)`` return that module; code outside ``backends/`` calls only these
members. ``tests/test_backends_conformance.py`` checks that both backends provide all of them
with these signatures, and runs the journeys on both. Adding a backend: a package that passes it,
a line in ``backends.NAMES``/``_MODULES`` and ``backend_name`` recognising its classes.
"""

from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable


class Unsupported(TypeError):
    """What a backend's Keras does not offer (e.g. quantisation-aware training on Keras 3); the
    message says what works instead."""


class RawOp(NamedTuple):
    """A raw tensor operation recorded in a functional model (not a layer).

    Attributes:
      symbol: the TensorFlow symbol it computes (``'math.add'``, ``'nn.relu'``), or None when
        this backend does not know it.
      function: a callable that computes it on tensors with the call's arguments.
      axis: ``axis(args, kwargs)``: the axis a reduction reduces over (None: all axes).
      resized: for an operation whose arguments name the channel count (a reshape's target
        shape), ``resized(width) -> operation`` computing the same for ``width`` channels;
        None when the backend cannot make one.
    """

    symbol: Any
    function: Callable
    axis: Callable
    resized: Any = None


@runtime_checkable
class Backend(Protocol):
    """The members a backend module provides (names, arguments and meaning)."""

    NAME: str  # 'tf_keras', 'keras3'
    keras: Any  # the Keras module itself (``keras.models.clone_model``, ``keras.layers``)
    SynapticConv2D: type  # the Synaptic Strength convolution of this Keras (docs/methods.md)
    Distiller: type  # (student, teacher, temperature, alpha, from_logits, **kwargs), checked
    SAVE_FORMATS: tuple  # what save_model writes and load_model reads back ('keras', 'h5', ...)

    # ---- models: check, walk and rebuild ------------------------------------------------
    def check_model(self, model, what="model", require_built=True):
        """A built functional or Sequential model of this Keras, or a TypeError/ValueError
        that says what to do."""

    def is_graph_model(self, layer):
        """Whether ``layer`` is a model with a graph of calls (functional, built Sequential)."""

    def is_model(self, layer):
        """Whether ``layer`` is a model of any kind."""

    def is_layer(self, obj):
        """A layer with weights and a config, as opposed to a raw operation in a graph."""

    def call_nodes(self, model):
        """The calls of a graph model in execution order (nested models not yet inlined)."""

    def node_tensors(self, node):
        """``(input tensors, output tensors)`` of one call."""

    def node_arguments(self, node):
        """``(args, kwargs)`` of one call, tensors in place, to replay it."""

    def model_io(self, model):
        """``(input tensors, output tensors)`` of a graph model, flat."""

    def io_structure(self, model):
        """``(inputs, outputs)`` of a graph model in the structures it was built with (a
        tensor, a list, a dict of them); flattened with ``tf.nest`` they are ``model_io``'s."""

    def input_names(self, model):
        """The names of the model's inputs, in order (export signatures)."""

    def output_names(self, model):
        """The names of the model's outputs, in order (export signatures)."""

    def flat_outputs(self, outputs):
        """A model's outputs (a tensor, list or dict) as a flat list, in Keras's order."""

    def tf_variables(self, model):
        """The ``tf.Variable`` objects a SavedModel of ``model`` must track."""

    def single_input(self, model):
        """The one input tensor of ``model``, or a ValueError naming how many it has."""

    def single_output(self, model):
        """The one output tensor of ``model``, or a ValueError naming how many it has."""

    def is_symbolic(self, obj):
        """Whether ``obj`` is a symbolic tensor of this Keras."""

    def new_input(self, tensor):
        """A new ``Input`` with the shape, dtype and name of a symbolic ``tensor``."""

    def new_model(self, inputs, outputs, name):
        """A functional model from inputs and outputs."""

    def raw_operation(self, layer):
        """A ``RawOp`` for a recorded raw operation (tf_keras ``TFOpLambda``, a Keras 3
        ``keras.ops`` operation), or None for anything else."""

    def rename(self, layer, name):
        """Gives ``layer`` a new name (a traced sublayer whose name another layer has)."""

    def sublayers(self, layer):
        """The layers ``layer`` holds directly (attributes, lists, dicts), not itself."""

    def trace_call(self, layer, args, kwargs, may_inline=None, renamed=None):
        """``(graph_model, sources, positions)``: ``layer.call`` run on fresh symbolic inputs
        standing, in order, for the distinct symbolic tensors ``sources`` of one recorded
        call's ``args``/``kwargs``; the graph's outputs are the call's flat outputs at
        ``positions`` (constant outputs left out). A sublayer Keras cannot record as a node
        (a non-tensor output) is run in place when ``may_inline(sublayer)``; layers renamed to
        keep names unique go into the dict ``renamed``. Raises whatever the call raises."""

    def trace_model(self, model):
        """A functional model of a subclassed model's ``call`` on inputs of the shape it was
        built or called with; a ValueError when that shape is not known."""

    def class_path(self, layer):
        """The key of built-in rules for ``layer``'s class (``'Conv2D'``), or None."""

    def layers_of_type(self, model, layer_class):
        """Every layer of ``model`` (nested models included) that is a ``layer_class``."""

    def user_functions_scope(self, model):
        """A context in which the model's Python functions (activations, lambdas) are known
        to ``clone_model``/``from_config``."""

    def half_precision_layers(self, model):
        """Names of the layers that compute in float16/bfloat16 (mixed precision)."""

    def learning_rate_of(self, optimizer):
        """The optimizer's current learning rate as a float."""

    # ---- training-time masking -------------------------------------------------------
    def unwrap(self, layer):
        """The layer a training-time wrapper wraps (recursively), else the layer."""

    def has_pruning_wrappers(self, model):
        """Whether ``model`` is being pruned during training (wrappers or a pruned model)."""

    def refuse_pruning_wrappers(self, model):
        """Raises ValueError for a model that is being pruned, naming ``strip_pruning``."""

    def pruned_model(self, model, pruning_schedule, plan, replay):
        """The model that prunes ``model``'s layers during ``fit`` under ``plan`` (a
        ``MaskPlan``; its ``options`` are saved with the model) and a tfmot schedule, sharing
        the layers. ``replay(model, make_layer, model_fn)`` rebuilds a model with some layers
        replaced, for a backend that wraps layers."""

    def pruned_model_in(self, model):
        """``model`` if it is this backend's pruned model, else the one inside it (a
        distiller's student), else None."""

    def schedule_holder(self, model):
        """What holds the schedule and the step (``pruning_schedule``, ``pruning_step``) of a
        model being pruned, or None."""

    def strip(self, model):
        """The plain functional model of a model being pruned, its masks applied one last
        time, sharing the layers."""

    # ---- export -----------------------------------------------------------------------
    def export_saved_model(self, model, path):
        """Writes the model's serving signature as a TensorFlow SavedModel at ``path``."""

    def is_quantize_aware(self, model):
        """Whether ``model`` holds fake-quantisation layers (quantisation-aware training)."""

    def quantize_model(self, model):
        """A quantisation-aware copy of ``model`` (tfmot's ``quantize_model``), or a TypeError
        for a Keras that has none."""

    # ---- files ------------------------------------------------------------------------
    def load_model(self, path):
        """Loads a model file this Keras wrote (tfsynapse's classes included), uncompiled."""

    def save_model(self, model, path, fmt):
        """Saves ``model`` to ``path`` as ``fmt`` ('keras', 'h5', 'savedmodel'), or a
        ValueError for a format this Keras cannot read back."""


MEMBERS = tuple(name for name in Backend.__annotations__) + tuple(
    name for name, value in vars(Backend).items()
    if callable(value) and not name.startswith("_"))
