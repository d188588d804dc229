"""The ``tfsynapse`` command's argument parsing: one-line usage errors and checked argument types.

Nothing here imports TensorFlow, so that bad arguments fail at once.
"""

import argparse
import re

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


def learning_rate(text):
    """A finite learning rate > 0."""
    return _checked(text, float, lambda v: 0.0 < v < float("inf"), "a finite number > 0")


def positive_int(text):
    """An integer >= 1 (round-to, threads, runs)."""
    return _checked(text, int, lambda v: v >= 1, "an integer >= 1")


_COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_BYTE_SUFFIXES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
                  "mib": 2**20, "gib": 2**30}


_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")


def _with_suffix(text, suffixes, expected):
    stripped = text.strip().lower().replace("_", "")
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = stripped[len(number):]
    if "," in number:
        # '1,000,000' groups thousands; '1,5M' is a decimal comma, which would silently read
        # as 15M if commas were dropped: refuse it
        if not _THOUSANDS.fullmatch(number):
            raise argparse.ArgumentTypeError(
                f"must be {expected}, got {text!r}: write decimals with a dot "
                f"({text.strip().replace(',', '.')!r}); commas only group thousands (1,000,000)")
        number = number.replace(",", "")
    if suffix not in suffixes:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
    return _checked(number, float, lambda v: v > 0, expected) * suffixes[suffix]


def amount(text):
    """A positive count with an optional k/M/G suffix (MACs, parameters): '50M', '1.2e6'."""
    return _with_suffix(text, _COUNT_SUFFIXES, "a positive number, optionally with k, M or G")


def byte_size(text):
    """A positive size in bytes with an optional unit: '2MB', '500kB', '1.5MiB', '300000'."""
    return _with_suffix(text, _BYTE_SUFFIXES, "a positive size such as 2MB, 500kB or 1.5MiB")


def milliseconds(text):
    """A positive duration in milliseconds: '8ms' or '8'."""
    stripped = text.strip().lower()
    stripped = stripped[:-2] if stripped.endswith("ms") else stripped
    return _checked(stripped, float, lambda v: v > 0, "a positive duration such as 8ms")


def layer_names(text):
    """Comma-separated layer names: 'Conv1' or 'Conv1,block_1_expand'.

    Args:
      text: the flag's value.

    Returns:
      The names, stripped, as a list.

    Raises:
      argparse.ArgumentTypeError: no name in ``text``.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be layer names separated by commas, got {text!r}")
    return names
