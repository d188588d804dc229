"""Latency budgets on both Keras: searches over measured candidates (a stand-in device, and
LiteRT timed here for real), the LiteRT timing cache, round_to=None and the guided search."""

import json

import numpy as np
import pytest

import tflite_export
import tfsynapse
from budget_support import (bytes_as_latency, fake_files, model,  # noqa: F401 (fixtures)
                            sensitivity_table)
from conftest import both_backends, keras_of, rand_inputs, randomize_bn, sequential_model

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


def test_latency_budgets_search_measured_candidates(model, tmp_path, backend, fake_files):
    dense = bytes_as_latency(tflite_export.convert(model), 1)
    pruned, report = tfsynapse.prune_to_budget(model, latency_ms=0.8 * dense,
                                               measure_latency=bytes_as_latency, round_to=1,
                                               return_report=True)
    small = tfsynapse.shrink(pruned)
    assert bytes_as_latency(tflite_export.convert(small), 1) == report.measured <= 0.8 * dense
    assert report.kind == "latency_ms" and report.dense == dense and len(report.points) >= 3
    assert report.points[0][:2] == (tfsynapse.count_macs(model), dense)  # MACs, measured
    path = report.plot(str(tmp_path / "search.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="returned -1"):
        tfsynapse.prune_to_budget(model, latency_ms=1.0, measure_latency=lambda f, t: -1)
    with pytest.raises(ValueError, match=r"cannot be met: the most-pruned model measures"):
        tfsynapse.prune_to_budget(model, latency_ms=1e-6, measure_latency=bytes_as_latency,
                                  round_to=1)


def test_litert_latency_is_measured_here_and_cached_by_file_and_threads(model, tmp_path,
                                                                        monkeypatch, backend):
    from tfsynapse.budget.meter import LatencyCache  # noqa: PLC0415

    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))
    x = rand_inputs(model)
    with pytest.warns(UserWarning, match="already meets the latency_ms budget of 1e\\+04 ms"):
        pruned, report = tfsynapse.prune_to_budget(model, latency_ms=1e4, threads=2, data=x,
                                                   return_report=True)
    assert report.ratios and set(report.ratios.values()) == {0.0}  # dense fits: unpruned
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), atol=1e-6)
    entries = json.loads((tmp_path / "cache" / "latency.json").read_text())
    (key, value), = entries.items()
    flatbuffer = tflite_export.convert(model)
    assert key == LatencyCache.key(flatbuffer, 2) != LatencyCache.key(flatbuffer, 1)
    assert value == report.dense > 0
    cache = LatencyCache()
    assert cache.get(key) == value and cache.hits == 1
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    timed = []  # a device: nothing on disk, but one search times the same file once
    device = budget_meter.latency(None, None, 2, lambda f, t: timed.append(t) or 1.5)
    assert device(model) == device(model) == 1.5 and timed == [2] and device.cache is None
    # another machine (CPU, cores, LiteRT) sharing the cache folder does not reuse the timing
    monkeypatch.setattr(budget_meter, "machine_tag", lambda: "another machine")
    assert LatencyCache.key(flatbuffer, 2) != key and cache.get(LatencyCache.key(flatbuffer, 2)) \
        is None
    (tmp_path / "cache" / "latency.json").write_text("{not json")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert LatencyCache().get(key) is None


def _compute_bound(K):
    """Two 64-filter 3x3 convolutions at 32x32 (47M MACs, about 1 ms in LiteRT here): their
    MACs, not the interpreter's fixed cost, set the time (the small CNN's 0.1 ms barely moves
    when it is pruned)."""
    L = K.layers
    return randomize_bn(sequential_model(
        (32, 32, 16), L.Conv2D(64, 3, padding="same", name="c1"), L.BatchNormalization(name="bn1"),
        L.ReLU(name="r1"), L.Conv2D(64, 3, padding="same", name="c2"), L.ReLU(name="r2"),
        L.GlobalAveragePooling2D(name="gap"), L.Dense(5, name="head")))


def test_a_latency_budget_timed_by_litert_here_is_met_by_its_own_measurement(tmp_path,
                                                                            monkeypatch, backend):
    """No stand-in: every candidate is converted and timed by LiteRT on this machine (one
    thread, three rounds each); the budget, 60% of the dense time, lies far above the most
    pruned model's (about 5% of it), so the search meets it by its own measurement."""
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))  # nothing timed before
    model = _compute_bound(keras_of(backend))
    dense = budget_meter.latency(None, None, 1)(model)
    pruned, report = tfsynapse.prune_to_budget(model, latency_ms=0.6 * dense, threads=1,
                                               round_to=1, return_report=True)
    assert report.kind == "latency_ms" and report.budget == 0.6 * dense
    # aimed under the budget by the spread of the dense model's timings, then timed again
    assert 0.0 <= report.margin <= 0.15
    assert report.measured <= report.budget / (1.0 + report.margin) * (1 + 1e-9)
    assert report.remeasured > 0 and "timed again, interleaved with dense" in report.table()
    assert len(report.points) >= 3, report.points  # the dense model and two candidates at least
    assert all(ms > 0 for _, ms, *_ in report.points)
    assert report.dense == pytest.approx(dense, rel=0.5)  # the same model, timed again
    small = tfsynapse.shrink(pruned)
    assert tfsynapse.count_macs(small) < 0.9 * tfsynapse.count_macs(model)
    assert len(json.loads((tmp_path / "cache" / "latency.json").read_text())) >= 3


def test_a_machine_that_slows_down_after_the_search_gets_a_search_timed_afresh(tmp_path,
                                                                              monkeypatch,
                                                                              backend):
    """The machine runs 2x slower from the first re-measurement on: the result lands over the
    budget, the search runs again with every file timed afresh (no cached time of the faster
    machine), and returns a smaller model that fits the target at the new speed; the report
    says so. LiteRT times every candidate for real."""
    from tfsynapse.budget import hold  # noqa: PLC0415
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))
    model = _compute_bound(keras_of(backend))
    budget = 0.6 * budget_meter.latency(None, None, 1)(model)
    real_time, real_remeasure = budget_meter.LatencyMeter.time_file, hold.remeasure
    slow, remeasured, fresh_timings = [1.0], [], []

    def time_file(meter, flatbuffer):
        if meter.fresh:
            fresh_timings.append(len(flatbuffer))
        return real_time(meter, flatbuffer) * slow[0]

    def remeasure(meter, candidate, dense, pairs=3):
        slow[0] = 2.0  # from here on
        got, dense_ms = real_remeasure(meter, candidate, dense, pairs)
        remeasured.append((tfsynapse.count_macs(candidate), got))
        return got, dense_ms

    real_convert, converted = tflite_export.convert, []

    def convert(keras_model, *args, **kwargs):
        converted.append(keras_model.count_params())
        return real_convert(keras_model, *args, **kwargs)

    monkeypatch.setattr(budget_meter.LatencyMeter, "time_file", time_file)
    monkeypatch.setattr(hold, "remeasure", remeasure)
    monkeypatch.setattr(tflite_export, "convert", convert)
    _, report = tfsynapse.prune_to_budget(model, latency_ms=budget, threads=1, round_to=1,
                                          return_report=True)
    # the dense file is converted once, then reused: timed for the search, the margin, each
    # search run again and each interleaved re-measurement; and so is every candidate (the
    # most pruned one in each search, the result timed again)
    assert converted.count(model.count_params()) == 1, converted
    assert len(converted) == len(set(converted)), converted
    assert remeasured[0][1] > budget and report.researches >= 1
    assert len(remeasured) == report.researches + 1
    assert len(fresh_timings) >= 9  # dense, most pruned and a candidate, three rounds each
    assert report.measured <= budget / (1.0 + report.margin) * (1 + 1e-9)  # at today's speed
    assert remeasured[-1][0] < remeasured[0][0]  # a smaller model than the first result
    # the last result, or (when it landed outside the band) the one re-measured closest under
    assert report.remeasured in [got for _, got in remeasured[1:]]
    assert report.remeasured <= budget
    assert f"searched again {report.researches} time(s)" in report.table()


def _scripted_remeasure(monkeypatch, hold, budget, fractions):
    """``hold.remeasure`` replaced: the n-th re-measurement returns ``fractions[n]`` x budget
    (the last fraction from then on); returns the MACs of each candidate re-measured."""
    candidates = []

    def remeasure(meter, candidate, dense, pairs=3):
        candidates.append(tfsynapse.count_macs(candidate))
        return fractions[min(len(candidates), len(fractions)) - 1] * budget, 2.0 * budget

    monkeypatch.setattr(hold, "remeasure", remeasure)
    return candidates


def test_a_result_timed_again_far_under_the_budget_is_searched_again_with_a_fresh_margin(
        tmp_path, monkeypatch, backend):
    """The result re-measures at 70% of the budget (the machine sped up, or the margin came
    from a burst): the dense model's spread is measured again and the search runs again with
    every file timed afresh; the second result, re-measured at 95%, is returned."""
    from tfsynapse.budget import hold  # noqa: PLC0415
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))
    model = _compute_bound(keras_of(backend))
    budget = 0.6 * budget_meter.latency(None, None, 1)(model)
    candidates = _scripted_remeasure(monkeypatch, hold, budget, [0.7, 0.95])
    real_spread, spreads = hold.spread_margin, []

    def spread_margin(meter, dense, rounds=5):
        spreads.append(rounds)
        return real_spread(meter, dense, rounds)

    monkeypatch.setattr(hold, "spread_margin", spread_margin)
    _, report = tfsynapse.prune_to_budget(model, latency_ms=budget, threads=1, round_to=1,
                                          return_report=True)
    assert len(spreads) == 2 and report.researches == 1 and len(candidates) == 2
    assert report.remeasured == 0.95 * budget
    assert report.measured <= budget / (1.0 + report.margin) * (1 + 1e-9)
    assert "searched again 1 time(s), every file timed afresh, after landing outside " \
           "[90%, 100%]" in report.table()


@pytest.mark.parametrize("fractions,returned", [((0.7, 1.2), 0), ((0.7, 0.8, 0.6), 1)])
def test_a_result_within_the_budget_is_never_traded_for_a_worse_one(tmp_path, monkeypatch,
                                                                    backend, fractions,
                                                                    returned):
    """Re-measured at 70% (searched again), then over the budget twice: the first result, the
    only one that fit, is returned. At 70%, 80%, then 60%: the second. Either lies far under
    the budget: a warning says so."""
    from tfsynapse.budget import hold  # noqa: PLC0415
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))
    model = _compute_bound(keras_of(backend))
    budget = 0.6 * budget_meter.latency(None, None, 1)(model)
    candidates = _scripted_remeasure(monkeypatch, hold, budget, fractions)
    share = round(100 * fractions[returned])
    with pytest.warns(UserWarning, match=rf"measures .* {share}% of the budget .* after 2 "
                                         r"search\(es\) run again") as record:
        pruned, report = tfsynapse.prune_to_budget(model, latency_ms=budget, threads=1,
                                                   round_to=1, return_report=True)
    assert len(candidates) == 3 and report.researches == 2
    assert report.remeasured == fractions[returned] * budget
    assert tfsynapse.count_macs(tfsynapse.shrink(pruned)) == candidates[returned]
    # the margin and the measurement of the search that found it
    assert report.measured <= budget / (1.0 + report.margin) * (1 + 1e-9)
    assert not [w for w in record if "over the budget" in str(w.message)]
    ours = [w for w in record if str(w.message).startswith("tfsynapse")]
    assert all(w.filename == __file__ for w in ours), [(w.filename, w.lineno) for w in ours]


def test_a_result_still_over_after_the_searches_run_again_is_a_warning_at_the_callers_line(
        tmp_path, monkeypatch, backend):
    """Every re-measurement lands over the budget: the search runs again twice (the cap), then
    warns with the numbers; every tfsynapse warning points at the caller's line."""
    from tfsynapse.budget import hold  # noqa: PLC0415
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))
    model = _compute_bound(keras_of(backend))
    budget = 0.6 * budget_meter.latency(None, None, 1)(model)
    calls = []

    def always_over(meter, candidate, dense, pairs=3):
        calls.append(tfsynapse.count_macs(candidate))
        return 1.2 * budget, 2.0 * budget

    monkeypatch.setattr(hold, "remeasure", always_over)
    with pytest.warns(UserWarning, match=r"over the budget of .* after 2 search\(es\) run "
                                         "again") as record:
        _, report = tfsynapse.prune_to_budget(model, latency_ms=budget, threads=1, round_to=1,
                                              return_report=True)
    assert report.researches == hold.RESEARCHES == 2 and len(calls) == 3
    assert report.remeasured == 1.2 * budget
    ours = [w for w in record if str(w.message).startswith("tfsynapse")]
    assert ours and all(w.filename == __file__ for w in ours), [(w.filename, w.lineno)
                                                                for w in ours]


def test_round_to_none_never_picks_a_multiple_that_cannot_meet_the_budget(model, capsys, backend,
                                                                          fake_files):
    """A machine where larger models run faster per MAC makes round_to=16 (nothing of this
    model's 8- and 12-channel groups can go) the fastest per MAC; the budget stays reachable."""

    def sublinear(flatbuffer, threads):
        return (len(flatbuffer) / 1000.0) ** 0.5 / threads

    dense = sublinear(tflite_export.convert(model), 1)
    _, report = tfsynapse.prune_to_budget(model, latency_ms=0.8 * dense, verbose=True,
                                          measure_latency=sublinear, return_report=True)
    assert report.alignment[16][2] < report.alignment[1][2]  # 16 measured fastest per MAC
    assert report.round_to < 16 and report.measured <= 0.8 * dense
    assert "round_to=16 left out: its most pruned configuration keeps" in capsys.readouterr().out


def test_a_latency_budget_with_round_to_none_keeps_the_measured_multiple(model, backend,
                                                                         fake_files):
    dense = bytes_as_latency(tflite_export.convert(model), 1)
    pruned, report = tfsynapse.prune_to_budget(model, latency_ms=0.8 * dense,
                                               measure_latency=bytes_as_latency,
                                               return_report=True)
    assert report.round_to in (1, 4, 8, 16) and sorted(report.alignment) == [1, 4, 8, 16]
    assert f"round_to={report.round_to}" in report.table()
    dense_widths = {lay.name: lay.filters for lay in model.layers if getattr(lay, "filters", None)}
    small = tfsynapse.shrink(pruned)
    for layer in small.layers:
        if getattr(layer, "filters", None) and layer.filters < dense_widths[layer.name]:
            assert layer.filters % report.round_to == 0, (layer.name, layer.filters)
    with pytest.raises(ValueError, match="round_to must be an integer >= 1 or None"):
        tfsynapse.prune_to_budget(model, macs=1e5, round_to=0)


def test_a_guided_latency_budget_spends_predicted_milliseconds(model, backend, fake_files):
    dense = bytes_as_latency(tflite_export.convert(model), 1)
    pruned, report = tfsynapse.prune_to_budget(
        model, latency_ms=0.8 * dense, measure_latency=bytes_as_latency, round_to=1,
        sensitivity=sensitivity_table(model, "c3"), return_report=True)
    assert report.allocation == "sensitivity" and report.latency_model is not None
    assert report.measured <= 0.8 * dense
    assert bytes_as_latency(tflite_export.convert(tfsynapse.shrink(pruned)), 1) == \
        report.measured
    assert report.points[0][0] == pytest.approx(report.latency_model.predict(
        tfsynapse.count_macs(model), tfsynapse.graph.count_activations(model)))
    assert "latency model: ms = " in report.table()
