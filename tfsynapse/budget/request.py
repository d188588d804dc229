"""A checked ``prune_to_budget`` request: every argument validated once, up front.

``BudgetRequest.checked(model, ...)`` takes ``prune_to_budget``'s keyword arguments and either
returns a request whose fields the search can trust, or raises with what to change; the search
(``budget/search.py``) then never re-checks an argument.
"""

import dataclasses
import itertools
import math
import numbers

from tflite_export.float_layers import requested
from tfsynapse.graph import functional_model
from tfsynapse.pruning.api import known_layer_names

CALIBRATION_STEPS = 100  # the batches one conversion reads (tflite_export.convert's default)
PRECISIONS = (None, "float16", "dynamic", "int8")
MEASURED = ("size_bytes", "latency_ms")


@dataclasses.dataclass(frozen=True)
class BudgetRequest:
    """What to prune to, and how (the fields of ``prune_to_budget``, checked).

    Attributes:
      kind: 'macs', 'params', 'size_bytes' or 'latency_ms'.
      budget: the budget in the kind's unit (an int for counts given as integers).
      threads, quantize, calibration, float_layers, measure_latency: how a measured budget
        converts and times a candidate (``float_layers``: the checked names, or None).
      criterion, sensitivity, round_to, max_pruning_ratio, ignored_layers, data: how the
        units are chosen (``round_to`` None: measured per precision for latency, else 1).
    """

    kind: str
    budget: float
    threads: int = 1
    quantize: object = None
    calibration: object = None
    float_layers: object = None
    measure_latency: object = None
    criterion: object = "l1"
    sensitivity: object = None
    round_to: object = None
    max_pruning_ratio: object = None
    ignored_layers: object = ()
    data: object = None

    @property
    def measured(self):
        """Whether the budget is measured on converted files (size, latency), not counted."""
        return self.kind in MEASURED

    @classmethod
    def checked(cls, model, *, macs=None, params=None, size_bytes=None, latency_ms=None,
                threads=1, quantize=None, representative_dataset=None, float_layers=None,
                measure_latency=None, criterion="l1", sensitivity=None, round_to=None,
                max_pruning_ratio=None, ignored_layers=(), data=None):
        """The request for ``prune_to_budget``'s arguments (see its docstring).

        Raises:
          ValueError: no budget or several; a budget that is not a finite positive number; an
            unknown precision, or one with a counted budget; int8 without calibration data;
            ``float_layers`` without an int8 measured budget or naming no layer; ``threads``
            or ``measure_latency`` without a latency budget; ``threads`` or ``round_to`` not
            an integer >= 1; ``representative_dataset`` without an int8 measured budget, or
            an exhausted iterator; ``ignored_layers`` a string or naming a layer the model
            does not have.
          TypeError: ``measure_latency`` is not callable.
        """
        kind, budget = _the_budget(macs=macs, params=params, size_bytes=size_bytes,
                                   latency_ms=latency_ms)
        if quantize not in PRECISIONS:
            raise ValueError(f"quantize must be one of None, 'float16', 'dynamic', 'int8'; got "
                             f"{quantize!r}.")
        measured = kind in MEASURED
        if quantize is not None and not measured:
            raise ValueError(f"quantize={quantize!r} only changes a size_bytes or latency_ms "
                             f"budget; {kind} do not depend on the precision.")
        if measured and quantize == "int8" and representative_dataset is None:
            raise ValueError(f"an int8 {kind} budget converts the candidates to int8, which "
                             "needs representative_dataset (a few hundred training samples).")
        if representative_dataset is not None and not (measured and quantize == "int8"):
            raise ValueError(f"representative_dataset is only read by an int8 size_bytes or "
                             f"latency_ms budget (it calibrates the candidates); this is a "
                             f"{kind} budget with quantize={quantize!r}. Drop it, or pass "
                             "quantize='int8' with a measured budget.")
        if measured and quantize == "int8":
            representative_dataset = _replayable(representative_dataset)
        if float_layers and not measured:
            raise ValueError(f"float_layers only changes a size_bytes or latency_ms budget (the "
                             f"converted file); {kind} do not depend on the precision.")
        kept_float = (requested(model, float_layers, quantize,
                                representative_dataset is not None) or None
                      if float_layers else None)
        if (threads != 1 or measure_latency is not None) and kind != "latency_ms":
            raise ValueError("threads and measure_latency only apply to a latency_ms budget.")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}.")
        if measure_latency is not None and not callable(measure_latency):
            raise TypeError("measure_latency must be a function (tflite_bytes, threads) -> ms, "
                            f"got {type(measure_latency).__name__}.")
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                     or round_to < 1):
            raise ValueError(f"round_to must be an integer >= 1 or None, got {round_to!r}.")
        ignored_layers = known_layer_names(functional_model(model), ignored_layers)
        return cls(kind=kind, budget=budget, threads=threads, quantize=quantize,
                   calibration=representative_dataset, float_layers=kept_float,
                   measure_latency=measure_latency, criterion=criterion,
                   sensitivity=sensitivity, round_to=round_to,
                   max_pruning_ratio=max_pruning_ratio, ignored_layers=ignored_layers,
                   data=data)


def _replayable(dataset):
    """A one-shot iterator (a generator) read once into a list of its first
    ``CALIBRATION_STEPS`` batches, the most one conversion reads: every candidate is then
    calibrated on the same batches. Anything else (a list, an array, a ``tf.data.Dataset``, a
    function returning batches) is returned as it is: each conversion reads it afresh."""
    try:
        one_shot = iter(dataset) is dataset
    except TypeError:  # not iterable: a function, or a type tflite_export explains
        return dataset
    if not one_shot:
        return dataset
    batches = list(itertools.islice(dataset, CALIBRATION_STEPS))
    if not batches:
        raise ValueError("representative_dataset is an exhausted iterator (it yielded no "
                         "batches); pass a list of batches, an array, a tf.data.Dataset or a "
                         "function returning batches.")
    return batches


def _the_budget(**budgets):
    given = {k: v for k, v in budgets.items() if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one budget: macs=, params=, size_bytes= or latency_ms=; "
                         f"got {sorted(given) or 'none'}.")
    (kind, value), = given.items()
    # numbers.Real admits numpy scalars (np.float32(8.0), np.int64(5_000_000)) as well
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{kind} must be a positive number, got {value!r}.")
    if kind in ("macs", "params", "size_bytes") and value < 1:
        raise ValueError(
            f"{kind}={value!r} is a count, not a fraction of the dense model: for a fraction, "
            f"pass {kind}=fraction * the dense model's count (tfsynapse.count_macs(model), "
            "tfsynapse.count_params(model), or the dense .tflite's size).")
    return kind, int(value) if isinstance(value, numbers.Integral) else float(value)
