"""Runs native conversion code in a worker process, so that a crash there stays there.

TensorFlow's converter and calibrator are native code; on some models (an int8 GRU, seen with
TensorFlow 2.21) they crash with SIGSEGV and would take the user's Python process (a notebook
kernel, a training job) with them. ``run_isolated`` hands a job to a worker: a separate Python
process started on first use and reused afterwards (it pays TensorFlow's import, several
seconds, once). The worker reads a job from its standard input, runs ``module:function`` on
a directory, and answers on its standard output; a worker that dies is replaced by the next
job. Jobs exchange data through files in that directory, never through the pipe.

Why not ``os.fork``: a child forked from a process whose TensorFlow runtime has started its
thread pools deadlocks in its first op (the pools' threads do not exist in the child). A
fresh interpreter has no such state, on every platform.
"""

import atexit
import os
import signal
import subprocess
import sys
import threading

_DONE = "tfsynapse-isolated-job-done"


class ConverterCrash(RuntimeError):
    """The worker process that ran the converter's native code died (a TensorFlow bug)."""

    def __init__(self, returncode):
        self.returncode = returncode
        if returncode < 0:
            try:
                how = signal.Signals(-returncode).name
            except ValueError:
                how = f"signal {-returncode}"
        else:
            how = f"exit status {returncode}"
        super().__init__(f"the TensorFlow Lite converter crashed ({how}) in a worker process")


class _Worker:
    def __init__(self):
        paths = [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tflite_export._worker", _DONE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def alive(self):
        return self.process.poll() is None

    def run(self, target, directory):
        """Returns True when the job finished, False when the worker died running it."""
        try:
            self.process.stdin.write(f"{target}\t{directory}\n")
            self.process.stdin.flush()
        except OSError:
            return False
        for line in self.process.stdout:  # native code may print to stdout too: skip that
            if line.strip() == _DONE:
                return True
        return False

    def close(self):
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


_worker = None
_lock = threading.Lock()


def run_isolated(target, directory):
    """Runs ``target(directory)`` in the worker process and waits for it.

    Args:
      target: ``"module:function"``; the function takes the directory, reads its inputs from
        there and writes its results there (it must catch its own Python exceptions).
      directory: a directory both processes can read and write.

    Raises:
      ConverterCrash: the worker died while running the job (it is replaced next time).
    """
    global _worker
    with _lock:
        if _worker is None or not _worker.alive():
            _worker = _Worker()
        if not _worker.run(target, directory):
            returncode = _worker.process.wait()
            _worker = None
            raise ConverterCrash(returncode)


@atexit.register
def shutdown():
    """Stops the worker process (also done at interpreter exit)."""
    global _worker
    with _lock:
        if _worker is not None:
            _worker.close()
            _worker = None
