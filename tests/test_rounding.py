"""One rounding rule from ratio to units (``plan/rounding.py``), the same in the planner's
TensorFlow graph and in every Python prediction of it."""

import pytest

import tfsynapse
from conftest import dead_filters
from tfsynapse.backends import tf
from tfsynapse.backends.tf_keras import keras
from tfsynapse.plan import rounding


@pytest.mark.parametrize("ratio, n, expected", [
    (0.5, 8, 4), (0.25, 10, 3), (0.24, 10, 2), (0.0, 7, 0), (0.9, 10, 9),
    (0.35, 10, 4),  # float64 reads 3.4999999999999996 (3); the planner's float32 reads 3.5 (4)
])
def test_pruned_count_rounds_halves_up_in_float32(ratio, n, expected):
    assert rounding.pruned_count(ratio, n) == expected
    assert int(rounding.pruned_count(tf.constant(ratio), n)) == expected


@pytest.mark.parametrize("pruned, n, round_to, kept", [
    (5, 16, 1, 11), (5, 16, 8, 16), (9, 16, 8, 8), (0, 6, 4, 6), (3, 10, 4, 8)])
def test_kept_after_rounds_the_kept_count_up_to_the_multiple(pruned, n, round_to, kept):
    assert rounding.kept_after(pruned, n, round_to) == kept
    assert int(rounding.kept_after(tf.constant(pruned), n, round_to)) == kept


def test_the_cap_never_prunes_the_last_unit():
    assert rounding.cap(0.99, 3) == 2 and rounding.cap(0.5, 10) == 5 and rounding.cap(1.0, 4) == 3


def test_the_planner_and_its_reachability_report_agree_where_float64_would_not():
    """A group of 10 channels at 0.35: the masks prune 4, and so does the reachability report
    (which once rounded in float64 and predicted 3)."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(10, 3, name="c1")(inputs)
    x = keras.layers.ReLU(name="r")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    pruned = tfsynapse.prune_once(model, {"c1": 0.35}, criterion="l1")
    kernel = pruned.get_layer("c1").get_weights()[0]
    assert len(dead_filters(kernel)) == 4
    from tfsynapse.plan import MaskPlan, PruningOptions  # noqa: PLC0415

    plan = MaskPlan(tfsynapse.dependency_groups(model), PruningOptions(
        criterion="l1", granularity="filter", scope="layer", final_sparsity=0.35))
    assert plan.reachability(0.35)["reachable"] == 4
