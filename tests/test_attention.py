"""MultiHeadAttention (both Keras): a unit is a head, pruned exactly and removed by shrink; a
transformer block's MLP units are pruned as filters; the residual width stays frozen."""

import numpy as np
import pytest

import tfsynapse
from conftest import normal

T, D, HEADS, KEY_DIM, MLP = 6, 16, 4, 8, 32


def transformer(K, return_scores=False):
    L = K.layers
    inputs = K.Input((T, D))
    x = L.Dense(D, name="embed")(inputs)
    attention = L.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, name="mha")
    a = attention(x, x, return_attention_scores=True)[0] if return_scores else attention(x, x)
    x = L.LayerNormalization(name="ln")(L.Add()([x, a]))
    h = L.Dense(MLP, activation="gelu", name="fc1")(x)
    x = L.Add()([x, L.Dense(D, name="fc2")(h)])
    model = K.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def _data():
    return normal(3, T, D, seed=1)


def test_heads_and_mlp_units_are_groups_and_the_residual_width_is_frozen(K):
    graph = tfsynapse.dependency_groups(transformer(K))
    heads = graph.group_of_layer("mha")
    assert heads.prunable and heads.size == HEADS
    members = {(m.layer.name, m.slot.weight.shape[m.slot.axis], m.slot.role)
               for m in heads.members}
    assert ("mha", HEADS, "out") in members and ("mha", HEADS, "in") in members
    assert graph.group_of_layer("fc1").prunable and graph.group_of_layer("fc1").size == MLP
    residual = graph.group_of_layer("embed")
    assert not residual.prunable
    assert any("output width of a MultiHeadAttention" in r for r in residual.reasons)


def test_attention_macs_are_counted_by_hand(K):
    projections = 3 * T * D * HEADS * KEY_DIM
    scores_and_sum = T * T * HEADS * (KEY_DIM + KEY_DIM)
    output = T * HEADS * KEY_DIM * D
    total, table = tfsynapse.count_macs(transformer(K), per_layer=True)
    assert table["mha"] == projections + scores_and_sum + output
    assert total == T * D * D + table["mha"] + 2 * T * D * MLP + D * 3
    # with half of the heads kept, every term of the attention halves
    graph = tfsynapse.dependency_groups(transformer(K))
    heads = graph.group_of_layer("mha")
    keep = {heads.id: np.array([True, False, True, False])}
    assert tfsynapse.count_macs(graph, keep, per_layer=True)[1]["mha"] == table["mha"] // 2


def test_cross_attention_counts_the_key_length():
    import keras  # noqa: PLC0415

    q, kv = keras.Input((3, D)), keras.Input((7, D))
    out = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="x")(q, kv)
    macs = tfsynapse.count_macs(keras.Model([q, kv], out), per_layer=True)[1]["x"]
    assert macs == (3 * D * 8 + 2 * 7 * D * 8) + 3 * 7 * 2 * (4 + 4) + 3 * 8 * D


@pytest.mark.parametrize("criterion", ["l1", "dscore"])
def test_pruned_heads_are_removed_by_shrink_with_the_same_outputs(K, criterion):
    model = transformer(K)
    data = _data()
    pruned = tfsynapse.prune_once(model, 0.5, criterion=criterion)
    heads = tfsynapse.dependency_groups(pruned).group_of_layer("mha")
    small, report = tfsynapse.shrink(pruned, return_report=True)
    layer = small.get_layer("mha")
    assert getattr(layer, "num_heads", None) or layer._num_heads == 2
    assert layer.get_config()["num_heads"] == 2 and heads.size == HEADS
    scale = float(np.abs(np.asarray(pruned(data))).max())
    np.testing.assert_allclose(np.asarray(small(data)), np.asarray(pruned(data)),
                               atol=1e-5 * scale)
    assert report.macs_after < 0.55 * report.macs_before
    # the kept heads are the ones whose value slices are not zero in the masked model
    values = pruned.get_layer("mha")._value_dense.kernel.numpy()
    alive = np.abs(values).sum(axis=(0, 2)) > 0
    assert alive.sum() == 2
    np.testing.assert_array_equal(small.get_layer("mha")._value_dense.kernel.numpy(),
                                  values[:, alive])


def test_an_attention_that_returns_its_scores_is_frozen(K):
    graph = tfsynapse.dependency_groups(transformer(K, return_scores=True))
    assert graph.group_of_layer("mha") is None  # no head group
    assert "mha: returns its attention scores" in graph.group_of_layer("embed").reasons
    assert graph.group_of_layer("fc1").prunable
