"""Checks shown to fire: each mechanism a test relies on is broken on purpose here, and the
failure it must cause is expected (a check is trusted only once it has been seen to fire).
Both Keras."""

import importlib

import numpy as np
import pytest

import tfsynapse
from conftest import dead_filters, rand_inputs, randomize_bn, small_cnn
from tfsynapse.criteria import registry

shrink_module = importlib.import_module("tfsynapse.surgery.shrink")  # the module, not the function


def two_scaled_groups(K):
    """Two independent 1x1 convolutions whose unit j has L1 = 3 (j + 1) (group 'a', 4 units)
    and 300 (j + 1) (group 'b', 8 units); the head's rows are zero, so nothing else scores."""
    inputs = K.Input((4, 4, 3))
    a = K.layers.Conv2D(4, 1, use_bias=False, name="a")(inputs)
    b = K.layers.Conv2D(8, 1, use_bias=False, name="b")(inputs)
    head = K.layers.Conv2D(2, 1, use_bias=False, name="head")
    model = K.Model(inputs, head(K.layers.Concatenate()([a, b])))
    model.get_layer("a").set_weights([np.ones((1, 1, 3, 4), np.float32) * np.arange(1, 5)])
    model.get_layer("b").set_weights([np.ones((1, 1, 3, 8), np.float32) * 100 *
                                      np.arange(1, 9)])
    head.set_weights([np.zeros((1, 1, 12, 2), np.float32)])
    return model


def _pruned_units(model, name):
    return dead_filters(model.get_layer(name).get_weights()[0])


def test_global_scope_ranks_scores_relative_to_their_group(K):
    # normalised by each group's mean: a = (j+1)/2.5, b = (j+1)/4.5; the 6 lowest of the 12
    # are b .22, a .40, b .44, b .67, a .80, b .89: two of a, four of b
    pruned = tfsynapse.prune_once(two_scaled_groups(K), 0.5, scope="global", criterion="l1")
    assert _pruned_units(pruned, "a") == [0, 1]
    assert _pruned_units(pruned, "b") == [0, 1, 2, 3]


def test_without_the_normalisation_the_global_split_changes(K, monkeypatch):
    # raw scores: all of a is below all of b; a keeps one unit (max_pruning_ratio 0.9)
    monkeypatch.setattr(registry.get("l1", "filter"), "_comparable", None)
    pruned = tfsynapse.prune_once(two_scaled_groups(K), 0.5, scope="global", criterion="l1")
    assert _pruned_units(pruned, "a") == [0, 1, 2]
    assert _pruned_units(pruned, "b") == [0, 1, 2]


def test_shrinks_self_check_fires_on_a_wrong_weight_copy(K, monkeypatch):
    model = randomize_bn(small_cnn(backend="keras3" if hasattr(K, "ops") else "tf_keras"))
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
    tfsynapse.shrink(pruned)  # correct copies pass
    copy = shrink_module._copy_weights

    def corrupted(made, values, graph, keep):
        copy(made, values, graph, keep)
        new = made[0][1]
        new.set_weights([w + 0.05 for w in new.get_weights()])

    monkeypatch.setattr(shrink_module, "_copy_weights", corrupted)
    with pytest.raises(RuntimeError, match="shrink changed the model's outputs"):
        tfsynapse.shrink(pruned)


def test_a_sensitivity_table_changes_the_allocation_and_does_no_worse(K):
    model = randomize_bn(small_cnn(input_shape=(16, 16, 3),
                                   backend="keras3" if hasattr(K, "ops") else "tf_keras"))
    x = rand_inputs(model, 16)
    reference = np.asarray(model(x))

    def closeness(candidate):  # higher is better: minus the mean squared change of the logits
        return -float(np.mean((np.asarray(candidate(x)) - reference) ** 2))

    budget = 0.6 * tfsynapse.count_macs(model)
    guided, guided_report = tfsynapse.prune_to_budget(model, macs=budget, sensitivity=closeness,
                                                      return_report=True)
    uniform, uniform_report = tfsynapse.prune_to_budget(model, macs=budget, return_report=True)
    assert guided_report.allocation == "sensitivity" and uniform_report.allocation == "uniform"
    # the table moved pruning between groups (an ignored table leaves the uniform ratios)
    assert guided_report.ratios != uniform_report.ratios
    assert closeness(guided) >= closeness(uniform)
