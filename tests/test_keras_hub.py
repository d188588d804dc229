"""keras-hub backbones (Keras 3), built from small configs (no weights): their composite layers
are traced, every compute layer is counted, and masked == shrunk == TFLite."""

import warnings

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import tfsynapse  # noqa: E402
from conftest import normal, zoo_cases  # noqa: E402
from tfsynapse.backends import tf  # noqa: E402

pytestmark = pytest.mark.zoo


S = (32, 32, 3)


def _hub(module, name):
    return getattr(__import__(f"keras_hub.src.models.{module}", fromlist=[name]), name)


BACKBONES = {
    "MobileNetV3": lambda: _hub("mobilenet.mobilenet_backbone", "MobileNetBackbone")(
        stackwise_expansion=[[16, 24], [32, 48]], stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[8, 8], [16, 16]], stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]], stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]], output_num_filters=32, depthwise_filters=8,
        depthwise_stride=1, depthwise_residual=False, last_layer_filter=32,
        squeeze_and_excite=0.5, image_shape=S, input_activation="hard_swish",
        output_activation="hard_swish", input_num_filters=8),
    "HGNetV2": lambda: _hub("hgnetv2.hgnetv2_backbone", "HGNetV2Backbone")(
        depths=[1, 1], embedding_size=8, hidden_sizes=[16, 32], stem_channels=[3, 8, 8],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(8, 8, 16, 1, 1, 3), (16, 8, 32, 1, 1, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, True],
        image_shape=S),
    "ResNetV1": lambda: _hub("resnet.resnet_backbone", "ResNetBackbone")(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=S),
    "ResNetV2": lambda: _hub("resnet.resnet_backbone", "ResNetBackbone")(
        input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
        block_type="bottleneck_block", use_pre_activation=True, image_shape=S),
    "EfficientNet": lambda: _hub("efficientnet.efficientnet_backbone", "EfficientNetBackbone")(
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 4], stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"],
        stackwise_width_coefficients=[1.0, 1.0], stackwise_depth_coefficients=[1.0, 1.0],
        input_shape=S, num_features=32),
    "CSPNet": lambda: _hub("cspnet.cspnet_backbone", "CSPNetBackbone")(
        stem_filters=16, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 1],
        stackwise_strides=[1, 2], stackwise_num_filters=[16, 32], block_type="dark_block",
        stage_type="csp", bottle_ratio=[0.5], block_ratio=[1.0], expand_ratio=[2.0],
        image_shape=S),
    "DenseNet": lambda: _hub("densenet.densenet_backbone", "DenseNetBackbone")(
        stackwise_num_repeats=[2, 2], growth_rate=8, image_shape=S),
    "Xception": lambda: _hub("xception.xception_backbone", "XceptionBackbone")(
        stackwise_conv_filters=[[8, 16], [16, 32], [32, 32]],
        stackwise_pooling=[True, True, False], image_shape=S),
}


def vit():
    return _hub("vit.vit_backbone", "ViTBackbone")(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
        mlp_dim=32)


def _compute_layers(model):
    """Every convolution and Dense layer of ``model``, found through Keras's own layer tree
    (independent of tracing)."""
    kinds = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
    return sorted(layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
                  if type(layer).__name__ in kinds)


def _outputs(model, x):
    return [np.asarray(t) for t in tf.nest.flatten(model(x))]


def _randomize_batchnorm(model):
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer).__name__ == "BatchNormalization":
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.3, c).astype(np.float32))


# the composite-layer backbones run by default; TFSYNAPSE_ZOO=all runs all eight
@pytest.mark.parametrize("name", zoo_cases(sorted(BACKBONES),
                                           fast={"MobileNetV3", "HGNetV2", "Xception"}))
def test_a_convolutional_backbone_is_counted_pruned_shrunk_and_exported_in_int8(name):
    import tflite_export  # noqa: PLC0415

    model = BACKBONES[name]()
    _randomize_batchnorm(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = tfsynapse.dependency_groups(model)
        total, table = tfsynapse.count_macs(graph, per_layer=True)
    assert not [w for w in caught if "count_macs" in str(w.message)]  # nothing uncounted
    assert sorted(table) == _compute_layers(model)  # every compute layer is counted
    assert not graph.flat.tracer.opaque
    assert tfsynapse.count_params(graph) == model.count_params()
    x = np.random.default_rng(1).uniform(0, 1, size=(8, 32, 32, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers without a rule (ops.split) are frozen, named
        pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
        small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.macs_after <= 0.75 * total, (report.macs_after, total)
    for want, got in zip(_outputs(pruned, x), _outputs(small, x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    # int8 with float I/O loads in LiteRT and stays near the Keras model
    lite = tflite_export.predict(
        tflite_export.convert(small, quantize="int8", representative_dataset=x), x)
    for want, got in zip(_outputs(small, x), tf.nest.flatten(lite)):
        gap = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
        assert gap < 0.2, f"{name}: int8 differs from Keras by {gap:.3f} of the output scale"


def test_a_vision_transformer_prunes_heads_and_mlp_units_and_names_what_it_cannot_see():
    """ViT's patch embedding holds its class token itself (opaque, named); its encoder blocks
    are traced: two heads per block and the MLP units prune, and shrink removes them."""
    model = vit()
    with pytest.warns(UserWarning, match="'vit_patching_and_embedding'.*holds 1 weight\\(s\\) "
                                         "of its own \\(class_token\\)"):
        graph = tfsynapse.dependency_groups(model)
    prunable = {g.name: g.size for g in graph.prunable_groups}
    heads = [n for n, size in prunable.items() if n.endswith("mha") and size == 2]
    mlp = [n for n, size in prunable.items() if n.endswith("dense_1") and size == 32]
    assert len(heads) == 2 and len(mlp) == 2  # two blocks: their heads and MLP units
    # the patch embedding stays opaque: count_macs says it did not count it
    with pytest.warns(UserWarning, match="without 1 layer\\(s\\).*1,072 weights: "
                                         "'vit_patching_and_embedding'"):
        tfsynapse.count_macs(graph)
    x = normal(2, 16, 16, 3, seed=1)
    with pytest.warns(UserWarning):
        pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
        small = tfsynapse.shrink(pruned)
    attention = [layer for layer in small.layers if type(layer).__name__ == "MultiHeadAttention"]
    assert [layer.get_config()["num_heads"] for layer in attention] == [1, 1]
    want, got = _outputs(pruned, x), _outputs(small, x)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


TRANSFORMERS = {
    # DeiT's encoder blocks return (x, None): recorded by running their calls in place
    "DeiT": lambda: _hub("deit.deit_backbone", "DeiTBackbone")(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32),
    # MiT reshapes with the batch size read from a symbolic shape, and multiplies with ops
    "MiT": lambda: _hub("mit.mit_backbone", "MiTBackbone")(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2], hidden_dims=[8, 16], image_shape=S),
}


@pytest.mark.parametrize("name", zoo_cases(sorted(TRANSFORMERS), fast={"DeiT", "MiT"}))
def test_a_transformer_backbone_is_traced_pruned_shrunk_and_exported(name):
    """DeiT's encoder and MiT's whole hierarchy are traced; heads (DeiT's MultiHeadAttention)
    and MLP units prune, shrink exactly, at least 15% of the counted MACs go, and the int8
    export stays as close to Keras as the dense model's own int8 export does. DeiT's patch
    embedding holds its class and distillation tokens itself: opaque, named, not counted."""
    import tflite_export  # noqa: PLC0415

    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)  # Keras 3 seeds its initializers itself
    model = TRANSFORMERS[name]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = tfsynapse.dependency_groups(model)
        total = tfsynapse.count_macs(graph)
    opaque = graph.flat.tracer.opaque
    if name == "DeiT":
        assert list(opaque) == ["deit_patching_and_embedding"], opaque
        assert "distillation_token" in opaque["deit_patching_and_embedding"]
        assert any("count_macs counted" in str(w.message) for w in caught)  # said, not silent
    else:
        assert not opaque and not [w for w in caught if "count_macs" in str(w.message)]
    assert len(graph.flat.tracer.traced) >= 5
    x = normal(4, *model.inputs[0].shape[1:], seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the opaque embedding is named again
        pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
        small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.macs_after <= 0.85 * total, (report.macs_after, total)
    for want, got in zip(_outputs(pruned, x), _outputs(small, x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    if name == "DeiT":
        heads = [layer.get_config()["num_heads"] for layer in small.layers
                 if type(layer).__name__ == "MultiHeadAttention"]
        assert heads == [1, 1], heads

    def int8_gap(keras_model):
        lite = tflite_export.predict(tflite_export.convert(
            keras_model, quantize="int8", representative_dataset=x), x)
        return max(np.abs(np.asarray(got) - want).max() / np.abs(want).max() for want, got in
                   zip(_outputs(keras_model, x), tf.nest.flatten(lite)))

    # a tiny random transformer quantises coarsely (LayerNorm, softmax; DeiT's dense and pruned
    # models alike 0.18-0.45 of the output scale over 5 seeds): the pruned model's int8 export
    # must be no worse than the dense model's, not near zero
    dense_gap, pruned_gap = int8_gap(model), int8_gap(small)
    assert pruned_gap <= 1.5 * dense_gap + 0.05, (pruned_gap, dense_gap)
