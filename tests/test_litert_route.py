"""``convert(..., quantizer="litert")``: litert-quantizer's modes (the extra tfsynapse[quantizer],
installed with the test extra), checked against Keras on both Keras, and the fallback of
``float_layers`` when TensorFlow's private hook is gone."""

import warnings

import numpy as np
import pytest

import tflite_export
from tflite_export import float_layers as float_layers_, litert_route


def _model(K, leaky=False):
    L = K.layers
    K.utils.set_random_seed(0)
    inputs = K.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(64, 1, name="pw")(x)
    x = (L.LeakyReLU(name="act") if leaky else L.ReLU(name="act"))(x)
    x = L.Conv2D(64, 1, name="pw2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(inputs, L.Dense(5, name="head")(x))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.uniform(size=(64, 16, 16, 3)).astype("float32"),
            rng.uniform(size=(32, 16, 16, 3)).astype("float32"))


def _error(model, flatbuffer, test):
    reference = model.predict(test, verbose=0)
    out = tflite_export.predict(flatbuffer, test)
    return float(np.abs(out - reference).max() / np.ptp(reference))


def _ops(flatbuffer):
    return [(op, np.dtype(dtype).name, tensor) for op, tensor, dtype
            in float_layers_.op_outputs(flatbuffer)]


def test_static_int8_is_full_integer_with_float_io_and_matches_keras(K, data):
    model = _model(K)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left float: no warning
        flatbuffer = tflite_export.convert(model, "int8", representative_dataset=data[0],
                                           quantizer="litert")
    ops = _ops(flatbuffer)
    inner = [(op, dtype) for op, dtype, _ in ops if op not in ("QUANTIZE", "DEQUANTIZE")]
    assert inner and all(dtype == "int8" for _, dtype in inner), ops
    details = tflite_export.inspect(flatbuffer)
    assert details["inputs"][0]["dtype"] == "float32" and details["outputs"][0]["dtype"] == "float32"
    assert _error(model, flatbuffer, data[1]) < 0.05
    with_io = tflite_export.convert(model, "int8", representative_dataset=data[0],
                                    quantizer="litert", int8_io=True)
    assert tflite_export.inspect(with_io)["inputs"][0]["dtype"] == "int8"
    assert _error(model, with_io, data[1]) < 0.05


def test_ops_left_float_are_named_and_float_layers_stay_float(K, data):
    model = _model(K, leaky=True)
    with pytest.warns(UserWarning, match="litert-quantizer left LEAKY_RELU in float32"):
        flatbuffer = tflite_export.convert(model, "int8", representative_dataset=data[0],
                                           quantizer="litert", float_layers=["stem"])
    ops = _ops(flatbuffer)
    stem = [(op, dtype) for op, dtype, tensor in ops if "stem" in tensor and op == "CONV_2D"]
    assert stem == [("CONV_2D", "float32")], ops
    assert not any("tfsynapse_float" in tensor for *_, tensor in ops)  # names restored
    assert [dtype for op, dtype, t in ops if op == "DEPTHWISE_CONV_2D"] == ["int8"]
    assert _error(model, flatbuffer, data[1]) < 0.05


def test_a16w8_int4_and_weight_only_load_and_match_keras(K, data):
    model = _model(K)
    dense = tflite_export.convert(model)
    a16 = tflite_export.convert(model, "int8", representative_dataset=data[0],
                                quantizer="litert", activations="int16")
    assert {dtype for op, dtype, _ in _ops(a16) if op == "CONV_2D"} == {"int16"}
    assert _error(model, a16, data[1]) < 0.05
    for mode, width, tolerance in [("weight_only", "int8", 0.02), ("dynamic", "int8", 0.02),
                                   ("weight_only", "int4", 0.15), ("dynamic", "int4", 0.15)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            small = tflite_export.convert(model, mode, quantizer="litert", weights=width)
        left = [str(w.message) for w in caught if "left the weights" in str(w.message)]
        if width == "int4":  # litert-quantizer has no int4 depthwise kernel: named, once
            assert len(left) == 1 and "DEPTHWISE_CONV_2D" in left[0], left
        else:
            assert left == [], left
        assert len(small) < len(dense), (mode, width)
        assert _error(model, small, data[1]) < tolerance, (mode, width)


@pytest.mark.keras_independent
def test_litert_arguments_are_checked(data, monkeypatch):
    from tfsynapse.backends.tf_keras import keras  # noqa: PLC0415

    model = _model(keras)
    x = data[0]
    cases = [
        (dict(quantize="int8", weights="int4"), "need quantizer='litert'"),
        (dict(quantize="int8", quantizer="tflite"), "quantizer must be"),
        (dict(quantize=None, quantizer="litert"), "float32 and float16 need no quantizer"),
        (dict(quantize="int8", quantizer="litert", weights="int4"), "int4 weights are for"),
        (dict(quantize="dynamic", quantizer="litert", activations="int16"), "needs quantize='int8'"),
        (dict(quantize="int8", quantizer="litert", activations="int16", int8_io=True), "int16"),
        (dict(quantize="dynamic", quantizer="litert", int8_io=True), "int8_io=True needs"),
        (dict(quantize="weight_only", quantizer="litert", int8_io=True), "int8_io=True needs"),
        (dict(quantize="int8", quantizer="litert", float_layers="auto"), "float_layers='auto'"),
        (dict(quantize="int8", quantizer="litert", weights="int2"), "weights must be"),
        (dict(quantize="weight_only"), "is litert-quantizer's: pass quantizer='litert'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            tflite_export.convert(model, representative_dataset=x, **kwargs)
    monkeypatch.setattr(litert_route, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'tfsynapse\[quantizer\]'"):
        tflite_export.convert(model, "int8", representative_dataset=x, quantizer="litert")


@pytest.mark.keras_independent
def test_float_layers_move_to_litert_when_the_tensorflow_hook_is_gone(data, monkeypatch):
    from tensorflow.lite.python import lite  # noqa: PLC0415

    from tfsynapse.backends.tf_keras import keras  # noqa: PLC0415

    model = _model(keras)
    monkeypatch.delattr(lite, "_mlir_quantize")  # tf.lite without its private hook
    with pytest.warns(UserWarning, match="moves to quantizer='litert'"):
        flatbuffer = tflite_export.convert(model, "int8", representative_dataset=data[0],
                                           float_layers=["stem"], isolate=False)
    stem = [dtype for op, dtype, tensor in _ops(flatbuffer) if "stem" in tensor and op == "CONV_2D"]
    assert stem == ["float32"]
    monkeypatch.setattr(litert_route, "available", lambda: False)
    with pytest.raises(float_layers_.FloatLayersError, match=r"tfsynapse\[quantizer\]"):
        tflite_export.convert(model, "int8", representative_dataset=data[0],
                              float_layers=["stem"], isolate=False)
