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
* **The result measured again, interleaved, and searched again when it lands outside
  [LOW, 1] x budget.** The chosen candidate and the dense model are timed in alternating
  rounds; the candidate's median over them is reported (``remeasured``) next to the margin.
  - Over the budget: the machine has drifted slower since the candidates were timed, and their
    cached times are stale: the search runs again at the same target with every file timed
    afresh (the meter's ``fresh``). A drift that lasted leads it to a smaller model; a passing
    spike to the same one, now timed under.
  - Under ``LOW`` x budget: accuracy given away. Either the machine runs faster than when the
    candidates were timed, or the margin came from a burst of noise (one slow round among five
    makes a 9% margin). The margin is measured again and the search runs again, every file
    timed afresh, to the budget less the new margin.
  At most ``RESEARCHES`` searches run again. A result re-measured within the budget is never
  traded for one that lands over it or further under: when the last search's result does,
  the earlier result re-measured closest under the budget is returned. One still over, or
  still far under, is a warning with the numbers.

Timings from a device (``measure_latency``) are taken once per file and get neither.
"""

import statistics
import warnings

from tfsynapse.budget.alignment import interleaved
from tfsynapse.budget.measured import BudgetUnreachable
from tfsynapse.surgery import shrink

MIN_MARGIN = 0.02  # the smallest margin taken (a burst of timings misses minutes of drift)
MAX_MARGIN = 0.15  # the largest margin taken (a noisier machine is reported, not followed)
RESEARCHES = 2  # searches run again after a re-measurement outside [LOW, 1] x budget
LOW = 0.9  # a re-measured result under this fraction of its budget is searched again


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


def hold(meter, dense, budget, margin, fit, found, say):
    """A local latency budget's result timed again interleaved with the dense model, and
    searched again with every file timed afresh while it lands outside ``[LOW, 1]`` x budget.

    Args:
      meter: the search's ``LatencyMeter``.
      dense: the dense model.
      budget: the user's budget, ms.
      margin: the margin the search aimed under the budget by (``spread_margin``).
      fit: ``fit(target, depth)``: the measured search (``fit_measured``'s return value).
      found: what the first search returned.
      say: a print function for progress.

    Returns:
      ``(found, remeasured ms, researches, margin)``: what the search that found the returned
      model returned (its points are that search's), its re-measured latency (None when
      nothing was pruned), how many searches ran again, and the margin that search aimed by.
    """
    kept = None  # (found, ms, margin, dense ms): the result re-measured closest under budget
    last, researches, stopped = None, 0, False  # last: the same, of the last result timed
    while True:
        (named, pruned), measured = found[0], found[1]
        if not any(named.values()):  # nothing pruned: the dense model fit the search's target
            if last is None or last[3] <= budget:
                return found, None, researches, margin
            # timed interleaved just before, the dense model measured over the budget
            say(f"prune_to_budget: the search run again found the dense model under its "
                f"target, but it timed {last[3]:.4g} ms interleaved, over the budget of "
                f"{budget:.4g} ms; keeping the earlier result")
            found, got, margin, dense_ms = kept or last
            break
        got, dense_ms = remeasure(meter, shrink(pruned), dense)
        last = (found, got, margin, dense_ms)
        if got <= budget and (kept is None or got > kept[1]):
            kept = last
        if LOW * budget <= got <= budget or researches == RESEARCHES:
            break
        aim = margin
        if got > budget:
            say(f"prune_to_budget: timed again, {got:.4g} ms is over the budget of "
                f"{budget:.4g} ms (searched at {measured:.4g} ms): the machine drifted; "
                f"searching again to {budget / (1 + aim):.4g} ms with every file timed afresh")
        else:  # a fresh margin, never a larger one: this result already lies too far under
            aim = min(margin, spread_margin(meter, dense)[0])
            say(f"prune_to_budget: timed again, {got:.4g} ms is {got / budget:.1%} of the budget "
                f"of {budget:.4g} ms (searched at {measured:.4g} ms, aimed {margin:.1%} under "
                f"it): the dense model's spread measured again; searching again to "
                f"{budget / (1 + aim):.4g} ms ({aim:.1%} under) with every file timed afresh")
        researches += 1
        meter.fresh = True
        try:
            found, margin = fit(budget / (1 + aim), 2), aim
        except BudgetUnreachable:  # keep the last result, and say so below
            stopped = True
            break
        finally:
            meter.fresh = False
    if kept is not None and (got > budget or got < kept[1]):  # an earlier result fit better
        say(f"prune_to_budget: the last result timed {got:.4g} ms against the budget of "
            f"{budget:.4g} ms; returning an earlier one, timed {kept[1]:.4g} ms")
        found, got, margin, dense_ms = kept
    if got > budget:
        warn_overrun(got, dense_ms, budget, researches, stopped)
    elif got < LOW * budget:
        _warn_far_under(found, got, dense_ms, budget, researches, margin)
    return found, got, researches, margin


def _warn_far_under(found, got, dense_ms, budget, researches, margin):
    """The warning for a result that, timed again, still measures under ``LOW`` x budget; with
    the closest configuration its search measured over its target, when there is one."""
    target = budget / (1 + margin)
    over = [(cost, ms) for cost, ms, *_ in found[3] if ms > target]
    closest = "" if not over else (
        f" The closest configuration its search measured over its target of {target:.4g} ms "
        f"took {min(over)[1]:.4g} ms ({min(over)[1] / budget:.0%} of the budget): "
        "configurations are coarse here, and a finer round_to may get closer.")
    warnings.warn(
        f"tfsynapse: timed again, interleaved with the dense model, the pruned model "
        f"measures {got:.4g} ms, {got / budget:.0%} of the budget of {budget:.4g} ms (dense "
        f"{dense_ms:.4g} ms in the same rounds), after {researches} search(es) run again "
        f"with every file timed afresh (aimed {margin:.1%} under the budget): a larger model "
        f"would likely fit.{closest} Measure on the target device for a tighter fit.",
        stacklevel=6)


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
        "budget.", stacklevel=6)
