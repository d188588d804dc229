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


def _fake_tfds(monkeypatch, images, labels, shape):
    """A tensorflow_datasets stand-in whose splits hold ``images`` (uint8, any sizes)."""
    from tfsynapse.backends.tf_keras import tf  # noqa: PLC0415

    def make_split():
        return tf.data.Dataset.from_generator(
            lambda: zip(images, labels),
            output_signature=(tf.TensorSpec(shape, tf.uint8), tf.TensorSpec((), tf.int64)))

    info = types.SimpleNamespace(supervised_keys=("image", "label"),
                                 features={"image": types.SimpleNamespace(shape=shape)})

    def load(name, split, as_supervised, with_info):
        assert as_supervised and with_info and split == ["train", "test"]
        return [make_split(), make_split()], info

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(load=load))


def test_tfds_images_of_different_sizes_are_resized_one_by_one_never_padded(monkeypatch):
    """Two images, 4x6 and 8x8, each filled with one value: resized to 2x2 each keeps its
    value everywhere (a padded batch would mix in zeros). Without size: refused, named."""
    images = [np.full((4, 6, 3), 255, np.uint8), np.full((8, 8, 3), 51, np.uint8)]
    _fake_tfds(monkeypatch, images, [1, 0], (None, None, 3))
    (x, y), (xt, yt) = datasets.load_tfds("flowers", size=(2, 2))
    assert x.shape == xt.shape == (2, 2, 2, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[1], 0.2, atol=1e-6)
    assert y.tolist() == [1, 0] and y.dtype == np.int64
    with pytest.raises(ValueError, match=r"the images of 'flowers' differ in size .*size="):
        datasets.load_tfds("flowers")


def test_tfds_images_of_one_size_load_without_resizing(monkeypatch):
    images = [np.full((4, 4, 1), 255, np.uint8), np.zeros((4, 4, 1), np.uint8)]
    _fake_tfds(monkeypatch, images, [3, 4], (4, 4, 1))
    (x, y), _ = datasets.load_tfds("mnistlike")
    assert x.shape == (2, 4, 4, 1) and x.max() == 1.0 and x.min() == 0.0 and y.tolist() == [3, 4]
