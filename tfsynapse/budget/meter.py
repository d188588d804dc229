"""Latency measured for budgets: ``latency(...)`` returns a ``LatencyMeter``.

Latency is LiteRT's median on this machine (``tflite_export.benchmark``, ``threads``), cached
on disk by the converted file's SHA-256, the thread count and the machine (``machine_tag``:
CPU model, core count, architecture and LiteRT version), so a new shape, precision, width or
host is a new key and nothing stale is reused; or whatever a ``measure_latency(tflite_bytes,
threads) -> ms`` function returns: e.g. LiteRT's ``benchmark_model`` on an Android phone over
adb (see docs/methods.md), not cached on disk (a file is timed once per call).
"""

import functools
import hashlib
import json
import math
import numbers
import os
import platform
import statistics
import warnings

import numpy as np

import tflite_export
from tfsynapse.fileio import atomic_write

MEMO_BYTES = 256 * 2**20  # converted candidates a meter keeps in memory (the dense one apart)


def latency(quantize, calibration, threads, measure_latency=None, cache=None, runs=30,
            float_layers=None, dense=None):
    """``measure(model) -> ms``: converted in ``quantize`` precision, timed with ``threads``.

    Args:
      quantize, calibration: the conversion (``tflite_export.convert``).
      threads: LiteRT threads.
      measure_latency: optional ``fn(tflite_bytes, threads) -> ms`` that measures elsewhere
        (an Android device); its values are not cached on disk (each file is timed once per
        meter).
      cache: a ``LatencyCache`` (default: the one under ``TFSYNAPSE_CACHE`` or ~/.cache).
      runs: timed invocations per round (three rounds, the median of their medians).
      float_layers: layer names kept float32 in an int8 conversion (``tflite_export``);
        the cache keys are the files' hashes, so such files are timed and cached apart.
      dense: the model a search starts from: converted once for the meter's life (a search
        times it several times; an int8 ResNet50 conversion takes most of a minute). It must
        not change while the meter is used.

    Returns:
      A ``LatencyMeter`` (call it with a model).
    """
    return LatencyMeter(quantize, calibration, threads, measure_latency, cache, runs,
                        float_layers, dense)


class LatencyMeter:
    """Converts models and times them: ``meter(model) -> ms`` (cached), and its parts.

    Attributes:
      cache: the ``LatencyCache`` of LiteRT timings here (None with ``measure_latency``).
      last_key: the cache key of the file ``meter(model)`` converted last.
      fresh: when set, ``meter(model)`` times every file again instead of reading the cache
        (a search run again after the machine drifted: every value in today's units).
    """
    def __init__(self, quantize, calibration, threads, measure_latency=None, cache=None,
                 runs=30, float_layers=None, dense=None):
        self.quantize, self.calibration, self.threads = quantize, calibration, threads
        self.float_layers = float_layers
        self._dense, self._dense_file = dense, None
        self.measure_latency, self.runs = measure_latency, runs
        self.cache = None if measure_latency is not None else (
            cache if cache is not None else LatencyCache())
        self.last_key, self.fresh = None, False
        self._timed = {}  # a device's timings, for this meter's life (the dense model twice)
        self._files = {}  # weights_digest -> converted file (convert)

    def convert(self, model):
        """The model's ``.tflite`` bytes in the meter's precision, converted once per meter:
        the dense model's kept for the meter's life, the others while the files kept add up
        to at most ``MEMO_BYTES`` (the least recently used go first). A search run again, and
        a result timed again, meet candidates converted before."""
        if model is self._dense and self._dense_file is not None:
            return self._dense_file
        digest = weights_digest(model)
        flatbuffer = self._files.pop(digest, None)
        if flatbuffer is None:
            flatbuffer = tflite_export.convert(model, quantize=self.quantize,
                                               representative_dataset=self.calibration,
                                               float_layers=self.float_layers)
        if model is self._dense:
            self._dense_file = flatbuffer
            return flatbuffer
        self._files[digest] = flatbuffer  # the most recently used last
        while len(self._files) > 1 and sum(map(len, self._files.values())) > MEMO_BYTES:
            del self._files[next(iter(self._files))]
        return flatbuffer

    def time_file(self, flatbuffer):
        """One fresh measurement of a converted file, in ms (never cached).

        Raises:
          ValueError: ``measure_latency`` returned anything but a finite positive number
            (``None``, a string, NaN, inf, a non-positive value), named with its type.
        """
        if self.measure_latency is not None:
            value = self.measure_latency(flatbuffer, self.threads)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value) or not value > 0:
                raise ValueError(
                    f"measure_latency returned {value!r} ({type(value).__name__}) for a "
                    f"{len(flatbuffer)}-byte model; it must return the latency in milliseconds, "
                    "a finite positive number (did the function forget to return, or return "
                    "the command's text?).")
            return float(value)
        return tflite_export.benchmark(flatbuffer, num_threads=self.threads,
                                       runs=self.runs)["median_ms"]

    def __call__(self, model):
        """The model's latency in ms: converted, then timed (three rounds, their median; a
        device's single timing), or read from the cache (not while ``fresh`` is set: then
        timed again and the cache entry replaced)."""
        flatbuffer = self.convert(model)
        self.last_key = LatencyCache.key(flatbuffer, self.threads)
        if self.cache is None:
            if self.last_key not in self._timed:
                self._timed[self.last_key] = self.time_file(flatbuffer)
            return self._timed[self.last_key]
        value = None if self.fresh else self.cache.get(self.last_key)
        if value is None:
            value = statistics.median(self.time_file(flatbuffer) for _ in range(3))
            self.cache.put(self.last_key, value)
        return value


    def again(self, model):
        """The model's latency timed afresh (three rounds, their median), replacing its cached
        time; a device's meter returns its one timing."""
        fresh, self.fresh = self.fresh, True
        try:
            return self(model)
        finally:
            self.fresh = fresh


class LatencyCache:
    """Measured LiteRT latencies on disk: ``{sha256 of the .tflite:threads:machine: ms}`` in
    JSON (``key``).

    Args:
      path: the JSON file (default ``$TFSYNAPSE_CACHE/latency.json``, else
        ``~/.cache/tfsynapse/latency.json``).
    """
    def __init__(self, path=None):
        if path is None:
            folder = os.environ.get("TFSYNAPSE_CACHE") or os.path.join(
                os.path.expanduser("~"), ".cache", "tfsynapse")
            path = os.path.join(folder, "latency.json")
        self.path = path
        self.hits = 0
        self.misses = 0
        self._warned = False

    @staticmethod
    def key(flatbuffer, threads):
        """The entry of a converted model timed with ``threads`` on this machine.

        Args:
          flatbuffer: the ``.tflite`` bytes (they decide: a new shape, precision or width is a
            new key).
          threads: LiteRT threads.

        Returns:
          ``'<sha256>:<threads>:<machine_tag()>'``.
        """
        return f"{hashlib.sha256(flatbuffer).hexdigest()}:{int(threads)}:{machine_tag()}"

    def _entries(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                entries = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            if not self._warned:
                self._warned = True
                warnings.warn(f"tfsynapse: the latency cache {self.path} cannot be read ({err}); "
                              "measuring again (it is rewritten on the next measurement).",
                              stacklevel=3)
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key):
        """The cached latency in ms, or None."""
        value = self._entries().get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            self.hits += 1
            return float(value)
        self.misses += 1
        return None

    def get_values(self, key):
        """A cached list of numbers (a fitted latency model's coefficients), or None."""
        value = self._entries().get(key)
        if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            self.hits += 1
            return [float(v) for v in value]
        self.misses += 1
        return None

    def put(self, key, value):
        """Stores a latency, or a list of numbers (atomically; a cache that cannot be written
        is skipped)."""
        entries = self._entries()
        entries[key] = [float(v) for v in value] if isinstance(value, list) else float(value)
        data = json.dumps(entries, indent=0, sort_keys=True).encode()
        try:
            atomic_write(self.path, lambda handle: handle.write(data))
        except OSError as err:
            if not self._warned:
                self._warned = True
                warnings.warn(f"tfsynapse: the latency cache {self.path} cannot be written "
                              f"({err}); latencies are measured again next time. Set "
                              "TFSYNAPSE_CACHE to a writable folder.", stacklevel=2)


@functools.lru_cache(maxsize=1)
def machine_tag():
    """A short hash naming the machine LiteRT times on: CPU model (ARM: implementer, part and
    board), the cores this process may use, architecture and LiteRT version (not the host
    name, which changes with every container). A cache directory shared between machines then
    never reuses another machine's timings.

    Returns:
      12 hex digits.
    """
    import importlib.metadata  # noqa: PLC0415

    fields = {}  # x86: "model name"; ARM: "CPU implementer", "CPU part", "Hardware"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "CPU implementer", "CPU part", "Hardware"):
                    fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    cpu = "|".join(fields[k] for k in sorted(fields)) or platform.processor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        litert = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        litert = "none"
    text = f"{cpu}|{cores}|{platform.machine()}|{litert}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def weights_digest(model):
    """SHA-256 over a model's class, layer count, input shapes and every weight's shape, dtype
    and values, in order: within one search (candidates of one dense model, which differ in
    the channels and the weights they keep) the same digest is the same model. Layer settings
    that hold no weight (an activation) are not in it.

    Args:
      model: a Keras model (either Keras).

    Returns:
      The hex digest.
    """
    shapes = [tuple(tensor.shape) for tensor in getattr(model, "inputs", None) or []]
    digest = hashlib.sha256(f"{type(model).__name__}:{len(model.layers)}:{shapes}".encode())
    for weight in model.weights:
        values = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{values.shape}:{values.dtype}".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()
