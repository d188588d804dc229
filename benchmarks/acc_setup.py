"""The accuracy benchmark's fixed parts: data split, models, training recipe and stage cache.

* Data: Fashion-MNIST's 60k training images split once (stratified, seed 0) into 55k train and
  5k validation; the 10k test images are only evaluated for the final report. Quick mode uses
  scikit-learn's digits at 16x16 (train / validation / test from the same split function).
* Models: a VGG-style CNN (3x3 convolutions with BatchNormalization and ReLU, widths
  32 | 64 64 | 128 128, max pooling between stages, global average pooling, a Dense head;
  about 0.28M parameters) and, for one seed, a ResNet-20-style net (3 stages of 3 basic blocks,
  widths 16/32/64).
* Recipe: SGD with Nesterov momentum 0.9, batch 128, cosine decay to 0 within every phase,
  random horizontal flips. Dense training: ``dense_epochs`` at lr 0.05. Every later phase
  (L1 training, fine-tuning, the dense control) restarts the cosine at lr 0.01.
* Cache: each stage's weights (``.weights.h5``) and numbers (``.json``) under ``cache_dir``,
  keyed by what made them; a re-run loads finished stages instead of training them again.
"""

import json
import math
import os
import time

import numpy as np

BATCH = 128
DENSE_LR = 0.05
PHASE_LR = 0.01
MOMENTUM = 0.9


# ------------------------------------------------------------------------------------ data

def load_data(quick):
    """``{"train": (x, y), "val": (x, y), "test": (x, y)}`` as float32 images, int64 labels."""
    from tfsynapse import datasets

    if quick:
        (x, y), test = datasets.load_digits(size=16, seed=0)
        train, val = datasets._split(x, y, 0.15, seed=0)  # noqa: SLF001 - one split function
    else:
        (x, y), test = datasets.load_fashion_mnist()
        train, val = datasets._split(x, y, 5000 / len(x), seed=0)  # noqa: SLF001
    return {"train": train, "val": val, "test": test}


def batches(x, y, seed, augment=True, batch=BATCH):
    """A shuffled, flipped tf.data pipeline over ``(x, y)``."""
    from tfsynapse.backends.tf_keras import tf

    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    data = data.batch(batch)
    if augment:
        data = data.map(lambda a, b: (tf.image.random_flip_left_right(a, seed=seed), b),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(2)


# ---------------------------------------------------------------------------------- models

def vgg(input_shape, classes, widths=((32,), (64, 64), (128, 128)), name="vgg_bn"):
    """The VGG-style benchmark CNN (conv-BN-ReLU, max pooling between stages)."""
    from tfsynapse.backends.tf_keras import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    h = inputs
    for s, stage in enumerate(widths):
        for c, width in enumerate(stage):
            h = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{s + 1}_{c + 1}")(h)
            h = layers.BatchNormalization(name=f"bn{s + 1}_{c + 1}")(h)
            h = layers.ReLU(name=f"relu{s + 1}_{c + 1}")(h)
        if s < len(widths) - 1:
            h = layers.MaxPooling2D(name=f"pool{s + 1}")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(h), name=name)


def resnet20(input_shape, classes, widths=(16, 32, 64), blocks=3, name="resnet20"):
    """A ResNet-20-style net: a stem, 3 stages of ``blocks`` basic blocks, GAP, a Dense head."""
    from tfsynapse.backends.tf_keras import keras

    layers = keras.layers

    def conv_bn(h, width, stride, tag, relu=True):
        h = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                          name=f"{tag}_conv")(h)
        h = layers.BatchNormalization(name=f"{tag}_bn")(h)
        return layers.ReLU(name=f"{tag}_relu")(h) if relu else h

    inputs = keras.Input(input_shape)
    h = conv_bn(inputs, widths[0], 1, "stem")
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if (b == 0 and s > 0) else 1
            tag = f"s{s + 1}b{b + 1}"
            shortcut = h
            if stride != 1 or h.shape[-1] != width:
                shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False,
                                         name=f"{tag}_proj")(h)
                shortcut = layers.BatchNormalization(name=f"{tag}_proj_bn")(shortcut)
            y = conv_bn(h, width, stride, f"{tag}a")
            y = conv_bn(y, width, 1, f"{tag}b", relu=False)
            h = layers.ReLU(name=f"{tag}_out")(layers.Add(name=f"{tag}_add")([y, shortcut]))
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(h), name=name)


# -------------------------------------------------------------------------------- training

def compile_phase(model, lr, steps):
    """Compiles for one phase: SGD (Nesterov momentum) with a cosine decay over ``steps``."""
    from tfsynapse.backends.tf_keras import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, max(1, steps))
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=MOMENTUM, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def steps_per_epoch(data, batch=BATCH):
    return math.ceil(len(data["train"][0]) / batch)


def train_phase(model, data, epochs, lr, seed, callbacks=(), compile_model=True, batch=BATCH):
    """Trains ``epochs`` epochs on ``data['train']`` with a fresh cosine schedule from ``lr``.

    Returns:
      Seconds spent.
    """
    from tfsynapse.backends.tf_keras import keras

    keras.utils.set_random_seed(seed)
    if compile_model:
        compile_phase(model, lr, steps_per_epoch(data, batch) * epochs)
    started = time.perf_counter()
    model.fit(batches(*data["train"], seed=seed, batch=batch), epochs=epochs, verbose=0,
              callbacks=list(callbacks))
    return time.perf_counter() - started


def accuracy(model, x, y, batch=1000):
    """Top-1 accuracy of a logits model."""
    logits = model.predict(x, batch_size=batch, verbose=0)
    if isinstance(logits, dict):
        logits = next(iter(logits.values()))
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def evaluate(model, data):
    """``{"val": accuracy, "test": accuracy}``."""
    return {"val": accuracy(model, *data["val"]), "test": accuracy(model, *data["test"])}


# ----------------------------------------------------------------------------------- cache

class NotCached(Exception):
    """A stage that has not run, asked for in cached-only mode."""


def if_cached(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None when it needs a stage the cache does not hold
    (``TFSYNAPSE_BENCH_CACHED_ONLY=1``)."""
    try:
        return fn(*args, **kwargs)
    except NotCached:
        return None


class StageCache:
    """Weights and numbers of finished stages, in one folder.

    Args:
      folder: where the files go (created when needed).
      log: ``log(message)`` for one line per stage.
      cached_only: raise ``NotCached`` instead of running a missing stage (to report a
        partial run).
      settings: the run's settings (JSON-able). Stage keys name the stage, not the settings,
        so the folder records the settings it was filled with (``settings.json``) and refuses
        to mix stages of different settings.

    Raises:
      ValueError: the folder holds stages computed with other settings.
    """

    def __init__(self, folder, log=print, cached_only=False, settings=None):
        self.folder = folder
        self.log = log
        self.cached_only = cached_only
        self.missing = []
        os.makedirs(folder, exist_ok=True)
        if settings is not None:
            self._check_settings(json.loads(json.dumps(settings)))

    def _check_settings(self, settings):
        path = os.path.join(self.folder, "settings.json")
        if os.path.exists(path):
            with open(path) as handle:
                stored = json.load(handle)
            if stored != settings:
                changed = sorted(k for k in set(stored) | set(settings)
                                 if stored.get(k) != settings.get(k))
                raise ValueError(
                    f"The stage cache {self.folder} was filled with other settings "
                    f"(differing: {', '.join(changed)}). Point TFSYNAPSE_BENCH_CACHE at a new "
                    "folder, or delete this one to start over.")
            return
        with open(path, "w") as handle:
            json.dump(settings, handle, indent=1, sort_keys=True)

    def _paths(self, key):
        base = os.path.join(self.folder, key.replace("/", "__"))
        return base + ".weights.h5", base + ".json"

    def numbers(self, key):
        """The stored numbers of ``key``, or None when the stage has not run."""
        _, info = self._paths(key)
        if not os.path.exists(info):
            return None
        with open(info) as handle:
            return json.load(handle)

    def matching(self, prefix):
        """``{key: numbers}`` of every stored stage whose key starts with ``prefix``."""
        import glob  # noqa: PLC0415

        head = self._paths(prefix)[1][: -len(".json")]
        found = {}
        for path in sorted(glob.glob(glob.escape(head) + "*.json")):
            key = os.path.basename(path)[: -len(".json")].replace("__", "/")
            with open(path) as handle:
                found[key] = json.load(handle)
        return found

    def model(self, key, build, train, weights=True):
        """The model of stage ``key``: loaded when cached, else built, trained and stored.

        Args:
          key: the stage's name (``/`` allowed).
          build: ``build() -> model`` (untrained or from an earlier stage).
          train: ``train(model) -> dict of numbers`` (run only when not cached).
          weights: store and load the weights (False: only the numbers are kept).

        Returns:
          ``(model, numbers)``; ``model`` is None for a cached stage without weights.
        """
        weights_path, info_path = self._paths(key)
        numbers = self.numbers(key)
        if numbers is not None and (not weights or os.path.exists(weights_path)):
            if not weights:
                return None, numbers
            model = build()
            model.load_weights(weights_path)
            return model, numbers
        if self.cached_only:
            if key not in self.missing:
                self.missing.append(key)
            raise NotCached(key)
        model = build()
        started = time.perf_counter()
        numbers = dict(train(model) or {})
        numbers.setdefault("seconds", time.perf_counter() - started)
        if weights:
            tmp = weights_path + ".tmp.weights.h5"
            model.save_weights(tmp)
            os.replace(tmp, weights_path)
        tmp = info_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(numbers, handle, indent=1)
        os.replace(tmp, info_path)
        self.log(f"{key}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()
            if isinstance(v, (int, float))))
        return model, numbers

    def result(self, key, compute):
        """Numbers only: cached ``compute()``."""
        return self.model(key, build=lambda: None, train=lambda _: compute(), weights=False)[1]
