"""Latency budgets that hold when measured again.

LiteRT timing on a shared machine drifts (this project's benchmark host: about 20% between
minutes), and a search that takes one candidate's median at face value lands, re-measured
later, above its budget about half the time. Two things make a local latency budget hold:

* **A margin from the spread measured here.** Before the search, the dense model's file is
  timed in ``rounds`` fresh rounds; the relative spread of their medians (max minus min, over
  the median; at most ``MAX_MARGIN``) is the margin, and the search aims at
  ``budget / (1 + margin)``.
* **The result measured again, interleaved, and searched again when it lands over.** The
  chosen candidate and the dense model are timed in alternating rounds; the candidate's median
  over them is reported (``remeasured``) next to the margin. When it lands over the budget, the
  machine has drifted since the candidate was measured (by ``remeasured / measured``); the search
  runs again at a target scaled down by that drift (``next_target``; the candidates already
  timed keep their cached times, so the target stays in the units they were timed in), at most
  ``RESEARCHES`` times. One still over is a warning with the numbers.

Timings from a device (``measure_latency``) are taken once per file and get neither.
"""

import statistics
import warnings

MAX_MARGIN = 0.15  # the largest margin taken (a noisier machine is reported, not followed)
RESEARCHES = 2  # searches run again after a re-measurement over the budget


def spread_margin(meter, model, rounds=5):
    """The relative spread of fresh timings of ``model``'s file: ``(margin, medians)``.

    Args:
      meter: the search's ``LatencyMeter`` (local LiteRT timing).
      model: the dense model.
      rounds: fresh timing rounds (each the median of the meter's runs).
    """
    flatbuffer = meter.convert(model)
    medians = [meter.time_file(flatbuffer) for _ in range(rounds)]
    middle = statistics.median(medians)
    return min(MAX_MARGIN, (max(medians) - min(medians)) / middle), medians


def remeasure(meter, candidate, dense, pairs=3):
    """The candidate's latency timed again in rounds alternating with the dense model's.

    Args:
      meter: the search's ``LatencyMeter``.
      candidate: the pruned model chosen (shrunk here for conversion by the caller).
      dense: the dense model.
      pairs: alternating (candidate, dense) rounds.

    Returns:
      ``(candidate ms, dense ms)``: the medians of their rounds.
    """
    files = meter.convert(candidate), meter.convert(dense)
    times = ([], [])
    for _ in range(pairs):
        for i, flatbuffer in enumerate(files):
            times[i].append(meter.time_file(flatbuffer))
    return statistics.median(times[0]), statistics.median(times[1])


def next_target(budget, margin, searched_ms, remeasured_ms):
    """The target of a search run again after a re-measurement over the budget.

    The candidate measured ``searched_ms`` during the search and ``remeasured_ms`` now: the
    machine runs ``remeasured_ms / searched_ms`` slower. Aiming at the margin's target divided by
    that drift brings the next candidate, timed at today's speed, ``margin`` under the budget.

    Args:
      budget: the budget in ms.
      margin: the search's margin (``spread_margin``).
      searched_ms: the candidate's latency as the search measured it.
      remeasured_ms: the same candidate timed again (``remeasure``), over the budget.

    Returns:
      The target in ms, in the units the search measured in; below ``searched_ms``.
    """
    return budget / (1.0 + margin) * searched_ms / remeasured_ms


def warn_overrun(remeasured_ms, dense_ms, budget, researches):
    """The warning for a result that, timed again after ``researches`` searches run again,
    still measures over ``budget``."""
    again = (f" after {researches} search(es) run again at lower targets" if researches else
             " and a search run again could not aim lower")
    warnings.warn(
        f"tfsynapse: timed again, interleaved with the dense model, the pruned model "
        f"measures {remeasured_ms:.4g} ms, over the budget of {budget:.4g} ms (dense "
        f"{dense_ms:.4g} ms in the same rounds){again}: this machine's timing drifts more than "
        "the margin measured before the search. Measure on the target device, or give a lower "
        "budget.", stacklevel=5)
