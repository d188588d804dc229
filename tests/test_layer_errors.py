"""Per-layer int8 error (``quantization_report``) and ``float_layers='auto'``, on both Keras.

The model has one layer that int8 cannot represent: ``mid`` reads a channel that is zero for
every input (a ReLU after a large negative bias) through weights 1000x the others, so its
per-channel weight scales are set by weights that never matter and every useful weight rounds
to zero. The report must single it out, and the automatic choice must keep it, and only it,
float."""

import numpy as np
import pytest

import tflite_export
from tflite_export import float_layers as float_layers_


def _model(K):
    L = K.layers
    K.utils.set_random_seed(0)
    inputs = K.Input((12, 12, 3))
    stem = L.Conv2D(8, 3, padding="same", name="stem")
    x = L.ReLU(name="stem_relu")(stem(inputs))
    mid = L.Conv2D(8, 3, padding="same", name="mid")
    x = L.ReLU(name="mid_relu")(mid(x))
    x = L.Conv2D(16, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = K.Model(inputs, L.Dense(5, name="head")(x))
    kernel, bias = stem.get_weights()
    bias[0] = -100.0  # stem's channel 0 is zero after its ReLU, for every input
    stem.set_weights([kernel, bias])
    kernel, bias = mid.get_weights()
    kernel[:, :, 0, :] = 1000.0  # weights of that dead channel: harmless in float
    mid.set_weights([kernel, bias])
    return model


def _data():
    return np.random.default_rng(0).normal(size=(48, 12, 12, 3)).astype("float32")


def test_the_report_singles_out_the_layer_int8_cannot_represent(K):
    model, data = _model(K), _data()
    report = tflite_export.quantization_report(model, data, samples=16)
    assert report.samples == 16
    names = [row.layers[0] for row in report.layers]
    assert names[:3] == ["stem", "mid", "pw"], names  # execution order, fused ops named
    assert "stem_relu" in report.layers[0].layers and report.layers[0].op == "CONV_2D"
    worst, second = report.worst(2)
    assert worst.layers[0] == "mid" and worst.added_error > 10 * second.added_error, report
    for row in report.layers:
        np.testing.assert_allclose(row.error, 10 ** (-row.snr_db / 20), rtol=1e-9)
    # the output error is that of the int8 file against the float32 file, recomputed here
    dense = tflite_export.predict(tflite_export.convert(model), data[:16])
    int8 = tflite_export.predict(tflite_export.convert(model, "int8", representative_dataset=data),
                                 data[:16])
    expected = np.linalg.norm(int8 - dense) / np.linalg.norm(dense)
    np.testing.assert_allclose(report.output_error, expected, rtol=1e-4)
    assert "mid" in str(report) and "output error" in str(report)


def test_auto_keeps_that_layer_float_and_meets_the_tolerance(K):
    model, data = _model(K), _data()
    choice = tflite_export.choose_float_layers(model, data, tolerance=0.02)
    everywhere = choice.tried[0][1]
    assert choice.layers == ["mid"] and choice.error <= 0.02 < everywhere, choice.tried
    data_auto = tflite_export.convert(model, "int8", representative_dataset=data,
                                      float_layers="auto", float_tolerance=0.02)
    kinds = {}
    for _, tensor, dtype in float_layers_.op_outputs(data_auto):
        for layer in ("mid", "pw"):
            if f"{layer}/" in tensor or tensor.endswith(layer) or f"/{layer}_" in tensor:
                kinds.setdefault(layer, set()).add(np.dtype(dtype).name)
    assert kinds.get("mid") == {"float32"} and "int8" in kinds.get("pw", set()), kinds


def test_auto_says_when_the_tolerance_is_out_of_reach_and_refuses_bad_arguments(K):
    model, data = _model(K), _data()
    with pytest.warns(UserWarning, match=r"could not bring the int8 model within 0\.00%.*int8 "
                                         r"everywhere \d+\.\d+%"):
        choice = tflite_export.choose_float_layers(model, data, tolerance=1e-9, max_layers=1)
    assert len(choice.layers) <= 1 and len(choice.tried) <= 3
    with pytest.raises(ValueError, match="needs quantize='int8' and representative_dataset"):
        tflite_export.convert(model, float_layers="auto")
    with pytest.raises(ValueError, match="float_tolerance must be a relative error"):
        tflite_export.choose_float_layers(model, data, tolerance=2)
    with pytest.raises(ValueError, match="samples must be an int"):
        tflite_export.quantization_report(model, data, samples=0)
    with pytest.warns(UserWarning, match="float_tolerance=0.1 is only used by float_layers='auto'"):
        tflite_export.convert(model, float_tolerance=0.1)
    with pytest.warns(UserWarning, match="calibration_steps=8 is only used by an int8"):
        tflite_export.convert(model, quantize="dynamic", calibration_steps=8)
