"""The bundled data loaders: offline first, clear errors for bad arguments and for tfds."""

import sys
import types

import numpy as np
import pytest

from tfsynapse import datasets


def test_digits_split_is_stratified_and_bad_fractions_are_refused():
    (x, y), (xt, yt) = datasets.load_digits(size=8, test_fraction=0.2, seed=1)
    assert x.shape[1:] == (8, 8, 1) and len(xt) == pytest.approx(0.2 * 1797, abs=10)
    assert set(np.unique(yt)) == set(range(10))
    for bad in (0, 1, 1.5, -0.2, True, "0.2"):
        with pytest.raises(ValueError, match="test_fraction must be a number in"):
            datasets.load_digits(size=8, test_fraction=bad)


@pytest.mark.parametrize("error,message", [
    (ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources"),
     "cannot import 'importlib_resources' to load 'cifar10': pip install importlib_resources"),
    (ValueError("Unknown split 'test'. Should be one of ['train']."),
     "has no 'train' and 'test' splits"),
    (ConnectionError("no route to host"), "It needs the internet once"),
])
def test_tfds_failures_say_what_went_wrong(monkeypatch, error, message):
    def load(*args, **kwargs):
        raise error

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(load=load))
    with pytest.raises((RuntimeError, ValueError), match=message):
        datasets.load_tfds("cifar10")
