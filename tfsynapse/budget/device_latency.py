"""Latency measured elsewhere: an Android phone over adb, or any command.

``prune_to_budget(latency_ms=..., measure_latency=fn)`` times every candidate with ``fn(tflite
bytes, threads) -> ms``. Two ready functions:

* ``adb_latency()``: pushes the file to a phone (``adb``; the device ``ANDROID_SERIAL`` names,
  or the only one attached) and runs LiteRT's ``benchmark_model`` there (the prebuilt Android
  binary from the LiteRT releases, pushed once to ``/data/local/tmp/benchmark_model`` and made
  executable) ``rounds`` times (3), returning the median of its ``Inference (avg)`` lines in
  milliseconds: ``benchmark_model`` prints no per-run median, so the median is taken over
  rounds, as the local measurement takes the median of three rounds' medians;
* ``command_latency(template)``: runs a command line of yours with ``{tflite}`` and
  ``{threads}`` filled in and reads milliseconds from the last line it prints (the CLI's
  ``--measure-command``).

Neither is cached: the device decides. No phone is attached where tfsynapse is tested, so the
adb path is tested against a stand-in ``adb`` that prints what ``benchmark_model`` prints.
"""

import os
import re
import shlex
import statistics
import subprocess
import tempfile

DEVICE_FILE = "/data/local/tmp/tfsynapse_candidate.tflite"
_AVERAGE = re.compile(r"Inference \(avg\):\s*([0-9.eE+-]+)")


def adb_latency(binary="/data/local/tmp/benchmark_model", runs=50, adb="adb", timeout=600,
                rounds=3):
    """``measure_latency`` for an Android phone over adb (LiteRT's ``benchmark_model``).

    Args:
      binary: where ``benchmark_model`` lies on the phone.
      runs: timed runs per candidate (``--num_runs``).
      adb: the adb executable.
      timeout: seconds one push or benchmark may take.
      rounds: ``benchmark_model`` runs per candidate; the median of their averages is
        returned (int >= 1).

    Returns:
      ``fn(tflite_bytes, threads) -> ms``: the median over ``rounds`` of the average inference
      time with XNNPACK.

    Raises:
      (when called) RuntimeError: adb is missing, a command fails, or the output has no
        ``Inference (avg)`` line; the message has the command and its output's tail.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}.")

    def one_round(threads):
        output = _run([adb, "shell", binary, f"--graph={DEVICE_FILE}",
                       f"--num_threads={int(threads)}", f"--num_runs={int(runs)}",
                       "--use_xnnpack=true"], timeout)
        found = _AVERAGE.findall(output)
        if not found:
            raise RuntimeError("benchmark_model printed no 'Inference (avg):' line (its last: "
                               f"{_last_line(output)!r}); its output ends with:\n"
                               f"{output[-800:]}")
        return float(found[-1]) / 1000.0  # microseconds -> ms

    def measure(flatbuffer, threads):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "candidate.tflite")
            with open(path, "wb") as handle:
                handle.write(flatbuffer)
            _run([adb, "push", path, DEVICE_FILE], timeout)
        return statistics.median(one_round(threads) for _ in range(rounds))

    return measure


def command_latency(template, timeout=600):
    """``measure_latency`` from a command line: ``{tflite}`` (a file holding the candidate) and
    ``{threads}`` are filled in; the last line it prints must be the latency in ms.

    Args:
      template: e.g. ``"python my_phone.py {tflite} --threads {threads}"``.
      timeout: seconds one measurement may take.

    Returns:
      ``fn(tflite_bytes, threads) -> ms``.

    Raises:
      ValueError: the template lacks ``{tflite}``; (when called) threads other than 1 with no
        ``{threads}`` in the template to pass them on.
      (when called) RuntimeError: the command fails or its last line is not a number.
    """
    if "{tflite}" not in template:
        raise ValueError(f"the measure command must contain {{tflite}} (the candidate's file), "
                         f"got {template!r}.")
    has_threads = "{threads}" in template

    def measure(flatbuffer, threads):
        if threads != 1 and not has_threads:
            raise ValueError(f"{threads} threads were asked for, but the measure command "
                             f"{template!r} has no {{threads}} to pass them on: add it, or "
                             "measure with 1 thread.")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "candidate.tflite")
            with open(path, "wb") as handle:
                handle.write(flatbuffer)
            line = template.replace("{tflite}", shlex.quote(path)).replace(
                "{threads}", str(int(threads)))
            output = _run(line, timeout, shell=True)
        last = _last_line(output)
        try:
            return float(last)
        except ValueError:
            raise RuntimeError(f"the measure command {line!r} must print the latency in ms on "
                               f"its last line; its last line was {last!r}. It "
                               f"printed:\n{output[-800:]}") from None

    return measure


def _run(command, timeout, shell=False):
    """Runs a command; its stdout, or a RuntimeError with what went wrong."""
    shown = command if shell else " ".join(command)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              shell=shell, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"'{command[0]}' was not found: install the Android platform tools "
                           "(adb) and put them on PATH.") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"'{shown}' took more than {timeout} s.") from None
    if done.returncode != 0:
        output = done.stderr or done.stdout
        hint = (" The program was not found or cannot run (exit 126/127): for --adb, push "
                "LiteRT's benchmark_model (the prebuilt Android binary) to /data/local/tmp/ "
                "and chmod +x it; for a measure command, check its path and permissions."
                if done.returncode in (126, 127) else "")
        raise RuntimeError(f"'{shown}' failed (exit {done.returncode}): "
                           f"{_last_line(output)!r}.{hint}\nIts output ends with:\n"
                           f"{output[-800:]}")
    return done.stdout


def _last_line(output):
    """The last non-empty line of a command's output (the first line of an error shows it:
    the command line prints only an error's first line)."""
    lines = [text.strip() for text in (output or "").splitlines() if text.strip()]
    return lines[-1][:300] if lines else "no output"
