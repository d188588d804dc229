"""Criteria are objects in one registry: a user's ``Criterion`` takes the built-ins' path
(what it reads, its granularities, its global comparability, the CLI listing)."""

import numpy as np
import pytest

import tfsynapse
from conftest import both_backends, randomize_bn, small_cnn, weights_by_name, zero_units
from tfsynapse.cli import main
from tfsynapse.criteria import registry
from tfsynapse.backends.tf_keras import tf

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


class ScaledMagnitude(tfsynapse.Criterion):
    """|gamma| times the unit's L1 magnitude, made comparable by the group's largest score."""

    name = "scaled_magnitude"
    needs = frozenset({"weights", "batchnorm"})
    summary = "|gamma| * sum |w|"

    def __init__(self):
        self.seen = []

    def filter_scores(self, group):
        self.seen.append((group.name, group.size))
        return group.bn_scale * tf.reduce_sum(tf.abs(group.weights), axis=1)

    def comparable(self, scores):
        return scores / tf.reduce_max(scores)


def _expected_c1(model, k):
    bn, kernel = model.get_layer("bn1").gamma.numpy(), model.get_layer("c1").kernel.numpy()
    kernel2 = model.get_layer("c2").kernel.numpy()  # c1 and c2 share a residual group
    bn2 = model.get_layer("bn2").gamma.numpy()
    rows = np.concatenate([kernel.reshape(-1, 8).T, kernel2.reshape(-1, 8).T], axis=1)
    scores = (np.abs(bn) + np.abs(bn2)) * np.abs(rows).sum(axis=1)
    return sorted(np.argsort(scores, kind="stable")[:k].tolist())


def test_a_user_criterion_object_prunes_like_a_built_in():
    model = randomize_bn(small_cnn())
    criterion = ScaledMagnitude()
    pruned = tfsynapse.prune_once(model, 0.25, criterion=criterion)
    assert [size for _, size in criterion.seen] == [8]  # c3's group has no BatchNormalization
    assert zero_units(weights_by_name(pruned)["c1/kernel"], 3) == _expected_c1(model, 2)
    # the same object by name once registered, and with one global threshold
    tfsynapse.register_criterion("scaled_magnitude", criterion)
    try:
        assert registry.get("scaled_magnitude") is criterion
        assert "scaled_magnitude" in registry.names("filter")
        assert "scaled_magnitude" not in registry.names("connection")
        tfsynapse.prune_once(model, 0.25, criterion="scaled_magnitude", scope="global")
        with pytest.raises(ValueError, match="'scaled_magnitude' scores filters, not "
                                             "connections.*granularity='filter'"):
            tfsynapse.prune_once(model, 0.25, criterion="scaled_magnitude",
                                 granularity="connection")
    finally:
        registry.unregister("scaled_magnitude")


def test_a_criterion_that_needs_batchnorm_freezes_groups_without_one():
    model = randomize_bn(small_cnn())
    pruned = tfsynapse.prune_once(model, 0.5, criterion=ScaledMagnitude())
    w = weights_by_name(pruned)
    assert zero_units(w["c3/kernel"], 3) == []  # c3 has no BatchNormalization
    assert len(zero_units(w["c1/kernel"], 3)) == 4
    plan = tfsynapse.plan.MaskPlan(
        tfsynapse.dependency_groups(model),
        tfsynapse.plan.options.PruningOptions(criterion="bn_scale"))
    assert plan.criterion is registry.get("bn_scale")
    assert any("criterion 'bn_scale' needs a BatchNormalization" in " ".join(reasons)
               for reasons in plan.frozen.values())


@pytest.mark.keras_independent
def test_built_in_names_cannot_be_taken():
    with pytest.raises(ValueError, match="'dscore' is a built-in criterion"):
        tfsynapse.register_criterion("dscore", lambda f: tf.reduce_sum(f, axis=1))


@pytest.mark.keras_independent
def test_the_cli_lists_every_criterion_from_the_registry(capsys):
    assert main(["criteria"]) == 0
    listed = capsys.readouterr().out
    for granularity in ("filter", "connection"):
        for name in registry.names(granularity):
            assert any(line.split()[:2] == [name, granularity] for line in listed.splitlines())
    assert "selects per group" in listed


def test_a_named_criterion_object_is_never_renamed():
    class Named(tfsynapse.Criterion):
        name = "named_magnitude_probe"

        def filter_scores(self, group):
            return tf.reduce_sum(tf.abs(group.weights), axis=1)

    class Other(Named):
        pass

    keras = tfsynapse.backends.get("tf_keras").keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d"),
                              keras.layers.Dense(2, name="head")])
    first, second, other = Named(), Named(), Other()
    with pytest.raises(ValueError, match="register it under that name"):
        tfsynapse.register_criterion("another_name_probe", first)
    for criterion in (first, second):  # the same criterion made twice: no warning, no rename
        tfsynapse.prune_once(model, 0.5, criterion=criterion)
        assert criterion.name == "named_magnitude_probe"
    assert registry.get("named_magnitude_probe") is second
    with pytest.warns(UserWarning, match="now names a Other"):
        tfsynapse.prune_once(model, 0.5, criterion=other)
    assert other.name == "named_magnitude_probe" and registry.get(other.name) is other
    registry.unregister("named_magnitude_probe")
