"""The README's main job, in its short form: the quickstart runs end to end and writes its outputs."""

import json
import os

import pytest

from conftest import ROOT, run_python


LONG = os.environ.get("TFSYNAPSE_LONG") == "1"


@pytest.mark.parametrize("criterion,extra", [
    pytest.param("dscore", [], id="dscore"),
    # the Synaptic Strength path's steps have unit tests on both Keras (test_layers,
    # test_accuracy_tools, test_keras3) and README's Keras 3 lines run in test_journey; the
    # whole quickstart runs are in long mode (CI's 25 minutes)
    pytest.param("synaptic_strength", [], id="synaptic", marks=[
        pytest.mark.slow, pytest.mark.skipif(not LONG, reason="TFSYNAPSE_LONG=1 (2 minutes)")]),
    pytest.param("synaptic_strength", ["--backend=keras3"], id="synaptic-keras3", marks=[
        pytest.mark.slow, pytest.mark.skipif(not LONG, reason="TFSYNAPSE_LONG=1 (2 minutes)")]),
    pytest.param("dscore", ["--sensitivity", "--nodistill"], id="sensitivity", marks=[
        pytest.mark.slow, pytest.mark.skipif(not LONG, reason="TFSYNAPSE_LONG=1 (3 minutes)")])])
def test_quickstart_quick_run(tmp_path, criterion, extra):
    result = run_python(os.path.join(ROOT, "examples", "quickstart.py"), "--quick",
                        f"--criterion={criterion}", f"--output_dir={tmp_path}", *extra,
                        timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows["criterion"] == criterion and rows["distilled"] == ("--nodistill" not in extra)
    assert rows["backend"] == ("keras3" if "--backend=keras3" in extra else "tf_keras")
    assert rows["macs_shrunk"] < rows["macs_dense"] and rows["params_shrunk"] < rows["params_dense"]
    assert rows["speedup_int8"] > 0 and rows["size_ratio_int8"] > 1.0
    assert 0.0 < rows["accuracy_control_keras"] <= 1.0 and 0.0 < rows["accuracy_dense_int8"] <= 1.0
    assert 0.0 <= rows["accuracy_int8_tflite"] <= 1.0 and rows["int8_top1_agreement"] >= 0.9
    # sensitivity ratios depend on the (2-epoch) curves; the fixed ratio and 95% do not
    assert rows["connection_sparsity"] > (0.0 if "--sensitivity" in extra else 0.3)
    for name in ("shrunk_int8.tflite", "dense_int8.tflite", "results.md", "channels.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    if criterion == "synaptic_strength":
        assert (tmp_path / "strengths.png").exists()
        assert "of the strengths are exactly zero" in result.stdout
    elif "--sensitivity" in extra:
        assert (tmp_path / "sensitivity.png").exists() and (tmp_path / "sensitivity.json").exists()
    assert "| accuracy (Keras) |" in result.stdout
    for noise in ("oneDNN", "cudart", "absl::InitializeLog", "fully_quantize", "XNNPACK"):
        assert noise not in result.stderr + result.stdout, noise  # quiet unless --verbose


def test_keras_applications_example_runs(tmp_path):
    result = run_python(os.path.join(ROOT, "examples", "keras_applications.py"),
                        "--model=MobileNetV2", "--size=32", "--runs=2",
                        f"--output_dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "speedup" in result.stdout and len(list(tmp_path.glob("*.tflite"))) == 2


@pytest.mark.keras_independent
def test_quickstart_refuses_flags_its_path_would_ignore():
    for flags, named in ((["--criterion=synaptic_strength", "--sensitivity"], "--sensitivity"),
                         (["--sparsity=0.9"], "--sparsity (synaptic_strength only"),
                         (["--max_drop=0.02"], "--max_drop (it needs --sensitivity)"),
                         (["--sensitivity", "--ratio=0.3"], "--ratio (--sensitivity chooses"),
                         (["--nodistill", "--alpha=0.5"], "--alpha (--nodistill)")):
        result = run_python(os.path.join(ROOT, "examples", "quickstart.py"), *flags, timeout=120)
        assert result.returncode != 0 and "not used by this run" in result.stderr, flags
        assert named in result.stderr, (flags, result.stderr[-500:])
