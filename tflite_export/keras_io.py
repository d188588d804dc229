"""The Keras order of a model's inputs and outputs, kept inside the .tflite file.

LiteRT orders a signature's tensors by name (TensorFlow flattens a dict of outputs in sorted key
order), so a model whose outputs are ``["zz", "aa"]`` comes back as ``aa, zz``. ``convert``
writes the Keras names, in Keras order, into the flatbuffer's metadata table (an entry named
``KERAS_IO_KEY`` holding JSON); ``predict``, ``verify`` and ``benchmark`` read it back, so they
return outputs in the order the Keras model does. Files without the entry fall back to the
interpreter's order.
"""

import json

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

KERAS_IO_KEY = "tfsynapse.keras_io"
_IDENTIFIER = b"TFL3"


def add_keras_io(data, input_names, output_names):
    """Returns ``data`` with the Keras input and output names (in order) in its metadata.

    Args:
      data: TFLite flatbuffer bytes.
      input_names, output_names: the Keras model's names, in order.

    Returns:
      The new flatbuffer bytes.
    """
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    payload = json.dumps({"inputs": list(input_names), "outputs": list(output_names)}).encode()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, np.uint8)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = KERAS_IO_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != KERAS_IO_KEY] + [entry]
    return pack(model, len(data))


def pack(model, size):
    """The flatbuffer bytes of a ``schema.ModelT`` about ``size`` bytes large."""
    builder = flatbuffers.Builder(size + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output())


def _name(metadata):
    name = metadata.name
    return name.decode() if isinstance(name, bytes) else name


def keras_io(data):
    """``(input_names, output_names)`` written by ``add_keras_io``, or ``(None, None)``.

    Args:
      data: TFLite flatbuffer bytes.
    """
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode() == KERAS_IO_KEY:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            try:
                names = json.loads(bytes(raw).decode())
                return list(names["inputs"]), list(names["outputs"])
            except (ValueError, KeyError, TypeError):
                return None, None
    return None, None
