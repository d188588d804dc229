"""Small real data sets for the examples and benchmarks, offline first.

* ``load_digits``: scikit-learn's 1,797 handwritten 8x8 digits (installed with scikit-learn),
  upsampled to a CNN-friendly size. The quickstart's default.
* ``load_fashion_mnist``: 70,000 real 28x28 images; read from Debian's package
  ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``) when present, else
  through ``tf_keras.datasets.fashion_mnist`` (which downloads).
* ``load_tfds``: any TensorFlow Datasets image classification set (needs the internet once).
"""

import gzip
import os

import numpy as np

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def _split(x, y, test_fraction, seed):
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), e.g. 0.2; got "
                         f"{test_fraction!r}.")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):  # stratified
        idx = rng.permutation(np.nonzero(y == label)[0])
        cut = int(round(len(idx) * test_fraction))
        test.extend(idx[:cut])
        train.extend(idx[cut:])
    train, test = rng.permutation(train), rng.permutation(test)
    return (x[train], y[train]), (x[test], y[test])


def load_digits(size=16, test_fraction=0.2, seed=0):
    """scikit-learn's handwritten digits, upsampled to ``size`` x ``size`` x 1, values in [0, 1].

    Args:
      size: output height and width (a multiple of 8 keeps the upsampling exact).
      test_fraction: held-out fraction (stratified by class).
      seed: seed of the split.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``, float32 images and int64 labels.

    Raises:
      ImportError: scikit-learn is missing (``pip install tfsynapse[examples]``).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415
    except ImportError as err:
        raise ImportError("the digits data ships with scikit-learn: pip install 'tfsynapse[examples]'") from err
    from tfsynapse.backends.tf_keras import tf  # noqa: PLC0415

    digits = sk_load_digits()
    x = (digits.images.astype("float32") / 16.0)[..., None]
    if size != 8:
        x = tf.image.resize(x, (size, size), method="bilinear").numpy()
    return _split(x, digits.target.astype("int64"), test_fraction, seed)


def _read_idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist():
    """Fashion-MNIST (60k train / 10k test, 28x28x1 in [0, 1]), offline from Debian if installed.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``.

    Raises:
      RuntimeError: neither the Debian package nor a download is available.
    """
    for folder in FASHION_MNIST_DIRS:
        names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        paths = [os.path.join(folder, n) for n in names]
        if all(os.path.exists(p) for p in paths):
            xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
            break
    else:
        from tfsynapse.backends.tf_keras import keras  # noqa: PLC0415

        try:
            (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
        except Exception as err:  # noqa: BLE001 - any download failure
            raise RuntimeError(
                "Fashion-MNIST is not installed and could not be downloaded. On Debian/Ubuntu: "
                "sudo apt-get install dataset-fashion-mnist"
            ) from err
    scale = lambda a: (a.astype("float32") / 255.0)[..., None]  # noqa: E731
    return (scale(xtr), ytr.astype("int64")), (scale(xte), yte.astype("int64"))


def load_tfds(name, size=None):
    """An image classification data set from TensorFlow Datasets, as numpy arrays in [0, 1].

    Args:
      name: the tfds name, e.g. 'cifar10'.
      size: optional (height, width) to resize to; required for a data set whose images
        differ in size (each image is resized on its own, never padded).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``.

    Raises:
      ValueError: the data set has no 'train' and 'test' splits, or its images differ in size
        and ``size`` is not given.
      RuntimeError: tensorflow_datasets misses a module (named, with the pip command), or the
        data set cannot be downloaded (no internet), with what to do instead.
    """
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415

        splits, info = tfds.load(name, split=["train", "test"], as_supervised=True,
                                 with_info=True)
    except ModuleNotFoundError as err:  # a broken install, not the network
        raise RuntimeError(f"tensorflow_datasets cannot import '{err.name}' to load '{name}': "
                           f"pip install {err.name}") from err
    except ValueError as err:
        if "split" not in str(err).lower():
            raise
        raise ValueError(f"'{name}' has no 'train' and 'test' splits ({str(err)[:200]}); load "
                         "it with tensorflow_datasets directly and split it yourself.") from err
    except Exception as err:  # noqa: BLE001 - tfds raises many kinds on network failure
        raise RuntimeError(
            f"could not load '{name}' with tensorflow_datasets ({type(err).__name__}: "
            f"{str(err)[:200]}). It needs the internet once; offline, use --dataset=digits or "
            "--dataset=fashion_mnist."
        ) from err
    image_key = (info.supervised_keys or ("image",))[0]
    shape = tuple(info.features[image_key].shape)
    if None in shape[:2] and size is None:
        raise ValueError(f"the images of '{name}' differ in size (shape {shape}): give "
                         "size=(height, width) to resize each one.")
    return tuple(_as_arrays(split, size) for split in splits)


def _as_arrays(split, size):
    """``(x, y)`` of one tfds split: images as float32 in [0, 1], each resized to ``size``
    (when given) before they are stacked, labels as int64."""
    from tfsynapse.backends.tf_keras import tf  # noqa: PLC0415

    def scaled(x, y):
        x = tf.cast(x, tf.float32) / 255.0
        return (x if size is None else tf.image.resize(x, size)), y

    batches = [(x.numpy(), y.numpy()) for x, y in
               split.map(scaled, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)]
    if not batches:
        raise ValueError("a split of the data set holds no example.")
    return (np.concatenate([x for x, _ in batches]),
            np.concatenate([y for _, y in batches]).astype("int64"))
