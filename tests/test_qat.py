"""Quantisation-aware training after shrink: int8 export from learned ranges, clear refusals."""

import warnings

import numpy as np
import pytest

import tflite_export
import tfsynapse
from tfsynapse.backends.tf_keras import keras
from tfsynapse.datasets import load_digits
from tflite_export._runtime import load_interpreter
from tfsynapse.models import conv_bn_cnn

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def shrunk():
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = load_digits(size=16, seed=0)
    model = conv_bn_cnn((16, 16, 1), 10, widths=(8, 16, 16, 32))
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    small = tfsynapse.shrink(tfsynapse.prune_once(model, 0.5, data=x))
    return small, (x, y), (xt, yt)


def test_qat_model_exports_int8_without_calibration_and_agrees(shrunk):
    small, (x, y), (xt, _) = shrunk
    qat = tflite_export.quantize_aware(small)
    assert tflite_export.is_quantize_aware(qat) and not tflite_export.is_quantize_aware(small)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full-integer: no warning about float parts
        lite = tflite_export.convert(qat, quantize="int8")
    info = tflite_export.inspect(lite)
    details = load_interpreter(lite).get_tensor_details()
    int8_kernels = [d for d in details if d["dtype"] == np.int8 and len(d["shape"]) == 4]
    assert len(int8_kernels) >= 4  # the four convolutions' weights (and activations) are int8
    assert "CONV_2D" in info["ops"] and "QUANTIZE" in info["ops"]
    out = tflite_export.predict(lite, xt)
    assert np.isfinite(out).all()
    agreement = np.mean(np.argmax(out, -1) == np.argmax(qat.predict(xt, verbose=0), -1))
    assert agreement >= 0.9, agreement
    # calibration data is still accepted, and int8 I/O works as for any int8 export
    io = tflite_export.convert(qat, quantize="int8", representative_dataset=x[:32], int8_io=True)
    assert tflite_export.inspect(io)["inputs"][0]["dtype"] == "int8"
    int8_out = tflite_export.predict(io, xt[:16])  # int8 I/O: the same classes as Keras
    assert np.mean(np.argmax(int8_out, -1) == np.argmax(qat.predict(xt[:16], verbose=0), -1)) \
        >= 0.9
    # post-training quantisation of a plain model still needs calibration data
    with pytest.raises(ValueError, match="calibration"):
        tflite_export.convert(small, quantize="int8")


def test_float_parts_of_an_int8_export_are_named(shrunk):
    from tflite_export.result_checks import warn_float_parts

    small, _, _ = shrunk
    with pytest.warns(UserWarning, match=r"keeps \d+ float32 tensor\(s\).*representative_dataset"):
        warn_float_parts(load_interpreter(tflite_export.convert(small)))  # float throughout


def test_refusals_say_what_to_do(shrunk):
    small, _, _ = shrunk
    schedule = tfsynapse.ConstantSparsity(0.5, begin_step=0)
    wrapped = tfsynapse.prune_synaptic(small, schedule, criterion="l1", granularity="filter",
                                       scope="layer")
    with pytest.raises(ValueError, match="strip_pruning"):
        tflite_export.quantize_aware(wrapped)
    with pytest.raises(ValueError, match="from_synaptic"):
        tflite_export.quantize_aware(tfsynapse.to_synaptic(small))
    with pytest.raises(ValueError, match="already quantisation-aware"):
        tflite_export.quantize_aware(tflite_export.quantize_aware(small))
    import keras as keras3

    k3 = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    assert tflite_export.is_quantize_aware(k3) is False  # asked of either Keras, never raises
    with pytest.raises(TypeError, match="Keras 3"):
        tflite_export.quantize_aware(k3)
    inputs = keras.Input((4, 4, 2))
    odd = keras.Model(inputs, keras.layers.LayerNormalization(axis=[1, 2])(inputs))
    with pytest.raises(ValueError, match="cannot make model"):
        tflite_export.quantize_aware(odd)
