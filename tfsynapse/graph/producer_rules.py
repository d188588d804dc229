"""Rules of the layers that make new channels: convolutions (grouped ones too), transposed,
depthwise and separable convolutions, Dense and Embedding, with their MAC formulas."""

import numpy as np

from tfsynapse.graph.channels import ChannelMap
from tfsynapse.graph.rules import Freeze, Rule, _prod, register_builtin



class Producer(Rule):
    """A layer that creates a new channel space: Conv1D/2D/3D, Dense, Conv*DTranspose, Embedding.

    Attributes:
      in_axis, out_axis: the kernel axes of input and output channels (negative).
      config_key: the config entry holding the output channel count.
    """

    kind = "conv"
    in_axis, out_axis = -2, -1
    kernel_attr = "kernel"
    config_key = "filters"

    def kernel(self, layer):
        """The kernel variable. A Keras 3 layer with LoRA enabled (``enable_lora``) computes
        with ``kernel + lora_kernel_a @ lora_kernel_b * scale``: its ``kernel`` is that sum (a
        tensor), and the frozen base variable is ``_kernel``."""
        if getattr(layer, "lora_enabled", False):
            return layer._kernel  # noqa: SLF001 - Keras 3 keeps the LoRA base kernel there
        return getattr(layer, self.kernel_attr)

    @staticmethod
    def lora(layer):
        """``(lora_kernel_a, lora_kernel_b)`` of a layer with LoRA enabled, else None. ``a``
        holds the kernel's input axis (``(..., C_in, rank)``), ``b`` its output axis
        (``(rank, C_out)``): an output channel dies with its column of ``b``, an input channel
        with its row of ``a``."""
        if getattr(layer, "lora_enabled", False):
            return layer.lora_kernel_a, layer.lora_kernel_b
        return None

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        kernel = self.kernel(layer)
        rank = len(kernel.shape)
        groups = getattr(layer, "groups", 1) or 1
        lora = self.lora(layer)
        if lora is not None and (groups > 1 or self.in_axis != -2):
            return Freeze("LoRA on a grouped or transposed convolution has no channel rule "
                          "yet").propagate(ctx)
        out = ctx.new_space(kernel.shape[self.out_axis])
        if groups > 1:
            _couple_conv_groups(ctx, cmap, out, groups)
        else:
            ctx.slot(kernel, rank + self.in_axis, cmap, "in", zero_required=False)
        ctx.slot(kernel, rank + self.out_axis, out, "out", zero_required=True)
        if lora is not None:
            lora_a, lora_b = lora
            ctx.slot(lora_a, len(lora_a.shape) - 2, cmap, "in", zero_required=False)
            ctx.slot(lora_b, 1, out, "out", zero_required=True)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            ctx.slot(bias, 0, out, "out", zero_required=True)
        return [out]

    def macs(self, layer, in_shape, out_shape, shape_of):
        kernel = shape_of(self.kernel(layer))
        positions = _prod(out_shape[1:-1])
        return _prod(kernel[:-2]) * kernel[-2] * kernel[-1] * positions + \
            self._lora_macs(layer, shape_of)

    def _lora_macs(self, layer, shape_of):
        """A LoRA layer merges ``kernel + a @ b * scale`` once per call (Keras 3 computes the
        kernel that way; an export folds it into a constant): ``prod(a) * C_out``."""
        lora = self.lora(layer)
        if lora is None:
            return 0
        a, b = shape_of(lora[0]), shape_of(lora[1])
        return _prod(a) * b[-1]

    def connection_kernel(self, layer):
        # a LoRA layer's connections live in the kernel and in a @ b: not pruned one by one
        return None if self.lora(layer) is not None else self.kernel(layer)

    def resize(self, config, out_channels):
        config = dict(config)
        groups = config.get("groups", 1) or 1
        if groups > 1:  # whole convolution groups were removed (see _couple_conv_groups)
            config["groups"] = int(out_channels) // (config[self.config_key] // groups)
        config[self.config_key] = int(out_channels)
        return config


def _couple_conv_groups(ctx, cmap, out, groups):
    """A grouped convolution's unit is one whole convolution group.

    Group ``g`` reads input channels ``[g*k_in, (g+1)*k_in)`` and writes output channels
    ``[g*k_out, (g+1)*k_out)``; its kernel's input axis holds only ``k_in`` positions, shared
    by every group. Removing whole groups keeps that kernel regular (``groups`` shrinks, the
    input axis stays), so every channel a group reads or writes is united into one unit: the
    producers of its input lose those channels with it, and a depthwise convolution written as
    ``Conv2D(groups=C)`` (ConvNeXt) behaves exactly like ``DepthwiseConv2D``. A pruned group's
    outputs are zero through its masked kernel columns and bias, whatever its inputs carry.
    """
    k_in, k_out = len(cmap) // groups, len(out) // groups
    for g in range(groups):
        atoms = np.concatenate([cmap.atoms[g * k_in:(g + 1) * k_in],
                                out.atoms[g * k_out:(g + 1) * k_out]])
        ctx.union(ChannelMap.of(np.full(len(atoms), atoms[0])), ChannelMap.of(atoms))


class DenseRule(Producer):
    kind = "dense"
    config_key = "units"

    def macs(self, layer, in_shape, out_shape, shape_of):
        kernel = shape_of(self.kernel(layer))
        return kernel[0] * kernel[1] * _prod(in_shape[1:-1]) + self._lora_macs(layer, shape_of)

    def connection_kernel(self, layer):
        return None  # connection pruning is for convolutions


class ConvTransposeRule(Producer):
    kind = "conv_transpose"
    in_axis, out_axis = -1, -2

    def macs(self, layer, in_shape, out_shape, shape_of):
        kernel = shape_of(layer.kernel)
        return _prod(kernel[:-2]) * kernel[-2] * kernel[-1] * _prod(in_shape[1:-1])

    def connection_kernel(self, layer):
        return None


class EmbeddingRule(Producer):
    kind = None
    kernel_attr = "embeddings"
    config_key = "output_dim"

    def macs(self, layer, in_shape, out_shape, shape_of):
        return 0  # a table lookup

    def connection_kernel(self, layer):
        return None

    def propagate(self, ctx):
        layer = ctx.layer
        if getattr(layer, "lora_enabled", False):
            return Freeze("an Embedding with LoRA enabled has no channel rule yet").propagate(ctx)
        out = ctx.new_space(layer.embeddings.shape[1])
        ctx.slot(layer.embeddings, 1, out, "out", zero_required=True)
        return [out]


class DepthwiseRule(Rule):
    """DepthwiseConv1D/2D: input channel c makes outputs c*m .. c*m+m-1 (m = depth_multiplier).

    The input and its m outputs are one unit; the depthwise kernel and bias are per-channel
    parameters of the channels passing through.
    """

    kind = "depthwise"

    @staticmethod
    def kernel(layer):
        """The depthwise kernel: ``depthwise_kernel`` in tf_keras, ``kernel`` in Keras 3."""
        kernel = getattr(layer, "depthwise_kernel", None)
        return layer.kernel if kernel is None else kernel

    def macs(self, layer, in_shape, out_shape, shape_of):
        return _prod(shape_of(self.kernel(layer))) * _prod(out_shape[1:-1])

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        kernel = self.kernel(layer)
        m = kernel.shape[-1]
        ctx.slot(kernel, len(kernel.shape) - 2, cmap, "param", zero_required=False)
        out = cmap.repeat(m).with_zero_ok(True)
        if layer.bias is not None:
            ctx.slot(layer.bias, 0, out, "param", zero_required=True)
        return [out]


class SeparableRule(Producer):
    """SeparableConv1D/2D: a depthwise step per input channel, then a pointwise producer."""

    kind = "separable"

    def macs(self, layer, in_shape, out_shape, shape_of):
        dw, pw = shape_of(layer.depthwise_kernel), shape_of(layer.pointwise_kernel)
        return (_prod(dw) + pw[-2] * pw[-1]) * _prod(out_shape[1:-1])

    def connection_kernel(self, layer):
        return None

    def propagate(self, ctx):
        layer, cmap = ctx.layer, ctx.inputs[0]
        dw, pw = layer.depthwise_kernel, layer.pointwise_kernel
        m = dw.shape[-1]
        ctx.slot(dw, len(dw.shape) - 2, cmap, "in", zero_required=False)
        ctx.slot(pw, len(pw.shape) - 2, cmap.repeat(m), "in", zero_required=False)
        out = ctx.new_space(pw.shape[-1])
        ctx.slot(pw, len(pw.shape) - 1, out, "out", zero_required=True)
        if layer.bias is not None:
            ctx.slot(layer.bias, 0, out, "out", zero_required=True)
        return [out]


register_builtin("Conv1D", "Conv2D", "Conv3D")(Producer)
register_builtin("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")(ConvTransposeRule)
register_builtin("Dense")(DenseRule)
register_builtin("Embedding")(EmbeddingRule)
register_builtin("DepthwiseConv1D", "DepthwiseConv2D")(DepthwiseRule)
register_builtin("SeparableConv1D", "SeparableConv2D")(SeparableRule)
