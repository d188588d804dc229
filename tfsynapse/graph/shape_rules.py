"""Rules of the layers that combine or rearrange channels: merges, concatenation, flatten,
reshape, permute, and LayerNormalization (frozen: its statistics mix channels)."""

import numpy as np

from tfsynapse.graph.channels import ChannelMap
from tfsynapse.graph.rules import Freeze, Rule, channel_axis_is_last, register_builtin



class MergeRule(Rule):
    """Add, Subtract, Average, Maximum, Minimum, Multiply: inputs' channels are coupled.

    An input broadcast over channels (one channel against many) is not coupled; it is frozen.
    A pruned channel leaves a Multiply as zero if any input is zero, the others only if all are.
    """

    transparent = False

    def __init__(self, zero_if_any=False):
        self.zero_if_any = zero_if_any

    def propagate(self, ctx):
        width = ctx.output_channels(0)
        full = [m for m in ctx.inputs if len(m) == width]
        for m in ctx.inputs:
            if len(m) != width:
                ctx.freeze(m, f"{ctx.layer.name}: broadcast across channels")
        if not full:
            return ctx.frozen_maps(f"{ctx.layer.name}: broadcast across channels")
        for m in full[1:]:
            ctx.union(full[0], m)
        combine = np.logical_or if self.zero_if_any else np.logical_and
        zero_ok = full[0].zero_ok
        for m in full[1:]:
            zero_ok = combine(zero_ok, m.zero_ok)
        return [full[0].with_zero_ok(zero_ok)]


class ConcatenateRule(Rule):
    """Concatenate: along the channel axis maps are concatenated (offsets); otherwise coupled."""

    def propagate(self, ctx):
        rank = ctx.output_shapes[0].rank
        if channel_axis_is_last(ctx.layer.axis, rank):
            return [ChannelMap.concat(ctx.inputs)]
        for m in ctx.inputs[1:]:
            ctx.union(ctx.inputs[0], m)
        zero_ok = np.logical_and.reduce([m.zero_ok for m in ctx.inputs])
        return [ctx.inputs[0].with_zero_ok(zero_ok)]


class FlattenRule(Rule):
    """Flatten: channel c of every spatial position lands at position p*C + c."""

    def propagate(self, ctx):
        shape = ctx.input_shapes[0]
        cmap = ctx.inputs[0]
        if shape.rank <= 2:
            return [cmap]
        spatial = shape[1:-1]
        if any(d is None for d in spatial) or getattr(ctx.layer, "data_format", None) == "channels_first":
            return Freeze("flattens an unknown or channels-first spatial shape").propagate(ctx)
        return [cmap.tile(int(np.prod(spatial)))]


class ReshapeRule(Rule):
    """Reshape: kept when the channel axis is unchanged or folded whole into a wider last axis."""

    def propagate(self, ctx):
        in_shape, out_shape = ctx.input_shapes[0], ctx.output_shapes[0]
        cmap = ctx.inputs[0]
        c_in, c_out = in_shape[-1], out_shape[-1]
        if c_in == c_out and self._same_volume(in_shape, out_shape):
            return [cmap]
        if c_in and c_out and c_out % c_in == 0 and in_shape.rank > 2 and all(
            d is not None for d in in_shape[1:]
        ):
            if c_out == int(np.prod(in_shape[1:])) or out_shape.rank >= 2:
                return [cmap.tile(c_out // c_in)]
        return Freeze("reshape moves channels into other axes").propagate(ctx)

    @staticmethod
    def _same_volume(a, b):
        va, vb = a[1:-1], b[1:-1]
        if any(d is None for d in va) or any(d is None for d in vb):
            return True
        return int(np.prod(va)) == int(np.prod(vb))

    def resize(self, config, out_channels):
        config = dict(config)
        target = list(config["target_shape"])
        if target[-1] != -1:
            target[-1] = int(out_channels)
        config["target_shape"] = tuple(target)
        return config


class LayerNormRule(Rule):
    """LayerNormalization: over the channel axis its statistics mix channels, so they freeze."""

    def propagate(self, ctx):
        return Freeze("its statistics are computed across channels").propagate(ctx)


class PermuteRule(Rule):
    """Permute: kept only when the channel axis stays last."""

    def propagate(self, ctx):
        dims = tuple(ctx.layer.dims)
        if dims and dims[-1] == len(dims):
            return [ctx.inputs[0]]
        return Freeze("moves the channel axis").propagate(ctx)


register_builtin("LayerNormalization")(LayerNormRule)
register_builtin("Add", "Subtract", "Average", "Maximum", "Minimum")(MergeRule())
register_builtin("Multiply")(MergeRule(zero_if_any=True))
register_builtin("Concatenate")(ConcatenateRule)
register_builtin("Flatten")(FlattenRule)
register_builtin("Reshape")(ReshapeRule)
register_builtin("Permute")(PermuteRule)
