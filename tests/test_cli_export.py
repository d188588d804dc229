"""The ``tfsynapse`` command end to end: export (float, int8, float layers, sparse weights),
bench, budget quantities and the refusals of bad files, options and data, each one line."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tflite_export
from cli_support import (FORMATS, assert_one_line_error, load, models,  # noqa: F401 (fixtures)
                         run, tflite_float, tiny_model, zero_filters)
from conftest import normal, run_python
from tfsynapse import cli

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def test_export_float_and_bench(tflite_float, capsys):
    assert tflite_float.is_file()
    code, out, _ = run(capsys, "bench", tflite_float, "--threads", "1", "--runs", "3")
    assert code == 0
    match = re.search(r"median (\d+\.\d+) ms, p90 (\d+\.\d+) ms", out)
    assert match, out
    assert 0 < float(match.group(1)) <= float(match.group(2))
    code, out, _ = run(capsys, "bench", tflite_float, "--runs", "3", "--runtime", "compiled_model")
    assert code == 0 and re.search(r"compiled_model: init [\d.]+ ms, first run [\d.]+ ms, "
                                   r"p5 [\d.]+ ms, p95 [\d.]+ ms; fully accelerated", out), out


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_export_int8_with_calibration(models, tmp_path, capsys, suffix):
    samples = normal(8, 10, 10, 3)
    calibration = tmp_path / ("calib" + suffix)
    if suffix == ".npy":
        np.save(calibration, samples)
    else:
        np.savez(calibration, x=samples)
    out_path = tmp_path / "int8.tflite"
    code, out, err = run(capsys, "export", models["keras"], "--quantize", "int8",
                         "--calibration", calibration, "--int8-io", "-o", out_path)
    assert code == 0, err
    assert out_path.is_file()
    assert "CONV_2D" in out and "bytes" in out
    assert re.search(r"^input .*: int8 ", out, re.M), out
    keras_out = load(models["keras"]).predict(samples, verbose=0)
    report = tflite_export.verify(str(out_path), load(models["keras"]), samples)
    assert report["max_abs_error"] <= 0.05 * np.abs(keras_out).max(), report  # int8 steps
    code, out, _ = run(capsys, "bench", out_path, "--runs", "2")
    assert code == 0 and "median" in out


def test_export_int8_keeps_the_named_layers_float(models, tmp_path, capsys):
    calibration = tmp_path / "calib.npy"
    np.save(calibration, normal(8, 10, 10, 3))
    out_path = tmp_path / "mixed.tflite"
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "float16",
                       "--float-layers", "c1", "-o", out_path)
    assert_one_line_error(code, err, "--float-layers needs --quantize int8")
    code, out, err = run(capsys, "export", models["keras"], "--quantize", "int8", "--calibration",
                         calibration, "--float-layers", "c1", "-o", out_path)
    assert code == 0, err
    from tflite_export.float_layers import op_outputs  # noqa: PLC0415

    convolutions = [dtype for op, _, dtype in op_outputs(out_path.read_bytes()) if op == "CONV_2D"]
    assert convolutions[0] == np.float32 and set(convolutions[1:]) == {np.int8}, convolutions
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "int8", "--calibration",
                       calibration, "--float-layers", "c1,nope", "-o", out_path)
    assert_one_line_error(code, err, "no layer 'nope'")


def test_export_with_litert_quantizer_and_automatic_float_layers(models, tmp_path, capsys):
    samples = normal(16, 10, 10, 3)
    calibration = tmp_path / "calib.npy"
    np.save(calibration, samples)
    keras_model = load(models["keras"])
    scale = np.abs(keras_model.predict(samples, verbose=0)).max()
    out_path = tmp_path / "litert.tflite"
    code, out, err = run(capsys, "export", models["keras"], "--quantize", "int8", "--calibration",
                         calibration, "--quantizer", "litert", "--activations", "int16",
                         "-o", out_path)
    assert code == 0, err
    assert tflite_export.verify(str(out_path), keras_model, samples)["max_abs_error"] < 0.05 * scale
    code, out, err = run(capsys, "export", models["keras"], "--quantize", "weight_only",
                         "--quantizer", "litert", "--weights", "int4", "-o", out_path)
    assert code == 0, err
    assert tflite_export.verify(str(out_path), keras_model, samples)["max_abs_error"] < 0.2 * scale
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "int8", "--calibration",
                       calibration, "--weights", "int4", "-o", out_path)
    assert_one_line_error(code, err, "need quantizer='litert'")
    code, out, err = run(capsys, "export", models["keras"], "--quantize", "int8", "--calibration",
                         calibration, "--float-layers", "auto", "--float-tolerance", "0.5",
                         "-o", out_path)
    assert code == 0, err
    assert re.search(r"^float layers \(none\): output error \d+\.\d+%$", out, re.M), out
    assert re.search(r"^kept float: \(none\) \(output error [\d.]+%, tolerance 50\.00%\)$", out,
                     re.M), out
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "int8", "--calibration",
                       calibration, "--float-tolerance", "0.1", "-o", out_path)
    assert_one_line_error(code, err, "--float-tolerance is only used by --float-layers auto")


def test_missing_model(tmp_path, capsys):
    out_path = tmp_path / "out.keras"
    code, _, err = run(capsys, "prune", tmp_path / "nope.keras", "--sparsity", "0.5",
                       "-o", out_path)
    assert_one_line_error(code, err, "not found", "nope.keras")
    for argv in (["inspect", tmp_path / "nope.h5"], ["bench", tmp_path / "nope.tflite"]):
        assert_one_line_error(*run(capsys, *argv)[::2], "not found")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["x.keras", "x.h5"])
def test_corrupt_model(tmp_path, capsys, name):
    corrupt = tmp_path / name
    corrupt.write_bytes(b"\x00garbage, not a model\xff" * 20)
    code, _, err = run(capsys, "shrink", corrupt, "-o", tmp_path / "out.keras")
    assert_one_line_error(code, err, "cannot load a Keras model", name)
    assert os.listdir(tmp_path) == [name]


def test_corrupt_tflite(tmp_path, capsys):
    corrupt = tmp_path / "x.tflite"
    corrupt.write_bytes(b"garbage" * 10)
    assert_one_line_error(*run(capsys, "bench", corrupt)[::2], "TFLite")


def test_int8_without_calibration(models, tmp_path, capsys):
    out_path = tmp_path / "m.tflite"
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "int8", "-o", out_path)
    assert_one_line_error(code, err, "--calibration")
    assert os.listdir(tmp_path) == []


def test_wrong_calibration_shape(models, tmp_path, capsys):
    np.save(tmp_path / "calib.npy", np.zeros((4, 10, 9, 3), np.float32))
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "int8",
                       "--calibration", tmp_path / "calib.npy", "-o", tmp_path / "m.tflite")
    assert_one_line_error(code, err, "holds samples of shape [10, 9, 3]",
                          "the model's input is [10, 10, 3] per sample")
    assert os.listdir(tmp_path) == ["calib.npy"]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "1", "half"])
def test_sparsity_out_of_range(models, tmp_path, capsys, value):
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", value,
                       "-o", tmp_path / "out.keras")
    assert_one_line_error(code, err, "--sparsity", "[0, 1)")
    assert code == 2
    assert os.listdir(tmp_path) == []


def test_bad_ratios_file(models, tmp_path, capsys):
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps({"c1": 1.5}))
    code, _, err = run(capsys, "prune", models["keras"], "--ratios", ratios,
                       "-o", tmp_path / "o.keras")
    assert_one_line_error(code, err, "'c1'", "[0, 1)")
    ratios.write_text(json.dumps({"no_such_layer": 0.5}))
    code, _, err = run(capsys, "prune", models["keras"], "--ratios", ratios,
                       "-o", tmp_path / "o.keras")
    assert_one_line_error(code, err, "no_such_layer")
    assert os.listdir(tmp_path) == ["ratios.json"]


def test_unknown_criterion_and_option(models, tmp_path, capsys):
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5",
                       "--criterion", "magic", "-o", tmp_path / "o.keras")
    assert_one_line_error(code, err, "magic")
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "int4",
                       "-o", tmp_path / "m.tflite")
    assert_one_line_error(code, err, "int4")
    assert code == 2
    assert_one_line_error(*run(capsys, "inspect", models["keras"], "--bogus")[::2], "--bogus")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [
    ["prune", "{model}", "--sparsity", "0.5", "-o", "{missing}/out.keras"],
    ["shrink", "{model}", "-o", "{missing}/out_dir"],
    ["export", "{model}", "-o", "{missing}/m.tflite"],
])
def test_output_folder_must_exist(models, tmp_path, capsys, command):
    missing = tmp_path / "no" / "such"
    argv = [a.format(model=models["keras"], missing=missing) for a in command]
    assert_one_line_error(*run(capsys, *argv)[::2], "output folder does not exist")
    assert os.listdir(tmp_path) == []


def test_debug_shows_the_exception(tmp_path, capsys):
    corrupt = tmp_path / "x.h5"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(cli.CliError, match="cannot load"):
        cli.main(["--debug", "inspect", str(corrupt)])
    with pytest.raises(cli.CliError, match="cannot load"):
        cli.main(["inspect", str(corrupt), "--debug"])


def test_help_in_process(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("inspect", "prune", "shrink", "export", "bench"):
        assert command in out


def test_console_entry_point_starts():
    result = run_python("-m", "tfsynapse.cli", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: tfsynapse" in result.stdout


def test_export_sparse_weights(models, tmp_path, capsys):
    pruned = tmp_path / "pruned.keras"
    code, _, err = run(capsys, "prune", models["keras"], "--granularity", "connection",
                       "--criterion", "kernel_norm", "--scope", "global", "--sparsity", "0.8",
                       "-o", pruned)
    assert code == 0, err
    plain, sparse = tmp_path / "plain.tflite", tmp_path / "sparse.tflite"
    assert run(capsys, "export", pruned, "-o", plain)[0] == 0
    code, out, err = run(capsys, "export", pruned, "--sparse-weights", "-o", sparse)
    assert code == 0, err
    assert "DENSIFY" in out and sparse.stat().st_size < plain.stat().st_size
    code, _, err = run(capsys, "export", models["keras"], "--quantize", "dynamic",
                       "--sparse-weights", "-o", tmp_path / "d.tflite")
    assert_one_line_error(code, err, "sparse-weights")


@pytest.mark.parametrize("parse,text,value", [
    ("byte_size", "2MB", 2_000_000), ("byte_size", "1.5MiB", 1.5 * 2**20),
    ("byte_size", "500kB", 500_000), ("byte_size", "300000", 300_000),
    ("amount", "1.5M", 1_500_000), ("amount", "50k", 50_000), ("amount", "1.2e6", 1_200_000),
    ("amount", "1,000,000", 1_000_000), ("byte_size", "1,500kB", 1_500_000),
    ("milliseconds", "8ms", 8.0), ("milliseconds", "8 ms", 8.0), ("milliseconds", "8", 8.0)])
def test_budget_quantities_are_read_in_their_units(parse, text, value):
    """--target-size's MB are 10^6 bytes (MiB: 2^20), counts take k/M/G, a bare latency is ms."""
    from tfsynapse.cli import args as cli_args  # noqa: PLC0415

    assert getattr(cli_args, parse)(text) == pytest.approx(value)


@pytest.mark.parametrize("parse,text", [("byte_size", "2MBs"), ("byte_size", "-1MB"),
                                        ("amount", "5 apples"), ("milliseconds", "8s"),
                                        ("milliseconds", "0ms"), ("amount", "1,5M"),
                                        ("byte_size", "2,5MB"), ("amount", "1,0001")])
def test_budget_quantities_refuse_what_they_cannot_read(parse, text):
    import argparse  # noqa: PLC0415

    from tfsynapse.cli import args as cli_args  # noqa: PLC0415

    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive") as err:
        getattr(cli_args, parse)(text)
    if "," in text:  # a decimal comma is never read as a thousands separator
        assert "write decimals with a dot" in str(err.value)


def test_a_terminated_export_removes_its_temporary_folder(models, tmp_path):
    """SIGTERM while the converter runs: the command says so (exit 143) and leaves no
    ``tfsynapse-convert-*`` folder behind.

    Once in a fresh-clone CI run (2026-12-04) the export finished with exit 0 and no message.
    The race is this test's own: ``Popen.send_signal`` polls first and sends nothing to a
    process that has already exited, so when the test is descheduled between seeing the
    folder and signalling (a loaded 2-core machine), the export may finish in between and no
    signal is ever sent. The scenario is tried up to three times, every try must leave no
    folder, and a try that finished first is counted; one must be terminated as documented."""
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    finished = 0
    for attempt in range(3):
        temp = tmp_path / f"tmp{attempt}"
        temp.mkdir()
        out = tmp_path / f"out{attempt}.tflite"
        env = dict(os.environ, TMPDIR=str(temp))
        process = subprocess.Popen(
            [sys.executable, "-m", "tfsynapse.cli", "export", str(models["keras"]), "-o",
             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(temp.glob("tfsynapse-convert-*")) and process.poll() is None:
            assert time.monotonic() < deadline, "the export never made its folder"
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1][-2000:]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
        assert list(temp.glob("tfsynapse-convert-*")) == []
        if process.returncode == 0:  # the race above: finished instead of stopping
            finished += 1
            continue
        assert process.returncode == 143, err[-2000:]
        assert "tfsynapse: terminated" in err
        assert not out.exists()
        break
    else:
        raise AssertionError(f"SIGTERM never stopped the export ({finished} of 3 finished)")


@pytest.mark.parametrize("content, expected", [
    ("text", "is not a NumPy .npy or .npz file"),
    (np.array(["a", "b"]), "holds <U1 values, not numbers"),
    (np.float32(3.0), "holds an array of shape []: no samples"),
    (np.zeros((0, 10, 10, 3), "float32"), "holds an array of shape [0, 10, 10, 3]: no samples"),
    (np.zeros((4, 12, 12, 3), "float32"), "holds samples of shape [12, 12, 3]; the model's input "
                                          "is [10, 10, 3]"),
])
def test_malformed_data_files_are_refused_with_what_is_wrong(models, tmp_path, capsys, content,
                                                             expected):
    path = tmp_path / "x.npy"
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content)
    code, _, err = run(capsys, "prune", models["keras"], "--sparsity", "0.5", "--data", path,
                       "-o", tmp_path / "out.keras")
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "out.keras").exists()
