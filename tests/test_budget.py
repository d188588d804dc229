"""prune_to_budget on both Keras: MAC, parameter and file-size budgets met from below,
infeasible ones refused, sensitivity-guided allocation, and the command line's --target-*
flags. Latency budgets: test_budget_latency.py; the search's inner steps (Keras-independent,
run once): test_budget_search.py."""

import json

import numpy as np
import pytest

import tflite_export
import tfsynapse
from budget_support import model, sensitivity_table, solver_of  # noqa: F401 (a fixture)
from conftest import both_backends, rand_inputs

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


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
    solver = solver_of(model)
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
    x = rand_inputs(model, 2)
    for kwargs in (dict(macs=1e5), dict(size_bytes=1e4), dict(size_bytes=1e4, quantize="dynamic")):
        with pytest.raises(ValueError, match="representative_dataset is only read by an int8"):
            tfsynapse.prune_to_budget(model, representative_dataset=x, **kwargs)
    with pytest.raises(ValueError, match="exhausted iterator"):
        tfsynapse.prune_to_budget(model, size_bytes=1e4, quantize="int8",
                                  representative_dataset=iter([]))
    # refused before any sensitivity analysis runs (it would raise "evaluated" here)
    def evaluate(_):
        raise AssertionError("evaluated")
    with pytest.raises(ValueError, match="got the string 'c1'"):
        tfsynapse.prune_to_budget(model, macs=1e5, sensitivity=evaluate, ignored_layers="c1")
    with pytest.raises(ValueError, match=r"ignored_layers names layers that are not in the "
                                         r"model: \['nope'\]"):
        tfsynapse.prune_to_budget(model, macs=1e5, sensitivity=evaluate,
                                  ignored_layers=["nope"])


def test_a_one_shot_generator_calibrates_every_candidate_on_the_same_batches(model):
    """A generator is read once, up to the batches one conversion reads (the 100 of
    convert's default), into a list every candidate's conversion replays."""
    from tfsynapse.budget.request import CALIBRATION_STEPS, BudgetRequest  # noqa: PLC0415

    batches = [rand_inputs(model, 2) for _ in range(CALIBRATION_STEPS + 5)]
    request = BudgetRequest.checked(model, size_bytes=1e4, quantize="int8",
                                    representative_dataset=(b for b in batches))
    assert isinstance(request.calibration, list)
    assert len(request.calibration) == CALIBRATION_STEPS
    assert request.calibration[0] is batches[0]
    listed = BudgetRequest.checked(model, size_bytes=1e4, quantize="int8",
                                   representative_dataset=batches)
    assert listed.calibration is batches  # replayable data is passed on as it is


def test_a_budget_the_dense_model_meets_prunes_nothing(model):
    """Nothing pruned is said, and the copy is not recalibrated either (its randomized BN
    statistics would move on ``data``; a measured budget's path: the LiteRT cache test)."""
    x = rand_inputs(model)
    with pytest.warns(UserWarning, match="already meets the params budget.*nothing was pruned"):
        pruned, report = tfsynapse.prune_to_budget(model, params=10 * model.count_params(),
                                                   data=x, return_report=True)
    assert set(report.ratios.values()) == {0.0}
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), atol=1e-6)


def test_sensitivity_spends_the_budget_on_the_insensitive_group(model):
    budget = 0.75 * tfsynapse.count_macs(model)
    _, uniform = tfsynapse.prune_to_budget(model, macs=budget, return_report=True)
    pruned, guided = tfsynapse.prune_to_budget(model, macs=budget, sensitivity=sensitivity_table(model, "c3"),
                                               return_report=True)
    assert guided.allocation == "sensitivity" and uniform.allocation == "uniform"
    assert guided.ratios["c3"] == 0.0 < guided.ratios["c1"]  # c3's curve is steep
    assert uniform.ratios["c3"] > 0.0
    assert tfsynapse.count_macs(tfsynapse.shrink(pruned)) <= budget
    with pytest.warns(UserWarning, match="measured with criterion 'l1'"):
        tfsynapse.prune_to_budget(model, macs=budget, sensitivity=sensitivity_table(model, "c3"),
                                  criterion="l2")
    with pytest.raises(ValueError, match="largest ratio of its sensitivity curve"):
        tfsynapse.prune_to_budget(model, macs=100, sensitivity=sensitivity_table(model, "c3"))


def test_an_evaluate_function_builds_the_table(model):
    """sensitivity= a function: prune_to_budget measures the table with it (one call per
    trial, and the baseline) and allocates by it, not uniformly."""
    x = rand_inputs(model, 16)
    reference = np.asarray(model(x))
    calls = []

    def closeness(candidate):  # higher is better: minus the mean squared change of the logits
        calls.append(1)
        return -float(np.mean((np.asarray(candidate(x)) - reference) ** 2))

    budget = 0.6 * tfsynapse.count_macs(model)
    guided, report = tfsynapse.prune_to_budget(model, macs=budget, sensitivity=closeness,
                                               return_report=True)
    groups = len(tfsynapse.dependency_groups(model).prunable_groups)
    assert report.allocation == "sensitivity" and len(calls) >= 1 + groups * 5, len(calls)
    uniform, plain = tfsynapse.prune_to_budget(model, macs=budget, return_report=True)
    assert report.ratios != plain.ratios  # the table moved the allocation
    calls.clear()
    assert closeness(guided) >= closeness(uniform)


def test_file_size_budgets_are_measured_and_met(model, backend):
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
    sensitivity_table(model, "c1").to_json(table)
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
    (tmp_path / "table.csv").write_text("ratio,c1\n0.1,0.9\n")  # the CSV, not the JSON
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
            (["--sparsity", "0.5", "--float-layers", "c1"], "--float-layers needs a budget"),
            (["--sparsity", "0.5", "--lr", "1e-3"], "--lr is the fine-tuning learning rate"),
            (["--target-size", "2MB", "--plot", str(tmp_path)], "give a .png file path"),
            (["--target-macs", "1M", "--sensitivity", str(tmp_path / "table.csv")],
             "cannot read the sensitivity table")):
        assert main(["prune", path, *argv, "-o", out]) == 1
        assert message in capsys.readouterr().err
    assert main(["prune", path, "--target-macs", "lots", "-o", out]) == 2  # a usage error
    assert "k, M or G" in capsys.readouterr().err
    for rate in ("nan", "0", "-1e-3", "inf"):
        assert main(["prune", path, "--sparsity", "0.5", f"--lr={rate}", "-o", out]) == 2
        assert "a finite number > 0" in capsys.readouterr().err
    assert json.loads(open(table).read())["baseline"] == 0.9


def test_activation_counts_of_a_plan_equal_the_shrunk_models(model, backend):
    """count_activations with a plan counts what the shrunk model has (the latency model's
    memory term), as count_macs does."""
    solver = solver_of(model)
    ratios = [0.25 + 0.25 * i for i in range(len(solver.groups))]
    named = solver.named_ratios(ratios)
    small = tfsynapse.shrink(tfsynapse.prune_once(model, named, criterion="l1"))
    macs, elements = solver.counts(ratios)
    assert (macs, elements) == (tfsynapse.count_macs(small),
                                tfsynapse.graph.count_activations(small))
    assert elements < tfsynapse.graph.count_activations(model)
