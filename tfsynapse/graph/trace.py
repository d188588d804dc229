"""Seeing inside composite layers and subclassed models: tracing them into their sublayers.

Users' models are rarely flat: keras-hub backbones are made of composite layers (a whole
inverted-residual block is one ``Layer`` whose ``call`` uses sublayers and ``keras.ops``), and
many models are subclassed. A layer that has no channel rule and is not one of Keras's own is
*traced*: its ``call`` runs on fresh symbolic inputs, which records the sublayer calls and ops
it is made of (Keras 3 records ``keras.ops`` on symbolic tensors; tf_keras turns TensorFlow ops
into op layers). The walk then inlines that graph as it inlines a nested functional model, so
rules apply to the inner layers, counters count them, and a rebuilt model is flat.

A trace is accepted only when it is faithful:

* the layer holds no weight of its own outside its sublayers (a weight its ``call`` uses
  directly would belong to no layer of the traced graph: not counted, not saved);
* the traced graph computes what the layer computes, checked once on a random batch.

Otherwise the layer stays *opaque*: it is called as a whole, the channels that reach it are
frozen, and the reason (the exception and the layer) is reported in ``dependency_groups(model)
.summary()`` and in the warning that names it. ``keep_opaque`` switches tracing off for chosen
layers or classes. Traces are cached per layer and call signature. A traced sublayer that has
the name of another layer of the model is renamed ``<composite>_<name>`` (Keras requires
unique names in a model, and names identify groups), which the summary reports.
"""

import dataclasses
import weakref

import numpy as np

from tfsynapse.backends import backend_of, tf, tracing, unwrap
from tfsynapse.graph import rules as rules_lib

_OPAQUE_CLASSES = set()
_OPAQUE_LAYERS = weakref.WeakSet()
_TRACES = weakref.WeakKeyDictionary()  # layer -> {signature: Traced or reason}
_MODELS = weakref.WeakKeyDictionary()  # subclassed model -> its functional model
_NOT_TRACED = ("keras", "tf_keras", "tensorflow_model_optimization", "tfsynapse")


def _framework_class(obj):
    """Keras's, tfmot's or tfsynapse's own class: never traced (Keras's own layers without a
    rule stay frozen as unknown layers; a Sequential is checked as one)."""
    return (type(obj).__module__ or "").split(".")[0] in _NOT_TRACED


def keep_opaque(*targets):
    """Switches tracing off for some layers: they are called whole and stay frozen.

    Args:
      *targets: layer classes (every layer of exactly that class) or layer objects.

    Raises:
      TypeError: no target, or a target that is neither a class nor a layer.
    """
    if not targets:
        raise TypeError("keep_opaque needs at least one layer class or layer.")
    for target in targets:
        if isinstance(target, type):
            _OPAQUE_CLASSES.add(target)
        elif hasattr(target, "call") and hasattr(target, "weights"):
            _OPAQUE_LAYERS.add(target)
        else:
            raise TypeError(f"keep_opaque takes layer classes or layers, got {target!r}.")


@dataclasses.dataclass
class Traced:
    """A layer's call as a graph: ``model``'s inputs stand for the call's distinct symbolic
    tensors, in order of first appearance in its arguments; its outputs are the call's flat
    outputs at ``positions`` (the others are constants, not computed from the inputs)."""

    model: object
    positions: list
    renamed: dict = dataclasses.field(default_factory=dict)


class Tracer:
    """Traces the composite layers met during one walk and reports what it did.

    Attributes:
      traced: ``{layer name: class name}`` of the layers seen through.
      opaque: ``{layer name: reason}`` of the layers that could not be (or may not be) traced.
      renamed: ``{'old name in composite': new name}`` of sublayers renamed to keep the
        model's layer names unique.
    """

    def __init__(self, backend, names):
        self._backend = backend
        self._names = dict(names)  # layer name -> id(layer), for the name-clash check
        self.traced = {}
        self.opaque = {}
        self.renamed = {}

    def wants(self, layer):
        """Whether ``layer`` is a composite to look inside (records why not, when it is a
        candidate that is switched off)."""
        backend = self._backend
        if not backend.is_layer(layer) or backend.is_graph_model(layer):
            return False
        if unwrap(layer) is not layer or rules_lib.rule_for(layer) is not None:
            return False
        if _framework_class(layer) or backend.raw_operation(layer) is not None:
            return False
        if type(layer) in _OPAQUE_CLASSES or layer in _OPAQUE_LAYERS:
            self.opaque[layer.name] = f"{layer.name}: kept opaque by tfsynapse.keep_opaque"
            return False
        return True

    def trace(self, layer, args, kwargs):
        """The accepted ``Traced`` graph of one call of ``layer``, or None (opaque, reason kept).

        Args:
          layer: a layer ``wants`` accepted.
          args, kwargs: the arguments of the recorded call (symbolic tensors inside).
        """
        signature = _signature(self._backend, args, kwargs)
        per_layer = _TRACES.setdefault(layer, {})
        if signature not in per_layer:
            per_layer[signature] = _trace(self._backend, layer, args, kwargs)
        result = per_layer[signature]
        if isinstance(result, str):
            self.opaque[layer.name] = f"{layer.name}: {result}"
            return None
        self.traced[layer.name] = type(layer).__name__
        self.renamed.update(result.renamed)
        self._keep_names_unique(layer, result.model)
        return result

    def decline(self, layer, reason):
        """Keeps a traced ``layer`` opaque after all, for ``reason`` (reported)."""
        self.traced.pop(layer.name, None)
        self.opaque[layer.name] = f"{layer.name}: not traced: {reason}"

    def _keep_names_unique(self, layer, model):
        """Renames a traced sublayer whose name another layer of the model has (keras-hub
        names every block's dropout 'dropout'): names identify groups, Keep values and the
        layers of a rebuilt model, which Keras requires to be unique. Reported in the summary."""
        for inner, _ in self._backend.call_nodes(model):
            if not self._backend.is_layer(inner):
                continue
            owner = self._names.get(inner.name)
            if owner is not None and owner != id(inner):
                old, new, n = inner.name, f"{layer.name}_{inner.name}", 1
                while new in self._names:
                    n += 1
                    new = f"{layer.name}_{old}_{n}"
                self._backend.rename(inner, new)
                self.renamed[old + " in " + layer.name] = new
            self._names.setdefault(inner.name, id(inner))

    def summary_lines(self):
        """Lines for ``DependencyGraph.summary()``: what was traced and what stayed opaque."""
        lines = []
        if self.traced:
            names = list(self.traced)
            lines.append(f"traced into their layers: {len(names)} ("
                         + ", ".join(names[:6]) + (" ..." if len(names) > 6 else "") + ")")
        if self.renamed:
            lines.append("renamed to keep layer names unique: " + ", ".join(
                f"'{old}' -> '{new}'" for old, new in self.renamed.items()))
        for name, reason in self.opaque.items():
            lines.append(f"opaque (frozen, called whole): {reason}")
        return lines


def symbolic_sources(backend, args, kwargs):
    """The distinct symbolic tensors of a call's arguments, in order of first appearance."""
    return tracing.symbolic_sources(backend.is_symbolic, args, kwargs)


def _signature(backend, args, kwargs):
    first = {}
    parts = []
    for obj in tf.nest.flatten((tuple(args), dict(kwargs))):
        if backend.is_symbolic(obj):
            index = first.setdefault(id(obj), len(first))
            parts.append(("tensor", index, tuple(obj.shape), str(obj.dtype)))
        else:
            parts.append(("value", repr(obj)))
    return tuple(parts)


def _own_weights(backend, layer):
    inner = {id(w) for sub in backend.sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def _trace(backend, layer, args, kwargs):
    """A ``Traced`` graph, or the reason (a string) the layer stays opaque."""
    own = _own_weights(backend, layer)
    if own:
        names = ", ".join(w.name.split(":")[0].rsplit("/", 1)[-1] for w in own[:4])
        return (f"not traced: it holds {len(own)} weight(s) of its own ({names}) that its call "
                "uses directly; only calls made of sublayers and ops are traced. Register a "
                "rule for its class (tfsynapse.register_rule) to prune through it")
    def may_inline(sublayer):  # a sublayer Keras cannot record: run its call in place
        return (not _framework_class(sublayer) and rules_lib.rule_for(sublayer) is None
                and type(sublayer) not in _OPAQUE_CLASSES and sublayer not in _OPAQUE_LAYERS
                and not _own_weights(backend, sublayer))

    renamed = {}
    try:
        model, _, positions = backend.trace_call(layer, args, kwargs, may_inline, renamed)
    except Exception as error:  # noqa: BLE001 - any user code may fail on symbolic tensors
        return f"not traced: its call failed on symbolic inputs ({describe_error(error)})"
    problem = _differs(backend, layer, model, args, kwargs, positions)
    if problem:
        return f"not traced: {problem}"
    return Traced(model, positions, renamed)


def describe_error(error, limit=200):
    """``'TypeError: message'`` on one line, cut at ``limit`` characters (for reasons)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _example(tensor, rng):
    shape = [(2 if i == 0 else 16) if d is None else int(d) for i, d in enumerate(tensor.shape)]
    dtype = tf.as_dtype(tensor.dtype)
    if dtype.is_floating:
        return tf.constant(rng.standard_normal(shape).astype(dtype.as_numpy_dtype))
    if dtype.is_bool:
        return tf.ones(shape, tf.bool)
    return tf.zeros(shape, dtype)


def _differs(backend, layer, model, args, kwargs, positions=None):
    """Why the traced ``model`` does not compute what ``layer`` does (one random batch), or
    None when it does; ``model`` gives the layer's flat outputs at ``positions`` (all)."""
    rng = np.random.default_rng(0)
    sources = symbolic_sources(backend, args, kwargs)
    values = {id(t): _example(t, rng) for t in sources}
    concrete = tf.nest.map_structure(
        lambda obj: values.get(id(obj), obj) if backend.is_symbolic(obj) else obj,
        (tuple(args), dict(kwargs)))
    feed = [values[id(t)] for t in sources]
    try:
        expected = tf.nest.flatten(layer(*concrete[0], **concrete[1]))
        got = tf.nest.flatten(model(feed[0] if len(feed) == 1 else feed))
        if positions is not None:
            expected = [expected[i] for i in positions if i < len(expected)]
    except Exception as error:  # noqa: BLE001 - any user code
        return f"it could not be run on a random batch to check the trace ({describe_error(error)})"
    if len(expected) != len(got):
        return f"the traced graph has {len(got)} outputs, the layer {len(expected)}"
    for want, have in zip(expected, got):
        want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
        if want.shape != have.shape:
            return f"the traced graph's output has shape {have.shape}, the layer's {want.shape}"
        scale = 1.0 + float(np.max(np.abs(want))) if want.size else 1.0
        gap = float(np.max(np.abs(want - have))) if want.size else 0.0
        if not gap <= 1e-4 * scale:  # NaN is a difference too
            return (f"the traced graph differs from the layer's output by {gap:.3g} (scale "
                    f"{scale:.3g}): its call depends on something tracing cannot see (Python "
                    "state, randomness, a branch on values)")
    return None


def functional_model(model):
    """A model with a layer graph for ``model``: itself when it has one, else (a subclassed
    model) the functional model its ``call`` traces into, sharing its layers.

    Args:
      model: any object (only a subclassed Keras model is changed).

    Returns:
      ``model``, or a functional model of the same Keras computing the same outputs.

    Raises:
      ValueError: a subclassed model whose input shape is unknown, that holds weights outside
        its layers, whose call cannot be traced on symbolic inputs, or whose traced graph
        computes something else.
    """
    try:
        backend = backend_of(model)
    except TypeError:
        return model
    if not backend.is_model(model) or backend.is_graph_model(model) or _framework_class(model):
        return model
    if model in _MODELS:
        return _MODELS[model]
    advice = ("Write its call with Keras layers and ops (keras.ops, or tf ops on tf_keras) and "
              "no Python branch on tensor values, or rebuild it with the functional API.")
    own = _own_weights(backend, model)
    if own:  # a graph of its layers would leave them out of counts, masks and training
        names = ", ".join(w.name.split(":")[0].rsplit("/", 1)[-1] for w in own[:4])
        raise ValueError(f"subclassed model '{model.name}' ({type(model).__name__}) holds "
                         f"{len(own)} weight(s) of its own ({names}) outside its layers; a graph "
                         "of its layers would leave them out of counts, masks and training. Hold "
                         "them in a layer (a custom layer; tfsynapse.register_rule to prune "
                         "through it), or rebuild the model with the functional API.")
    try:
        traced = backend.trace_model(model)
    except ValueError as error:
        raise ValueError(f"subclassed model '{model.name}': {error}") from error
    except Exception as error:  # noqa: BLE001 - any user code
        raise ValueError(f"subclassed model '{model.name}' ({type(model).__name__}) could not be "
                         f"traced into a graph of its layers: {describe_error(error)}. {advice}"
                         ) from error
    inputs = backend.model_io(traced)[0]
    problem = _differs(backend, model, traced, (inputs if len(inputs) > 1 else inputs[0],), {})
    if problem:
        raise ValueError(f"subclassed model '{model.name}' ({type(model).__name__}) traced into a "
                         f"graph that is not the model: {problem}. {advice}")
    _MODELS[model] = traced
    return traced
