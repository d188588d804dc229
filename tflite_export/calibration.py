"""Calibration data for full-integer (int8) conversion: accept what users have, check it early.

The TFLite calibrator is strict in ways that fail late and obscurely: it fixes the input shapes
from the first sample (a smaller last batch then fails with a kernel error), it reads a tuple
as ``(signature_key, dict)`` (so a ``tf.data`` dataset of ``(x, y)`` pairs breaks), and it
matches lists to inputs by position. ``Calibration`` normalises every batch to a list of numpy
arrays in the Keras input order, checks it against the model's input shapes, and feeds the
converter one sample at a time (batch 1), so batches of any size work.
"""

import itertools

import numpy as np

from tfsynapse.backends import backend_of, tf

_HOW_TO = (
    "Pass representative_dataset= as a function returning an iterable of input batches "
    "(e.g. `lambda: (x[i:i + 8] for i in range(0, 256, 8))`), a list or generator of batches, "
    "a tf.data.Dataset of batches, or a numpy array of samples (N, ...) with the model's input "
    "shape. Use a few hundred real (or realistic) samples: the int8 ranges come from them."
)


class CalibrationDataError(ValueError):
    """The representative dataset does not fit the model (count, shape or type of inputs)."""


class Calibration:
    """Validated, replayable calibration batches for one model.

    Args:
      model: the tf_keras model being converted.
      representative_dataset: see ``tflite_export.convert``.
      steps: at most this many batches are drawn from the dataset (for a bare numpy array:
        this many samples).

    Raises:
      ValueError: no dataset was given, it is empty, or its first batch does not fit the model.
      TypeError: the dataset is of a type that cannot be iterated.
    """

    def __init__(self, model, representative_dataset, steps=100):
        if representative_dataset is None:
            raise ValueError(
                "quantize='int8' (full-integer quantization) needs calibration data to choose "
                "the int8 ranges of activations, but representative_dataset is None. " + _HOW_TO
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"calibration_steps must be an int >= 1, got {steps!r}.")
        self._names = backend_of(model).input_names(model)
        self._shapes = [tuple(t.shape) for t in model.inputs]
        self._dtypes = [np.dtype(tf.as_dtype(t.dtype).as_numpy_dtype) for t in model.inputs]
        self._steps = steps
        self._source = representative_dataset
        self._one_shot_cache = None
        if isinstance(representative_dataset, np.ndarray) and \
                representative_dataset.dtype.kind == "f":
            bad = int(np.sum(~np.isfinite(representative_dataset)))
            if bad:  # refused before conversion, not halfway through calibration
                raise CalibrationDataError(
                    f"representative_dataset holds {bad} NaN or inf values; int8 ranges "
                    "calibrated on them would be meaningless. Clean the data first.")
        first_iter = self._fresh_iterator()
        try:
            first = next(first_iter)
        except StopIteration:
            raise ValueError("representative_dataset yielded no batches. " + _HOW_TO) from None
        self._first = self._normalise(first, index=0)
        self._first_iter = first_iter

    def _fresh_iterator(self):
        source = self._source
        if isinstance(source, (str, bytes)):
            kind = type(source).__name__
            raise TypeError(f"representative_dataset cannot be a {kind}. " + _HOW_TO)
        if isinstance(source, np.ndarray):
            if len(self._shapes) == 1 and source.ndim == len(self._shapes[0]):
                return (source[i : i + 1] for i in range(len(source)))  # N samples
            return iter([source])  # one batch; _normalise explains a mismatch
        if isinstance(source, tf.data.Dataset):
            return iter(source)
        replayable = callable(source)
        if replayable:
            source = source()
        try:
            iterator = iter(source)
        except TypeError:
            raise TypeError(
                f"representative_dataset gave a {type(source).__name__}, which is not "
                "iterable. " + _HOW_TO
            ) from None
        if iterator is source and not replayable and self._one_shot_cache is None:
            self._one_shot_cache = []  # a generator: remember what it yields for a replay
        return iterator

    def _normalise(self, batch, index):
        """Returns ``batch`` as a list of arrays in Keras input order, or raises."""
        count = len(self._names)
        if isinstance(batch, dict):
            missing = [n for n in self._names if n not in batch]
            if missing:
                raise CalibrationDataError(
                    f"Calibration batch {index} is a dict without the model input(s) {missing}; "
                    f"its keys must be the model's input names {self._names}."
                )
            arrays = [batch[n] for n in self._names]
        elif isinstance(batch, (list, tuple)):
            arrays = list(batch)
        elif count == 1:
            arrays = [batch]
        else:
            raise CalibrationDataError(
                f"The model has {count} inputs {self._names}, so each calibration batch must be "
                f"a list of {count} arrays (in that order) or a dict keyed by input name; "
                f"batch {index} is a {type(batch).__name__}."
            )
        if len(arrays) != count:
            raise CalibrationDataError(
                f"Calibration batch {index} holds {len(arrays)} arrays but the model has {count} "
                f"input(s) {self._names}. If your dataset yields (inputs, labels) pairs, drop the "
                "labels, e.g. `dataset.map(lambda x, y: x)`."
            )
        result = []
        for name, shape, dtype, value in zip(self._names, self._shapes, self._dtypes, arrays):
            try:
                array = np.asarray(value, dtype=dtype)
            except (TypeError, ValueError) as err:
                raise CalibrationDataError(
                    f"Calibration batch {index} for input {name!r} cannot be read as a {dtype} "
                    f"array: {err}"
                ) from None
            fits = array.ndim == len(shape) and array.shape[0] >= 1 and all(
                want is None or want == got for want, got in zip(shape[1:], array.shape[1:])
            )
            if not fits:
                raise CalibrationDataError(_shape_message(index, name, array.shape, shape))
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise CalibrationDataError(
                    f"Calibration batch {index} for input {name!r} holds NaN or inf values "
                    f"({int(np.sum(~np.isfinite(array)))} of {array.size}); int8 ranges "
                    "calibrated on them would be meaningless. Clean the data first.")
            result.append(array)
        if len({a.shape[0] for a in result}) > 1:
            raise CalibrationDataError(
                f"Calibration batch {index} mixes batch sizes across inputs: "
                f"{[a.shape for a in result]}."
            )
        return result

    def _batches(self):
        """Yields normalised batches: the first (already read), then up to ``steps`` in all."""
        if self._first_iter is not None:
            iterator = itertools.chain([self._first], self._first_iter)
            self._first_iter = None
            cache = self._one_shot_cache
            for index, batch in enumerate(itertools.islice(iterator, self._steps)):
                arrays = batch if index == 0 else self._normalise(batch, index)
                if cache is not None:
                    cache.append(arrays)
                yield arrays
        elif self._one_shot_cache is not None:
            yield from self._one_shot_cache
        else:
            iterator = itertools.islice(self._fresh_iterator(), self._steps)
            for index, batch in enumerate(iterator):
                yield self._normalise(batch, index)

    def samples(self, as_dict=False):
        """Yields one calibration sample (batch of 1) at a time, as the TFLite calibrator wants.

        Every call starts from the beginning of the data (a plain generator given by the user is
        replayed from what it yielded the first time).

        Args:
          as_dict: yield ``{input_name: array}`` instead of a list in Keras input order.

        Yields:
          A list (or dict) of float arrays with batch dimension 1.
        """
        for arrays in self._batches():
            for i in range(arrays[0].shape[0]):
                sample = [a[i : i + 1] for a in arrays]
                yield dict(zip(self._names, sample)) if as_dict else sample


def _shape_message(index, name, got, want):
    """Names the real mismatch; suggests ``x[None]`` only for a sample without a batch axis."""
    got, want = tuple(got), tuple(want)
    head = (f"Calibration batch {index} for input {name!r} has shape {got}, but the model "
            f"expects {want} (the first, batch dimension may be any size >= 1)")
    sample = len(got) == len(want) - 1 and all(w is None or w == g
                                               for w, g in zip(want[1:], got))
    if sample:
        return head + ": this looks like one sample without its batch axis; pass x[None]."
    if len(got) != len(want):
        return head + f": {len(got)} dimensions instead of {len(want)}."
    wrong = [f"dimension {i} is {g}, not {w}" for i, (w, g) in enumerate(zip(want, got))
             if i > 0 and w is not None and w != g]
    if not wrong and got and got[0] < 1:
        wrong = ["the batch is empty"]
    return head + ": " + "; ".join(wrong) + "."

