"""The budget search's inner steps, which only read counts and times (Keras-independent: run
once, on tf_keras): the greedy allocation, uniform fill, the measured search's bisection on
stand-in configurations, round_to=None's choice, the latency model, recalibration of the
returned model only, and the command line's --target-size."""

import warnings

import numpy as np
import pytest

import tflite_export
import tfsynapse
from budget_support import model, solver_of  # noqa: F401 (a fixture)
from conftest import rand_inputs


def test_only_the_returned_model_is_recalibrated(model, monkeypatch):
    """A measured search prunes several candidates; their sizes do not depend on the BN
    statistics, so only the returned model is recalibrated on ``data`` (once)."""
    from tfsynapse.pruning import api  # noqa: PLC0415
    from tfsynapse.analysis import batchnorm  # noqa: PLC0415
    from tfsynapse.budget import measured as budget_measured  # noqa: PLC0415
    from tfsynapse.budget import search  # noqa: PLC0415

    calls = []
    recalibrate = batchnorm.recalibrate_batchnorm
    for module in (api, search):  # prune_once's and prune_to_budget's
        monkeypatch.setattr(module, "recalibrate_batchnorm",
                            lambda *a, **k: calls.append(1) or recalibrate(*a, **k))
    # a "file size" proportional to the parameters: the same search, no conversions
    monkeypatch.setattr(budget_measured, "file_size",
                        lambda quantize, calibration, float_layers: lambda m: float(
                            tfsynapse.count_params(m)))
    x = rand_inputs(model, n=64)
    budget = 0.5 * tfsynapse.count_params(model)
    pruned, report = tfsynapse.prune_to_budget(model, size_bytes=budget, data=x,
                                               return_report=True)
    assert len(report.points) >= 3 and calls == [1]
    again = tfsynapse.prune_once(model, report.ratios, criterion="l1", data=x)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(pruned(x)), atol=1e-5)


def test_the_greedy_last_move_goes_only_as_far_as_the_budget_needs(model):
    """A coarse curve (one step to 90%) must not overshoot: the last group moved stops at the
    smallest ratio that meets the budget, one unit less pruned is over it."""
    solver = solver_of(model)
    names = [p.group.name for p in solver.groups]
    curves = {name: (np.array([0.9]), np.array([0.9 - (0.5 if name == "c3" else 0.001)]))
              for name in names}
    budget = 0.9 * solver.dense["macs"]
    ratios, cost, _ = solver.greedy("macs", budget, curves, 0.9)
    assert cost <= budget
    moved = [i for i, r in enumerate(ratios) if r > 0]
    assert len(moved) == 1 and ratios[moved[0]] < 0.9
    i = moved[0]
    one_less = list(ratios)
    one_less[i] -= 1.0 / solver.groups[i].n
    assert solver.cost(one_less, "macs") > budget


def test_the_greedy_gives_back_the_rounding_steps_the_budget_still_allows(model):
    """With round_to=2 a move cannot stop part way (the bisection's ratios round to whole
    steps), so the greedy can end a step under the budget; after the give-back no group can
    keep one more step within it."""
    solver = solver_of(model, round_to=2)
    curves = {p.group.name: (np.array([0.25, 0.5, 0.75]),
                             np.array([0.5, 0.3, 0.1] if p.group.name == "c1" else
                                      [0.89, 0.85, 0.6])) for p in solver.groups}

    def slack(fraction):  # groups that could still keep one more step within the budget
        budget = fraction * solver.dense["macs"]
        ratios, cost, _ = solver.greedy("macs", budget, curves, 0.9)
        assert cost <= budget
        free = []
        for i, plan in enumerate(solver.groups):
            back = solver.one_step_back(ratios[i], plan)
            trial = list(ratios)
            trial[i] = back
            if back is not None and solver.cost(trial, "macs") <= budget:
                free.append(plan.group.name)
        return free

    fractions = (0.45, 0.55, 0.65, 0.75, 0.85)
    assert all(not slack(f) for f in fractions)
    solver._give_back = lambda ratios, kind, budget, cost, *_: (cost, 0)  # noqa: SLF001
    assert any(slack(f) for f in fractions)  # without it some budget is left unspent


def test_uniform_ratios_fill_the_gap_between_coarse_configurations(model):
    """With round_to=4 neighbouring uniform configurations are a whole step of every group
    apart; groups take back one step while the budget allows, never more than one."""
    solver = solver_of(model, round_to=4)
    gained = 0
    for fraction in np.linspace(0.3, 0.95, 14):
        budget = fraction * solver.dense["macs"]
        ratio, uniform_cost, _ = solver.uniform("macs", budget, 0.9)
        ratios, cost, _ = solver.uniform_filled("macs", budget, 0.9)
        if ratio is None:  # below reach at max_ratio: refused by both
            assert ratios is None and cost == uniform_cost > budget
            continue
        assert uniform_cost <= cost <= budget
        for plan, r in zip(solver.groups, ratios):
            assert solver.kept(r, plan) - solver.kept(ratio, plan) in (0, 4)
        gained += cost > uniform_cost
    assert gained  # some budget fell between two uniform configurations


def test_round_to_none_measures_the_fastest_multiple_per_mac(model, tmp_path):
    """choose_round_to: the multiple with the lowest ms per MAC, a larger one only when it is
    `margin` better; the choice is cached and reused without timing again."""
    from tfsynapse.budget import alignment as budget_alignment  # noqa: PLC0415
    from tfsynapse.budget.meter import LatencyCache  # noqa: PLC0415

    def widths(small):
        return [layer.filters for layer in small.layers if getattr(layer, "filters", None)]

    def timer(bonus16):  # a stand-in machine: widths that are not multiples of 4 cost 1.5x
        def time_files(files):
            calls.append(sorted(files))
            return {m: tfsynapse.count_macs(small) * 1e-6
                    * (1.5 if any(w % 4 for w in widths(small)) else 1.0)
                    * (1.0 - bonus16 if m == 16 else 1.0) for m, small in files.items()}
        return time_files

    def choose(model, *args, **kwargs):
        return budget_alignment.choose_round_to(
            lambda r, m: tfsynapse.shrink(tfsynapse.prune_once(model, r, criterion="l1",
                                                               round_to=m)), *args, **kwargs)

    calls = []
    chosen, table = choose(model, 0.4, lambda small: small, timer(0.0), None, "k", print)
    assert chosen == 4 and sorted(table) == [1, 4, 8, 16]
    assert table[1][2] == pytest.approx(1.5 * table[4][2])  # ms per MAC, penalised
    assert choose(model, 0.4, lambda s: s, timer(0.02), None, "k", print)[0] == 4  # < margin
    assert choose(model, 0.4, lambda s: s, timer(0.05), None, "k", print)[0] == 16
    cache = LatencyCache(str(tmp_path / "latency.json"))
    assert choose(model, 0.4, lambda s: s, timer(0.0), cache, "dense:1", print)[0] == 4
    calls.clear()
    chosen, cached = choose(model, 0.4, lambda s: s, timer(0.05), cache, "dense:1", print)
    assert chosen == 4 and not calls  # cached: nothing timed again
    assert {m: v[2] for m, v in cached.items()} == pytest.approx({m: v[2] for m, v in
                                                                 table.items()})
    # a multiple that cannot reach the budget does not compete, measured now or cached
    def not_16(multiple):
        return multiple != 16, "keeps too many MACs"

    assert choose(model, 0.4, lambda s: s, timer(0.05), None, "k", print, reachable=not_16)[0] == 4
    cache = LatencyCache(str(tmp_path / "other.json"))
    assert choose(model, 0.4, lambda s: s, timer(0.05), cache, "dense:1", print)[0] == 16
    assert choose(model, 0.4, lambda s: s, timer(0.05), cache, "dense:1", print,
                  reachable=not_16)[0] == 4


def _stand_in_search(monkeypatch, configs, axis, budget, measure, **options):
    """``fit_measured`` over stand-in configurations: each is its own counted cost on
    ``axis`` (the largest is the dense model, the smallest the most pruned), ``measure(cost)``
    its measured value; no model is pruned, shrunk or converted."""
    import types  # noqa: PLC0415

    from tfsynapse.budget import measured as budget_measured  # noqa: PLC0415

    monkeypatch.setattr(budget_measured, "shrink", lambda model: model)

    def solve(kind, limit):
        assert kind == axis
        below = [c for c in configs if c <= limit]
        if not below:
            raise ValueError("below reach")
        return [max(below)], max(below), 1

    solver = types.SimpleNamespace(dense={axis: max(configs)}, groups=[None],
                                   cost=lambda ratios, kind: ratios[0],
                                   plan=types.SimpleNamespace(frozen={}))
    return budget_measured.fit_measured(
        solve, lambda ratios: ({"g": ratios[0]}, ratios[0]), solver, max(configs), budget,
        measure, axis, [min(configs)], "ms", lambda *a: None, **options)


def test_the_measured_search_bisects_when_the_line_lands_on_its_own_bracket(monkeypatch):
    """Coarse configurations (costs 40, 60, 75, 100) and a convex latency curve: the straight
    line's crossing solves to the candidate already known to fit; the bracket's middle then
    finds 75, which fits too (without the fallback the search stopped at 60)."""
    with pytest.warns(UserWarning, match="84% of the budget"):  # 75 and 100: nothing between
        (named, model), value, dense, points, _ = _stand_in_search(
            monkeypatch, (40, 60, 75, 100), "macs", 5.0, lambda cost: 10.0 * (cost / 100) ** 3)
    assert model == 75 and value == pytest.approx(4.21875) and dense == 10.0
    assert [p[0] for p in points] == [100, 40, 60, 75]


@pytest.mark.parametrize("configs,power,budget,path", [
    ((0.4, 0.6, 0.75, 1.0), 1, 0.8, [1.0, 0.4, 0.75]),  # the line's crossing, then closed
    ((0.4, 0.99, 1.0), 4, 0.97, [1.0, 0.4, 0.99])])  # only the bracket's top is inside
def test_the_measured_search_steps_in_predicted_ms_on_the_latency_axis(monkeypatch, configs,
                                                                       power, budget, path):
    """A guided latency search moves along predicted ms (fractions of a millisecond): the
    straight line's slope and the bracket's top must use that axis's step, not one MAC (before,
    a 0.6 ms bracket counted as 1 ms and the top was tried 1 ms below, out of reach)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each returns a model within 0.9 of its budget
        (_, model), value, _, points, _ = _stand_in_search(
            monkeypatch, configs, "latency", budget, lambda cost: cost ** power)
    assert [p[0] for p in points] == path and model == path[-1]
    assert value == pytest.approx(path[-1] ** power)


def test_a_measured_result_far_below_its_budget_is_reported(monkeypatch):
    """Two configurations only (costs 40 and 100): the 40 one fits at 13% of the budget and
    nothing lies between, so the search warns with both measurements instead of returning a
    model that wastes most of the budget silently."""
    def search(budget):
        return _stand_in_search(monkeypatch, (40, 100), "macs", budget,
                                lambda cost: 10.0 * (cost / 100) ** 3)

    with pytest.warns(UserWarning, match=r"measuring 0.64 ms, 13% of the budget of 5: the "
                      r"closest configuration it found over the budget measured 10 ms \(200%\), "
                      r"and none lies between \(40 macs vs 100 macs\)"):
        (_, model), value, _, _, _ = search(5.0)
    assert model == 40 and value == pytest.approx(0.64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within 0.9 of the budget: nothing to report
        assert search(0.7)[1] == pytest.approx(0.64)


def test_a_local_latency_search_leaves_far_under_to_the_hold(monkeypatch):
    """``warn_far_below=False`` (a local latency budget, whose result ``budget.hold`` times
    again and judges): the same search as above stays quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (_, model), value, _, _, _ = _stand_in_search(
            monkeypatch, (40, 100), "macs", 5.0, lambda cost: 10.0 * (cost / 100) ** 3,
            warn_far_below=False)
    assert model == 40 and value == pytest.approx(0.64)


def test_a_closed_bracket_measures_its_over_end_again_before_it_stops(monkeypatch):
    """Configurations 40/60/80/100 at cost/10 ms, budget 8.5 ms: 80 first measures 20 ms (a
    spike) and closes the bracket at 60 (71% of the budget). Measured again, 80 fits (8 ms)
    and is returned; a measure without ``again`` (a file's size) stops at 60 as before, and a
    spike that lasts is measured again once, not in a loop."""
    first = {80: 20.0}

    def spiked(cost):
        return first.pop(cost, cost / 10)

    again = []

    def measure_again(cost):
        again.append(cost)
        return cost / 10

    (_, model), value, _, points, _ = _stand_in_search(
        monkeypatch, (40, 60, 80, 100), "macs", 8.5, spiked, again=measure_again)
    assert (model, value, again) == (80, 8.0, [80]) and (80, 8.0, 8.0) in points

    first[80] = 20.0
    with pytest.warns(UserWarning, match="71% of the budget"):
        assert _stand_in_search(monkeypatch, (40, 60, 80, 100), "macs", 8.5, spiked)[1] == 6.0

    again.clear()
    with pytest.warns(UserWarning, match="80% of the budget"):
        (_, model), _, _, _, _ = _stand_in_search(
            monkeypatch, (40, 60, 80, 100), "macs", 7.5, lambda cost: cost / 10,
            again=measure_again)
    assert model == 60 and again == [80]  # measured again, still over: the bracket stands


def _machine(fixed, per_mac, per_element, noise=None):
    """A stand-in machine whose latency is a known function of a model's counts."""
    calls = []

    def time_files(files):
        calls.append(sorted(files))
        out = {}
        for name, small in files.items():
            ms = (fixed + per_mac * tfsynapse.count_macs(small)
                  + per_element * tfsynapse.graph.count_activations(small))
            out[name] = ms * (noise(name) if noise else 1.0)
        return out

    return time_files, calls


def test_the_latency_model_recovers_the_machine_and_is_cached(model, tmp_path):
    from tfsynapse.budget import latency_model as budget_latency_model  # noqa: PLC0415
    from tfsynapse.budget.meter import LatencyCache  # noqa: PLC0415

    solver = solver_of(model)

    def shaped(ratios):
        return tfsynapse.shrink(tfsynapse.prune_once(model, solver.named_ratios(ratios),
                                                     criterion="l1"))

    truth = (0.2, 3e-6, 4e-5)
    time_files, calls = _machine(*truth)
    cache = LatencyCache(str(tmp_path / "latency.json"))
    fitted = budget_latency_model.fit(solver, 0.5, shaped, lambda m: m, time_files, cache,
                                      "dense:1", print)
    np.testing.assert_allclose(fitted.coefficients, truth, rtol=1e-6)
    assert fitted.error < 1e-9 and len(fitted.probes) == 3 + len(solver.groups)
    again = budget_latency_model.fit(solver, 0.5, shaped, lambda m: m, time_files, cache,
                                     "dense:1", print)
    assert len(calls) == 1 and again.coefficients == pytest.approx(truth)  # cached
    # a machine whose time falls with more activations: that feature is dropped, not negative
    time_files, _ = _machine(0.2, 3e-6, -1e-6)
    dropped = budget_latency_model.fit(solver, 0.5, shaped, lambda m: m, time_files)
    assert dropped.coefficients[2] == 0.0 and min(dropped.coefficients) >= 0.0
    noisy, _ = _machine(*truth, noise=lambda name: 1.5 if "uniform" in name else 1.0)
    with pytest.warns(UserWarning, match="latency model fits its .* probes only within"):
        budget_latency_model.fit(solver, 0.5, shaped, lambda m: m, noisy)


def test_the_command_line_prunes_to_a_file_size(model, tmp_path, capsys):
    from tfsynapse.cli import args as cli_args  # noqa: PLC0415
    from tfsynapse.cli import main  # noqa: PLC0415

    path, out = str(tmp_path / "model.keras"), str(tmp_path / "pruned.keras")
    model.save(path)
    # --target-params is read and counted as --target-macs is; its units: test_cli
    value = f"{0.6 * len(tflite_export.convert(model)) / 1000:.3f}kB"
    assert main(["prune", path, "--target-size", value, "-o", out]) == 0
    budget = cli_args.byte_size(value)
    assert f"budget {budget:,.0f} bytes" in capsys.readouterr().out
    small = tfsynapse.shrink(tfsynapse.backends.backend_of(model).load_model(out))
    assert len(tflite_export.convert(small)) <= budget


class _StandInMeter:
    """A meter whose timings come, in order, from ``values`` (files are their models)."""

    def __init__(self, values):
        self.values, self.timed = list(values), []

    def convert(self, model):
        return model

    def time_file(self, flatbuffer):
        self.timed.append(flatbuffer)
        return self.values.pop(0)


def test_the_margin_is_the_spread_of_fresh_dense_timings_with_a_floor_and_a_cap():
    from tfsynapse.budget import hold  # noqa: PLC0415

    margin, medians = hold.spread_margin(_StandInMeter([10, 10.6, 9.8, 10, 10.5]), "dense")
    assert margin == pytest.approx((10.6 - 9.8) / 10) and medians == [10, 10.6, 9.8, 10, 10.5]
    wild, _ = hold.spread_margin(_StandInMeter([10, 30, 10, 10, 10]), "dense")
    assert wild == hold.MAX_MARGIN  # a noisier machine is reported, not followed
    steady, _ = hold.spread_margin(_StandInMeter([10, 10.01, 10, 10, 10]), "dense")
    assert steady == hold.MIN_MARGIN == 0.02  # a burst's calm says nothing of the next minutes


def test_the_result_is_timed_again_interleaved_with_the_dense_model():
    from tfsynapse.budget import hold  # noqa: PLC0415

    meter = _StandInMeter([4.0, 10.0, 4.4, 11.0, 4.2, 10.5])
    got, dense = hold.remeasure(meter, "pruned", "dense")
    assert (got, dense) == (4.2, 10.5) and meter.timed == ["pruned", "dense"] * 3


def test_an_overrun_left_after_the_searches_is_said_with_the_numbers():
    from tfsynapse.budget import hold  # noqa: PLC0415

    with pytest.warns(UserWarning, match=r"measures 5.4 ms, over the budget of 5 ms \(dense "
                                         r"10 ms in the same rounds\) after 2 search") as record:
        hold.warn_overrun(5.4, 10.0, 5.0, researches=2)
    assert "found nothing under the target" not in str(record[0].message)
    with pytest.warns(UserWarning, match="after 1 search.*found nothing under the target"):
        hold.warn_overrun(5.4, 10.0, 5.0, researches=1, stopped=True)


def test_the_meter_converts_each_model_once_and_forgets_the_least_recently_used(model,
                                                                              monkeypatch):
    """Candidates are converted once per meter, by the digest of their weights (a search run
    again and the result timed again meet them again); past MEMO_BYTES the least recently used
    file goes first. The dense model's file is kept apart, for the meter's life."""
    from tfsynapse.backends.tf_keras import keras  # noqa: PLC0415
    from tfsynapse.budget import meter as budget_meter  # noqa: PLC0415

    converted = []
    monkeypatch.setattr(tflite_export, "convert",
                        lambda m, **kwargs: converted.append(id(m)) or bytes(100))
    monkeypatch.setattr(budget_meter, "MEMO_BYTES", 250)
    a, b, c = (keras.models.clone_model(model) for _ in range(3))  # fresh weights each
    meter = budget_meter.LatencyMeter(None, None, 1, dense=model)
    for m in (model, a, b, a, model, c, a, b, model):
        meter.convert(m)
    # a, b fit (200 bytes); a used again; c pushes out b (300 > 250); b converted again
    assert converted == [id(model), id(a), id(b), id(c), id(b)]
    twin = keras.models.clone_model(a)
    twin.set_weights(a.get_weights())  # the same model in another object: the same file
    meter.convert(twin)
    assert len(converted) == 5
    assert budget_meter.weights_digest(twin) == budget_meter.weights_digest(a) != \
        budget_meter.weights_digest(b)
