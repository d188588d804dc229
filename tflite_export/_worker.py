"""The worker process behind ``isolation.run_isolated``, run by its path with ``MARK`` as the
last argument.

Reads ``module:function<TAB>directory`` lines from standard input, calls each function on its
directory, and prints ``MARK`` on a line of its own when the call returned. Run by path, it
imports nothing of the package (nor TensorFlow) until a job does.
"""

import importlib
import sys


def main(done_marker):
    """Serves jobs until standard input closes.

    Args:
      done_marker: the line printed after each finished job.
    """
    for line in sys.stdin:
        target, directory = line.rstrip("\n").split("\t", 1)
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(directory)
        sys.stdout.write(done_marker + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[-1])
