"""Atomic file writing: nothing is ever left half-written at a destination path."""

import contextlib
import os
import uuid


def temp_sibling(path, suffix=""):
    """A fresh hidden temporary path in the same folder as ``path`` (so renames are atomic)."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


def atomic_write(path, write, make_dirs=True):
    """Writes a file through ``write(binary file)`` into a temporary sibling, then renames it.

    Args:
      path: the destination file.
      write: ``fn(file)`` that writes the content to an open binary file.
      make_dirs: create the destination folder if it is missing.

    Returns:
      ``path``.

    Raises:
      OSError: writing failed; the destination is unchanged and no temporary file remains.
    """
    path = os.fspath(path)
    if make_dirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = temp_sibling(path)
    # os.open with 0o666 lets the umask decide the mode, as for a plain open(path, "wb").
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    return path
