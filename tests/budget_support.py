"""What the budget tests share: the model, the converter stand-in, the solver and a
hand-made sensitivity table (imported by test_budget*.py)."""

import numpy as np
import pytest

import tflite_export
import tfsynapse
from conftest import randomize_bn, small_cnn
from tfsynapse.budget.solver import BudgetSolver


@pytest.fixture
def model():
    """The shared small CNN at 16x16, BN statistics randomised, in the running test's Keras."""
    return randomize_bn(small_cnn(input_shape=(16, 16, 3)))


@pytest.fixture
def fake_files(monkeypatch):
    """``tflite_export.convert`` replaced by 4 bytes per parameter: the latency searches test
    the search, not the converter (real conversions: the file-size, LiteRT, alignment, timed
    search and command-line tests), in a fraction of the time."""
    monkeypatch.setattr(tflite_export, "convert",
                        lambda model, **kwargs: bytes(4 * tfsynapse.count_params(model)))


def solver_of(model, round_to=1):
    """The budget solver of ``model`` for layer-scope L1 filter pruning."""
    from tfsynapse.plan import MaskPlan, PruningOptions  # noqa: PLC0415

    options = PruningOptions(criterion="l1", granularity="filter", scope="layer",
                             round_to=round_to, final_sparsity=1.0)
    return BudgetSolver(MaskPlan(tfsynapse.dependency_groups(model), options))


def sensitivity_table(model, sensitive):
    """A hand-made table: the ``sensitive`` group loses a lot at every ratio, the others none."""
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


def bytes_as_latency(flatbuffer, threads):
    """A stand-in for a device: 'latency' proportional to the file size (deterministic)."""
    return len(flatbuffer) / 1000.0 / threads
