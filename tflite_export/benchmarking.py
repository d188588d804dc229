"""Latency of a TFLite model in LiteRT on this machine: ``CompiledModel`` (LiteRT's recommended
runtime) or the ``Interpreter`` (kept by LiteRT for backward compatibility)."""

import gc
import time

import numpy as np

from tflite_export import _runtime
from tfsynapse.quiet import native_stderr_hidden

RUNTIMES = ("interpreter", "compiled_model")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def benchmark(tflite, num_threads=1, runs=50, warmup=5, seed=0, runtime="interpreter"):
    """Measures the latency of one inference on random inputs with batch size 1.

    Inputs are random numbers of each input tensor's dtype and shape (dynamic dims set to 1),
    set once before timing; only the inference call is timed, with ``time.perf_counter``.
    LiteRT applies XNNPACK on CPU, as on Android. Every runtime reports the same statistics;
    the **median** is the one tfsynapse's latency budgets use.

    Args:
      tflite: the flatbuffer bytes from ``convert`` or a path to a ``.tflite`` file.
      num_threads: CPU threads (>= 1).
      runs: timed invocations (>= 1).
      warmup: untimed invocations after the first one, before timing (>= 0).
      seed: seed for the random inputs.
      runtime: ``'interpreter'`` (``ai_edge_litert.interpreter.Interpreter``, ``invoke()``) or
        ``'compiled_model'`` (``ai_edge_litert.compiled_model.CompiledModel`` on CPU,
        ``run_by_index``).

    Returns:
      A dict with ``median_ms``, ``p5_ms``, ``p90_ms``, ``p95_ms``, ``mean_ms``, ``min_ms``
      (timed runs), ``init_ms`` (loading and preparing the model), ``first_run_ms`` (the
      first inference, untimed in the others), ``fully_accelerated`` (``CompiledModel``: every
      op on the accelerator; None for the interpreter, which does not say), ``runs``,
      ``num_threads`` and ``runtime``.

    Raises:
      ValueError: ``runs``, ``warmup`` or ``num_threads`` out of range, an unknown runtime, or
        an unreadable model.
      TypeError: ``tflite`` is not bytes or a path.
    """
    runs = _check_int("runs", runs, 1)
    warmup = _check_int("warmup", warmup, 0)
    num_threads = _check_int("num_threads", num_threads, 1)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}.")
    rng = np.random.default_rng(seed)
    if runtime == "compiled_model":
        with native_stderr_hidden():  # LiteRT's environment logs each accelerator it looks for
            return _timed(tflite, num_threads, runs, warmup, rng, runtime)
    return _timed(tflite, num_threads, runs, warmup, rng, runtime)


def _timed(tflite, num_threads, runs, warmup, rng, runtime):
    """``benchmark``'s measurement, its arguments checked."""
    start = time.perf_counter()
    if runtime == "interpreter":
        run, accelerated, close = _interpreter_runner(tflite, num_threads, rng), None, None
    else:
        run, accelerated, close = _compiled_model_runner(tflite, num_threads, rng)
    init_ms = (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    run()
    first_ms = (time.perf_counter() - start) * 1000.0
    for _ in range(warmup):
        run()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        run()
        times[i] = (time.perf_counter() - start) * 1000.0
    if close is not None:
        close()
    p5, p90, p95 = np.percentile(times, [5, 90, 95])
    return {
        "median_ms": float(np.median(times)), "p5_ms": float(p5), "p90_ms": float(p90),
        "p95_ms": float(p95), "mean_ms": float(np.mean(times)), "min_ms": float(np.min(times)),
        "init_ms": init_ms, "first_run_ms": first_ms, "fully_accelerated": accelerated,
        "runs": runs, "num_threads": num_threads, "runtime": runtime,
    }


def _interpreter_runner(tflite, num_threads, rng):
    """``invoke`` of an Interpreter with random inputs set."""
    interpreter = _runtime.load_interpreter(tflite, num_threads=num_threads)
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
    return interpreter.invoke


def _compiled_model_runner(tflite, num_threads, rng):
    """``(run, fully accelerated, close)`` of a CPU CompiledModel with random inputs written."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.options import Options

    from ai_edge_litert.environment import Environment

    data = _runtime.read_model(tflite)  # bytes or a path, checked as the Interpreter's are
    options = Options(cpu_options=CpuOptions(num_threads=num_threads))
    environment = Environment.create()  # its own, released in close (not at exit)
    held = {"data": data}  # the model, its buffers and the bytes it reads: released in close
    try:
        held["model"] = CompiledModel.from_buffer(data, options=options,
                                                  environment=environment)
    except Exception:
        environment.close()
        raise
    model = held["model"]
    signature = next(iter(model.get_signature_list()))
    held["inputs"], held["outputs"] = model.create_input_buffers(0), model.create_output_buffers(0)
    details = model.get_input_tensor_details(signature)
    for buffer, name in zip(held["inputs"], model.get_signature_list()[signature]["inputs"]):
        detail = details[name]
        buffer.write(_runtime.random_input({"shape_signature": detail["shape"],
                                            "dtype": detail["dtype"]}, rng))
    accelerated = bool(model.is_fully_accelerated())
    del model

    def run():
        held["model"].run_by_index(0, held["inputs"], held["outputs"])

    def close():
        held.clear()
        environment.close()
        gc.collect()

    return run, accelerated, close
