"""Latency of a TFLite model in ai_edge_litert's interpreter (the runtime Android LiteRT shares)."""

import time

import numpy as np

from tflite_export import _runtime


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def benchmark(tflite, num_threads=1, runs=50, warmup=5, seed=0):
    """Measures the latency of one ``invoke()`` on random inputs with batch size 1.

    Inputs are random numbers of each input tensor's dtype and shape (dynamic dims set to 1),
    set once before timing; only ``invoke()`` is timed, with ``time.perf_counter``. LiteRT
    applies its default XNNPACK delegate, as on Android CPU.

    Args:
      tflite: the flatbuffer bytes from ``convert`` or a path to a ``.tflite`` file.
      num_threads: CPU threads given to the interpreter (>= 1).
      runs: timed invocations (>= 1).
      warmup: untimed invocations before timing (>= 0).
      seed: seed for the random inputs.

    Returns:
      A dict with ``median_ms``, ``p90_ms``, ``mean_ms``, ``min_ms``, ``runs`` and
      ``num_threads``.

    Raises:
      ValueError: ``runs``, ``warmup`` or ``num_threads`` out of range, or an unreadable model.
      TypeError: ``tflite`` is not bytes or a path.
    """
    runs = _check_int("runs", runs, 1)
    warmup = _check_int("warmup", warmup, 0)
    num_threads = _check_int("num_threads", num_threads, 1)
    interpreter = _runtime.load_interpreter(tflite, num_threads=num_threads)
    rng = np.random.default_rng(seed)
    resized = False
    for detail in interpreter.get_input_details():
        if any(int(d) == -1 for d in detail["shape_signature"]):
            shape = [1 if int(d) == -1 else int(d) for d in detail["shape_signature"]]
            interpreter.resize_tensor_input(detail["index"], shape)
            resized = True
    if resized:
        interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _runtime.random_input(detail, rng))
    for _ in range(warmup):
        interpreter.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times[i] = (time.perf_counter() - start) * 1000.0
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(np.mean(times)),
        "min_ms": float(np.min(times)),
        "runs": runs,
        "num_threads": num_threads,
    }
