"""What the command-line tests share: a tiny tf_keras model saved in each format, in-process
runs of ``cli.main`` and the one-line error check (imported by test_cli*.py)."""

import pytest

import tfsynapse
from conftest import dead_filters
from tfsynapse import cli
from tfsynapse.backends.tf_keras import keras

FORMATS = {"keras": "model.keras", "h5": "model.h5", "savedmodel": "model_dir"}


def tiny_model():
    """Conv-BN-ReLU-Conv-GAP-Dense on 10x10x3 in tf_keras (8 filters each)."""
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


def load(path):
    """Loads a model file the command line wrote (wrappers included)."""
    with tfsynapse.prune_scope():
        return keras.models.load_model(path, compile=False)


def zero_filters(model, name="c1"):
    """How many of layer ``name``'s filters are entirely zero."""
    return len(dead_filters(model.get_layer(name).get_weights()[0]))


def run(capsys, *argv):
    """``cli.main(argv)`` in-process: ``(exit code, stdout, stderr)``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """The command failed with one ``tfsynapse: error:`` line holding every fragment."""
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tfsynapse: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny model saved as .keras and .h5 (SavedModel only where needed: it is slow)."""
    folder = tmp_path_factory.mktemp("models")
    model = tiny_model()
    paths = {}
    for fmt in ("keras", "h5"):
        paths[fmt] = folder / FORMATS[fmt]
        model.save(paths[fmt], save_format=fmt)
    return paths


@pytest.fixture(scope="module")
def tflite_float(models, tmp_path_factory):
    """The tiny model exported by the command line as a float TFLite file."""
    path = tmp_path_factory.mktemp("tflite") / "float.tflite"
    assert cli.main(["export", str(models["keras"]), "-o", str(path)]) == 0
    return path
