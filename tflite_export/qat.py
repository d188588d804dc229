"""int8 quantisation-aware training (QAT) of a shrunk model, before export.

Post-training int8 quantisation rounds weights and activations the network never saw rounded;
a pruned, narrower network has less slack to absorb that. ``quantize_aware(model)`` wraps a
plain tf_keras model with tfmot's fake-quantisation (``tfmot.quantization.keras
.quantize_model``: per-channel int8 weights, per-tensor int8 activations, BatchNormalization
folded into the convolution), so a short ``fit`` learns around the rounding. The result
converts with ``tflite_export.convert(qat_model, quantize="int8")``: the converter takes the
learned ranges, so no calibration data is needed (a ``representative_dataset`` may still be
given; ``int8_io=True`` works as for any int8 export).

Typical use after pruning::

    small = tfsynapse.shrink(tfsynapse.strip_pruning(pruned))
    qat = tflite_export.quantize_aware(small)
    qat.compile(optimizer=keras.optimizers.Adam(1e-4), loss=..., metrics=[...])
    qat.fit(x, y, epochs=1)
    tflite = tflite_export.convert(qat, quantize="int8")

Save a QAT model with ``qat.save(...)`` and load it inside
``tfmot.quantization.keras.quantize_scope()``.
"""

from tfsynapse.backends import backend_of
from tfsynapse.backends.base import Unsupported


def is_quantize_aware(model):
    """Whether ``model`` holds tfmot fake-quantisation layers (made by ``quantize_aware``).

    Args:
      model: a tf_keras or Keras 3 model (never quantisation-aware: tfmot cannot wrap Keras 3).

    Returns:
      A bool.
    """
    return backend_of(model).is_quantize_aware(model)


def quantize_aware(model):
    """A copy of ``model`` with int8 fake quantisation, ready to ``compile`` and ``fit``.

    Args:
      model: a plain tf_keras functional or Sequential model, e.g. the output of
        ``tfsynapse.shrink`` (the input model is left untouched).

    Returns:
      A new tf_keras model (uncompiled) sharing nothing with ``model``.

    Raises:
      TypeError: a Keras 3 or non-Keras model.
      ValueError: a subclassed or unbuilt model; a model still wrapped for pruning; a model
        with ``SynapticConv2D`` layers; an already quantisation-aware model; a layer tfmot
        cannot quantise (named, with what to do).
    """
    backend = backend_of(model)
    backend.check_model(model)
    if backend.has_pruning_wrappers(model):
        raise ValueError(
            f"model '{model.name}' is still wrapped for pruning; call tfsynapse.strip_pruning "
            "(and tfsynapse.shrink) before quantisation-aware training.")
    synaptic = backend.layers_of_type(model, backend.SynapticConv2D)
    if synaptic:
        raise ValueError(
            f"'{synaptic[0].name}' is a SynapticConv2D, which tfmot cannot quantise; convert the "
            "model back with tfsynapse.from_synaptic(model) first.")
    if backend.is_quantize_aware(model):
        raise ValueError(f"model '{model.name}' is already quantisation-aware.")
    try:
        return backend.quantize_model(model)
    except Unsupported:
        raise
    except (ValueError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"tfmot cannot make model '{model.name}' quantisation-aware: {str(err)[:400]} "
            "Layers without a tfmot quantisation rule need a QuantizeConfig "
            "(tfmot.quantization.keras.quantize_annotate_layer); otherwise export with "
            "post-training quantisation: tflite_export.convert(model, quantize='int8', "
            "representative_dataset=...).") from err
