"""keras-hub backbones (Keras 3), built from small configs (no weights): their composite layers
are traced, every compute layer is counted, and masked == shrunk == TFLite."""

import warnings

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import tfsynapse  # noqa: E402
from tfsynapse.backends import tf  # noqa: E402

pytestmark = pytest.mark.zoo


def mobilenet_v3():
    from keras_hub.src.models.mobilenet.mobilenet_backbone import MobileNetBackbone  # noqa: PLC0415

    return MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32, 48]], stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[8, 8], [16, 16]], stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]], stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]], output_num_filters=32, depthwise_filters=8,
        depthwise_stride=1, depthwise_residual=False, last_layer_filter=32,
        squeeze_and_excite=0.5, image_shape=(32, 32, 3), input_activation="hard_swish",
        output_activation="hard_swish", input_num_filters=8)


def hgnet_v2():
    from keras_hub.src.models.hgnetv2.hgnetv2_backbone import HGNetV2Backbone  # noqa: PLC0415

    return HGNetV2Backbone(
        depths=[1, 1], embedding_size=8, hidden_sizes=[16, 32], stem_channels=[3, 8, 8],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(8, 8, 16, 1, 1, 3), (16, 8, 32, 1, 1, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, True],
        image_shape=(32, 32, 3))


def vit():
    from keras_hub.src.models.vit.vit_backbone import ViTBackbone  # noqa: PLC0415

    return ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
                       hidden_dim=16, mlp_dim=32)


def _compute_layers(model):
    """Every convolution and Dense layer of ``model``, found through Keras's own layer tree
    (independent of tracing)."""
    kinds = ("Conv2D", "DepthwiseConv2D", "Dense")
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


@pytest.mark.parametrize("make", [mobilenet_v3, hgnet_v2], ids=["MobileNetV3", "HGNetV2"])
def test_a_convolutional_backbone_is_traced_counted_pruned_and_exported(make, tmp_path):
    import tflite_export  # noqa: PLC0415

    model = make()
    _randomize_batchnorm(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing opaque, nothing uncounted
        graph = tfsynapse.dependency_groups(model)
        total, table = tfsynapse.count_macs(graph, per_layer=True)
    assert sorted(table) == _compute_layers(model)  # every compute layer is counted
    assert graph.flat.tracer.traced and not graph.flat.tracer.opaque
    assert tfsynapse.count_params(graph) == model.count_params()
    assert len(graph.prunable_groups) >= 5
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
    small, report = tfsynapse.shrink(pruned, return_report=True)
    assert report.macs_after < 0.6 * total
    for want, got in zip(_outputs(pruned, x), _outputs(small, x)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # the shrunk model is plain Keras 3: it exports and runs in LiteRT like the Keras model
    flat = tflite_export.convert(small)
    lite = tflite_export.predict(flat, x)
    for want, got in zip(_outputs(small, x), tf.nest.flatten(lite)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3,
                                   atol=1e-4 * np.abs(want).max())


def test_a_vision_transformer_prunes_heads_and_mlp_units_and_names_what_it_cannot_see():
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
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with pytest.warns(UserWarning):
        pruned = tfsynapse.prune_once(model, 0.5, criterion="l1")
        small = tfsynapse.shrink(pruned)
    attention = [layer for layer in small.layers if type(layer).__name__ == "MultiHeadAttention"]
    assert [layer.get_config()["num_heads"] for layer in attention] == [1, 1]
    want, got = _outputs(pruned, x), _outputs(small, x)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
