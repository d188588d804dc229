"""Public pruning entry points: prune_synaptic, prune_once, strip_pruning, prune_scope."""

import contextlib
import warnings

import numpy as np

from tfsynapse.backends.tf_keras import (
    keras,
    pruning_schedule,
)
from tfsynapse.backends import backend_of, tf, weight_path
from tfsynapse.backends import tf_keras as tf_keras_backend
from tfsynapse.graph import (
    copy_model, dependency_groups, flatten_calls, functional_model, replay, rule_for, unwrap,
)
from tfsynapse.plan import keep as keep_value
from tfsynapse.analysis.batchnorm import recalibrate_batchnorm
from tfsynapse.plan.options import PruningOptions, check_sparsity
from tfsynapse.pruning.progress import warn_if_short
from tfsynapse.plan.planner import MaskPlan


def _final_sparsity(schedule):
    if not isinstance(schedule, pruning_schedule.PruningSchedule):
        raise ValueError(
            "pruning_schedule must be a tfmot PruningSchedule such as "
            "tfsynapse.ConstantSparsity(0.5, begin_step=0) or tfsynapse.PolynomialDecay(...), "
            f"got {schedule!r}."
        )
    config = schedule.get_config()["config"]
    final = config.get("final_sparsity", config.get("target_sparsity"))
    begin, end = config.get("begin_step", 0), config.get("end_step", -1)
    if end is not None and end != -1 and end < begin:
        raise ValueError(f"the schedule ends (end_step={end}) before it begins (begin_step={begin}).")
    return check_sparsity(float(final), "the schedule's final sparsity")


def _refuse_mixed_precision(model):
    """tfmot's wrappers mask float32 weights inside float16 computations and fail in ``fit``."""
    mixed = backend_of(model).half_precision_layers(model)
    if mixed:
        raise ValueError(
            f"layer(s) {', '.join(mixed[:5])} compute in float16/bfloat16 (a mixed-precision "
            "policy): pruning during training does not support mixed precision. Build the "
            "model under keras.mixed_precision.set_global_policy('float32') to prune and "
            "fine-tune it (prune_once and shrink work on it; LiteRT's float16 export is "
            "tflite_export.convert(model, quantize='float16')).")


def _layer_names(ignored_layers):
    if isinstance(ignored_layers, str):
        raise ValueError(f"ignored_layers takes a list of layer names, got the string "
                         f"{ignored_layers!r}: write ignored_layers=[{ignored_layers!r}].")
    return tuple(ignored_layers)


def prune_synaptic(model, pruning_schedule, criterion="synaptic_strength", granularity="connection",
                   scope="global", round_to=1, max_pruning_ratio=None, ignored_layers=(),
                   layer_sparsity=None, residual="group", seed=0, strict=False, only_listed=False):
    """Wraps a model for structured pruning during ``model.fit`` under a tfmot schedule.

    tf_keras: the returned model's prunable layers are ``StructuredPruneWrapper``s (a subclass
    of tfmot's ``PruneLowMagnitude``): train it with the ``tfsynapse.UpdatePruningStep()``
    callback (tfmot's own), then ``tfsynapse.strip_pruning`` and ``tfsynapse.shrink``. The
    wrappers share the original layers (and weights), as tfmot's do. Nested models come out
    inlined. Keras 3: the returned ``KerasPrunedModel`` holds the step and the masks itself and
    advances them in its ``train_step`` (no callback; under ``tf.distribute`` too); it shares the
    original layers too.

    Args:
      model: a built functional or Sequential model, tf_keras or Keras 3 (a subclassed one is
        traced: ``functional_model``).
      pruning_schedule: a tfmot schedule (``ConstantSparsity``, ``PolynomialDecay``) giving the
        target fraction of units pruned over training steps.
      criterion: importance criterion name ('synaptic_strength', 'kernel_norm', 'l1', 'l2',
        'dscore', 'dstep', 'dstep_gm', 'fpgm', 'bn_scale', 'random') or a callable (see
        ``register_criterion``).
      granularity: 'connection' (kernel slices ``K[..., i, j]``; a channel is removed once all
        its connections die) or 'filter' (whole channels of dependency groups).
      scope: 'global' (one threshold over the model) or 'layer' (each group/layer at the target).
      round_to: keep channel counts multiples of this (filter granularity).
      max_pruning_ratio: the largest fraction of any group's (or layer's) units ever pruned;
        None: 0.9 for filters, 0.99 for connections (or the largest ``layer_sparsity`` ratio).
        A target the cap makes unreachable raises a ``ValueError`` naming both numbers.
      ignored_layers: names of layers whose output channels and connections stay.
      layer_sparsity: ``{layer name: ratio}`` final targets overriding the schedule's for
        the listed groups/layers; the others follow the schedule's own target unless
        ``only_listed``.
      residual: 'group' (prune residual groups as a whole) or 'skip' (leave them).
      seed: seed of the 'random' criterion.
      strict: raise on layers without a channel rule instead of freezing their channels.
      only_listed: prune only what ``layer_sparsity`` lists, leaving every other group/layer
        whole, as ``prune_once(model, {layer: ratio})`` does (e.g. with the ratios of
        ``ratios_from_sensitivity``, whose unanalysed groups should stay dense).

    Returns:
      A ``PrunedModel`` (tf_keras) or a ``KerasPrunedModel`` (Keras 3), functional models.

    Raises:
      TypeError: not a Keras model.
      ValueError: an unbuilt model or a subclassed one that cannot be traced
        (``functional_model``), a mixed-precision model, invalid options, an invalid
        schedule, an already wrapped model, nothing that can be pruned, or a final sparsity
        that ``max_pruning_ratio`` (or the one channel every group keeps) makes unreachable.
    """
    model = functional_model(model)  # a subclassed model: its traced graph
    backend = backend_of(model)
    backend.check_model(model)
    backend.refuse_pruning_wrappers(model)
    _refuse_mixed_precision(model)
    options = PruningOptions(
        criterion=criterion, granularity=granularity, scope=scope, round_to=round_to,
        max_pruning_ratio=max_pruning_ratio, ignored_layers=_layer_names(ignored_layers),
        layer_sparsity=layer_sparsity, residual=residual, seed=seed,
        final_sparsity=_final_sparsity(pruning_schedule), only_listed=bool(only_listed))
    if options.only_listed and not options.layer_sparsity:
        raise ValueError("only_listed=True needs layer_sparsity={layer name: ratio}: with "
                         "nothing listed nothing would be pruned.")
    _check_names(model, options)
    plan = MaskPlan(dependency_groups(model, strict=strict), options)
    _require_something(plan)
    _check_targets(plan)
    check_finite_weights(plan)
    check_reachable(plan, options.final_sparsity)
    return backend.pruned_model(model, pruning_schedule, plan, replay)


def _require_something(plan):
    """Raises when ``plan`` prunes nothing: every group frozen (the reasons named), or, per
    connection, no layer with per-connection kernels."""
    connection = plan.options.granularity == "connection"
    if plan.connection_layers if connection else plan.groups:
        return
    if connection and plan.groups:
        raise ValueError(
            "granularity='connection' prunes the kernels of convolutions (Conv1D/2D/3D, not "
            "grouped, depthwise, separable or transposed) connection by connection, and this "
            f"model has none to prune; its {len(plan.groups)} prunable group(s) (e.g. "
            f"{plan.groups[0].group.name}) prune with granularity='filter'.")
    reasons = "; ".join(f"{name}: {why[0]}" for name, why in list(plan.frozen.items())[:5] if why)
    raise ValueError(f"nothing in this model can be pruned with these options ({reasons}).")


def _check_names(model, options):
    for what, given in (("ignored_layers", options.ignored_layers),
                        ("layer_sparsity", list(options.layer_sparsity))):
        known_layer_names(model, given, what)


def known_layer_names(model, names, what="ignored_layers"):
    """``names`` as a tuple, checked to be a list of names of ``model``'s layers.

    Args:
      model: a functional model (a subclassed one: its ``functional_model``).
      names: an iterable of layer names.
      what: the argument's name, for the messages.

    Returns:
      The names, as a tuple.

    Raises:
      ValueError: ``names`` is a string, or names a layer the model does not have.
    """
    names = _layer_names(names) if what == "ignored_layers" else tuple(names)
    present = {unwrap(c.layer).name for c in flatten_calls(model).calls}
    unknown = [n for n in names if n not in present]
    if unknown:
        raise ValueError(f"{what} names layers that are not in the model: {unknown}.")
    return names


def check_reachable(plan, sparsity):
    """Raises when ``max_pruning_ratio`` makes ``sparsity`` unreachable; warns (both numbers)
    when only the one unit every group keeps, or ``round_to``, costs more than 2 points.

    Args:
      plan: the ``MaskPlan``.
      sparsity: the final target.

    Raises:
      ValueError: ``max_pruning_ratio`` stops the target, with the reachable sparsity and
        what to change.
    """
    r = plan.reachability(float(sparsity))
    total = r["total"]
    if not total:
        return
    unit = "connections" if plan.options.granularity == "connection" else "channels"
    frozen = (f" ({r['frozen_units']} channels of frozen groups are not counted)"
              if r["frozen_units"] else "")
    detail = "; ".join(f"{name}: {want} wanted, at most {most}"
                       for name, want, most in r["capped"][:4])
    more = f" and {len(r['capped']) - 4} more" if len(r["capped"]) > 4 else ""
    if r["capped"] and not r["one_unit_bound"]:
        cap = plan.options.max_pruning_ratio
        raise ValueError(
            f"the target asks for {r['requested']} of {total} prunable {unit} "
            f"({r['requested'] / total:.1%}){frozen}, but at most {r['reachable']} "
            f"({r['reachable'] / total:.1%}) can be pruned: max_pruning_ratio={cap:g} and at "
            f"least one {unit[:-1]} kept per group/layer ({detail}{more}). Raise "
            "max_pruning_ratio (up to 1.0) or lower the target.")
    capped_short = r["requested"] - r["reachable"] - r["rounded"]
    if r["capped"] and capped_short / total > 0.02:
        # No option lifts this limit (a group/layer never loses its last unit), and the rest
        # of the model still gets its target: say it with both numbers and go on.
        warnings.warn(
            f"tfsynapse: the target asks for {r['requested']} of {total} prunable {unit} "
            f"({r['requested'] / total:.1%}){frozen}, but every group/layer keeps at least "
            f"one {unit[:-1]} ({detail}{more}), so {r['reachable']} "
            f"({r['reachable'] / total:.1%}) will be pruned. Lower the target, or leave the "
            "tiny layers out (ignored_layers).", stacklevel=3)
    if r["rounded"] / total > 0.02:
        warnings.warn(
            f"tfsynapse: round_to={plan.options.round_to} keeps channel counts multiples of "
            f"{plan.options.round_to}: {r['reachable'] / total:.1%} of the {total} prunable "
            f"channels will be pruned instead of the {r['requested'] / total:.1%} asked for.",
            stacklevel=3)
    bound = r["global_rounding_bound"]
    if bound and bound / total > 0.02:
        warnings.warn(
            f"tfsynapse: scope='global' with round_to={plan.options.round_to}: rounding each "
            f"group's pruned count to keep multiples of {plan.options.round_to} can prune up "
            f"to {bound} fewer of the {total} prunable channels than the "
            f"{r['requested'] / total:.1%} asked for (as little as "
            f"{(r['reachable'] - bound) / total:.1%}); the exact count depends on the scores. "
            "Check model.pruned_fraction() / shrink's report, or raise the target.",
            stacklevel=3)


def check_finite_weights(plan):
    """Refuses weights with NaN or inf in the layers a plan masks.

    NaN * 0 is NaN, so a masked NaN stays in a "pruned" channel, and a score computed from it
    ranks nothing; a clear error naming the layers is the only honest answer.

    Raises:
      ValueError: names the layers and weights holding NaN or inf.
    """
    bad = sorted({f"{layer.name} ({weight_path(weight)})" for layer, _, weight, _ in plan.masked_weights
                  if tf.as_dtype(weight.dtype).is_floating and not np.all(np.isfinite(weight.numpy()))})
    if bad:
        raise ValueError(
            f"the weights of {len(bad)} prunable layer(s) hold NaN or inf: "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Pruning cannot rank or "
            "mask non-finite weights; restore a finite checkpoint (training may have diverged).")


def _check_targets(plan):
    """Per-layer ratios must name layers that produce channels; frozen ones get a warning."""
    connection = plan.options.granularity == "connection"
    for name in plan.options.layer_sparsity:
        if connection and any(c.layer.name == name for c in plan.connection_layers):
            continue
        if connection and float(plan.options.layer_sparsity[name]) > 0 and \
                plan.graph.group_of_layer(name) is not None:
            warnings.warn(f"tfsynapse: '{name}' will not be pruned: granularity='connection' "
                          "prunes only convolutions with per-connection kernels; prune it with "
                          "granularity='filter'.", stacklevel=3)
            continue
        group = plan.graph.group_of_layer(name)
        if group is None:
            raise ValueError(
                f"'{name}' does not produce prunable channels (it is not a convolution or dense "
                "layer of the model); per-layer ratios are keyed by producing layers' names."
            )
        planned = any(p.group is group for p in plan.groups)
        if not planned and float(plan.options.layer_sparsity[name]) > 0:
            why = plan.frozen.get(group.name, group.reasons) or ["not prunable"]
            warnings.warn(f"tfsynapse: '{name}' will not be pruned: {why[0]}.", stacklevel=3)


def prune_once(model, sparsity, criterion="l1", granularity="filter", scope="layer", round_to=1,
               max_pruning_ratio=None, ignored_layers=(), residual="group", seed=0, strict=False,
               data=None, recalibration_steps=50):
    """Prunes a model in one shot, without training (the D-Score paper's procedure).

    Args:
      model: a built functional or Sequential model, tf_keras or Keras 3, left untouched (a
        subclassed one is traced: ``functional_model``).
      sparsity: a float in [0, 1), the fraction of units pruned per group (scope='layer') or
        over the model (scope='global'); or ``{layer name: ratio}`` for the groups those layers
        produce (other groups stay whole), e.g. from ``ratios_from_sensitivity``.
      criterion: as in ``prune_synaptic`` (as are the next seven).
      granularity: 'filter' or 'connection'.
      scope: 'layer' or 'global'.
      round_to: every pruned group keeps a multiple of this many units.
      max_pruning_ratio: the largest fraction of any group that may be pruned.
      ignored_layers: names of layers whose groups are never pruned.
      residual: how groups with several producers are pruned ('group' or 'skip').
      seed: the seed of random choices (the 'random' criterion).
      strict: raise on a layer without a channel rule instead of freezing its channels.
      data: optional training images (array, ``(x, y)`` or dataset) to recalibrate the
        BatchNormalization statistics of the pruned copy (``recalibrate_batchnorm``); without
        it, accuracy right after pruning is usually far lower than it needs to be.
      recalibration_steps: the most batches of ``data`` used for recalibration.

    Returns:
      A new model of the same Keras with the same architecture and the pruned units exactly
      zero (a channel's filters, biases, BatchNormalization gamma/beta and depthwise weights).

    Raises:
      TypeError: not a Keras model.
      ValueError: a subclassed model that cannot be traced (``functional_model``) or an
        unbuilt one, a sparsity that is not a float in [0, 1) or such a dict (a dict with
        ``scope='global'``), invalid options, a target the caps make unreachable, or a
        sparsity above 0 with nothing in the model that can be pruned (the reasons named).
    """
    model = functional_model(model)  # a subclassed model: its traced graph
    backend = backend_of(model)
    backend.check_model(model)
    backend.refuse_pruning_wrappers(model)
    if isinstance(sparsity, dict):
        if scope == "global":
            raise ValueError("scope='global' ranks every unit against one target, but a "
                             "{layer name: ratio} sparsity gives each listed group its own "
                             "ratio (the others stay whole): pass scope='layer'.")
        layer_sparsity, target = dict(sparsity), 1.0
        for name, ratio in layer_sparsity.items():
            check_sparsity(ratio, f"sparsity['{name}']")
    else:
        layer_sparsity, target = None, check_sparsity(sparsity)
    options = PruningOptions(
        criterion=criterion, granularity=granularity, scope=scope, round_to=round_to,
        max_pruning_ratio=max_pruning_ratio, ignored_layers=_layer_names(ignored_layers),
        layer_sparsity=layer_sparsity, residual=residual, seed=seed, final_sparsity=1.0,
        only_listed=layer_sparsity is not None)
    _check_names(model, options)
    # layer by layer: composite layers need no config; a layer no rule covers is never masked
    clone = copy_model(model, may_share=lambda layer: rule_for(layer) is None)
    plan = MaskPlan(dependency_groups(clone, strict=strict), options)
    if (any(float(r) > 0 for r in layer_sparsity.values()) if layer_sparsity is not None
            else target > 0):
        _require_something(plan)
    _check_targets(plan)
    check_finite_weights(plan)
    check_reachable(plan, target)
    apply_masks(plan, plan.compute(target))
    if data is not None:
        recalibrate_batchnorm(clone, data, steps=recalibration_steps)
    elif recalibration_steps != 50:
        warnings.warn(f"tfsynapse: recalibration_steps={recalibration_steps!r} is only used "
                      "with data= (the BatchNormalization recalibration); ignored.",
                      stacklevel=2)
    return clone


def apply_masks(plan, masks):
    """Multiplies every masked weight of ``plan`` by its mask, in place."""
    for (_, _, weight, _), mask in zip(plan.masked_weights, masks):
        weight.assign(weight * mask)


def strip_pruning(model):
    """Removes the pruning wrappers, after applying their masks one last time.

    Args:
      model: a model returned by ``prune_synaptic`` (or any tfmot-wrapped model).

    Warns when the schedule's last update in the training that ran applied less than its
    target (see ``fit_schedule``), unless ``UpdatePruningStep`` already said so after ``fit``.

    Returns:
      A plain functional model of the model's Keras sharing the (masked) layers, carrying the
      plan's ``Keep`` value for ``shrink`` (``tfsynapse.plan.keep``).

    Raises:
      TypeError / ValueError: as ``check_model``.
    """
    backend = backend_of(model)
    backend.check_model(model)
    warn_if_short(model, "strip_pruning")
    pruned = backend.pruned_model_in(model)
    stripped = backend.strip(model)
    keep = pruned.keep() if pruned is model else None
    if keep is not None:  # the plan's intent travels to shrink (not saved with files)
        keep_value.attach(stripped, keep)
    return stripped


def custom_objects():
    """Every class needed to load a tf_keras model saved with tfsynapse wrappers or layers
    (registered globally when the tf_keras backend is imported, so ``load_model`` finds them
    without this)."""
    return tf_keras_backend.custom_objects()


@contextlib.contextmanager
def prune_scope():
    """A scope under which ``keras.models.load_model`` can load tfsynapse-pruned models.

    Yields:
      None.
    """
    with keras.utils.custom_object_scope(custom_objects()):
        yield
