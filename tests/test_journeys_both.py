"""Journeys that must behave alike on both Keras, each guarding a failure that a new user met
on one of them (issue #31): files that load in a fresh process, the CLI's data and formats,
distillation with progress, numeric budgets, a latency function that returns no number."""

import os
import textwrap

import numpy as np
import pytest

from conftest import both_backends, dead_filters, rand_inputs, run_python, small_cnn
import tfsynapse
from tfsynapse import cli

backend = both_backends(globals())
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def _labels(model, n=64, seed=0):
    classes = int(model.outputs[0].shape[-1])
    return np.random.default_rng(seed).integers(0, classes, n).astype("int64")


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _pruned_mid_training(backend, model):
    """A model from prune_synaptic trained one epoch of a schedule that goes on (mid-schedule)."""
    keras = tfsynapse.backends.get(backend).keras
    x, y = rand_inputs(model, n=64), _labels(model)
    schedule = tfsynapse.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=2)
    pruned = tfsynapse.prune_synaptic(model, schedule, criterion="l1", scope="layer")
    pruned.compile("adam", _loss(keras))
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0,
               callbacks=[tfsynapse.UpdatePruningStep()])
    return pruned, x


def _run_python(code):
    return run_python("-c", textwrap.dedent(code))


def test_a_file_saved_mid_training_loads_in_a_fresh_process_and_in_the_cli(backend, tmp_path,
                                                                         capsys):
    """Only ``import tfsynapse`` (which imports nothing yet) before the Keras's own
    ``load_model``: the pruned model must find its planner (``backends.provider``)."""
    pruned, x = _pruned_mid_training(backend, small_cnn())
    path = str(tmp_path / "mid.keras")
    pruned.save(path)
    masks = [m.copy() for m in pruned.mask_values()]
    np.save(tmp_path / "x.npy", x[:4])
    keras_module = "keras" if backend == "keras3" else "tf_keras"
    result = _run_python(f"""
        import numpy as np, tfsynapse, tensorflow, {keras_module} as keras  # TF looks for Keras
        model = keras.models.load_model({path!r}, compile=False)
        print(type(model).__name__, round(model.pruned_fraction(), 4))
        np.save({str(tmp_path / 'out.npy')!r}, np.asarray(model(np.load({str(tmp_path / 'x.npy')!r}))))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == str(round(pruned.pruned_fraction(), 4))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.asarray(pruned(x[:4])),
                               atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(masks, pruned.mask_values()))
    assert cli.main(["shrink", path, "-o", str(tmp_path / "small.keras")]) == 0
    assert "saved" in capsys.readouterr().out


def test_the_cli_prunes_with_labelled_data_and_fine_tunes(backend, tmp_path, capsys):
    model = small_cnn()
    path, out = str(tmp_path / "dense.keras"), str(tmp_path / "pruned.keras")
    model.save(path)
    x, y = rand_inputs(model, n=48), _labels(model, n=48)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    code = cli.main(["prune", path, "--sparsity", "0.5", "--data",
                     f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", "--finetune-epochs", "1",
                     "-o", out])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "accuracy after fine-tuning" in printed
    loaded = tfsynapse.backends.get(backend).load_model(out)
    kernel = np.asarray(loaded.get_layer("c3").kernel)
    assert dead_filters(kernel)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_every_file_the_cli_writes_it_reads_back(backend, tmp_path, capsys, suffix):
    model = small_cnn()
    path = str(tmp_path / f"dense{suffix}")
    assert cli.main(["prune", _saved(model, tmp_path), "--sparsity", "0.5", "-o", path]) == 0
    small = str(tmp_path / f"small{suffix}")
    assert cli.main(["shrink", path, "-o", small]) == 0
    assert cli.main(["inspect", small]) == 0
    assert tfsynapse.backends.name_for_file(small) == backend
    capsys.readouterr()


def _saved(model, folder):
    path = str(folder / "source.keras")
    model.save(path)
    return path


def test_progress_runs_around_a_distiller_of_a_pruned_student(backend, capsys):
    keras = tfsynapse.backends.get(backend).keras
    teacher = small_cnn()
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    x, y = rand_inputs(teacher, n=32), _labels(teacher, n=32)
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=1, frequency=1)
    pruned = tfsynapse.prune_synaptic(student, schedule, criterion="l1", granularity="filter",
                                      scope="layer")
    distiller = tfsynapse.Distiller(pruned, teacher)
    distiller.compile("adam", _loss(keras))
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0,
                  callbacks=[tfsynapse.UpdatePruningStep(), tfsynapse.PruningProgress()])
    assert "pruning: epoch 1: 50.0% of prunable channels pruned" in capsys.readouterr().out


def test_a_distiller_refuses_models_of_two_keras(backend):
    other = "keras3" if backend == "tf_keras" else "tf_keras"
    with pytest.raises(TypeError, match="same Keras"):
        tfsynapse.Distiller(small_cnn(), small_cnn(backend=other))


@pytest.mark.parametrize("make", [np.float32, np.float64, np.int64])
def test_numpy_scalar_budgets_are_accepted(backend, make):
    model = small_cnn()
    budget = make(int(0.6 * tfsynapse.count_macs(model)))
    pruned = tfsynapse.prune_to_budget(model, macs=budget, round_to=1)
    assert tfsynapse.count_macs(tfsynapse.shrink(pruned)) <= budget


@pytest.mark.parametrize("returned", [None, "12.5 ms", float("nan")])
def test_a_latency_function_that_returns_no_number_is_named(backend, returned):
    model = small_cnn()
    with pytest.raises(ValueError, match=r"measure_latency returned .* must return the latency"):
        tfsynapse.prune_to_budget(model, latency_ms=1.0,
                                  measure_latency=lambda tflite, threads: returned)


def _dict_model():
    """Two named inputs given in an order that is not sorted, two named outputs."""
    keras = tfsynapse.backends.get(backend_name()).keras
    first, second = keras.Input((8, 8, 3), name="z_image"), keras.Input((8, 8, 3), name="a_image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(first)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(second)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(
        keras.layers.Concatenate(name="cat")([x, y]))
    outputs = {"logits": keras.layers.Dense(3, name="head")(pooled),
               "aux": keras.layers.Dense(2, name="aux")(keras.layers.ReLU(name="r")(pooled))}
    return keras.Model({"z_image": first, "a_image": second}, outputs)


def backend_name():
    from conftest import _CURRENT  # noqa: PLC0415

    return _CURRENT["backend"]


def test_shrink_keeps_dict_inputs_by_name_and_dict_outputs(backend):
    model = _dict_model()
    rng = np.random.default_rng(0)
    data = {"z_image": rng.normal(size=(2, 8, 8, 3)).astype("float32"),
            "a_image": 5.0 + rng.normal(size=(2, 8, 8, 3)).astype("float32")}
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
    small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.mac_reduction > 0
    expected, got = pruned(data), small(data)
    assert isinstance(got, dict) and list(got) == ["logits", "aux"]
    for key in ("logits", "aux"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(expected[key]), atol=1e-5)
    swapped = {"z_image": data["a_image"], "a_image": data["z_image"]}  # fed by name
    assert not np.allclose(np.asarray(small(swapped)["logits"]), np.asarray(got["logits"]))


def test_the_plans_keep_flows_from_the_pruned_model_through_strip_to_shrink(backend):
    """shrink removes what the plan pruned (not what happens to be zero), and refuses a Keep
    value that would remove live units."""
    model = small_cnn()
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=1, frequency=1)
    pruned = tfsynapse.prune_synaptic(model, schedule, criterion="l1", granularity="filter",
                                      scope="layer")
    keras = tfsynapse.backends.get(backend).keras
    x = rand_inputs(model, n=16)
    pruned.compile("adam", _loss(keras))
    pruned.fit(x, _labels(model, n=16), epochs=1, batch_size=16, verbose=0,
               callbacks=[tfsynapse.UpdatePruningStep()])
    keep = pruned.keep()
    stripped = tfsynapse.strip_pruning(pruned)
    head = stripped.get_layer("c3")
    kernel = np.asarray(head.kernel).copy()
    alive = np.nonzero(keep["c3"])[0][0]
    kernel[..., alive] = 0.0  # a kept unit that happens to be zero: the plan keeps it
    head.kernel.assign(kernel)
    if head.bias is not None:
        bias = np.asarray(head.bias).copy()
        bias[alive] = 0.0
        head.bias.assign(bias)
    small = tfsynapse.shrink(stripped)
    assert int(small.get_layer("c3").kernel.shape[-1]) == int(keep["c3"].sum())
    zeros = tfsynapse.shrink(stripped, keep=None)  # the zeros contract: the zero unit goes too
    assert int(zeros.get_layer("c3").kernel.shape[-1]) == int(keep["c3"].sum()) - 1
    wrong = {name: np.ones_like(kept) for name, kept in keep.items()}
    wrong["c3"] = ~keep["c3"]  # removes the live units
    with pytest.raises(ValueError, match="whose weights are not zero"):
        tfsynapse.shrink(stripped, keep=wrong)
    with pytest.raises(ValueError, match="belongs to another model"):
        tfsynapse.shrink(stripped, keep={"c3": np.ones(5, bool)})
    with pytest.raises(ValueError, match="does not have"):
        tfsynapse.shrink(stripped, keep={"no_such_group": np.ones(5, bool)})
