"""Random functional architectures: random masks, masked == shrunk, and TFLite conversion.

Blocks include fused activations (sigmoid, softmax ...), grouped convolutions (frozen) and SE
gates; models have one output, a list or a dict of two. A few examples run in CI; set
TFSYNAPSE_LONG=1 for the long mode (500 examples; TFSYNAPSE_LONG_EXAMPLES=N for another count):

    TFSYNAPSE_LONG=1 python -m pytest -q tests/test_random_architectures.py
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tflite_export
import tfsynapse
from conftest import rand_inputs, randomize_bn
from tfsynapse.backends.tf_keras import keras, tf

L = keras.layers
LONG = os.environ.get("TFSYNAPSE_LONG") == "1"
ACTIVATIONS = ["relu", "swish", "elu", "linear", "sigmoid", "tanh", "gelu"]
BLOCKS = ["conv", "depthwise", "separable", "residual", "concat", "se", "pool", "bn_act", "multiply",
          "fused", "grouped"]
# Fused activations: f(0) != 0 (sigmoid) and channel-mixing (softmax) ones included.
FUSED = ACTIVATIONS + ["softmax", "hard_sigmoid"]


def build(draw):
    """A random functional CNN from the supported layer set, drawn step by step."""
    size = draw(st.sampled_from([8, 12, 16]))
    inputs = keras.Input((size, size, draw(st.integers(1, 4))))
    x = L.Conv2D(draw(st.integers(2, 8)), 3, padding="same")(inputs)
    for block in draw(st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=7)):
        width = int(x.shape[-1])
        act = draw(st.sampled_from(ACTIVATIONS))
        if block == "conv":
            x = L.Conv2D(draw(st.integers(2, 10)), draw(st.sampled_from([1, 3])), padding="same",
                         use_bias=draw(st.booleans()))(x)
        elif block == "depthwise":
            x = L.DepthwiseConv2D(3, depth_multiplier=draw(st.integers(1, 2)), padding="same")(x)
        elif block == "separable":
            x = L.SeparableConv2D(draw(st.integers(2, 8)), 3, padding="same")(x)
        elif block == "residual":
            y = L.Conv2D(width, 3, padding="same")(x)
            y = L.BatchNormalization()(y)
            merge = draw(st.sampled_from([L.Add, L.Subtract, L.Average, L.Maximum]))
            x = merge()([x, y])
        elif block == "concat":
            x = L.Concatenate()([x, L.Conv2D(draw(st.integers(1, 6)), 1)(x)])
        elif block == "se":
            s = L.GlobalAveragePooling2D(keepdims=True)(x)
            s = L.Conv2D(max(1, width // 2), 1, activation="relu")(s)
            s = L.Conv2D(width, 1, activation="sigmoid")(s)
            x = L.Multiply()([x, s])
        elif block == "pool" and x.shape[1] >= 4:
            x = draw(st.sampled_from([L.MaxPooling2D, L.AveragePooling2D]))()(x)
        elif block == "multiply":
            x = L.Multiply()([x, L.Conv2D(width, 1)(x)])
        elif block == "fused":
            x = L.Conv2D(draw(st.integers(2, 10)), draw(st.sampled_from([1, 3])), padding="same",
                         activation=draw(st.sampled_from(FUSED)))(x)
        elif block == "grouped" and width % 2 == 0:
            x = L.Conv2D(2 * draw(st.integers(1, 4)), 3, padding="same", groups=2)(x)
        x = L.BatchNormalization()(x) if block == "bn_act" else x
        x = L.Activation(act)(x) if block in ("conv", "bn_act", "separable") else x
    head = draw(st.sampled_from(["gap", "flatten"]))
    x = L.GlobalAveragePooling2D()(x) if head == "gap" else L.Flatten()(x)
    if draw(st.booleans()):
        x = L.Dense(draw(st.integers(3, 12)), activation=draw(st.sampled_from(FUSED)))(x)
    outputs = draw(st.sampled_from(["one", "list", "dict"]))
    if outputs == "one":
        return keras.Model(inputs, L.Dense(draw(st.integers(2, 5)))(x))
    heads = [L.Dense(draw(st.integers(2, 5)), name=f"head_{i}")(x) for i in range(2)]
    return keras.Model(inputs, heads if outputs == "list" else {"zz": heads[0], "aa": heads[1]})


@settings(max_examples=int(os.environ.get("TFSYNAPSE_LONG_EXAMPLES", 500)) if LONG else 8, deadline=None, derandomize=not LONG,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_architecture_prunes_shrinks_and_converts(data):
    model = randomize_bn(build(data.draw))
    sparsity = data.draw(st.floats(0.1, 0.8))
    scope = data.draw(st.sampled_from(["layer", "global"]))
    pruned = tfsynapse.prune_once(model, sparsity, criterion="random", scope=scope,
                                  seed=data.draw(st.integers(0, 1000)))
    small = tfsynapse.shrink(pruned, check=False)
    x = rand_inputs(model, 3)
    expected = [o.numpy() for o in tf.nest.flatten(pruned(x, training=False))]
    got = [o.numpy() for o in tf.nest.flatten(small(x, training=False))]
    scale = max(1.0, max(float(np.abs(e).max()) for e in expected))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * scale)
    assert tfsynapse.count_macs(small) <= tfsynapse.count_macs(model)
    lite = tflite_export.convert(small)
    assert tflite_export.verify(lite, small, x)["max_abs_error"] <= 1e-3 * scale
    outputs = tflite_export.predict(lite, x)  # in Keras order, whatever the names
    outputs = outputs if isinstance(outputs, list) else [outputs]
    # eager call, not predict(): TF's graph remapper cannot fuse some BatchNorm+activation
    # pairs on CPU ("Fusion is not implemented: [FusedBatchNorm,Tanh]"), a TensorFlow limit
    keras_outputs = small(x, training=False)
    if isinstance(pruned(x, training=False), dict):  # shrink keeps the output structure
        assert isinstance(keras_outputs, dict) and list(keras_outputs) == ["zz", "aa"]
    keras_outputs = tf.nest.flatten(keras_outputs)  # Keras order: a dict by sorted key
    assert [o.shape for o in outputs] == [tuple(o.shape) for o in keras_outputs]


@pytest.mark.skipif(not LONG, reason="long mode only (TFSYNAPSE_LONG=1)")
def test_long_mode_is_documented():
    assert "TFSYNAPSE_LONG" in (__doc__ or "")
