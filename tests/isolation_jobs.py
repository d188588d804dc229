"""Jobs for the conversion worker in tests/test_isolation.py (light: no TensorFlow import)."""


def noop(directory):
    """A job that does nothing (the worker's bookkeeping is under test)."""
    del directory
