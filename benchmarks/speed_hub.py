"""Speed on keras-hub models: the speed section's protocol on backbones made of composite layers.

keras-hub's MobileNetV3 is built from composite blocks (inverted residuals with
squeeze-excitation) and its ViT from encoder blocks holding MultiHeadAttention: tfsynapse traces
them (docs/architecture.md, "Seeing inside"). Both are built from configs (random weights, no
download) at 224 px: MobileNetV3-Small's layout and a ViT-Tiny (patch 16, 12 blocks of 3 heads,
width 192, MLP 768). Pruned by filters and heads at 50% (criterion 'l1', scope 'layer',
``round_to=8``; heads are whole units), shrunk, exported fp32 and int8, and timed at 1 thread
interleaved with the dense model. ViT's patch embedding holds its class token itself and stays
opaque: its MACs (a 16x16 convolution, 29 M) are outside the counted total, which the rows say.
"""

from benchmarks import speed

SECTION = "speed_hub"


def mobilenet_v3_small(size):
    from keras_hub.src.models.mobilenet.mobilenet_backbone import MobileNetBackbone

    return MobileNetBackbone(
        stackwise_expansion=[[72, 88], [96, 240, 240], [120, 144], [288, 576, 576]],
        stackwise_num_blocks=[2, 3, 2, 3],
        stackwise_num_filters=[[24, 24], [40, 40, 40], [48, 48], [96, 96, 96]],
        stackwise_kernel_size=[[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25], [0.25, 0.25],
                            [0.25, 0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish"] * 3, ["hard_swish"] * 2,
                              ["hard_swish"] * 3],
        stackwise_padding=[[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]],
        output_num_filters=576, depthwise_filters=16, depthwise_stride=2,
        depthwise_residual=False, last_layer_filter=288, squeeze_and_excite=0.5,
        image_shape=(size, size, 3), input_activation="hard_swish",
        output_activation="hard_swish", input_num_filters=16)


def vit_tiny(size):
    from keras_hub.src.models.vit.vit_backbone import ViTBackbone

    return ViTBackbone(image_shape=(size, size, 3), patch_size=16, num_layers=12, num_heads=3,
                       hidden_dim=192, mlp_dim=768)


def settings(quick):
    builders = {"MobileNetV3Small (keras-hub)": mobilenet_v3_small,
                "ViT-Tiny (keras-hub)": vit_tiny}
    if quick:
        return {"models": [("MobileNetV3Small (keras-hub)", 96)], "sparsities": (0.5,),
                "precisions": ("fp32",), "threads": (1,), "rounds": 3, "block_seconds": 0.1,
                "calibration_batches": 8, "tfmot": False, "aligned": (), "builders": builders}
    return {"models": [(name, 224) for name in builders], "sparsities": (0.5,),
            "precisions": ("fp32", "int8"), "threads": (1,), "rounds": 8,
            "block_seconds": 0.5, "calibration_batches": 8, "tfmot": False, "aligned": (),
            "builders": builders}


def run(ctx):
    result = speed.run(ctx, backend="keras3", section=SECTION, cfg=settings(ctx.quick))
    result["settings"].pop("builders", None)  # functions: not JSON
    return result


def markdown(result):
    return speed.markdown(result) + (
        "\n\nViT-Tiny's MACs exclude its patch embedding (opaque: it holds its class token; a "
        "16x16 convolution of about 29 M MACs at 224 px, unchanged by pruning): the counted MAC "
        "factor is slightly above the whole model's.")
