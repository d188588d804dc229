"""The everyday path: the README's API tour as written, schedules that fit, progress, warnings."""

import os
import re
import warnings

import numpy as np
import pytest

from conftest import ROOT, run_python, tensorboard_scalars
import tfsynapse
from tfsynapse.backends.tf_keras import keras, pruning_callbacks
from tfsynapse.datasets import load_digits
from tfsynapse.models import conv_bn_cnn



def _python_blocks(path):
    with open(os.path.join(ROOT, path)) as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), flags=re.S)


def _readme_python_blocks():
    """The API tour's blocks: docs/getting-started.md's (tf_keras, then Keras 3); the README's
    fifteen lines are its first block, word for word (checked below), so they run once."""
    return _python_blocks(os.path.join("docs", "getting-started.md"))


def test_the_readmes_fifteen_lines_are_the_guides_first_block():
    (readme,) = _python_blocks("README.md")
    assert readme == _readme_python_blocks()[0]
    assert len(readme.strip().splitlines()) <= 16


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = load_digits(size=16, seed=0)
    return x[:480], y[:480]


def _model():
    keras.utils.set_random_seed(0)
    return conv_bn_cnn((16, 16, 1), 10, widths=(16, 32))


def _tfsynapse_warnings(record):
    return [str(w.message) for w in record if "tfsynapse" in str(w.message)]


def test_readme_api_tour_runs_as_written_and_reaches_its_target(digits, capsys):
    blocks = _readme_python_blocks()
    assert blocks, "the README has no python block"
    x, y = digits
    for block in blocks:
        namespace = {"model": _model(), "x": x, "y": y}
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            exec(compile(block, "getting-started.md", "exec"), namespace)  # noqa: S102 - our docs
        assert not _tfsynapse_warnings(record), _tfsynapse_warnings(record)
        if "pruned" in namespace:
            assert namespace["pruned"].pruned_fraction() == pytest.approx(0.5)
        if "tflite" in namespace:
            assert namespace["tflite"][4:8] == b"TFL3"
    out = capsys.readouterr().out
    assert "pruning: epoch 5: 50.0% of prunable channels pruned" in out
    assert "MACs" in out and "->" in out  # shrink(verbose=1) printed its table


def test_the_tf_keras_training_block_runs_unchanged_on_a_keras3_model(digits, capsys):
    """One training script for both Keras: the README's tf_keras block, UpdatePruningStep
    included, on a Keras 3 model."""
    block = _readme_python_blocks()[0]
    assert "tfsynapse.UpdatePruningStep()" in block
    x, y = digits
    model = conv_bn_cnn((16, 16, 1), 10, widths=(16, 32), backend="keras3")
    namespace = {"model": model, "x": x, "y": y}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        exec(compile(block, "getting-started.md", "exec"), namespace)  # noqa: S102 - our docs
    assert not _tfsynapse_warnings(record), _tfsynapse_warnings(record)
    assert tfsynapse.backends.backend_name(namespace["small"]) == "keras3"
    assert namespace["pruned"].pruned_fraction() == pytest.approx(0.5)
    assert namespace["tflite"][4:8] == b"TFL3"
    assert "pruning: epoch 5: 50.0% of prunable channels pruned" in capsys.readouterr().out


def test_update_pruning_step_on_keras3_still_warns_when_the_target_was_not_reached(digits):
    x, y = digits
    model = conv_bn_cnn((16, 16, 1), 10, widths=(8, 8), backend="keras3")
    schedule = tfsynapse.PolynomialDecay(0.0, 0.5, 0, 10_000, frequency=10)
    pruned = tfsynapse.prune_synaptic(model, schedule, criterion="l1", scope="layer")
    pruned.compile("adam", tfsynapse.backends.get("keras3").keras.losses.
                   SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(UserWarning, match="not its target 50.0%"):
        pruned.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0,
                   callbacks=[tfsynapse.UpdatePruningStep()])


def test_a_schedule_longer_than_the_training_warns_once_with_both_numbers(digits):
    x, y = digits
    schedule = tfsynapse.PolynomialDecay(0.0, 0.5, 0, 2000, frequency=100)  # the old README's
    pruned = tfsynapse.prune_synaptic(_model(), schedule, criterion="l1", granularity="filter",
                                      scope="layer")
    pruned.compile("adam", "sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match=r"\(fit\): the pruning schedule applied \d+\.\d% "
                                         r"sparsity, not its target 50\.0%: training stopped "
                                         r"at step \d+, before the schedule's end_step 2000"):
        pruned.fit(x, y, epochs=2, batch_size=32, verbose=0,
                   callbacks=[tfsynapse.UpdatePruningStep()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: strip_pruning does not repeat it
        tfsynapse.strip_pruning(pruned)
    # trained with tfmot's own callback, strip_pruning is the one that warns
    again = tfsynapse.prune_synaptic(_model(), schedule, criterion="l1", granularity="filter",
                                     scope="layer")
    again.compile("adam", "sparse_categorical_crossentropy")
    again.fit(x, y, epochs=1, batch_size=32, verbose=0,
              callbacks=[pruning_callbacks.UpdatePruningStep()])
    with pytest.warns(UserWarning, match=r"\(strip_pruning\).*fit_schedule"):
        tfsynapse.strip_pruning(again)


def test_a_schedule_that_starts_too_late_says_pruning_never_started(digits):
    x, y = digits
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=10_000)
    pruned = tfsynapse.prune_synaptic(_model(), schedule, criterion="l1", granularity="filter",
                                      scope="layer")
    pruned.compile("adam", "sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match="applied 0.0% .*pruning never started"):
        pruned.fit(x, y, epochs=1, batch_size=32, verbose=0,
                   callbacks=[tfsynapse.UpdatePruningStep()])


def test_fit_schedule_ends_inside_the_training_on_an_update():
    schedule = tfsynapse.fit_schedule(0.6, epochs=10, steps_per_epoch=45)
    config = schedule.get_config()["config"]
    begin, end, frequency = config["begin_step"], config["end_step"], config["frequency"]
    assert config["final_sparsity"] == 0.6 and frequency == 11
    assert (end - begin) % frequency == 0 and end <= 0.7 * 450
    assert 0.6 * 450 < end
    by_samples = tfsynapse.fit_schedule(0.6, epochs=10, samples=1437, batch_size=32)
    assert by_samples.get_config() == schedule.get_config()  # ceil(1437 / 32) == 45
    late = tfsynapse.fit_schedule(0.5, epochs=4, steps_per_epoch=3, start_epoch=2,
                                  end_fraction=1.0).get_config()["config"]
    assert late["begin_step"] == 6 and late["end_step"] <= 11
    for bad in ({"steps_per_epoch": None}, {"steps_per_epoch": 0},
                {"steps_per_epoch": 5, "samples": 10}, {"steps_per_epoch": 5, "end_fraction": 0},
                {"steps_per_epoch": 5, "start_epoch": 3}):
        with pytest.raises(ValueError):
            tfsynapse.fit_schedule(0.5, epochs=3, **bad)
    with pytest.raises(ValueError):
        tfsynapse.fit_schedule(1.0, epochs=3, steps_per_epoch=5)


def test_progress_prints_logs_and_writes_tensorboard(digits, tmp_path, capsys):
    x, y = digits
    schedule = tfsynapse.fit_schedule(0.5, epochs=2, samples=len(x), batch_size=32,
                                      end_fraction=0.5)
    pruned = tfsynapse.prune_synaptic(_model(), schedule, criterion="kernel_norm")
    pruned.compile("adam", "sparse_categorical_crossentropy")
    history = pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[
        tfsynapse.UpdatePruningStep(), tfsynapse.PruningProgress(log_dir=str(tmp_path))])
    out = capsys.readouterr().out
    assert re.search(r"pruning: epoch 2: 50\.0% of prunable connections pruned; channels kept "
                     r"\d+/\d+; MACs kept \d+\.\d%", out), out
    assert history.history["pruned_fraction"][-1] == pytest.approx(0.5, abs=0.01)
    assert 0 < history.history["macs_kept"][-1] <= 1
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["pruning/pruned_fraction"][-1] == pytest.approx(0.5, abs=0.01)
    per_weight = tfsynapse.mask_sparsity(pruned)  # connections: the kernels' masked fraction
    assert per_weight and max(per_weight.values()) > 0.3
    for name, value in per_weight.items():
        assert scalars[f"sparsity/{name}"][-1] == pytest.approx(value, abs=1e-6), name
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="prune_synaptic"):
        plain.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0,
                  callbacks=[tfsynapse.PruningProgress()])


# ------------------------------------------------------------------------ messages and docs
def test_a_misspelled_or_misplaced_criterion_lists_every_criterion_by_granularity():
    model = _model()
    with pytest.raises(ValueError, match=r"unknown criterion 'dscor'\. Did you mean 'dscore'\? "
                                         r"Filter criteria \(granularity='filter'\): .*dstep.*; "
                                         r"connection criteria .*kernel_norm"):
        tfsynapse.prune_once(model, 0.5, criterion="dscor")
    with pytest.raises(ValueError, match="'kernel_norm' scores connections, not filters: use "
                                         "granularity='connection'"):
        tfsynapse.prune_once(model, 0.5, criterion="kernel_norm", granularity="filter")


def test_calibration_shape_errors_name_the_real_mismatch():
    import tflite_export

    model = _model()
    with pytest.raises(ValueError, match=r"dimension 3 is 3, not 1\.$"):
        tflite_export.convert(model, "int8", representative_dataset=[np.zeros((2, 16, 16, 3))])
    with pytest.raises(ValueError, match=r"one sample without its batch axis; pass x\[None\]"):
        tflite_export.convert(model, "int8", representative_dataset=[np.zeros((16, 16, 1))])


def test_subpackages_and_dir_of_the_package():
    code = ("import tfsynapse; print(tfsynapse.graph.Rule.__name__); "
            "print(sorted(n for n in dir(tfsynapse) if n.startswith('_')))")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["Rule", "['__version__']"]
    assert "importlib" not in dir(tfsynapse) and "fit_schedule" in dir(tfsynapse)


def test_saved_models_load_without_prune_scope(tmp_path):
    pruned = tfsynapse.prune_synaptic(_model(), tfsynapse.ConstantSparsity(0.5, 0), criterion="l1",
                                      granularity="filter")
    pruned.save(tmp_path / "pruned.keras")
    tfsynapse.to_synaptic(_model()).save(tmp_path / "synaptic.keras")
    # a fresh process with only tf_keras imported: Keras finds PrunedModel by its module path
    code = ("import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'; import tf_keras as keras; "
            f"m = keras.models.load_model({str(tmp_path / 'pruned.keras')!r}); "
            "print(type(m).__name__, m.pruning_options.criterion)")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["PrunedModel", "l1"]
    # once tfsynapse's layers are imported (as here), a plain load_model finds SynapticConv2D
    loaded = keras.models.load_model(tmp_path / "synaptic.keras")
    assert any(type(layer).__name__ == "SynapticConv2D" for layer in loaded.layers)


def test_the_guides_command_line_block_runs_as_written(digits, tmp_path, monkeypatch):
    """The first line runs through the installed ``tfsynapse`` script; the others in-process
    (``cli.main`` with the same words), sparing a TensorFlow import per line."""
    import shlex
    import subprocess
    import sys

    from tfsynapse import cli

    with open(os.path.join(ROOT, "docs", "guides", "cli.md")) as handle:
        blocks = re.findall(r"```bash\n(.*?)```", handle.read(), flags=re.S)
    block = next(b for b in blocks if b.startswith("tfsynapse inspect"))
    x, y = digits
    model = _model()
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x[:128])
    np.save(tmp_path / "y.npy", y[:128])
    np.save(tmp_path / "calib.npy", x[:32])
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.chdir(tmp_path)
    for i, line in enumerate(block.strip().splitlines()):
        command = shlex.split(line, comments=True)
        assert command[0] == "tfsynapse", line
        if i == 0:
            result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=300, check=False)
            assert result.returncode == 0, (line, result.stderr[-2000:])
        else:
            assert cli.main(command[1:]) == 0, line
    for name in ("pruned.keras", "small.keras", "model.tflite"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_readme_layout_lists_every_example():
    with open(os.path.join(ROOT, "README.md")) as handle:
        layout = handle.read().split("## Layout", 1)[1]
    for name in sorted(os.listdir(os.path.join(ROOT, "examples"))):
        if name.endswith(".py"):
            assert f"`{name}`" in layout, name


def test_a_pruned_model_saved_before_the_backend_packages_still_loads(tmp_path):
    """Files of tfsynapse 0.1.0 name ``tfsynapse.pruning.model`` as PrunedModel's module."""
    import json  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    pruned = tfsynapse.prune_synaptic(_model(), tfsynapse.ConstantSparsity(0.5, 0), criterion="l1",
                                      granularity="filter")
    new, old = tmp_path / "new.keras", tmp_path / "old.keras"
    pruned.save(new)
    with zipfile.ZipFile(new) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                assert config["module"] == "tfsynapse.backends.tf_keras.pruned_model"
                config["module"] = "tfsynapse.pruning.model"
                data = json.dumps(config).encode()
            target.writestr(item, data)
    code = ("import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'; import tf_keras as keras; "
            f"m = keras.models.load_model({str(old)!r}); print(type(m).__name__)")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["PrunedModel"]
