"""The ``tfsynapse`` command's argument parsing: one-line usage errors and checked argument types.

Nothing here imports TensorFlow, so that bad arguments fail at once.
"""

import argparse

PROG = "tfsynapse"
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``tfsynapse: error: ...``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _checked(text, cast, accepts, expected):
    """``cast(text)`` when ``accepts`` it, else an ArgumentTypeError saying what was expected."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if not accepts(value):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
    return value


def sparsity(text):
    """A fraction of units to prune, in [0, 1)."""
    return _checked(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def non_negative_int(text):
    """An integer >= 0 (epochs)."""
    return _checked(text, int, lambda v: v >= 0, "an integer >= 0")


def max_ratio(text):
    """A cap on the pruned fraction of a group, in (0, 1]."""
    return _checked(text, float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def positive_int(text):
    """An integer >= 1 (round-to, threads, runs)."""
    return _checked(text, int, lambda v: v >= 1, "an integer >= 1")
