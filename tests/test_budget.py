"""prune_to_budget: MAC, parameter and file-size budgets met from below, infeasible ones refused,
sensitivity-guided allocation, and the command line's --target-* flags."""

import json
import warnings

import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import both_backends, rand_inputs, randomize_bn, small_cnn
from tfsynapse.budget.solver import BudgetSolver

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


@pytest.fixture
def model():
    return randomize_bn(small_cnn(input_shape=(16, 16, 3)))


@pytest.fixture
def fake_files(monkeypatch):
    """``tflite_export.convert`` replaced by 4 bytes per parameter: the latency searches below
    test the search, not the converter (real conversions: the file-size, LiteRT-cache,
    alignment and command-line tests), in a fraction of the time."""
    monkeypatch.setattr(tflite_export, "convert",
                        lambda model, **kwargs: bytes(4 * tfsynapse.count_params(model)))


def _solver(model, round_to=1):
    from tfsynapse.plan import MaskPlan, PruningOptions  # noqa: PLC0415

    options = PruningOptions(criterion="l1", granularity="filter", scope="layer",
                             round_to=round_to, final_sparsity=1.0)
    return BudgetSolver(MaskPlan(tfsynapse.dependency_groups(model), options))


def _kept(model):
    small = tfsynapse.shrink(model)
    return small, {name: small.get_layer(name).filters for name in ("c1", "c3")}


@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_budgets_are_met_from_below_within_one_step(model, kind, fraction):
    count = tfsynapse.count_macs if kind == "macs" else tfsynapse.count_params
    budget = fraction * count(model)
    pruned, report = tfsynapse.prune_to_budget(model, **{kind: budget}, return_report=True)
    small, kept = _kept(pruned)
    assert count(small) == report.measured == report.predicted <= budget
    # a step less pruning breaks the budget: the solver stopped at the boundary (the uniform
    # ratio, then each group one step back while the budget allowed)
    solver = _solver(model)
    ratio, uniform_cost, _ = solver.uniform(kind, budget, 0.9)
    assert solver.cost([ratio - 2e-4] * len(solver.groups), kind) > budget >= uniform_cost
    ratios, cost, _ = solver.uniform_filled(kind, budget, 0.9)
    assert cost == report.predicted
    for i, plan in enumerate(solver.groups):
        if ratios[i] == ratio and solver.one_step_back(ratio, plan) is not None:
            trial = list(ratios)
            trial[i] = solver.one_step_back(ratio, plan)
            assert solver.cost(trial, kind) > budget
    # the reported ratios reproduce the same model with prune_once
    again = tfsynapse.prune_once(model, report.ratios, criterion="l1")
    x = rand_inputs(model)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(pruned(x)), atol=1e-6)
    assert report.kind == kind and report.dense == count(model) and report.budget == budget


def test_round_to_is_kept_and_counted(model):
    budget = 0.5 * tfsynapse.count_macs(model)
    pruned, report = tfsynapse.prune_to_budget(model, macs=budget, round_to=4,
                                               return_report=True)
    small, kept = _kept(pruned)
    assert all(k % 4 == 0 for k in kept.values()), kept
    assert tfsynapse.count_macs(small) == report.predicted <= budget


def test_unreachable_and_malformed_budgets_are_refused(model):
    with pytest.raises(ValueError, match=r"cannot be met: the lowest reachable is [\d,]+"):
        tfsynapse.prune_to_budget(model, macs=10)
    with pytest.raises(ValueError, match="exactly one budget"):
        tfsynapse.prune_to_budget(model)
    with pytest.raises(ValueError, match="exactly one budget"):
        tfsynapse.prune_to_budget(model, macs=1e6, params=1e4)
    for bad in (0, -5, float("nan"), True, "1M"):
        with pytest.raises(ValueError, match="positive number"):
            tfsynapse.prune_to_budget(model, params=bad)
    with pytest.raises(ValueError, match=r"macs=0.5 is a count, not a fraction"):
        tfsynapse.prune_to_budget(model, macs=0.5)
    with pytest.raises(ValueError, match="threads and measure_latency only apply"):
        tfsynapse.prune_to_budget(model, macs=1e5, threads=2)
    with pytest.raises(ValueError, match="threads must be an integer"):
        tfsynapse.prune_to_budget(model, latency_ms=1.0, threads=0)
    with pytest.raises(TypeError, match="measure_latency must be a function"):
        tfsynapse.prune_to_budget(model, latency_ms=1.0, measure_latency="adb")
    with pytest.raises(ValueError, match="only changes a size_bytes or latency_ms budget"):
        tfsynapse.prune_to_budget(model, macs=1e5, quantize="int8")
    with pytest.raises(ValueError, match="representative_dataset"):
        tfsynapse.prune_to_budget(model, size_bytes=1e4, quantize="int8")
    with pytest.raises(ValueError, match=r"float_layers only changes .* \(the converted file\)"):
        tfsynapse.prune_to_budget(model, macs=1e5, float_layers=["c1"])
    with pytest.raises(ValueError, match="needs quantize='int8'"):
        tfsynapse.prune_to_budget(model, size_bytes=1e4, float_layers=["c1"])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        tfsynapse.prune_to_budget(model, size_bytes=1e4, quantize="int8", float_layers="nope",
                                  representative_dataset=rand_inputs(model, 2))
    with pytest.raises(TypeError, match="SensitivityTable"):
        tfsynapse.prune_to_budget(model, macs=1e5, sensitivity=[0.1])


def test_a_budget_the_dense_model_meets_prunes_nothing(model):
    """Nothing pruned is said, and the copy is not recalibrated either (its randomized BN
    statistics would move on ``data``; a measured budget's path: the LiteRT cache test)."""
    x = rand_inputs(model)
    with pytest.warns(UserWarning, match="already meets the params budget.*nothing was pruned"):
        pruned, report = tfsynapse.prune_to_budget(model, params=10 * model.count_params(),
                                                   data=x, return_report=True)
    assert set(report.ratios.values()) == {0.0}
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), atol=1e-6)


def test_only_the_returned_model_is_recalibrated(model, monkeypatch, backend):
    """A measured search prunes several candidates; their sizes do not depend on the BN
    statistics, so only the returned model is recalibrated on ``data`` (once)."""
    if backend == "keras3":
        pytest.skip("which models are recalibrated does not depend on the Keras")
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


def _table(model, sensitive):
    """A hand-made table: the ``sensitive`` group loses a lot at every ratio, the other none."""
    graph = tfsynapse.dependency_groups(model)
    rows = []
    for group in graph.prunable_groups:
        for ratio in np.arange(1, 10) / 10:
            drop = 0.5 * ratio if group.name == sensitive else 0.001 * ratio
            rows.append({"group": group.name, "producers": group.producers,
                         "channels": group.size, "ratio": float(ratio),
                         "pruned_channels": int(np.floor(ratio * group.size + 0.5)),
                         "metric": 0.9 - drop, "macs": 0})
    return tfsynapse.SensitivityTable(baseline=0.9, rows=rows, settings={"criterion": "l1"})


def test_sensitivity_spends_the_budget_on_the_insensitive_group(model):
    budget = 0.75 * tfsynapse.count_macs(model)
    _, uniform = tfsynapse.prune_to_budget(model, macs=budget, return_report=True)
    pruned, guided = tfsynapse.prune_to_budget(model, macs=budget, sensitivity=_table(model, "c3"),
                                               return_report=True)
    assert guided.allocation == "sensitivity" and uniform.allocation == "uniform"
    assert guided.ratios["c3"] == 0.0 < guided.ratios["c1"]  # c3's curve is steep
    assert uniform.ratios["c3"] > 0.0
    assert tfsynapse.count_macs(tfsynapse.shrink(pruned)) <= budget
    with pytest.warns(UserWarning, match="measured with criterion 'l1'"):
        tfsynapse.prune_to_budget(model, macs=budget, sensitivity=_table(model, "c3"),
                                  criterion="l2")
    with pytest.raises(ValueError, match="largest ratio of its sensitivity curve"):
        tfsynapse.prune_to_budget(model, macs=100, sensitivity=_table(model, "c3"))


def test_the_greedy_last_move_goes_only_as_far_as_the_budget_needs(model):
    """A coarse curve (one step to 90%) must not overshoot: the last group moved stops at the
    smallest ratio that meets the budget, one unit less pruned is over it."""
    solver = _solver(model)
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
    solver = _solver(model, round_to=2)
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


def test_an_evaluate_function_builds_the_table(model):
    x = rand_inputs(model, 16)
    reference = np.asarray(model(x))

    def closeness(candidate):  # higher is better: minus the mean squared change of the logits
        return -float(np.mean((np.asarray(candidate(x)) - reference) ** 2))

    budget = 0.6 * tfsynapse.count_macs(model)
    guided = tfsynapse.prune_to_budget(model, macs=budget, sensitivity=closeness)
    uniform = tfsynapse.prune_to_budget(model, macs=budget)
    assert closeness(guided) >= closeness(uniform)


def test_file_size_budgets_are_measured_and_met(model, backend):
    if backend == "keras3":
        pytest.skip("conversion is the same on both (tests/test_tflite_export.py): once is enough")
    quantize = "int8"  # the least linear in parameters (int32 biases, per-channel scales)
    calibration = rand_inputs(model, 8)
    # the first convolution kept float32 (float_layers): every candidate is measured so
    dense = len(tflite_export.convert(model, quantize=quantize, float_layers=["c1"],
                                      representative_dataset=calibration))
    budget = 0.8 * dense
    pruned, report = tfsynapse.prune_to_budget(
        model, size_bytes=budget, quantize=quantize, representative_dataset=calibration,
        float_layers=["c1"], return_report=True)
    small = tfsynapse.shrink(pruned)
    size = len(tflite_export.convert(small, quantize=quantize, float_layers=["c1"],
                                     representative_dataset=calibration))
    assert size == report.measured <= budget and report.dense == dense
    assert len(tflite_export.convert(small, quantize=quantize,  # c1's weights: 1 byte, not 4
                                     representative_dataset=calibration)) < size
    with pytest.raises(ValueError, match=r"the most-pruned model measures [\d,]+ bytes"):
        tfsynapse.prune_to_budget(model, size_bytes=0.1 * dense, quantize=quantize,
                                  representative_dataset=calibration)


def test_the_command_line_prunes_to_a_budget(model, tmp_path, capsys, monkeypatch):
    from tfsynapse.cli import main  # noqa: PLC0415

    path = str(tmp_path / "model.keras")
    model.save(path)
    out = str(tmp_path / "pruned.keras")
    budget = int(0.5 * tfsynapse.count_macs(model))
    assert main(["prune", path, "--target-macs", f"{budget / 1000:g}k", "-o", out]) == 0
    text = capsys.readouterr().out
    assert f"budget {budget:,} MACs (uniform allocation, round_to=1)" in text, text
    loaded = tfsynapse.backends.backend_of(model).load_model(out)
    assert tfsynapse.count_macs(tfsynapse.shrink(loaded)) <= budget
    table = str(tmp_path / "table.json")
    _table(model, "c1").to_json(table)
    assert main(["prune", path, "--target-macs", str(budget), "--sensitivity", table,
                 "-o", out]) == 0
    assert "(sensitivity allocation, round_to=1)" in capsys.readouterr().out
    monkeypatch.setenv("TFSYNAPSE_CACHE", str(tmp_path / "cache"))
    plot = str(tmp_path / "search.png")
    assert main(["prune", path, "--target-latency", "10000ms", "--threads", "2", "--plot", plot,
                 "-o", out]) == 0  # a budget the dense model meets: measured once, unpruned
    text = capsys.readouterr().out
    assert "budget 1e+04 ms (uniform allocation, round_to=1)" in text, text
    assert f"wrote {plot}" in text, text
    for argv, message in (
            (["--target-macs", "1M", "--quantize", "int8"], "only changes a --target-size"),
            (["--sparsity", "0.5", "--sensitivity", table], "--sensitivity needs a budget"),
            (["--target-size", "2MB", "--quantize", "int8"], "needs --calibration"),
            (["--target-macs", "1M", "--threads", "2"], "--threads needs --target-latency"),
            (["--target-macs", "1M", "--adb"], "--adb needs --target-latency"),
            (["--sparsity", "0.5", "--measure-command", "x {tflite}"], "needs a budget"),
            (["--target-latency", "1ms", "--measure-command", "x"], "must contain {tflite}"),
            (["--target-macs", "1M", "--plot", "p.png"], "only changes a --target-size"),
            (["--target-macs", "1M", "--float-layers", "c1"], "only changes a --target-size"),
            (["--target-size", "2MB", "--float-layers", "c1"], "--float-layers needs --quantize"),
            (["--sparsity", "0.5", "--float-layers", "c1"], "--float-layers needs a budget")):
        assert main(["prune", path, *argv, "-o", out]) == 1
        assert message in capsys.readouterr().err
    assert main(["prune", path, "--target-macs", "lots", "-o", out]) == 2  # a usage error
    assert "k, M or G" in capsys.readouterr().err
    assert json.loads(open(table).read())["baseline"] == 0.9


def test_the_command_line_prunes_to_a_file_size(model, tmp_path, capsys, backend):
    if backend == "keras3":
        pytest.skip("the flags are read alike for both Keras (the MAC flag runs on both above)")
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


def _bytes_as_latency(flatbuffer, threads):
    """A stand-in for a device: 'latency' proportional to the file size (deterministic)."""
    return len(flatbuffer) / 1000.0 / threads


def test_latency_budgets_search_measured_candidates(model, tmp_path, backend, fake_files):
    if backend == "keras3":
        pytest.skip("the search is the file-size one (tested on both); conversion is shared")
    dense = _bytes_as_latency(tflite_export.convert(model), 1)
    pruned, report = tfsynapse.prune_to_budget(model, latency_ms=0.8 * dense,
                                               measure_latency=_bytes_as_latency, round_to=1,
                                               return_report=True)
    small = tfsynapse.shrink(pruned)
    assert _bytes_as_latency(tflite_export.convert(small), 1) == report.measured <= 0.8 * dense
    assert report.kind == "latency_ms" and report.dense == dense and len(report.points) >= 3
    assert report.points[0][:2] == (tfsynapse.count_macs(model), dense)  # MACs, measured
    path = report.plot(str(tmp_path / "search.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="returned -1"):
        tfsynapse.prune_to_budget(model, latency_ms=1.0, measure_latency=lambda f, t: -1)
    with pytest.raises(ValueError, match=r"cannot be met: the most-pruned model measures"):
        tfsynapse.prune_to_budget(model, latency_ms=1e-6, measure_latency=_bytes_as_latency,
                                  round_to=1)


def test_litert_latency_is_measured_here_and_cached_by_file_and_threads(model, tmp_path,
                                                                        monkeypatch, backend):
    if backend == "keras3":
        pytest.skip("LiteRT timing does not depend on the Keras that built the model")
    from tfsynapse.budget.measured import LatencyCache  # noqa: PLC0415

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
    from tfsynapse.budget import measured as budget_measured  # noqa: PLC0415

    timed = []  # a device: nothing on disk, but one search times the same file once
    device = budget_measured.latency(None, None, 2, lambda f, t: timed.append(t) or 1.5)
    assert device(model) == device(model) == 1.5 and timed == [2] and device.cache is None
    # another machine (CPU, cores, LiteRT) sharing the cache folder does not reuse the timing
    monkeypatch.setattr(budget_measured, "machine_tag", lambda: "another machine")
    assert LatencyCache.key(flatbuffer, 2) != key and cache.get(LatencyCache.key(flatbuffer, 2)) \
        is None
    (tmp_path / "cache" / "latency.json").write_text("{not json")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert LatencyCache().get(key) is None


def test_round_to_none_measures_the_fastest_multiple_per_mac(model, tmp_path, backend):
    """choose_round_to: the multiple with the lowest ms per MAC, a larger one only when it is
    `margin` better; the choice is cached and reused without timing again."""
    if backend == "keras3":
        pytest.skip("the choice only reads counts and times: nothing Keras-specific")
    from tfsynapse.budget import alignment as budget_alignment  # noqa: PLC0415
    from tfsynapse.budget.measured import LatencyCache  # noqa: PLC0415

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


def test_round_to_none_never_picks_a_multiple_that_cannot_meet_the_budget(model, capsys, backend,
                                                                          fake_files):
    """A machine where larger models run faster per MAC makes round_to=16 (nothing of this
    model's 8- and 12-channel groups can go) the fastest per MAC; the budget stays reachable."""
    if backend == "keras3":
        pytest.skip("the choice only reads counts and times: nothing Keras-specific")

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
    if backend == "keras3":
        pytest.skip("the search is shared with the file-size one (tested on both)")
    dense = _bytes_as_latency(tflite_export.convert(model), 1)
    pruned, report = tfsynapse.prune_to_budget(model, latency_ms=0.8 * dense,
                                               measure_latency=_bytes_as_latency,
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


def _stand_in_search(monkeypatch, configs, axis, budget, measure):
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
        measure, axis, [min(configs)], "ms", lambda *a: None)


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


def test_activation_counts_of_a_plan_equal_the_shrunk_models(model, backend):
    """count_activations with a plan counts what the shrunk model has (the latency model's
    memory term), as count_macs does."""
    solver = _solver(model)
    ratios = [0.25 + 0.25 * i for i in range(len(solver.groups))]
    named = solver.named_ratios(ratios)
    small = tfsynapse.shrink(tfsynapse.prune_once(model, named, criterion="l1"))
    macs, elements = solver.counts(ratios)
    assert (macs, elements) == (tfsynapse.count_macs(small),
                                tfsynapse.graph.count_activations(small))
    assert elements < tfsynapse.graph.count_activations(model)


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


def test_the_latency_model_recovers_the_machine_and_is_cached(model, tmp_path, backend):
    if backend == "keras3":
        pytest.skip("only counts and a stand-in clock: nothing Keras-specific")
    from tfsynapse.budget import latency_model as budget_latency_model  # noqa: PLC0415
    from tfsynapse.budget.measured import LatencyCache  # noqa: PLC0415

    solver = _solver(model)

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


def test_a_guided_latency_budget_spends_predicted_milliseconds(model, backend, fake_files):
    if backend == "keras3":
        pytest.skip("the search is shared with the file-size one (tested on both)")
    dense = _bytes_as_latency(tflite_export.convert(model), 1)
    pruned, report = tfsynapse.prune_to_budget(
        model, latency_ms=0.8 * dense, measure_latency=_bytes_as_latency, round_to=1,
        sensitivity=_table(model, "c3"), return_report=True)
    assert report.allocation == "sensitivity" and report.latency_model is not None
    assert report.measured <= 0.8 * dense
    assert _bytes_as_latency(tflite_export.convert(tfsynapse.shrink(pruned)), 1) == \
        report.measured
    assert report.points[0][0] == pytest.approx(report.latency_model.predict(
        tfsynapse.count_macs(model), tfsynapse.graph.count_activations(model)))
    assert "latency model: ms = " in report.table()


def test_uniform_ratios_fill_the_gap_between_coarse_configurations(model, backend):
    """With round_to=4 neighbouring uniform configurations are a whole step of every group
    apart; groups take back one step while the budget allows, never more than one."""
    if backend == "keras3":
        pytest.skip("counts only: nothing Keras-specific")
    solver = _solver(model, round_to=4)
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
