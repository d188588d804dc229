"""The ``tfsynapse`` command end to end, in-process through ``cli.main``: inspect, prune
(recalibration, accuracy, fine-tuning, ratios files), shrink and the model file formats.
Export, bench and refusals: test_cli_export.py."""

import json
import os
import re

import numpy as np
import pytest

import tfsynapse
from cli_support import (FORMATS, assert_one_line_error, load, models,  # noqa: F401 (fixtures)
                         run, tflite_float, tiny_model, zero_filters)
from conftest import dead_filters, normal, run_python
from tfsynapse import cli

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def test_inspect_lists_groups_macs_and_params(models, capsys):
    code, out, _ = run(capsys, "inspect", models["keras"])
    assert code == 0
    model = load(models["keras"])
    macs, by_layer = tfsynapse.count_macs(model, per_layer=True)
    assert "prunable" in out and "c1" in out
    assert re.search(r"^c1\s+" + f"{by_layer['c1']:,}", out, re.M), out
    params = tfsynapse.count_params(model)
    assert re.search(r"^total\s+" + f"{macs:,}\\s+{params:,}$", out, re.M), out


def test_prune_writes_model_with_zeroed_filters(models, tmp_path, capsys):
    out_path = tmp_path / "pruned.keras"
    code, out, _ = run(capsys, "prune", models["keras"], "--criterion", "dscore",
                       "--sparsity", "0.5", "-o", out_path)
    assert code == 0
    assert out_path.is_file()
    assert zero_filters(load(out_path)) == 4
    assert "MACs" in out and "->" in out
    assert sorted(os.listdir(tmp_path)) == ["pruned.keras"]  # no temporary file left


def test_prune_recalibrates_with_data_and_warns_without(models, tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, normal(96, 10, 10, 3))
    code, out, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5", "--data", data,
                         "-o", tmp_path / "fresh.keras")
    assert code == 0 and "recalibrated on 96 samples" in out and "warning" not in err
    fresh = load(tmp_path / "fresh.keras").get_layer("bn1").moving_variance.numpy()
    assert not np.allclose(fresh, 1.0)  # the saved model carries the new statistics
    code, out, err = run(capsys, "prune", models["keras"], "--target-macs", "1G", "--data",
                         data, "-o", tmp_path / "same.keras")  # the dense model fits: as it was
    assert code == 0 and "recalibrated" not in out and "no --data" not in err, (out, err)
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5",
                       "-o", tmp_path / "stale.keras")
    assert code == 0 and "warning: no --data" in err and "ruins accuracy" in err
    assert "--data x_train.npy" in err and "--finetune-epochs N" in err
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.95",
                       "--max-pruning-ratio", "0.5", "-o", tmp_path / "capped.keras")
    assert_one_line_error(code, err, "at most", "max_pruning_ratio=0.5")


def test_prune_reports_accuracy_and_fine_tunes_with_labels(models, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, rng.normal(size=(96, 10, 10, 3)).astype("float32"))
    np.save(y, rng.integers(0, 3, 96))
    out_path = tmp_path / "tuned.keras"
    code, out, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5",
                         "--data", f"{x},{y}", "--finetune-epochs", "2", "--lr", "1e-3",
                         "-o", out_path)
    assert code == 0, err
    assert re.search(r"accuracy on the 96 --data samples: \d+\.\d\d% before pruning, "
                     r"\d+\.\d\d% after \(one-shot\)", out), out
    assert "fine-tuning 2 epoch(s)" in out and "accuracy after fine-tuning" in out
    tuned = load(out_path)
    assert zero_filters(tuned) == 4  # the pruned filters stayed zero through fine-tuning
    bn = tuned.get_layer("bn1")
    dead = dead_filters(tuned.get_layer("c1").get_weights()[0])
    assert np.all(bn.gamma.numpy()[dead] == 0) and np.all(bn.beta.numpy()[dead] == 0)
    # errors: fine-tuning without labels, labels that do not fit the model
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5", "--data", x,
                       "--finetune-epochs", "1", "-o", tmp_path / "a.keras")
    assert_one_line_error(code, err, "--finetune-epochs needs labels")
    np.save(tmp_path / "bad.npy", rng.integers(0, 7, 96))
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5",
                       "--data", f"{x},{tmp_path / 'bad.npy'}", "-o", tmp_path / "b.keras")
    assert_one_line_error(code, err, "do not fit the model's output")
    np.save(tmp_path / "short.npy", rng.integers(0, 3, 5))
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5",
                       "--data", f"{x},{tmp_path / 'short.npy'}", "-o", tmp_path / "c.keras")
    assert_one_line_error(code, err, "96 samples", "5 labels")


def test_prune_help_says_one_shot(capsys):
    code = cli.main(["prune", "--help"])
    out = capsys.readouterr().out
    assert code == 0 and "ONE SHOT" in out and "--finetune-epochs" in out


def test_tensorflow_start_up_noise_is_hidden_unless_verbose(models):
    result = run_python("-m", "tfsynapse.cli", "inspect", models["keras"])
    assert result.returncode == 0, result.stderr
    for noise in ("oneDNN", "cudart", "absl::InitializeLog"):
        assert noise not in result.stderr, result.stderr
    verbose = run_python("-m", "tfsynapse.cli", "inspect", "--verbose", models["keras"])
    assert verbose.returncode == 0, verbose.stderr


def test_bench_prints_sub_millisecond_times_with_three_digits():
    assert cli.command._ms(0.0123) == "0.0123" and cli.command._ms(0.195) == "0.195"
    assert cli.command._ms(84.7) == "84.700"


def test_prune_with_ratios_file(models, tmp_path, capsys):
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps({"c1": 0.25}))
    out_path = tmp_path / "pruned.h5"
    code, _, _ = run(capsys, "prune", models["h5"], "--ratios", ratios, "-o", out_path)
    assert code == 0
    pruned = load(out_path)
    assert zero_filters(pruned, "c1") == 2
    assert zero_filters(pruned, "c2") == 0  # only the listed layer's group is pruned


def test_shrink_removes_filters(models, tmp_path, capsys):
    pruned = tmp_path / "pruned.keras"
    assert run(capsys, "prune", models["keras"], "--sparsity", "0.5", "-o", pruned)[0] == 0
    small = tmp_path / "small.keras"
    code, out, _ = run(capsys, "shrink", pruned, "-o", small)
    assert code == 0
    assert re.search(r"^c1\s+8\s+4$", out, re.M), out
    assert load(small).get_layer("c1").filters == 4


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_formats_round_trip_through_prune_and_shrink(fmt, tmp_path, capsys):
    source = tmp_path / ("src_" + FORMATS[fmt])
    tiny_model().save(source, save_format="tf" if fmt == "savedmodel" else fmt)
    pruned, small = tmp_path / ("pruned_" + FORMATS[fmt]), tmp_path / ("small_" + FORMATS[fmt])
    assert run(capsys, "prune", source, "--sparsity", "0.5", "-o", pruned)[0] == 0
    assert zero_filters(load(pruned)) == 4
    code, _, err = run(capsys, "shrink", pruned, "--round-to", "2", "-o", small)
    assert code == 0, err
    assert (small.is_dir() if fmt == "savedmodel" else small.is_file())
    assert load(small).get_layer("c1").filters == 4


def test_savedmodel_output_replaces_an_existing_savedmodel(models, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run(capsys, "prune", models["keras"], "--sparsity", "0.25", "-o", out_dir)[0] == 0
    assert zero_filters(load(out_dir)) == 2
    assert run(capsys, "prune", models["keras"], "--sparsity", "0.5", "-o", out_dir)[0] == 0
    assert zero_filters(load(out_dir)) == 4
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_refuses_to_replace_a_directory_that_is_not_a_savedmodel(models, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    code, _, err = run(capsys, "shrink", models["keras"], "-o", folder)
    assert_one_line_error(code, err, "refusing to replace")
    assert os.listdir(folder) == ["keep.txt"]


def test_wrapped_model_loads_and_is_stripped(tmp_path, capsys):
    wrapped = tfsynapse.prune_synaptic(tiny_model(), tfsynapse.ConstantSparsity(0.5, 0),
                                       criterion="l1", granularity="filter")
    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    code, out, _ = run(capsys, "inspect", path)
    assert code == 0 and "c1" in out
    code, out, _ = run(capsys, "prune", path, "--sparsity", "0.5", "-o", tmp_path / "p.keras")
    assert code == 0 and "wrappers removed" in out
    assert zero_filters(load(tmp_path / "p.keras")) == 4
