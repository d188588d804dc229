"""The everyday path of pruning during ``fit``: a schedule that fits the training, progress
while it runs, and a warning when the target was never reached.

* ``fit_schedule(target, epochs, steps_per_epoch)``: a ``PolynomialDecay`` built from what a
  user knows. It ends at ``end_fraction`` of the training (0.7: the rest fine-tunes the final
  masks), updates the masks ``updates_per_epoch`` times per epoch, and its end step is aligned
  with its update frequency, so the last update applies exactly the target.
* ``UpdatePruningStep``: tfmot's callback (it advances the wrappers' step) that, at the end of
  ``fit``, warns when the schedule's last update in the training that ran applied less than the
  schedule's target, with both numbers and what to change. ``strip_pruning`` does the same
  check, so a model trained without the callback's check is caught before it is shrunk.
* ``PruningProgress``: one line per epoch (pruned fraction, channels and MACs kept) beside
  Keras' progress bar, and the same scalars in TensorBoard next to tfmot's
  ``PruningSummaries``.
"""

import math
import warnings

from tfsynapse.backends import backend_of, weight_name
from tfsynapse.backends.tf_keras import keras, pruning_callbacks, pruning_schedule, tf
from tfsynapse.graph import count_macs
from tfsynapse.plan.options import check_sparsity

_TOLERANCE = 0.005  # a shortfall below half a point of sparsity is rounding, not a trap


def fit_schedule(target, epochs, steps_per_epoch=None, *, samples=None, batch_size=32,
                 start_epoch=0, end_fraction=0.7, updates_per_epoch=4, initial_sparsity=0.0):
    """A ``PolynomialDecay`` that reaches ``target`` within the training you will run.

    Args:
      target: the final sparsity, in [0, 1).
      epochs: the number of epochs ``fit`` will run.
      steps_per_epoch: batches per epoch; or leave it None and give ``samples`` (and
        ``batch_size``): ``ceil(samples / batch_size)``.
      samples: the number of training samples (with ``batch_size``).
      batch_size: the batch size of ``fit`` (with ``samples``).
      start_epoch: the epoch pruning starts at (0: right away).
      end_fraction: the fraction of the training (from the start) at whose end the target is
        reached; the remaining epochs fine-tune the final masks. In (0, 1].
      updates_per_epoch: mask updates per epoch (the schedule's ``frequency`` is
        ``steps_per_epoch // updates_per_epoch``, at least 1).
      initial_sparsity: the sparsity of the first update.

    Returns:
      A ``tfsynapse.PolynomialDecay`` whose ``end_step`` lies within the training and is
      reached by an update.

    Raises:
      ValueError: a target outside [0, 1); neither or both of ``steps_per_epoch`` and
        ``samples``; non-positive epochs, steps, samples or batch size; ``start_epoch`` not
        before the end; ``end_fraction`` outside (0, 1].
    """
    target = check_sparsity(target, "target")
    initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
    if (steps_per_epoch is None) == (samples is None):
        raise ValueError("give steps_per_epoch (batches per epoch), or samples and batch_size.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("updates_per_epoch", updates_per_epoch),
                        ("steps_per_epoch", steps_per_epoch), ("samples", samples)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if steps_per_epoch is None:
        steps_per_epoch = math.ceil(samples / batch_size)
    if not 0 < end_fraction <= 1:
        raise ValueError(f"end_fraction must be in (0, 1], got {end_fraction!r}.")
    total = int(epochs) * int(steps_per_epoch)
    begin = int(start_epoch) * int(steps_per_epoch)
    if not 0 <= begin < total:
        raise ValueError(f"start_epoch={start_epoch} must be an epoch of the {epochs} that run.")
    frequency = max(1, int(steps_per_epoch) // int(updates_per_epoch))
    last = max(begin + 1, int(end_fraction * total) - 1)  # the last step index that runs
    end = begin + max(1, (last - begin) // frequency) * frequency
    if end > total - 1:
        end = begin + max(1, (total - 1 - begin) // frequency) * frequency
    return pruning_schedule.PolynomialDecay(initial_sparsity, target, begin_step=begin,
                                            end_step=end, frequency=frequency)


def _schedule_attributes(schedule):
    config = schedule.get_config()["config"]
    final = config.get("final_sparsity", config.get("target_sparsity"))
    return (int(config.get("begin_step", 0)), int(config.get("end_step", -1)),
            int(config.get("frequency", 1)), float(final))


def schedule_shortfall(model):
    """How far the schedule's last update (in the steps that ran) stayed below its target.

    Args:
      model: a model wrapped by ``prune_synaptic`` (or any tfmot-wrapped model).

    Returns:
      None when the target was applied (or the model has no wrapper or an unknown schedule);
      otherwise a dict with ``step`` (the last training step), ``applied`` (the sparsity of
      the last update, 0 if none ran), ``target``, ``begin_step``, ``end_step`` and
      ``frequency``.
    """
    holder = backend_of(model).schedule_holder(model)
    if holder is None:
        return None
    schedule = holder.pruning_schedule
    if not isinstance(schedule, (pruning_schedule.PolynomialDecay,
                                 pruning_schedule.ConstantSparsity)):
        return None
    begin, end, frequency, target = _schedule_attributes(schedule)
    step = int(holder.pruning_step.numpy())
    applied = 0.0
    if step >= begin:
        stop = step if end == -1 else min(step, end)
        last = begin + (stop - begin) // frequency * frequency
        if last >= 1:  # the first training step is step 1: an update due "at" 0 never runs
            applied = float(schedule(tf.constant(last, tf.int64))[1].numpy())
    if applied >= target - _TOLERANCE:
        return None
    return {"step": step, "applied": applied, "target": target, "begin_step": begin,
            "end_step": end, "frequency": frequency}


def warn_if_short(model, where):
    """Warns (once per training step) when ``schedule_shortfall(model)`` finds a shortfall.

    Args:
      model: the wrapped model.
      where: who checks, for the message ('fit' or 'strip_pruning').
    """
    short = schedule_shortfall(model)
    if short is None:
        return
    checked = getattr(model, "_tfsynapse_shortfall_step", None)
    if checked == short["step"]:
        return  # already said at the end of fit
    object.__setattr__(model, "_tfsynapse_shortfall_step", short["step"])
    s = short
    if s["step"] < s["begin_step"]:
        why = f"pruning never started: training stopped at step {s['step']}, the schedule " \
              f"begins at step {s['begin_step']}"
    elif s["end_step"] != -1 and s["step"] < s["end_step"]:
        why = f"training stopped at step {s['step']}, before the schedule's end_step " \
              f"{s['end_step']}"
    else:
        why = f"the schedule's last update (every {s['frequency']} steps from step " \
              f"{s['begin_step']}) comes before its end_step {s['end_step']}"
    warnings.warn(
        f"tfsynapse ({where}): the pruning schedule applied {s['applied']:.1%} sparsity, not its "
        f"target {s['target']:.1%}: {why}. Build the schedule from the training you run, e.g. "
        "tfsynapse.fit_schedule(target, epochs=..., steps_per_epoch=...), or train longer.",
        stacklevel=3)


class UpdatePruningStep(pruning_callbacks.UpdatePruningStep):
    """tfmot's ``UpdatePruningStep`` that also checks the target at the end of ``fit``.

    Pass it to ``fit`` of every model from ``prune_synaptic``, on either Keras, so one training
    script runs on both. tf_keras: it sets the wrappers' step (as tfmot's does), and ``fit``
    refuses to start without it. Keras 3: the pruned model advances its step itself; the
    callback finds no wrapper and does nothing but the end-of-fit check. When the training ends
    before the schedule applied its target, it warns with the sparsity reached, the target and
    what to change.
    """
    works_with_keras3 = True  # a Keras 3 pruned model's fit runs it through an adapter

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self.prunable_layers:
            warn_if_short(self.model, "fit")


def _pruned_model(model):
    """``model`` itself, or the pruned model inside a wrapper model such as a Distiller."""
    return backend_of(model).pruned_model_in(model)


def mask_sparsity(pruned):
    """The fraction of each masked weight that its mask zeroes now.

    Args:
      pruned: a model from ``prune_synaptic`` (either Keras).

    Returns:
      ``{"<layer>/<weight>": fraction}`` in the plan's order (e.g. ``"conv1/kernel"``).
    """
    out = {}
    for (layer, _, weight, _), mask in zip(pruned.mask_plan.masked_weights, pruned.mask_values()):
        out[f"{layer.name}/{weight_name(weight)}"] = float(1.0 - mask.mean()) if mask.size else 0.0
    return out


class PruningProgress(keras.callbacks.Callback):
    """Prints (and logs to TensorBoard) how much is pruned after every epoch.

    Works with either Keras: a Keras 3 pruned model's ``fit`` runs it through an adapter
    (``works_with_keras3``).

    Each line: the pruned fraction (channels for filter pruning, connections for connection
    pruning), the channels kept and the MACs kept, relative to the dense model.

    Args:
      log_dir: optional TensorBoard folder (e.g. the one given to tfmot's
        ``PruningSummaries``); per epoch, the scalars ``pruning/pruned_fraction``,
        ``pruning/channels_kept`` and ``pruning/macs_kept``, and per masked weight
        ``sparsity/<layer>/<weight>`` (the fraction its mask zeroes: what
        ``PruningSummaries`` shows per layer, on either Keras; tfmot's works on tf_keras only).
      verbose: 1 prints one line per epoch; 0 only logs (``logs`` and TensorBoard).

    The values also go into Keras' epoch ``logs`` (``pruned_fraction``, ``macs_kept``), so
    ``History`` and ``CSVLogger`` record them.
    """
    works_with_keras3 = True

    def __init__(self, log_dir=None, verbose=1):
        super().__init__()
        self.log_dir = log_dir
        self.verbose = verbose
        self._writer = None
        self._dense_macs = None

    def on_train_begin(self, logs=None):
        pruned = _pruned_model(self.model)
        if pruned is None:
            raise ValueError("PruningProgress needs a model from tfsynapse.prune_synaptic (or a "
                             "Distiller around one).")
        self._dense_macs = count_macs(pruned.mask_plan.graph)
        if self.log_dir is not None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def measure(self):
        """``{"pruned_fraction", "channels_kept", "channels", "macs_kept"}`` of the masks now."""
        pruned = _pruned_model(self.model)
        keep = pruned.keep_plan()
        kept = sum(int(k.sum()) for k in keep.values())
        total = sum(len(k) for k in keep.values())
        macs = count_macs(pruned.mask_plan.graph, keep)
        return {"pruned_fraction": float(pruned.pruned_fraction(keep)), "channels_kept": kept,
                "channels": total, "macs_kept": macs / max(self._dense_macs, 1)}

    def on_epoch_end(self, epoch, logs=None):
        m = self.measure()
        if logs is not None:
            logs["pruned_fraction"] = m["pruned_fraction"]
            logs["macs_kept"] = m["macs_kept"]
        unit = ("connections" if _pruned_model(self.model).pruning_options.granularity ==
                "connection" else "channels")
        if self.verbose:
            print(f"pruning: epoch {epoch + 1}: {m['pruned_fraction']:.1%} of prunable {unit} "
                  f"pruned; channels kept {m['channels_kept']}/{m['channels']}; MACs kept "
                  f"{m['macs_kept']:.1%}", flush=True)
        if self._writer is not None:
            with self._writer.as_default():
                tf.summary.scalar("pruning/pruned_fraction", m["pruned_fraction"], step=epoch)
                tf.summary.scalar("pruning/channels_kept", m["channels_kept"], step=epoch)
                tf.summary.scalar("pruning/macs_kept", m["macs_kept"], step=epoch)
                for name, value in mask_sparsity(_pruned_model(self.model)).items():
                    tf.summary.scalar(f"sparsity/{name}", value, step=epoch)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["PruningProgress", "UpdatePruningStep", "fit_schedule", "mask_sparsity",
           "schedule_shortfall", "warn_if_short"]
