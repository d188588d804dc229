"""The dependency-graph rule of SynapticConv2D (registered on import)."""

from tfsynapse.graph.producer_rules import Producer
from tfsynapse.graph.rules import register_rule
from tfsynapse.backends.keras3.layers import SynapticConv2D as Keras3SynapticConv2D
from tfsynapse.backends.tf_keras.layers import SynapticConv2D


@register_rule(SynapticConv2D, Keras3SynapticConv2D)
class SynapticRule(Producer):
    """Like Conv2D, with the strengths ``s[i, j]`` as a second kernel-like weight."""

    kernel_attr = "direction"

    def connection_strength(self, layer):
        return layer.strength  # s[i, j] dies with connection (i, j)

    def effective_weight(self, layer, weight):
        return layer.effective_kernel() if weight is layer.direction else weight

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        out = ctx.new_space(layer.filters)
        ctx.slot(layer.direction, 2, cmap, "in", zero_required=False)
        ctx.slot(layer.direction, 3, out, "out", zero_required=True)
        ctx.slot(layer.strength, 0, cmap, "in", zero_required=False)
        ctx.slot(layer.strength, 1, out, "out", zero_required=False)
        if layer.bias is not None:
            ctx.slot(layer.bias, 0, out, "out", zero_required=True)
        return [out]
