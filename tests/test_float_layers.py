"""tflite_export.convert(..., float_layers=...): chosen layers stay float32 in an int8 model."""

import numpy as np
import pytest

from conftest import both_backends, rand_inputs, randomize_bn, small_cnn
from tfsynapse.backends.tf_keras import keras

from tflite_export import convert, predict
from tflite_export.float_layers import FloatLayersError, marked_indices, op_outputs

backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


@pytest.fixture(scope="module")
def model(backend):
    """Conv-BN-ReLU x2 with a residual Add (named 'add', like TensorFlow's op), depthwise,
    1x1 conv, GAP, Dense."""
    return randomize_bn(small_cnn(backend=backend))


def _computing(data):
    """(op, dtype) of the ops that compute, QUANTIZE and DEQUANTIZE left out."""
    return [(op, dtype) for op, _, dtype in op_outputs(data)
            if op not in ("QUANTIZE", "DEQUANTIZE")]


def test_the_chosen_convolution_stays_float_and_the_rest_int8(model):
    """c1 (its batch norm and ReLU fused in) is float32 between the float input and a
    QUANTIZE; every other op computes in int8; the outputs stay within 6% of Keras' output scale."""
    calib = rand_inputs(model, 32, seed=1)
    data = convert(model, "int8", representative_dataset=calib, float_layers="c1")
    ops = op_outputs(data)
    assert ops[0][0] == "CONV_2D" and ops[0][2] == np.float32 and ops[1][0] == "QUANTIZE"
    assert all(dtype == np.int8 for _, dtype in _computing(data)[1:])
    plain = convert(model, "int8", representative_dataset=calib)
    assert _computing(plain)[0] == ("CONV_2D", np.int8)  # without float_layers: int8
    x = rand_inputs(model, 16, seed=2)
    expected = np.asarray(model(x))
    # measured 0.018 of the output scale; a model off by a constant factor of 2 is at 1.0
    gap = np.abs(predict(data, x) - expected).max() / np.abs(expected).max()
    assert gap < 0.06, gap


def test_a_layer_named_like_an_op_keeps_only_itself_float(model):
    """The residual Add is named 'add', the name TensorFlow gives its op: only that ADD
    stays float (int8 inputs and outputs here), the convolutions stay int8."""
    data = convert(model, "int8", representative_dataset=rand_inputs(model, 16, seed=1),
                   int8_io=True, float_layers=["add"])
    computing = _computing(data)
    assert ("ADD", np.float32) in computing
    assert [dtype for op, dtype in computing if op != "ADD"] == [np.int8] * (len(computing) - 1)


def test_default_keras3_names_keep_exactly_the_chosen_layer():
    """Default Keras 3 names (conv2d, conv2d_1, ...) collide with its scope suffixes (layer
    conv2d computes under conv2d_1): the second convolution alone stays float; a layer
    without an op of its own is an error; the layers get their names back."""
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.Dropout(0.5)(x)  # nothing to compute at inference
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    names = [layer.name for layer in model.layers]
    calib = rand_inputs(model, 8, seed=1)
    data = convert(model, "int8", representative_dataset=calib, float_layers=[names[2]])
    assert [d for op, d in _computing(data) if op == "CONV_2D"] == [np.int8, np.float32, np.int8]
    assert [layer.name for layer in model.layers] == names
    # the file names the layer's tensors after the layer again: the markers are gone
    assert not any("tfsynapse_float" in n for _, n, _ in op_outputs(data))
    float_op = next(n for op, n, d in op_outputs(data) if op == "CONV_2D" and d == np.float32)
    assert f"/{names[2]}/" in float_op or f"/{names[2]}_" in float_op, float_op
    with pytest.raises(FloatLayersError, match=f"no TFLite op computes '{names[4]}'"):
        convert(model, "int8", representative_dataset=calib, float_layers=[names[4]])
    assert [layer.name for layer in model.layers] == names


def test_what_cannot_be_kept_float_is_refused(model):
    calib = rand_inputs(model, 4, seed=1)
    with pytest.raises(ValueError, match="needs quantize='int8'"):
        convert(model, "float16", float_layers=["c1"])
    with pytest.raises(ValueError, match="no layer 'nope'.*c1"):
        convert(model, "int8", representative_dataset=calib, float_layers=["c1", "nope"])
    with pytest.raises(TypeError, match="layer names"):
        convert(model, "int8", representative_dataset=calib, float_layers=[3])
    for edge in (model.layers[0].name, "head"):  # the input computes nothing; an output's
        with pytest.raises(ValueError, match="is an input or output layer"):  # tensor is
            convert(model, "int8", representative_dataset=calib,  # named after the signature
                    float_layers=[edge])


@pytest.mark.keras_independent
def test_only_markers_name_the_chosen_layers():
    assert marked_indices("m/tfsynapse_float0x_1/Relu;m/tfsynapse_float0x/Conv2D") == {0}
    assert marked_indices("functional_1/tfsynapse_float12x_1_2/convolution1") == {12}
    assert marked_indices("functional_1/conv2d_1/convolution;m/add_1/add") == set()
    assert marked_indices("m/tfsynapse_float1xy/add") == set()


@pytest.mark.keras_independent
def test_messages_and_files_name_the_layers_never_the_markers(monkeypatch):
    from tflite_export import float_layers  # noqa: PLC0415
    from tflite_export.float_layers import check_kept_float, unmarked  # noqa: PLC0415

    monkeypatch.setattr(float_layers, "op_outputs", lambda data: [])  # the op was not found

    names = ["conv2d", "block_1/expand"]
    assert unmarked("m/tfsynapse_float1x_1/Relu;m/tfsynapse_float0x/Conv2D", names) == \
        "m/block_1/expand_1/Relu;m/conv2d/Conv2D"
    with pytest.raises(FloatLayersError, match="m/conv2d/Conv2D did not come out") as err:
        check_kept_float(b"", {"conv2d": ["m/tfsynapse_float0x/Conv2D"]}, names[:1])
    assert "tfsynapse_float" not in str(err.value)
