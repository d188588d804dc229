"""Hide TensorFlow's native start-up and converter chatter (for the CLI and the examples).

TensorFlow 2.21 writes its oneDNN notice and CUDA probe lines from C++ before its logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them; the TFLite converter prints
its settings the same way. ``native_stderr_hidden`` points file descriptor 2 at a temporary
file while a block runs and restores it afterwards; when the block raises, what was hidden is
written back to stderr, so a failure never loses its diagnostics. Python's own warnings and
errors raised after the block are untouched.
"""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_stderr_hidden(enabled=True):
    """Hides what native code writes to stderr inside the block (shown again on error).

    Args:
      enabled: False runs the block unchanged (``--verbose``).
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. some notebooks): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            hidden = sink.read().decode(errors="replace")
            if hidden:
                sys.stderr.write(hidden)
                sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly(enabled=True):
    """Imports TensorFlow, tf_keras, tfmot and LiteRT with their start-up lines hidden.

    Args:
      enabled: False imports them with everything shown.
    """
    with native_stderr_hidden(enabled):
        import tfsynapse.backends.tf_keras  # noqa: F401, PLC0415
        import ai_edge_litert.interpreter  # noqa: F401, PLC0415
