"""Tests for tflite_export: conversion in every mode, LiteRT parity, errors, inspect, benchmark."""

import os
import warnings

import numpy as np
import pytest

from conftest import both_backends, normal
from tfsynapse.backends.tf_keras import keras, tf

import tflite_export
from tflite_export import QUANTIZATION_MODES, benchmark, convert, inspect, predict, verify
from tflite_export.calibration import Calibration

SHAPE = (12, 12, 3)
backend = both_backends(globals())  # every test runs on tf_keras and on Keras 3


def _calibration_data(n, seed):
    """Samples of one distribution: pixel noise around a per-sample colour (so that global
    average pooling does not average the differences between samples away)."""
    rng = np.random.default_rng(seed)
    noise = 0.5 * rng.standard_normal((n,) + SHAPE)
    return (noise + rng.standard_normal((n, 1, 1, SHAPE[-1]))).astype(np.float32)


@pytest.fixture(scope="module")
def cnn(backend):
    """Input(12,12,3)->Conv->BN->ReLU->DWConv->Conv(1x1, 1024 weights)->GAP->Dense(5)->softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE, name="image")
    x = keras.layers.Conv2D(16, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(64, 1, name="pw")(x)  # 16*64 = 1024 weights: 'dynamic' quantizes it
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, name="logits")(x)
    outputs = keras.layers.Softmax(name="probs")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.set_weights([
        rng.uniform(0.5, 1.5, 16).astype(np.float32),  # gamma
        rng.normal(0.0, 0.2, 16).astype(np.float32),  # beta
        rng.normal(0.0, 0.3, 16).astype(np.float32),  # moving mean
        rng.uniform(0.5, 2.0, 16).astype(np.float32),  # moving variance
    ])
    # Data-dependent init of the classifier: standardised features times random weights give
    # logits of unit scale, so that the predicted classes vary and top-1 agreement means
    # something (with plain random weights one class wins almost always).
    logits = model.get_layer("logits")
    features = keras.Model(inputs, logits.input).predict(_calibration_data(256, 0), verbose=0)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    weights = rng.standard_normal((64, 5)).astype(np.float32) / 8.0
    logits.set_weights([weights / std[:, None], (-(mean / std) @ weights).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def converted(cnn):
    """One conversion per mode, shared by the tests below."""
    result = {mode: convert(cnn, quantize=mode) for mode in (None, "dynamic", "float16")}
    calib = _calibration_data(64, seed=1)
    # A callable returning a generator of batches of 8.
    result["int8"] = convert(
        cnn, "int8", representative_dataset=lambda: (calib[i : i + 8] for i in range(0, 64, 8))
    )
    # A tf.data.Dataset with a smaller last batch (64 = 9 * 7 + 1): the calibrator fixes input
    # shapes from its first sample, so this only works because batches are fed one by one.
    dataset = tf.data.Dataset.from_tensor_slices(calib).batch(7)
    result["int8_io"] = convert(cnn, "int8", representative_dataset=dataset, int8_io=True)
    return result


@pytest.fixture(scope="module")
def test_inputs():
    return _calibration_data(64, seed=2)


@pytest.mark.keras_independent
def test_modes_constant():
    assert QUANTIZATION_MODES == (None, "dynamic", "float16", "int8")
    assert set(tflite_export.__all__) == {"convert", "verify", "predict", "benchmark", "inspect",
                                          "quantize_aware", "is_quantize_aware",
                                          "QUANTIZATION_MODES", "quantization_report",
                                          "QuantizationReport", "choose_float_layers"}


@pytest.mark.parametrize("mode, max_error", [(None, 1e-5), ("dynamic", 5e-2), ("float16", 5e-3)])
def test_float_modes_match_keras(converted, cnn, test_inputs, mode, max_error):
    data = converted[mode]
    assert isinstance(data, bytes) and data[4:8] == b"TFL3"
    report = verify(data, cnn, test_inputs)
    assert report["num_samples"] == 64
    assert report["max_abs_error"] < max_error
    assert 0.0 <= report["mean_abs_error"] <= report["max_abs_error"]
    if mode is None:
        assert report["top1_agreement"] == 1.0


def test_dynamic_and_float16_are_smaller(converted):
    assert len(converted["dynamic"]) < len(converted[None])
    assert len(converted["float16"]) < len(converted[None])


@pytest.mark.parametrize("mode", ["int8", "int8_io"])
def test_int8_agrees_with_keras(converted, cnn, test_inputs, mode):
    predicted = np.argmax(cnn.predict(test_inputs, verbose=0), axis=-1)
    assert len(np.unique(predicted)) >= 3  # agreement is not trivial
    report = verify(converted[mode], cnn, test_inputs)
    assert report["top1_agreement"] >= 0.9, report
    assert report["mean_abs_error"] < 0.03, report  # softmax probabilities


def test_int8_io_types(converted):
    float_io = inspect(converted["int8"])
    int8_io = inspect(converted["int8_io"])
    assert float_io["inputs"][0]["dtype"] == "float32"
    assert float_io["outputs"][0]["dtype"] == "float32"
    for tensor in int8_io["inputs"] + int8_io["outputs"]:
        assert tensor["dtype"] == "int8"
        scale, zero_point = tensor["quantization"]
        assert scale > 0 and -128 <= zero_point <= 127
    # Full-integer: no float islands, hence no QUANTIZE/DEQUANTIZE inside the int8_io model.
    assert "DEQUANTIZE" not in int8_io["ops"] and "QUANTIZE" not in int8_io["ops"]


def test_inspect_lists_builtin_ops(converted):
    for mode, data in converted.items():
        info = inspect(data)
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(info["ops"])
        assert info["ops"] == sorted(info["ops"])
        assert info["custom_ops"] == [] and not any(op.startswith("Flex") for op in info["ops"])
        assert info["size_bytes"] == len(data)
        assert info["inputs"][0]["shape_signature"] == [-1, 12, 12, 3]
        assert info["inputs"][0]["shape"] == [1, 12, 12, 3]
        assert info["outputs"][0]["shape_signature"] == [-1, 5]
    assert inspect(converted[None])["inputs"][0]["quantization"] == (0.0, 0)


def test_int8_without_calibration_data(cnn):
    with pytest.raises(ValueError, match="calibration") as info:
        convert(cnn, "int8")
    assert "representative_dataset" in str(info.value)


@pytest.mark.parametrize(
    "bad, got",
    [
        (lambda: iter([np.zeros((4, 10, 10, 3), np.float32)]), "(4, 10, 10, 3)"),
        ([np.zeros((12, 12, 3), np.float32)], "(12, 12, 3)"),  # a sample without a batch axis
    ],
)
def test_wrong_calibration_shape(cnn, bad, got):
    with pytest.raises(ValueError) as info:
        convert(cnn, "int8", representative_dataset=bad)
    message = str(info.value)
    assert got in message and "(None, 12, 12, 3)" in message


def test_wrong_shape_in_a_later_batch(cnn):
    good = _calibration_data(2, seed=6)
    with pytest.raises(ValueError, match=r"batch 2 .*\(2, 12, 12, 4\)"):
        convert(cnn, "int8", representative_dataset=[good, good, np.zeros((2, 12, 12, 4))])


def test_calibration_pairs_and_empty(cnn):
    x = _calibration_data(4, seed=3)
    pairs = tf.data.Dataset.from_tensor_slices((x, np.zeros(4))).batch(2)
    with pytest.raises(ValueError, match="labels"):
        convert(cnn, "int8", representative_dataset=pairs)
    with pytest.raises(ValueError, match="no batches"):
        convert(cnn, "int8", representative_dataset=[])
    with pytest.raises(ValueError, match="calibration_steps"):
        convert(cnn, "int8", representative_dataset=x, calibration_steps=0)


def test_calibration_replays_a_generator(cnn):
    x = _calibration_data(6, seed=4)
    calibration = Calibration(cnn, (x[i : i + 2] for i in range(0, 6, 2)), steps=2)
    first = [s[0] for s in calibration.samples()]
    second = [s[0] for s in calibration.samples()]
    assert len(first) == 4 and all(s.shape == (1,) + SHAPE for s in first)  # 2 batches of 2
    np.testing.assert_array_equal(np.concatenate(first), x[:4])
    np.testing.assert_array_equal(np.concatenate(second), x[:4])
    from_array = Calibration(cnn, x, steps=5)  # a bare array: N samples, steps counts samples
    assert len(list(from_array.samples(as_dict=True))) == 5


@pytest.mark.parametrize("mode", ["int4", "FLOAT16", "float32"])
def test_unknown_mode(cnn, mode):
    with pytest.raises(ValueError, match="Valid modes"):
        convert(cnn, mode)


def test_int8_io_needs_int8(cnn):
    with pytest.raises(ValueError, match="int8_io"):
        convert(cnn, "float16", int8_io=True)


def test_keras3_model_converts():  # every mode and structure: tests/test_keras3.py
    keras3 = pytest.importorskip("keras")
    inputs = keras3.Input((4,))
    model = keras3.Model(inputs, keras3.layers.Dense(2)(inputs))
    x = normal(3, 4)
    np.testing.assert_allclose(predict(convert(model), x), np.asarray(model(x)), atol=1e-5)


def test_not_a_model():
    with pytest.raises(TypeError):
        convert("model.h5")


def test_op_without_builtin_kernel():
    inputs = keras.Input((4,))
    det = keras.layers.Lambda(lambda t: tf.linalg.det(tf.reshape(t, [-1, 2, 2])))(inputs)
    model = keras.Model(inputs, det)
    with pytest.raises(RuntimeError) as info:
        convert(model)
    message = str(info.value)
    assert "MatrixDeterminant" in message and "builtin" in message
    assert "Converter message" in message


def test_output_is_written_atomically(cnn, converted, tmp_path):
    target = tmp_path / "sub" / "model.tflite"
    data = convert(cnn, output=target)
    assert target.read_bytes() == data
    assert data == converted[None]  # conversion is deterministic
    assert os.listdir(target.parent) == ["model.tflite"]  # no temporary file left
    target.write_bytes(b"old")
    convert(cnn, output=str(target))  # replaces an existing file
    assert target.read_bytes() == data and os.listdir(target.parent) == ["model.tflite"]
    assert verify(str(target), cnn, _calibration_data(2, seed=5))["max_abs_error"] < 1e-5


def test_representative_dataset_ignored_warns(cnn):
    with pytest.warns(UserWarning, match="only used by quantize='int8'"):
        convert(cnn, "float16", representative_dataset=[_calibration_data(1, 0)])


def _break_first_strategies(monkeypatch, count=2):
    """Makes the first ``count`` conversion strategies fail, to exercise the fallbacks."""
    from tflite_export import converter  # noqa: PLC0415

    def broken(model, path):
        raise ValueError("simulated converter failure")

    strategies = [(d, broken) for d, _ in converter._STRATEGIES[:count]]
    monkeypatch.setattr(converter, "_STRATEGIES", strategies + converter._STRATEGIES[count:])


def test_fallback_to_concrete_function(cnn, monkeypatch, test_inputs):
    _break_first_strategies(monkeypatch)
    with pytest.warns(UserWarning, match="fixed batch size of 1"):
        data = convert(cnn)
    info = inspect(data)
    assert info["inputs"][0]["shape_signature"] == [1, 12, 12, 3]
    report = verify(data, cnn, test_inputs[:5])  # fed one sample at a time
    assert report["num_samples"] == 5 and report["max_abs_error"] < 1e-5
    assert benchmark(data, runs=2, warmup=0)["runs"] == 2


def _two_in_two_out():
    keras.utils.set_random_seed(1)
    a = keras.Input((4,), name="zeta")
    b = keras.Input((3,), name="alpha")
    x = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model(
        [a, b], [keras.layers.Dense(2, name="yy")(x), keras.layers.Dense(3, name="bb")(x)]
    )
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((16, 4)).astype(np.float32)
    xb = rng.standard_normal((16, 3)).astype(np.float32)
    return model, xa, xb


def test_from_keras_model_fallback_keeps_names_and_dynamic_batch(cnn, monkeypatch, test_inputs):
    _break_first_strategies(monkeypatch, count=1)
    with pytest.warns(UserWarning, match="from_keras_model"):
        data = convert(cnn)
    assert inspect(data)["inputs"][0]["shape_signature"][0] == -1
    assert verify(data, cnn, test_inputs[:5])["max_abs_error"] < 1e-5


def test_multi_input_multi_output_order():
    """Keras order differs from the alphabetical signature order; outputs must still match."""
    model, xa, xb = _two_in_two_out()
    report = verify(convert(model), model, [xa, xb])
    assert report["max_abs_error"] < 1e-5
    quantized = convert(
        model, "int8", representative_dataset=[{"zeta": xa[:8], "alpha": xb[:8]}, [xa[8:], xb[8:]]]
    )
    assert verify(quantized, model, [xa, xb])["max_abs_error"] < 0.2
    with pytest.raises(ValueError, match=r"holds 3 arrays but the model has 2 input\(s\)"):
        verify(convert(model), model, [xa, xb, xa[:, :1]])


def test_top1_agreement_is_nan_where_an_argmax_says_nothing():
    keras.utils.set_random_seed(2)
    binary = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    report = verify(convert(binary), binary, x)
    assert np.isnan(report["top1_agreement"]) and report["max_abs_error"] < 1e-5


def test_multi_input_fallback_int8(monkeypatch):
    model, xa, xb = _two_in_two_out()
    _break_first_strategies(monkeypatch)
    batches = (b for b in [[xa[:8], xb[:8]], [xa[8:], xb[8:]]])  # a one-shot generator
    with pytest.warns(UserWarning, match="fixed batch size of 1"):
        data = convert(model, "int8", representative_dataset=batches, int8_io=True)
    assert [t["dtype"] for t in inspect(data)["inputs"]] == ["int8", "int8"]
    assert verify(data, model, [xa, xb])["max_abs_error"] < 0.2


@pytest.mark.parametrize("runtime", ["interpreter", "compiled_model"])
def test_benchmark(converted, runtime):
    result = benchmark(converted["int8"], num_threads=2, runs=10, warmup=2, runtime=runtime)
    assert result["runs"] == 10 and result["num_threads"] == 2 and result["runtime"] == runtime
    assert 0 < result["min_ms"] <= result["p5_ms"] <= result["median_ms"] <= result["p90_ms"] \
        <= result["p95_ms"]
    assert result["mean_ms"] > 0 and result["init_ms"] > 0 and result["first_run_ms"] > 0
    # the CompiledModel says whether every op ran on the accelerator (XNNPACK on CPU here:
    # all of the float model; the int8 one's float I/O ops may stay on the CPU kernels); the
    # interpreter does not say
    float_run = benchmark(converted[None], runs=2, runtime=runtime)
    if runtime == "compiled_model":
        assert float_run["fully_accelerated"] is True
        assert isinstance(result["fully_accelerated"], bool)
    else:
        assert float_run["fully_accelerated"] is None is result["fully_accelerated"]
    with pytest.raises(ValueError, match="runs"):
        benchmark(converted[None], runs=0, runtime=runtime)
    with pytest.raises(ValueError, match="runtime must be one of"):
        benchmark(converted[None], runtime="gpu")


@pytest.mark.parametrize("runtime", ["interpreter", "compiled_model"])
def test_benchmark_reads_paths_and_refuses_what_is_not_a_model(converted, tmp_path, runtime):
    path = tmp_path / "model.tflite"
    path.write_bytes(converted[None])
    assert benchmark(path, runs=2, runtime=runtime)["median_ms"] > 0  # a pathlib.Path
    with pytest.raises(FileNotFoundError, match="No TFLite model at"):
        benchmark(tmp_path / "missing.tflite", runs=2, runtime=runtime)
    with pytest.raises(ValueError, match="TFL3"):
        benchmark(b"not a model at all", runs=2, runtime=runtime)


def test_bad_tflite_arguments(cnn, converted, tmp_path):
    with pytest.raises(ValueError, match="TFL3"):
        inspect(b"not a model at all")
    with pytest.raises(FileNotFoundError):
        inspect(tmp_path / "missing.tflite")
    with pytest.raises(TypeError):
        inspect(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="non-empty"):
            verify(converted[None], cnn, np.zeros((0,) + SHAPE, np.float32))


def test_predict_returns_the_models_outputs(converted, cnn, test_inputs):
    expected = cnn.predict(test_inputs, verbose=0)
    np.testing.assert_allclose(tflite_export.predict(converted[None], test_inputs), expected,
                               rtol=1e-4, atol=1e-5)
    int8 = tflite_export.predict(converted["int8"], test_inputs)
    assert int8.shape == expected.shape and int8.dtype == np.float32


def test_sparse_weight_encoding_shrinks_connection_pruned_models(backend):
    import tfsynapse  # noqa: PLC0415
    from tfsynapse.models import conv_bn_cnn  # noqa: PLC0415

    dense_model = conv_bn_cnn((16, 16, 1), 4, widths=(16, 32, 32, 64), backend=backend)
    assert tfsynapse.backends.backend_name(dense_model) == backend  # this Keras's model
    model = tfsynapse.prune_once(dense_model, 0.9,
                                 granularity="connection", criterion="kernel_norm",
                                 scope="global", max_pruning_ratio=0.98)
    from tflite_export.result_checks import sparse_tensor_count  # noqa: PLC0415

    x = normal(4, 16, 16, 1)
    for mode in (None, "float16"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            dense, sparse = convert(model, mode), convert(model, mode, sparse_weights=True)
        assert not [w for w in record if "stored no weight tensor sparse" in str(w.message)]
        assert len(sparse) < 0.5 * len(dense), mode
        assert "DENSIFY" in inspect(sparse)["ops"] and sparse_tensor_count(sparse) >= 1
        assert sparse_tensor_count(dense) == 0
        assert verify(sparse, model, x)["max_abs_error"] < 1e-3
    with pytest.raises(ValueError, match="dynamic"):
        convert(model, "dynamic", sparse_weights=True)
    # nothing to encode (the dense model; a shrunk one alike): a dense file, and a warning
    with pytest.warns(UserWarning, match=r"stored no weight tensor sparse: .* is 0% zeros") \
            as record:
        convert(dense_model, None, sparse_weights=True)
    assert [w.filename for w in record if "sparse" in str(w.message)] == [__file__]


def _dead_se_model():
    """An SE block whose reduce ReLU never fires (as pruning can leave one): its expand conv
    outputs its bias and its sigmoid a constant for every input."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = keras.layers.Conv2D(2, 1, activation="relu", name="se_reduce")(se)
    se = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    x = keras.layers.Multiply()([x, se])
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    reduce = model.get_layer("se_reduce")  # live weights, a bias no input overcomes
    reduce.set_weights([reduce.kernel.numpy(), np.full(2, -100.0, np.float32)])
    return model


def test_int8_with_constant_activations_loads_in_xnnpack_and_says_so():
    """A zero-width calibration range gave the dead ReLU's output a scale near 1e-8, so the
    reduce convolution's requantisation multiplier (input scale x weight scale / output scale)
    was far above the 256 XNNPACK accepts: "failed to create XNNPACK runtime" (the SE int8
    failure of earlier reports)."""
    model = _dead_se_model()
    x = normal(16, 8, 8, 3)
    with pytest.warns(UserWarning, match="constant over the calibration data"):
        data = convert(model, quantize="int8", representative_dataset=x)
    report = verify(data, model, x)  # loads with XNNPACK (the default delegate)
    scale = float(np.abs(model.predict(x, verbose=0)).max())
    assert report["max_abs_error"] < 0.05 * scale and report["top1_agreement"] >= 0.9
