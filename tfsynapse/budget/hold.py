"""Latency budgets that hold when measured again.

LiteRT timing on a shared machine drifts (this project's benchmark host: about 20% between
minutes), and a search that takes one candidate's median at face value lands, re-measured
later, above its budget about half the time. Two things make a local latency budget hold:

* **A margin from the spread measured here.** Before the search, the dense model's file is
  timed in ``rounds`` fresh rounds; the relative spread of their medians (max minus min, over
  the median; at most ``MAX_MARGIN``) is the margin, and the search aims at
  ``budget / (1 + margin)``.
* **The result measured again, interleaved.** The returned candidate and the dense model are
  timed in alternating rounds; the candidate's median over them is reported (``remeasured``)
  next to the margin, and a re-measurement over the budget is a warning with both numbers.

Timings from a device (``measure_latency``) are taken once per file and get neither.
"""

import statistics
import warnings

MAX_MARGIN = 0.15  # the largest margin taken (a noisier machine is reported, not followed)


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


def remeasure(meter, candidate, dense, budget, pairs=3):
    """The candidate's latency timed again in rounds alternating with the dense model's.

    Args:
      meter: the search's ``LatencyMeter``.
      candidate: the pruned model returned (shrunk here for conversion by the caller).
      dense: the dense model.
      budget: the budget in ms (a re-measurement above it is a warning).
      pairs: alternating (candidate, dense) rounds.

    Returns:
      ``(candidate ms, dense ms)``: the medians of their rounds.
    """
    files = meter.convert(candidate), meter.convert(dense)
    times = ([], [])
    for _ in range(pairs):
        for i, flatbuffer in enumerate(files):
            times[i].append(meter.time_file(flatbuffer))
    got, dense_ms = statistics.median(times[0]), statistics.median(times[1])
    if got > budget:
        warnings.warn(
            f"tfsynapse: timed again, interleaved with the dense model, the pruned model "
            f"measures {got:.4g} ms, over the budget of {budget:.4g} ms (dense {dense_ms:.4g} "
            "ms in the same rounds): this machine's timing drifts more than the margin "
            "measured before the search. Measure on the target device, or give a lower budget.",
            stacklevel=4)
    return got, dense_ms
