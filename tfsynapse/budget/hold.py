"""Latency budgets that hold when measured again.

LiteRT timing on a shared machine drifts (this project's benchmark host: about 20% between
minutes), and a search that takes one candidate's median at face value lands, re-measured
later, above its budget about half the time. Two things make a local latency budget hold:

* **A margin from the spread measured here.** Before the search, the dense model's file is
  timed in ``rounds`` fresh rounds; the relative spread of their medians (max minus min, over
  the median; at least ``MIN_MARGIN``, at most ``MAX_MARGIN``) is the margin, and the search
  aims at ``budget / (1 + margin)``. The floor: five timings in a row see the noise of seconds,
  not the drift of the minutes that follow (MobileNetV2 rows at one thread, re-measured a
  minute later, moved by -5% to +1.4% while their bursts spread 0.4-4.6%).
* **The result measured again, interleaved, and searched again when it lands over.** The
  chosen candidate and the dense model are timed in alternating rounds; the candidate's median
  over them is reported (``remeasured``) next to the margin. When it lands over the budget, the
  machine has drifted since the candidates were timed, and their cached times are stale: the
  search runs again at the same target with every file timed afresh (the meter's ``fresh``),
  at most ``RESEARCHES`` times. A drift that lasted leads it to a smaller model; a passing
  spike to the same one, now timed under. One still over is a warning with the numbers.

Timings from a device (``measure_latency``) are taken once per file and get neither.
"""

import statistics
import warnings

from tfsynapse.budget.alignment import interleaved

MIN_MARGIN = 0.02  # the smallest margin taken (a burst of timings misses minutes of drift)
MAX_MARGIN = 0.15  # the largest margin taken (a noisier machine is reported, not followed)
RESEARCHES = 2  # searches run again after a re-measurement over the budget


def spread_margin(meter, model, rounds=5):
    """The relative spread of fresh timings of ``model``'s file, within ``[MIN_MARGIN,
    MAX_MARGIN]``: ``(margin, medians)``.

    Args:
      meter: the search's ``LatencyMeter`` (local LiteRT timing).
      model: the dense model.
      rounds: fresh timing rounds (each the median of the meter's runs).
    """
    flatbuffer = meter.convert(model)
    medians = [meter.time_file(flatbuffer) for _ in range(rounds)]
    middle = statistics.median(medians)
    return min(MAX_MARGIN, max(MIN_MARGIN, (max(medians) - min(medians)) / middle)), medians


def remeasure(meter, candidate, dense, pairs=3):
    """The candidate's latency timed again in rounds alternating with the dense model's.

    Args:
      meter: the search's ``LatencyMeter``.
      candidate: the pruned model chosen, shrunk.
      dense: the dense model.
      pairs: alternating (candidate, dense) rounds.

    Returns:
      ``(candidate ms, dense ms)``: the medians of their rounds.
    """
    medians = interleaved(meter.time_file, rounds=pairs)(
        {"candidate": meter.convert(candidate), "dense": meter.convert(dense)})
    return medians["candidate"], medians["dense"]


def warn_overrun(remeasured_ms, dense_ms, budget, researches, stopped=False):
    """The warning for a result that, timed again after ``researches`` searches run again,
    still measures over ``budget`` (``stopped``: the last search run again found nothing under
    the target)."""
    again = f" after {researches} search(es) run again with every file timed afresh"
    if stopped:
        again += ", the last of which found nothing under the target"
    warnings.warn(
        f"tfsynapse: timed again, interleaved with the dense model, the pruned model "
        f"measures {remeasured_ms:.4g} ms, over the budget of {budget:.4g} ms (dense "
        f"{dense_ms:.4g} ms in the same rounds){again}: this machine's timing drifts more than "
        "the margin measured before the search. Measure on the target device, or give a lower "
        "budget.", stacklevel=5)
