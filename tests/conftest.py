"""Shared pytest setup: quiet TensorFlow, deterministic seeds, small shared models."""

import os
import subprocess
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfsynapse.backends.tf_keras import keras  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras_of(_CURRENT["backend"]).utils.set_random_seed(0)  # (tf_keras's also seeds TF and numpy)
    yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "keras_independent: in a module that runs on both Keras, a test whose code "
        "does not depend on the Keras: it runs once, on the tf_keras pass")


def pytest_collection_modifyitems(config, items):
    """Deselects the Keras 3 pass of tests marked ``keras_independent`` (run once, not twice)."""
    once = [item for item in items if item.get_closest_marker("keras_independent")
            and getattr(item, "callspec", None) is not None
            and item.callspec.params.get("backend") == "keras3"]
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = [item for item in items if item not in once]


def keras_of(backend):
    """The Keras module of a backend name ('tf_keras' or 'keras3')."""
    from tfsynapse import backends  # noqa: PLC0415

    return backends.get(backend).keras


@pytest.fixture(params=["tf_keras", "keras3"])
def K(request):
    """The Keras module of each backend in turn (tf_keras, then Keras 3): a test that builds
    its models from ``K`` runs on both."""
    module = keras_of(request.param)
    module.utils.set_random_seed(0)
    return module


_CURRENT = {"backend": "tf_keras"}  # the backend the running test builds its models with


@pytest.fixture
def backend():
    """The backend a test's shared models are built with: tf_keras, unless the test's module
    runs on both (``both_backends``)."""
    return _CURRENT["backend"]


def both_backends(module_globals):
    """An autouse fixture that runs every test of a module on both Keras, tf_keras then Keras 3.

    Use it as ``backend = both_backends(globals())``: for each backend it rebinds the module's
    ``keras`` (and ``L``, its layers) and overrides the ``backend`` fixture, so the module's
    own model builders and the shared ``small_cnn``/``cnn`` build that Keras' models. It is
    module-scoped (all tests on one backend, then on the other), so a module-scoped fixture
    that asks for ``backend`` is built once per backend. A test that only makes sense on one
    backend asks for ``backend`` and returns early, saying why.
    """

    @pytest.fixture(params=["tf_keras", "keras3"], autouse=True, scope="module")
    def backend(request):
        module = keras_of(request.param)
        saved = {name: module_globals.get(name) for name in ("keras", "L")}
        previous = _CURRENT["backend"]
        _CURRENT["backend"] = request.param
        module_globals["keras"] = module
        if "L" in module_globals:
            module_globals["L"] = module.layers
        yield request.param
        _CURRENT["backend"] = previous
        for name, value in saved.items():
            if value is not None:
                module_globals[name] = value

    return backend


def randomize_bn(model, rng=None, negative_gammas=True):
    """Gives every BatchNormalization random statistics (and some negative gammas); tf_keras or
    Keras 3."""
    rng = rng or np.random.default_rng(0)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ == "BatchNormalization":
            c = inner.moving_mean.shape[0]
            gamma = rng.uniform(0.5, 1.5, c) * (np.where(rng.random(c) < 0.3, -1, 1) if negative_gammas else 1)
            values = []
            for w in inner.weights:
                name = weight_name(w)
                values.append({
                    "gamma": gamma, "beta": rng.normal(0, 0.3, c),
                    "moving_mean": rng.normal(0, 0.3, c), "moving_variance": rng.uniform(0.5, 2.0, c),
                }[name])
            inner.set_weights(values)
        if hasattr(inner, "layers") and inner is not model:  # a nested model
            randomize_bn(inner, rng, negative_gammas)
    return model


def sequential_model(shape, *layers):
    """A functional model applying ``layers`` in order to an input of ``shape`` (in the Keras
    of the layers)."""
    from tfsynapse import backends  # noqa: PLC0415

    K = keras_of(backends.backend_name(layers[0]) or "tf_keras") if layers else keras
    inputs = K.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return K.Model(inputs, x)


def small_cnn(input_shape=(12, 12, 3), classes=5, backend=None):
    """Conv-BN-ReLU x2 with a residual add, a depthwise conv, GAP and a Dense head, in the
    Keras of ``backend`` (default: the one the running test runs on)."""
    keras = keras_of(backend or _CURRENT["backend"])
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(12, 1, name="c3")(x)
    x = keras.layers.ReLU(name="r3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, name="head")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture
def cnn(backend):
    return randomize_bn(small_cnn(backend=backend))


def synaptic_net(K, l1=0.0, filters=6):
    """A small synaptic CNN (8x8x2 -> 3 classes): c1 -> BN -> ReLU -> c2 -> GAP -> Dense, so
    c1's strength columns are free under its BN and c2's are not."""
    import tfsynapse  # noqa: PLC0415

    L = K.layers
    inputs = K.Input((8, 8, 2))
    x = L.Conv2D(filters, 3, padding="same", name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(filters, 3, padding="same", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return tfsynapse.to_synaptic(K.Model(inputs, L.Dense(3)(x)), l1=l1)


def normal(*shape, seed=0, scale=1.0):
    """Standard normal float32 data of ``shape`` (times ``scale``), reproducible by ``seed``."""
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def rand_inputs(model, n=4, seed=0):
    """A batch of ``n`` standard normal inputs shaped for ``model``'s first input."""
    return normal(n, *[int(d) for d in model.inputs[0].shape[1:]], seed=seed)


def zero_units(array, axis):
    """Indices along ``axis`` whose slices are entirely zero."""
    array = np.asarray(array)
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    return np.nonzero(~np.any(moved != 0, axis=1))[0].tolist()


def dead_filters(kernel):
    """Indices of a kernel's output channels (its last axis) that are entirely zero."""
    kernel = np.asarray(kernel)
    return zero_units(kernel, kernel.ndim - 1)


def weight_name(weight):
    """A weight's own name ('kernel', 'gamma', ...) on either Keras (tf_keras names carry
    the layer's scope and ':0')."""
    return weight.name.split("/")[-1].split(":")[0]


def weights_by_name(model):
    """``{'layer/weight': array}`` of every layer's own weights (wrappers unwrapped)."""
    out = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        for w in inner.weights:
            out[f"{inner.name}/{weight_name(w)}"] = w.numpy()
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def run_python(*args, cwd=ROOT, env=None, timeout=300):
    """Runs this Python with ``args`` (a script, ``-m module ...`` or ``-c code``) in a fresh
    process; returns the ``CompletedProcess`` with its stdout and stderr as text."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, check=False)


def run_script_until(folder, source, marker):
    """Writes ``source`` (``{tests}`` replaced by this folder, for imports) to a script in
    ``folder``, runs it in a fresh process and checks it printed ``marker``."""
    script = os.path.join(str(folder), "script.py")
    with open(script, "w") as handle:
        handle.write(source.format(tests=os.path.dirname(os.path.abspath(__file__))))
    result = run_python(script)
    assert marker in result.stdout, result.stderr[-3000:]
    return result


def tensorboard_scalars(folder):
    """``{tag: [value per step]}`` of every scalar in the event files under ``folder``."""
    import tensorflow as tf  # noqa: PLC0415

    out = {}
    for root, _, files in os.walk(folder):
        for name in sorted(f for f in files if "tfevents" in f):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    out.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return out


def zoo_cases(names, fast):
    """pytest params for an architecture zoo: ``fast`` ones marked ``zoo``, the others also
    ``slow`` and skipped unless ``TFSYNAPSE_ZOO=all``."""
    run_all = os.environ.get("TFSYNAPSE_ZOO") == "all"
    for name in names:
        if name in fast:
            yield pytest.param(name, marks=pytest.mark.zoo)
        else:
            yield pytest.param(name, marks=[pytest.mark.zoo, pytest.mark.slow, pytest.mark.skipif(
                not run_all, reason="TFSYNAPSE_ZOO=all runs every architecture")])


def zoo_prune_and_shrink(model, name):
    """The zoo check shared by both backends: every layer has a rule, parameters count right,
    half the channels pruned (random or l1 by name), masked == shrunk, >= 30% MACs off.

    Returns:
      ``(pruned, shrunk, report, x)`` for further checks.
    """
    import tfsynapse  # noqa: PLC0415

    model = randomize_bn(model, negative_gammas=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer of these architectures lacks a rule
        graph = tfsynapse.dependency_groups(model)
    assert tfsynapse.count_params(graph) == model.count_params()
    pruned = tfsynapse.prune_once(model, 0.5, criterion="random" if len(name) % 2 else "l1")
    small, report = tfsynapse.shrink(pruned, return_report=True, check=False)
    x = rand_inputs(model, 2, seed=3)
    masked, shrunk = np.asarray(pruned(x, training=False)), np.asarray(small(x, training=False))
    assert np.abs(shrunk - masked).max() <= 1e-3 * max(float(np.abs(masked).max()), 1e-6), name
    assert graph.prunable_groups and report.mac_reduction >= 0.3, report.table()
    return pruned, small, report, x
