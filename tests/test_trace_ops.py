"""What keras-hub's transformers need from tracing (Keras 3): a block that returns
``(x, None)`` is recorded through its own call, a constant output is left out of the trace (or
keeps its layer opaque when the model uses it), a reshape with a symbolic batch size traces,
a reshape that keeps the last axis passes channels and is rebuilt narrower, and a matrix
product of two tensors is counted. tf_keras's raw ``tf.reshape`` stays frozen, with why."""

import keras
import numpy as np
import pytest

import tfsynapse
from conftest import normal
from tfsynapse.backends.tf_keras import keras as tf_keras
from tfsynapse.backends.tf_keras import tf


class PairBlock(keras.layers.Layer):
    """Dense -> ReLU -> Dense with a residual; returns ``(x, None)`` as keras-hub's blocks do."""

    def __init__(self, width, hidden, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.Dense(hidden, name="up")
        self.down = keras.layers.Dense(width, name="down")

    def call(self, x):
        return x + self.down(keras.ops.relu(self.up(x))), None


class Encoder(keras.layers.Layer):
    """Two ``PairBlock``s (their sublayers share names) and an empty 'scores' tensor."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [PairBlock(width, 12, name=f"block_{i}") for i in (1, 2)]

    def call(self, x):
        for block in self.blocks:
            x, _ = block(x)
        return x, keras.ops.zeros((0, 3))


def _encoder_model(use_constant=False):
    inputs = keras.Input((5, 8))
    x = keras.layers.Dense(8, name="embed")(inputs)
    x, scores = Encoder(8, name="encoder")(x)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, [out, scores] if use_constant else out)


def test_blocks_returning_none_are_recorded_through_their_calls_and_renamed():
    model = _encoder_model()
    graph = tfsynapse.dependency_groups(model)
    tracer = graph.flat.tracer
    assert "encoder" in tracer.traced and not tracer.opaque
    assert tracer.renamed["up in block_2"] == "block_2_up"  # Keras needs unique names
    prunable = {g.name: g.size for g in graph.prunable_groups}
    assert sum(size == 12 for size in prunable.values()) == 2  # each block's hidden units
    assert tfsynapse.count_macs(graph) == 5 * (8 * 8 + 2 * (8 * 12 + 12 * 8)) + 8 * 2
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
    small = tfsynapse.shrink(pruned)
    x = normal(3, 5, 8)
    want = np.asarray(pruned(x))
    np.testing.assert_allclose(np.asarray(small(x)), want, atol=1e-5 * np.abs(want).max())
    widths = sorted(layer.units for layer in small.layers if type(layer).__name__ == "Dense")
    assert widths == [2, 4, 4, 4, 6, 6]  # the residual width too: no LayerNorm holds it here


def test_a_constant_output_the_model_uses_keeps_the_layer_opaque_with_why():
    with pytest.warns(UserWarning, match="its output 1 is a constant"):
        graph = tfsynapse.dependency_groups(_encoder_model(use_constant=True))
    assert "constant" in graph.flat.tracer.opaque["encoder"]


class BatchReshapes(keras.layers.Layer):
    """MiT's pattern: the batch size read from a symbolic shape (None) in a reshape target, a
    depthwise convolution on the folded map, and a matrix product of two tensors."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = keras.layers.Dense(16, name="fc1")
        self.dw = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")
        self.fc2 = keras.layers.Dense(8, name="fc2")

    def call(self, x):
        batch, tokens, _ = keras.ops.shape(x)
        h = keras.ops.reshape(self.fc1(x), (batch, 4, 4, 16))
        h = keras.ops.reshape(self.dw(h), (batch, -1, 16))
        h = self.fc2(keras.ops.relu(h))
        gram = keras.ops.matmul(h, keras.ops.transpose(h, (0, 2, 1)))  # (batch, 16, 16)
        return h + keras.ops.mean(gram, axis=-1, keepdims=True)


def test_a_symbolic_batch_reshape_traces_passes_channels_and_is_rebuilt_narrower():
    inputs = keras.Input((16, 8))
    model = keras.Model(inputs, BatchReshapes(name="mix")(inputs))
    graph = tfsynapse.dependency_groups(model)
    assert "mix" in graph.flat.tracer.traced and not graph.flat.tracer.opaque
    assert {g.name: g.size for g in graph.prunable_groups} == {"fc1": 16}
    macs, table = tfsynapse.count_macs(graph, per_layer=True)
    matmul = [name for name in table if name.startswith("matmul")]
    assert len(matmul) == 1 and table[matmul[0]] == 16 * 16 * 8  # (16 x 8) @ (8 x 16)
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
    small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.channels["fc1"] == (16, 8) and report.channels["dw"] == (16, 8)
    x = normal(3, 16, 8)
    want = np.asarray(pruned(x))
    np.testing.assert_allclose(np.asarray(small(x)), want, atol=1e-5 * np.abs(want).max())


def test_a_raw_tf_reshape_on_tf_keras_stays_frozen_and_says_why():
    inputs = tf_keras.Input((16, 8))
    x = tf_keras.layers.Dense(16, name="fc1")(inputs)
    x = tf.reshape(x, (-1, 4, 4, 16))
    x = tf_keras.layers.Conv2D(4, 1, name="head")(x)
    graph = tfsynapse.dependency_groups(tf_keras.Model(inputs, x))
    assert "fc1" not in {g.name for g in graph.prunable_groups}
    assert "target shape names the channel count" in graph.summary()
