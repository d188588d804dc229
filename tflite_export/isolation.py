"""Runs native conversion code in a worker process, so that a crash there stays there.

TensorFlow's converter and calibrator are native code; on some models (an int8 GRU, seen with
TensorFlow 2.21) they crash with SIGSEGV and would take the user's Python process (a notebook
kernel, a training job) with them. ``run_isolated`` hands a job to a worker: a separate Python
process started on first use and reused afterwards (it pays TensorFlow's import, several
seconds, once per worker). The worker reads a job from its standard input, runs ``module:function`` on
a directory, and answers on its standard output; a worker that dies is replaced by the next
job. Jobs exchange data through files in that directory, never through the pipe.

TensorFlow 2.21's converter leaks about 22 MB per SavedModel conversion (fixed upstream after
2.21), so a worker that lived for a whole measured-budget search would grow without bound: it
is **recycled** (closed; the next job starts a fresh one) after ``TFSYNAPSE_CONVERTER_JOBS``
jobs (default 25) or once its resident memory passes ``TFSYNAPSE_CONVERTER_MAX_MB`` (default
2048, read from ``/proc``). ``worker_stats()`` says how it stands.

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
DEFAULT_JOBS = 25  # jobs a worker runs before it is recycled
DEFAULT_MAX_MB = 2048  # resident memory past which a worker is recycled


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
        # run _worker.py by its path: the package's __init__ (and TensorFlow) loads only when
        # a job needs it, so starting a worker costs an interpreter, not an import of TF
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], "
             "run_name='__main__')", script, _DONE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.jobs = 0
        _stats["started"] += 1

    def rss_bytes(self):
        """The worker's resident memory in bytes (Linux ``/proc``), or None where unknown."""
        try:
            with open(f"/proc/{self.process.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

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
_stats = {"started": 0, "recycled": 0, "last_rss_bytes": None}


def _limits():
    """``(jobs, bytes)`` after which a worker is recycled, from the environment."""
    def positive(name, default):
        text = os.environ.get(name, "")
        try:
            value = float(text) if text else default
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a number; unset it or give a positive "
                             "number.") from None
        if not value > 0:
            raise ValueError(f"{name}={text!r} must be positive.")
        return value

    return (positive("TFSYNAPSE_CONVERTER_JOBS", DEFAULT_JOBS),
            positive("TFSYNAPSE_CONVERTER_MAX_MB", DEFAULT_MAX_MB) * 2 ** 20)


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
    jobs, max_bytes = _limits()
    with _lock:
        if _worker is None or not _worker.alive():
            _worker = _Worker()
        if not _worker.run(target, directory):
            returncode = _worker.process.wait()
            _worker = None
            raise ConverterCrash(returncode)
        _worker.jobs += 1
        rss = _stats["last_rss_bytes"] = _worker.rss_bytes()
        if _worker.jobs >= jobs or (rss is not None and rss > max_bytes):
            _worker.close()  # the converter leaks: the next job gets a fresh worker
            _worker = None
            _stats["recycled"] += 1


def worker_stats():
    """How the conversion worker stands.

    Returns:
      A dict: ``pid`` and ``jobs`` of the live worker (None and 0 when none runs),
      ``rss_bytes`` its resident memory now (None where unknown), ``last_rss_bytes`` the
      worker's memory after the last job, ``started`` and ``recycled``: workers started and
      recycled by this process.
    """
    with _lock:
        live = _worker is not None and _worker.alive()
        return {"pid": _worker.process.pid if live else None, "jobs": _worker.jobs if live else 0,
                "rss_bytes": _worker.rss_bytes() if live else None, **_stats}


@atexit.register
def shutdown():
    """Stops the worker process (also done at interpreter exit)."""
    global _worker
    with _lock:
        if _worker is not None:
            _worker.close()
            _worker = None
