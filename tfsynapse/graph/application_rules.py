"""Rules for the custom layers that ``tf_keras.applications`` defines for itself.

ConvNeXt scales every residual branch channel by a learned ``LayerScale`` and may drop whole
branches with ``StochasticDepth``; InceptionResNetV2 adds a scaled branch to its shortcut with
``CustomScaleLayer`` (``x + scale * branch``, a residual add). None mixes channels, so they get
rules here; a model built without them (or a tf_keras without them) is unaffected.
"""

import importlib

from tfsynapse.graph.rules import PassThrough, register_rule
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
        ctx.slot(scale, scale.shape.rank - 1, cmap, "param", zero_required=False)
        return [cmap]

    def resize(self, config, out_channels):
        config = dict(config)
        if "projection_dim" in config:
            config["projection_dim"] = int(out_channels)
        return config


def _application_class(module, name):
    try:
        return getattr(importlib.import_module(f"tf_keras.src.applications.{module}"), name, None)
    except ImportError:
        return None


_LAYER_SCALE = _application_class("convnext", "LayerScale")
_STOCHASTIC_DEPTH = _application_class("convnext", "StochasticDepth")
if _LAYER_SCALE is not None:
    register_rule(_LAYER_SCALE)(ChannelScaleRule)
if _STOCHASTIC_DEPTH is not None:
    register_rule(_STOCHASTIC_DEPTH)(PassThrough)
_CUSTOM_SCALE = _application_class("inception_resnet_v2", "CustomScaleLayer")
if _CUSTOM_SCALE is not None:
    register_rule(_CUSTOM_SCALE)(MergeRule())
