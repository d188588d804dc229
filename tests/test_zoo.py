"""Every ``tf_keras.applications`` architecture: graph, masked == shrunk, MACs saved, int8 loads.

The default run covers one member of most families (marker ``zoo``; ``-m "not zoo"``
skips them), with the int8 export of three of them (SE blocks, grouped convolutions).
``TFSYNAPSE_ZOO=all`` exports every one and adds the other 50-odd (larger or deeper variants of
the same families), as ``slow`` tests.
"""

import os

import numpy as np
import pytest

import tflite_export
from conftest import zoo_cases, zoo_prune_and_shrink
from tfsynapse.backends.tf_keras import keras
from tfsynapse.graph import count_macs, count_params, dependency_groups

FAST = (  # one member of the families with their own layer patterns; the rest: TFSYNAPSE_ZOO=all
    "ConvNeXtTiny", "EfficientNetB0", "MobileNet", "MobileNetV3Small", "RegNetX002", "RegNetY002",
    "ResNet50", "VGG16", "Xception",
)
ALL = sorted(name for name in dir(keras.applications)
             if name[0].isupper() and callable(getattr(keras.applications, name)))
INT8_FAST = ("EfficientNetB0", "MobileNetV3Small", "RegNetY002")  # SE blocks, grouped convs
RUN_ALL = os.environ.get("TFSYNAPSE_ZOO") == "all"
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def _build(name, size=None):
    size = size or MIN_SIZE.get(name, 32)
    return getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)


def test_the_fast_set_names_real_applications():
    assert set(FAST) <= set(ALL) and len(ALL) >= 70


@pytest.mark.parametrize("name", list(zoo_cases(ALL, FAST)))
def test_zoo_masked_equals_shrunk_and_int8_loads(name):
    pruned, small, report, x = zoo_prune_and_shrink(_build(name), name)
    masked = np.asarray(pruned(x, training=False))
    if not (RUN_ALL or name in INT8_FAST):
        return  # the int8 export of every architecture runs with TFSYNAPSE_ZOO=all
    data = tflite_export.convert(small, quantize="int8", representative_dataset=x, calibration_steps=2)
    out = np.asarray(tflite_export.predict(data, x))
    expected = np.asarray(small(x, training=False))
    gap = np.abs(out - expected).max() / np.abs(expected).max()
    assert out.shape == masked.shape and gap < 0.25, f"int8 differs by {gap:.3f} of the scale"


PUBLISHED_MACS = {  # multiply-accumulates at 224x224, from the models' papers / keras tables
    "ResNet50": 3.86e9, "MobileNetV2": 300e6, "VGG16": 15.47e9, "DenseNet121": 2.87e9,
    "EfficientNetB0": 0.39e9, "MobileNet": 569e6, "RegNetX002": 0.2e9, "ConvNeXtTiny": 4.5e9,
}


@pytest.mark.zoo
@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_zoo_graph_consistency_and_macs(name):
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    graph = dependency_groups(model)
    assert abs(count_macs(graph) / PUBLISHED_MACS[name] - 1) < 0.03
    assert count_params(graph) == model.count_params()
    assert len(graph.prunable_groups) >= 10
    for g in graph:
        for m in g.members:
            assert m.units.min() >= 0 and m.units.max() < g.size
        if g.prunable:
            for m in g.by_role("out"):
                # every producer holds every unit of its group, each as often (once, unless a
                # grouped convolution makes a whole convolution group one unit)
                counts = np.bincount(m.units, minlength=g.size)
                assert counts.min() == counts.max() >= 1
                assert counts.max() == 1 or "Conv2D" in {type(x.layer).__name__ for x in g.members}
            assert g.consumers, g
