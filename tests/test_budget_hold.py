"""``budget.hold.hold`` on stand-ins (no model is converted or timed): every path of a local
latency budget's result timed again, searched again, kept or warned about."""

import types
import warnings

import pytest

from tfsynapse.budget import hold
from tfsynapse.budget.measured import BudgetUnreachable

BUDGET, MARGIN = 10.0, 0.05


def _found(label, measured=9.0, points=()):
    """What ``fit_measured`` returns: ``label`` the pruned model ('dense': nothing pruned)."""
    named = {"g": 0.0 if label == "dense" else 0.5}
    return (named, label), measured, 20.0, list(points), 3


class _Stand:
    """Scripted re-measurements (label -> (ms, dense ms)), margins and searches run again
    (each a found tuple, or BudgetUnreachable)."""

    def __init__(self, monkeypatch, timings, searches=(), margins=()):
        self.timings, self.searches, self.margins = timings, list(searches), list(margins)
        self.targets, self.meter = [], types.SimpleNamespace(fresh=False)
        monkeypatch.setattr(hold, "shrink", lambda model: model)
        monkeypatch.setattr(hold, "remeasure", lambda meter, model, dense: self.timings[model])
        monkeypatch.setattr(hold, "spread_margin",
                            lambda meter, dense: (self.margins.pop(0), [1.0] * 5))

    def fit(self, target, depth):
        assert self.meter.fresh and depth == 2  # every file timed afresh
        self.targets.append(target)
        result = self.searches.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def hold(self, first):
        found, got, researches, margin = hold.hold(self.meter, "dense model", BUDGET, MARGIN,
                                                   self.fit, first, lambda *a: None)
        assert not self.meter.fresh
        return found[0][1], got, researches, margin


def test_a_result_within_the_band_is_returned_as_it_is(monkeypatch):
    stand = _Stand(monkeypatch, {"a": (9.5, 20.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stand.hold(_found("a")) == ("a", 9.5, 0, MARGIN)
    assert stand.targets == []


def test_over_then_searched_again_at_the_same_target(monkeypatch):
    stand = _Stand(monkeypatch, {"a": (10.5, 21.0), "b": (9.4, 20.0)}, [_found("b")])
    assert stand.hold(_found("a")) == ("b", 9.4, 1, MARGIN)
    assert stand.targets == [pytest.approx(BUDGET / (1 + MARGIN))]


@pytest.mark.parametrize("fresh,aimed", [(0.10, MARGIN), (0.02, 0.02)])
def test_far_under_is_searched_again_with_the_smaller_margin(monkeypatch, fresh, aimed):
    """Under 90%: the spread is measured again; the search aims by the smaller of the two
    margins (a larger one would aim further under a result already too far under)."""
    stand = _Stand(monkeypatch, {"a": (8.0, 18.0), "b": (9.6, 18.0)}, [_found("b")], [fresh])
    assert stand.hold(_found("a")) == ("b", 9.6, 1, aimed)
    assert stand.targets == [pytest.approx(BUDGET / (1 + aimed))]


def test_a_search_that_finds_nothing_is_counted_and_the_last_result_kept(monkeypatch):
    """Over, then the search run again finds nothing under the target: one search ran again
    (the warning and the count say so), the result and its margin are the first search's."""
    stand = _Stand(monkeypatch, {"a": (10.5, 21.0)}, [BudgetUnreachable("none")])
    with pytest.warns(UserWarning, match=r"over the budget of 10 ms .* after 1 search\(es\) "
                                         r"run again .* the last of which found nothing"):
        assert stand.hold(_found("a")) == ("a", 10.5, 1, MARGIN)


def test_far_under_then_nothing_found_keeps_the_first_margin(monkeypatch):
    stand = _Stand(monkeypatch, {"a": (8.0, 18.0)}, [BudgetUnreachable("none")], [0.01])
    with pytest.warns(UserWarning, match=r"80% of the budget .* after 1 search\(es\) run "
                                         r"again .* \(aimed 5.0% under the budget\)"):
        assert stand.hold(_found("a")) == ("a", 8.0, 1, MARGIN)


def test_the_dense_model_found_again_is_returned_only_when_it_timed_within_the_budget(
        monkeypatch):
    """Far under, and the search run again finds the dense model under its target: the dense
    model timed 13 ms interleaved just before, over the budget, so the earlier result stays.
    Over, and the dense model timed 9.8 ms: the dense model is returned (nothing pruned)."""
    stand = _Stand(monkeypatch, {"a": (8.0, 13.0)}, [_found("dense")], [0.05])
    with pytest.warns(UserWarning, match="80% of the budget"):
        assert stand.hold(_found("a")) == ("a", 8.0, 1, MARGIN)
    stand = _Stand(monkeypatch, {"a": (10.2, 9.8)}, [_found("dense")])
    assert stand.hold(_found("a")) == ("dense", None, 1, MARGIN)


def test_far_under_names_the_closest_configuration_over_the_target(monkeypatch):
    """Two searches run again, each far under: the one re-measured closest under the budget is
    returned, and the warning names the closest configuration its search measured over its
    target (coarse configurations)."""
    points = [(100, 20.0, 20.0), (40, 7.0, 7.0), (70, 12.0, 11.0), (60, 10.1, 9.0)]
    stand = _Stand(monkeypatch, {"a": (7.0, 20.0), "b": (8.5, 20.0), "c": (6.0, 20.0)},
                   [_found("b", points=points), _found("c")], [0.05, 0.05])
    with pytest.warns(UserWarning, match=r"85% of the budget .* its search measured over its "
                                         r"target of 9.524 ms took 10.1 ms \(101% of the "
                                         r"budget\).* a finer round_to"):
        assert stand.hold(_found("a")) == ("b", 8.5, 2, MARGIN)
