"""Knowledge distillation while fine-tuning: the loss uses the teacher, pruning still works."""

import numpy as np
import pytest

import tfsynapse
from conftest import dead_filters, randomize_bn, small_cnn
from tfsynapse.backends.tf_keras import keras, tf
from tfsynapse.pruning.distill import Distiller

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12, 12, 3)).astype("float32"), rng.integers(0, 5, n)


@pytest.fixture(scope="module")
def teacher():
    """Shared by every test: it must come out of each one unchanged."""
    return randomize_bn(small_cnn(), rng=np.random.default_rng(1))


@pytest.fixture(scope="module")
def other_teacher():
    model = randomize_bn(small_cnn(), rng=np.random.default_rng(7))
    model.set_weights([w * 3.0 for w in model.get_weights()])
    return model


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kl(t, s, temperature):
    lt, ls = _log_softmax(t / temperature), _log_softmax(s / temperature)
    return temperature ** 2 * np.sum(np.exp(lt) * (lt - ls), axis=-1)


def _first_batch_logs(distiller, x, y, **fit_kwargs):
    """The logs of one full-batch step that changes no weight (SGD with rate 0)."""
    distiller.compile(keras.optimizers.SGD(0.0), LOSS)
    return {k: v[0] for k, v in distiller.fit(x, y, batch_size=len(x), epochs=1, verbose=0,
                                              **fit_kwargs).history.items()}


def test_distillation_loss_is_the_tempered_kl(teacher):
    student, x = randomize_bn(small_cnn()), _data(8)[0]
    distiller = Distiller(student, teacher, temperature=2.0)
    t, s = teacher(x).numpy(), student(x).numpy()
    kl = _kl(t, s, 2.0)
    assert float(distiller.distillation_loss(t, s)) == pytest.approx(kl.mean(), rel=1e-4)
    assert float(distiller.distillation_loss(s, s)) == pytest.approx(0.0, abs=1e-6)
    w = np.arange(8, dtype="float32")
    assert float(distiller.distillation_loss(t, s, w)) == pytest.approx((w * kl).mean(), rel=1e-4)
    assert float(distiller.distillation_loss(t, s, w[:, None])) == pytest.approx((w * kl).mean(),
                                                                                  rel=1e-4)
    probs = Distiller(student, teacher, temperature=2.0, from_logits=False)
    p, q = tf.nn.softmax(t).numpy(), tf.nn.softmax(s).numpy()
    assert float(probs.distillation_loss(p, q)) == pytest.approx(kl.mean(), rel=1e-4)


def test_alpha_zero_is_plain_training_with_the_regularisers():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", kernel_regularizer="l2")(inputs)
    student = keras.Model(inputs, keras.layers.Dense(5)(hidden))
    inputs = keras.Input((6,))
    teacher = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.integers(0, 5, 16)
    student.compile(keras.optimizers.SGD(0.0), LOSS)
    plain = student.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][0]
    hard = float(LOSS(y, student(x)))
    assert plain > hard + 1e-3  # the regulariser counts
    logs = _first_batch_logs(Distiller(student, teacher, alpha=0.0), x, y)
    assert logs["loss"] == pytest.approx(plain, rel=1e-5)
    logs = _first_batch_logs(Distiller(student, teacher, alpha=0.25, temperature=3.0), x, y)
    soft = _kl(teacher(x).numpy(), student(x).numpy(), 3.0).mean()
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-5)
    assert logs["loss"] == pytest.approx(0.25 * soft + 0.75 * hard + plain - hard, rel=1e-5)


def test_alpha_one_the_loss_is_the_teachers(teacher, other_teacher):
    x, y = _data()
    student = randomize_bn(small_cnn())
    training = student(x, training=True).numpy()  # fit normalises with batch statistics
    losses = []
    for t in (teacher, other_teacher):
        logs = _first_batch_logs(Distiller(student, t, alpha=1.0), x, y)
        expected = _kl(t(x, training=False).numpy(), training, 4.0).mean()
        # float32 graph vs float64 numpy: a KL of close distributions loses a few digits
        assert logs["loss"] == pytest.approx(expected, rel=1e-4)
        assert logs["distillation_loss"] == pytest.approx(logs["loss"], rel=1e-6)
        losses.append(logs["loss"])
    assert abs(losses[0] - losses[1]) > 0.1 * max(losses), losses
    # alpha=1 needs no labels; the hard loss is then optional
    distiller = Distiller(student, teacher, alpha=1.0)
    distiller.compile(keras.optimizers.SGD(0.0))
    unlabelled = distiller.fit(x, batch_size=len(x), epochs=1, verbose=0).history["loss"][0]
    assert unlabelled == pytest.approx(losses[0], rel=1e-6)


def test_student_learns_and_the_teacher_stays_frozen():
    rng = np.random.default_rng(0)
    inputs = keras.Input((8,))
    norm = keras.layers.BatchNormalization()
    teacher = keras.Model(inputs, keras.layers.Dense(5)(norm(inputs)))
    norm.set_weights([np.ones(8), np.zeros(8), np.full(8, 0.5), np.full(8, 2.0)])
    x = rng.normal(size=(128, 8)).astype("float32")
    y = teacher.predict(x, verbose=0).argmax(1)
    before = [w.copy() for w in teacher.get_weights()]  # moving statistics included
    inputs = keras.Input((8,))
    student = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Dense(16, "relu")(inputs)))
    distiller = Distiller(student, teacher, alpha=0.5, temperature=2.0)
    distiller.compile(keras.optimizers.Adam(1e-2), LOSS, metrics=["accuracy"])
    logs = distiller.fit(x, y, batch_size=32, epochs=15, verbose=0).history
    assert logs["loss"][-1] < 0.5 * logs["loss"][0], logs["loss"]
    assert logs["distillation_loss"][-1] < 0.5 * logs["distillation_loss"][0]
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    agree = np.mean(student.predict(x, verbose=0).argmax(1) == y)
    assert agree > 0.85, agree


def test_predict_and_evaluate_use_the_student(teacher):
    x, y = _data(16)
    student = randomize_bn(small_cnn())
    distiller = Distiller(student, teacher, alpha=0.5, temperature=2.0)
    distiller.compile(keras.optimizers.SGD(0.0), LOSS, metrics=["accuracy"],
                      weighted_metrics=["accuracy"])
    np.testing.assert_allclose(distiller.predict(x, verbose=0), student.predict(x, verbose=0),
                               atol=1e-6)
    w = np.linspace(0.0, 2.0, 16).astype("float32")
    logs = distiller.evaluate(x, y, sample_weight=w, batch_size=16, verbose=0, return_dict=True)
    s = student(x).numpy()
    hard = np.mean(w * keras.losses.sparse_categorical_crossentropy(y, s, from_logits=True))
    soft = np.mean(w * _kl(teacher(x).numpy(), s, 2.0))
    assert logs["loss"] == pytest.approx(0.5 * soft + 0.5 * hard, rel=1e-5)
    right = s.argmax(1) == y
    assert logs["accuracy"] == pytest.approx(right.mean(), abs=1e-6)
    assert logs["weighted_accuracy"] == pytest.approx(np.sum(w * right) / w.sum(), abs=1e-6)


def test_pruning_schedule_runs_through_the_distiller(teacher):
    x, y = _data(32)
    before = [w.copy() for w in teacher.get_weights()]
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=0, frequency=1)
    prune = dict(criterion="l1", granularity="filter", scope="layer")
    dense = small_cnn()
    with pytest.raises(ValueError, match=r"shares \d+ weights with the teacher.*clone_model"):
        Distiller(tfsynapse.prune_synaptic(dense, schedule, **prune), dense)
    base = keras.models.clone_model(teacher)
    base.set_weights(teacher.get_weights())
    pruned = tfsynapse.prune_synaptic(base, schedule, **prune)
    distiller = Distiller(pruned, teacher)
    distiller.compile(keras.optimizers.Adam(1e-3), LOSS)
    with pytest.raises(ValueError, match=r"callbacks=\[tfsynapse.UpdatePruningStep\(\)\]"):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # said up front, in one line
    distiller.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    logs = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0,
                         callbacks=[tfsynapse.UpdatePruningStep()]).history
    assert set(logs) == {"loss", "accuracy", "distillation_loss"}
    wrappers = tfsynapse.pruning.collect_wrappers(distiller.student)
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [8] * len(wrappers)  # one a step
    assert pruned.pruned_fraction() == pytest.approx(0.5, abs=0.05)
    kernel = distiller.student.get_layer("structured_prune_wrapper_c3").layer.kernel.numpy()
    dead = dead_filters(kernel)
    assert len(dead) == 6  # half of c3's 12 filters are exactly zero
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    stripped = tfsynapse.strip_pruning(distiller.student)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               atol=1e-5)
    # a plain (stripped) student: the masks are gone, training may revive the filters
    plain = Distiller(stripped, teacher)
    plain.compile(keras.optimizers.Adam(1e-3), LOSS)
    plain.fit(x, y, batch_size=8, epochs=1, verbose=0)
    changed = np.any(stripped.get_layer("c3").kernel.numpy() != kernel, axis=(0, 1, 2))
    assert np.delete(changed, dead).all()  # every filter that was alive trained on


def test_errors_name_what_is_wrong(teacher):
    student = small_cnn()
    with pytest.raises(ValueError, match=r"output shape \(5,\) differs from the teacher's \(7,\)"):
        Distiller(student, small_cnn(classes=7))
    for bad in (0, -1.0, float("nan"), float("inf"), True, "4"):
        with pytest.raises(ValueError, match=r"temperature must be a number in \(0, inf\)"):
            Distiller(student, teacher, temperature=bad)
    for bad in (-0.1, 1.5, float("nan"), None):
        with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
            Distiller(student, teacher, alpha=bad)
    with pytest.raises(ValueError, match="same model"):
        Distiller(student, student)
    inputs = keras.Input((12, 12, 3))
    two = keras.Model(inputs, [student(inputs), student(inputs)])
    with pytest.raises(ValueError, match="single-output models.*2 student and 1 teacher"):
        Distiller(two, teacher)
    with pytest.raises(ValueError, match="hard .*loss when alpha < 1"):
        Distiller(student, teacher).compile("adam")
    distiller = Distiller(student, teacher, alpha=0.5)
    distiller.compile("adam", LOSS)
    with pytest.raises(ValueError, match="no labels, but alpha=0.5"):
        distiller.fit(_data(8)[0], epochs=1, verbose=0)
    with pytest.raises(NotImplementedError, match="save distiller.student"):
        distiller.get_config()


def test_keras3_models_are_refused(teacher):
    keras3 = pytest.importorskip("keras")
    k3 = keras3.Sequential([keras3.Input((12, 12, 3)), keras3.layers.Flatten(),
                            keras3.layers.Dense(5)])
    with pytest.raises(TypeError, match="the same Keras"):  # Keras 3 pairs: test_keras3.py
        Distiller(k3, teacher)
    with pytest.raises(TypeError, match="the teacher is keras3: distil between two models of "
                                        "the same Keras"):
        Distiller(small_cnn(), k3)


@pytest.mark.parametrize("name", ["tf_keras", "keras3"])
def test_tfsynapse_distiller_is_a_class_for_isinstance_on_both_keras(name):
    from tfsynapse import backends  # noqa: PLC0415

    student = randomize_bn(small_cnn(backend=name))
    teacher = randomize_bn(small_cnn(backend=name), rng=np.random.default_rng(1))
    distiller = tfsynapse.Distiller(student, teacher, temperature=2.0)
    assert isinstance(distiller, tfsynapse.Distiller)
    assert isinstance(distiller, backends.get(name).Distiller)
    assert issubclass(backends.get(name).Distiller, tfsynapse.Distiller)
    assert not isinstance(student, tfsynapse.Distiller)
    assert not issubclass(int, tfsynapse.Distiller)
