"""A user's rule for a user's layer gets counting, filter and connection pruning and shrinking
for free: everything tfsynapse knows about a layer lives in its rule."""

import keras as keras3
import numpy as np
import pytest

import tfsynapse
from conftest import both_backends
from tfsynapse.backends.tf_keras import keras, tf
from tfsynapse.graph import Producer, register_rule

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


def _tap_conv_class(K, conv):
    """A user's layer in Keras ``K``: a 3x3 'same' convolution whose weights are called
    ``taps`` and ``offset`` (names no built-in rule knows)."""

    class TapConv(K.layers.Layer):
        def __init__(self, filters, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters

        def build(self, input_shape):
            self.taps = self.add_weight(name="taps", shape=(3, 3, input_shape[-1], self.filters),
                                        initializer="glorot_uniform")
            self.offset = self.add_weight(name="offset", shape=(self.filters,),
                                          initializer="random_normal")

        def call(self, x):
            return conv(x, self.taps) + self.offset

        def get_config(self):
            return {**super().get_config(), "filters": self.filters}

    return TapConv


TAP_CONV = {"tf_keras": _tap_conv_class(keras, lambda x, k: tf.nn.conv2d(x, k, 1, "SAME")),
            "keras3": _tap_conv_class(keras3, lambda x, k: keras3.ops.conv(x, k, padding="same"))}


@register_rule(*TAP_CONV.values())  # one rule for both Keras' classes
class TapConvRule(Producer):
    kernel_attr = "taps"

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        out = ctx.new_space(layer.filters)
        ctx.slot(layer.taps, 2, cmap, "in", zero_required=False)
        ctx.slot(layer.taps, 3, out, "out", zero_required=True)
        ctx.slot(layer.offset, 0, out, "out", zero_required=True)
        return [out]


@pytest.fixture
def model(backend):
    keras.utils.set_random_seed(4)
    tap_conv = TAP_CONV[backend]
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.ReLU()(tap_conv(8, name="t1")(inputs))
    x = keras.layers.ReLU()(tap_conv(6, name="t2")(x))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_a_user_rule_counts_the_layer(model):
    macs, table = tfsynapse.count_macs(model, per_layer=True)
    assert table["t1"] == 3 * 3 * 3 * 8 * 64 and table["t2"] == 3 * 3 * 8 * 6 * 64
    assert tfsynapse.count_params(model) == model.count_params()


@pytest.mark.parametrize("granularity", ["filter", "connection"])
def test_a_user_rule_prunes_and_shrinks(model, granularity):
    pruned = tfsynapse.prune_once(model, 0.5, granularity=granularity, criterion="l1")
    taps = np.asarray(pruned.get_layer("t2").taps)
    if granularity == "connection":  # per-connection zeros inside the user's kernel
        dead = ~np.any(taps != 0, axis=(0, 1))
        assert 0.4 <= dead.mean() <= 0.6
        assert tfsynapse.connection_sparsity(pruned)[1]["t2"] == pytest.approx(dead.mean())
    small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.max_abs_error < 1e-5
    assert small.get_layer("t1").filters < 8 and report.macs_after < report.macs_before
