"""A user's rule for a user's layer gets counting, filter and connection pruning and shrinking
for free: everything tfsynapse knows about a layer lives in its rule."""

import numpy as np
import pytest

import tfsynapse
from tfsynapse.backends.tf_keras import keras, tf
from tfsynapse.graph import Producer, register_rule


class TapConv(keras.layers.Layer):
    """A 3x3 'same' convolution whose weights are called ``taps`` and ``offset``."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, input_shape):
        self.taps = self.add_weight(name="taps", shape=(3, 3, input_shape[-1], self.filters),
                                    initializer="glorot_uniform")
        self.offset = self.add_weight(name="offset", shape=(self.filters,),
                                      initializer="random_normal")

    def call(self, x):
        return tf.nn.conv2d(x, self.taps, 1, "SAME") + self.offset

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@register_rule(TapConv)
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
def model():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.ReLU()(TapConv(8, name="t1")(inputs))
    x = keras.layers.ReLU()(TapConv(6, name="t2")(x))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_a_user_rule_counts_the_layer(model):
    macs, table = tfsynapse.count_macs(model, per_layer=True)
    assert table["t1"] == 3 * 3 * 3 * 8 * 64 and table["t2"] == 3 * 3 * 8 * 6 * 64
    assert tfsynapse.count_params(model) == model.count_params()


@pytest.mark.parametrize("granularity", ["filter", "connection"])
def test_a_user_rule_prunes_and_shrinks(model, granularity):
    pruned = tfsynapse.prune_once(model, 0.5, granularity=granularity, criterion="l1")
    taps = pruned.get_layer("t2").taps.numpy()
    if granularity == "connection":  # per-connection zeros inside the user's kernel
        dead = ~np.any(taps != 0, axis=(0, 1))
        assert 0.4 <= dead.mean() <= 0.6
        assert tfsynapse.connection_sparsity(pruned)[1]["t2"] == pytest.approx(dead.mean())
    small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.max_abs_error < 1e-5
    assert small.get_layer("t1").filters < 8 and report.macs_after < report.macs_before
