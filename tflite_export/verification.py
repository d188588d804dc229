"""Compare a TFLite model with the tf_keras model it came from, on the same inputs."""

import numpy as np

from tfsynapse.backends import backend_of, tf
from tflite_export import _runtime


def _top1_agreement(reference, candidate):
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return float("nan")  # no class axis to take an argmax over (one unit: always 0)
    agree = np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)
    return float(np.mean(agree))


def verify(tflite, keras_model, inputs):
    """Runs the TFLite model and the Keras model on ``inputs`` and compares their outputs.

    The TFLite model runs in ``ai_edge_litert``'s interpreter; int8 input/output tensors are
    quantized/dequantized with their scale and zero point, so errors are in float units.
    Outputs are matched to the Keras outputs by their signature names.

    Args:
      tflite: the flatbuffer bytes from ``convert`` or a path to a ``.tflite`` file.
      keras_model: the Keras model (tf_keras or Keras 3) that was converted.
      inputs: a numpy batch ``(N, ...)``, or a list of batches for a multi-input model.

    Returns:
      A dict with ``max_abs_error`` and ``mean_abs_error`` (over all elements of all
      outputs), ``top1_agreement`` (fraction of samples, or of positions for outputs with more
      than two dims, where the argmax over the last axis of the first output agrees; NaN for
      1-D outputs and for outputs of one unit, such as a sigmoid binary classifier, where
      the argmax is always 0: compare ``max_abs_error`` there; only meaningful for
      classifiers) and ``num_samples``.

    Raises:
      TypeError: ``keras_model`` is not a Keras model, or ``tflite`` is not bytes/path.
      ValueError: empty or mismatched inputs (as many arrays as the model has inputs; no
        labels), or an unreadable TFLite model.
    """
    backend = backend_of(keras_model, what="keras_model")
    backend.check_model(keras_model, what="keras_model")
    arrays = [np.asarray(a) for a in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    if not arrays or arrays[0].ndim == 0 or arrays[0].shape[0] == 0:
        raise ValueError("inputs must be a non-empty batch with a leading batch dimension.")
    if len(arrays) != len(keras_model.inputs):
        raise ValueError(
            f"inputs holds {len(arrays)} arrays but the model has {len(keras_model.inputs)} "
            "input(s); pass the inputs only (an (x, y) pair: pass x).")
    dtypes = [np.dtype(tf.as_dtype(t.dtype).as_numpy_dtype) for t in keras_model.inputs]
    arrays = [a.astype(dtype) for a, dtype in zip(arrays, dtypes)]
    feed = arrays if len(arrays) > 1 else arrays[0]
    interpreter = _runtime.load_interpreter(tflite)
    lite = _runtime.run_batch(
        interpreter, feed, backend.input_names(keras_model), backend.output_names(keras_model)
    )
    reference = keras_model.predict(feed, batch_size=min(len(arrays[0]), 64), verbose=0)
    reference = [np.asarray(r, np.float32) for r in backend.flat_outputs(reference)]
    if len(reference) != len(lite):
        raise ValueError(
            f"The TFLite model has {len(lite)} output(s), the Keras model {len(reference)}."
        )
    errors = []
    for ref, out in zip(reference, lite):
        if ref.shape != out.shape:
            raise ValueError(
                f"Output shapes differ: Keras {ref.shape} vs TFLite {out.shape}; is this the "
                "TFLite model of this Keras model?"
            )
        errors.append(np.abs(ref - out).ravel())
    errors = np.concatenate(errors)
    return {
        "max_abs_error": float(np.max(errors)),
        "mean_abs_error": float(np.mean(errors)),
        "top1_agreement": _top1_agreement(reference[0], lite[0]),
        "num_samples": int(arrays[0].shape[0]),
    }


def predict(tflite, inputs, num_threads=None):
    """Runs a TFLite model in LiteRT on a batch and returns its float outputs.

    Args:
      tflite: the flatbuffer bytes or a path to a ``.tflite`` file.
      inputs: a numpy batch ``(N, ...)``, or a list of batches for a multi-input model.
      num_threads: LiteRT threads (default: the interpreter's choice).

    Returns:
      A float32 array (one output) or a list of arrays, batch first; int8 outputs are
      dequantized.

    Raises:
      TypeError / ValueError: an unreadable model or inputs that do not fit it.
    """
    interpreter = _runtime.load_interpreter(tflite, num_threads=num_threads)
    outputs = _runtime.run_batch(interpreter, inputs)
    return outputs[0] if len(outputs) == 1 else outputs
