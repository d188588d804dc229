"""Rules for the custom layers that ``keras.applications`` defines for itself (either Keras).

ConvNeXt scales every residual branch channel by a learned ``LayerScale`` and may drop whole
branches with ``StochasticDepth``; InceptionResNetV2 adds a scaled branch to its shortcut with
``CustomScaleLayer`` (``x + scale * branch``, a residual add). None mixes channels, so they get
rules here, found by their class path (``applications.convnext.LayerScale``) in either Keras.
"""

from tfsynapse.graph.rules import PassThrough, register_builtin
from tfsynapse.graph.shape_rules import MergeRule


class ChannelScaleRule(PassThrough):
    """``x * gamma`` with one learned ``gamma`` per channel (ConvNeXt's ``LayerScale``).

    ``gamma`` is a per-channel parameter of the channels passing through: masked and removed
    with them. A zero channel stays zero, so ``gamma`` need not be zero itself.
    """

    transparent = False
    scale_attr = "gamma"

    def propagate(self, ctx):
        cmap = ctx.inputs[0]
        scale = getattr(ctx.layer, self.scale_attr)
        ctx.slot(scale, len(scale.shape) - 1, cmap, "param", zero_required=False)
        return [cmap]

    def resize(self, config, out_channels):
        config = dict(config)
        if "projection_dim" in config:
            config["projection_dim"] = int(out_channels)
        return config


register_builtin("applications.convnext.LayerScale")(ChannelScaleRule)
register_builtin("applications.convnext.StochasticDepth")(PassThrough)
register_builtin("applications.inception_resnet_v2.CustomScaleLayer")(MergeRule())
