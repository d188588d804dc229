"""BatchNormalization recalibration: fresh moving statistics for a pruned model.

Pruning changes what every BatchNormalization downstream of a pruned channel sees, but its
moving mean and variance still describe the dense model; one-shot accuracy collapses for that
reason alone. ``recalibrate_batchnorm`` re-estimates them from data without touching any weight:

* every BatchNormalization runs in training mode (it normalises with the batch statistics and
  updates its moving statistics); every other layer runs in inference mode, so dropout is off
  and pruning wrappers neither advance their step nor recompute masks (their masks are applied
  as always): the statistics are those the deployed model will see;
* the moving statistics become the **average over the batches, each weighted by its
  samples** (a batch of ``n`` after ``seen`` samples gets momentum ``seen / (seen + n)``), so
  the result depends neither on the old statistics, nor on the layer's momentum, nor on a
  short last batch;
* momentum, trainability and the layer's ``call`` are restored afterwards, also on error.

It works on models wrapped by ``prune_synaptic``, stripped models and shrunk models alike.
"""

import itertools

import numpy as np

from tfsynapse.backends import backend_of, tf
from tfsynapse.graph import functional_model

DEFAULT_BATCH_SIZE = 64


def batchnorm_layers(model):
    """Every BatchNormalization of ``model``, nested models and pruning wrappers included.

    Args:
      model: a tf_keras or Keras 3 model.

    Returns:
      A list of layers, each once.
    """
    backend = backend_of(model)
    return backend.layers_of_type(model, backend.keras.layers.BatchNormalization)


def _is_array(value):
    return isinstance(value, np.ndarray) or tf.is_tensor(value)


def _arrays_of_one_length(values):
    return (isinstance(values, (tuple, list)) and len(values) > 0
            and all(_is_array(v) for v in values)
            and len({int(v.shape[0]) for v in values}) == 1)


def _input_batches(data, batch_size, n_inputs=1):
    """Yields input batches from arrays, an ``(x, y)`` tuple, a dataset or an iterable.

    Read as whole arrays (sliced into batches): an array; for a model with ``n_inputs > 1``
    inputs, a list/tuple of ``n_inputs`` arrays of one length; a **tuple** ``(x, y)`` or
    ``(x, y, sample_weight)`` of such ``x`` with ``y`` None or as long as ``x``. Anything else
    (a list of batches, a dataset, a generator) is iterated batch by batch, taking ``x`` from
    ``(x, y, ...)`` tuples and ``{"x": ...}`` dicts.
    """
    def whole(x):
        return _is_array(x) or (n_inputs > 1 and len(x) == n_inputs and _arrays_of_one_length(x)
                                if isinstance(x, (tuple, list)) else False)

    def length(x):
        return int((x if _is_array(x) else x[0]).shape[0])

    if isinstance(data, tuple) and len(data) in (2, 3) and whole(data[0]) and all(
            v is None or (_is_array(v) and int(v.shape[0]) == length(data[0]))
            for v in data[1:]):
        data = data[0]  # (x, y) or (x, y, sample_weight): only x is needed
    if whole(data):
        for start in range(0, length(data), batch_size):
            yield (data[start:start + batch_size] if _is_array(data)
                   else [v[start:start + batch_size] for v in data])
        return
    for batch in data:
        if isinstance(batch, tuple) or (isinstance(batch, list) and n_inputs == 1
                                        and not _is_array(batch)):
            batch = batch[0]
        elif isinstance(batch, dict) and "x" in batch:
            batch = batch["x"]
        yield batch


def _check_finite(batch, index):
    arrays = [v.numpy() if tf.is_tensor(v) else np.asarray(v) for v in tf.nest.flatten(batch)]
    if any(a.dtype.kind == "f" and not np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(f"batch {index} of the recalibration data holds NaN or inf values; "
                         "BatchNormalization statistics computed from it would be non-finite.")


def recalibrate_batchnorm(model, data, steps=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0):
    """Re-estimates every BatchNormalization's moving mean and variance from ``data``.

    Use it after pruning (``prune_once``, a sensitivity trial, ``shrink``) and before
    evaluating or fine-tuning: no weight changes, only the moving statistics; pruned channels
    stay exactly zero (their gamma and beta are zero).

    Args:
      model: a Keras model (tf_keras or Keras 3): wrapped by ``prune_synaptic``, stripped,
        shrunk or plain.
      data: input images: a numpy array or tensor (batched by ``batch_size``; for a
        multi-input model a list of arrays), an ``(x, y)`` tuple of those, a
        ``tf.data.Dataset`` or any iterable of batches (``x`` or ``(x, y, ...)``; a *list*
        of arrays is a list of batches).
        Use training-distribution data without augmentation; 20-50 batches are plenty.
      steps: the most batches to use (default: all of ``data``; required to be finite for an
        endless dataset).
      batch_size: the batch size for array data; batches of 1 are refused (the variance of one
        sample per channel is meaningless for convolutions with no spatial extent). Each
        batch's statistics weigh as many samples as it holds (a short last batch counts
        little).
      verbose: 1 prints one line when done.

    Returns:
      The number of batches used.

    Raises:
      TypeError / ValueError: as ``check_model``.
      ValueError: no data, non-finite data, ``steps`` below 1 or ``batch_size`` below 2.
    """
    model = functional_model(model)  # a subclassed model: its traced graph (same layers)
    backend_of(model).check_model(model)
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}.")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}.")
    layers = batchnorm_layers(model)
    if not layers:
        import warnings  # noqa: PLC0415

        warnings.warn(f"tfsynapse: model '{model.name}' has no BatchNormalization layer; "
                      "recalibrate_batchnorm has nothing to do.", stacklevel=2)
        return 0
    batches = _input_batches(data, int(batch_size), n_inputs=len(model.inputs))
    if steps is not None:
        batches = itertools.islice(batches, int(steps))
    saved = [(bn, bn.momentum, bn.trainable, bn.__dict__.get("call")) for bn in layers]
    counter = {"seen": 0, "n": 1}  # samples averaged so far, samples in this batch
    used = 0
    try:
        for bn in layers:
            bn.trainable = True  # a frozen BatchNormalization runs in inference mode
            _force_training(bn, counter)
        for used, batch in enumerate(batches, 1):
            _check_finite(batch, used)
            counter["n"] = max(1, int(tf.nest.flatten(batch)[0].shape[0] or 1))
            model(batch, training=False)
            counter["seen"] += counter["n"]
    finally:
        for bn, momentum, trainable, call in saved:
            bn.momentum = momentum
            bn.trainable = trainable
            if call is None:
                bn.__dict__.pop("call", None)
            else:
                object.__setattr__(bn, "call", call)
    if used == 0:
        raise ValueError("recalibrate_batchnorm got no data: pass images as an array, an (x, y) "
                         "tuple or a dataset of batches.")
    if verbose:
        print(f"recalibrated {len(layers)} BatchNormalization layers on {used} batches",
              flush=True)
    return used


def _force_training(bn, counter):
    """Makes ``bn`` normalise with batch statistics and average them into its moving ones."""
    original = bn.call

    def call(inputs, training=None, **kwargs):  # noqa: ARG001 - training is forced
        # a running mean over the samples seen so far: a short last batch weighs what it holds
        bn.momentum = counter["seen"] / (counter["seen"] + counter["n"])
        return original(inputs, training=True, **kwargs)

    object.__setattr__(bn, "call", call)
