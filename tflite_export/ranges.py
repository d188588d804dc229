"""Calibration ranges that int8 kernels can use: a tensor that never moved gets a usable width.

A pruned model can hold activations that are constant over every calibration sample: an SE
block whose few remaining reduce channels are all negative before their ReLU outputs exactly
zero, so its expand convolution outputs its bias and its sigmoid a constant. The calibrator
records a zero-width range for them ([0, 1.2e-38], [0.5, 0.5]); the quantizer turns that into
scales near 1e-8, so the reduce convolution's requantisation multiplier (input scale x weight
scale / output scale) is in the hundreds, above the 256 XNNPACK accepts, and LiteRT's XNNPACK
refuses to prepare the model ("failed to create XNNPACK runtime"), while its reference kernels
run it. Since a constant tensor is represented exactly
on any range that contains it, ``widen_constant_ranges`` gives every range narrower than
``DEGENERATE_WIDTH`` the width ``MIN_WIDTH`` (keeping zero inside ranges that started at zero,
as a ReLU's does) between calibration and quantisation. ``conversion_job`` applies it through
the calibrator, so the int8 model loads everywhere and computes the same values.
"""

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

DEGENERATE_WIDTH = 1e-6  # narrower than this, a calibrated range saw one value
MIN_WIDTH = 1e-3  # the width it gets: a step of 4e-6 in int8, any scale ratio XNNPACK accepts
_IDENTIFIER = b"TFL3"


def _widened(low, high):
    if high - low >= DEGENERATE_WIDTH:
        return None
    if low >= 0.0 and low <= DEGENERATE_WIDTH:  # a dead ReLU: [0, 0]; zero stays exact
        return 0.0, MIN_WIDTH
    middle = (low + high) / 2.0
    return middle - MIN_WIDTH / 2.0, middle + MIN_WIDTH / 2.0


def widen_constant_ranges(data):
    """Returns the calibrated model ``data`` with every zero-width tensor range widened.

    Args:
      data: a calibrated TFLite flatbuffer (float, with per-tensor min/max statistics).

    Returns:
      ``(data, names)``: the (possibly) new flatbuffer bytes and the names of the tensors
      whose range was widened.
    """
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    names = []
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            q = tensor.quantization
            if q is None or q.min is None or q.max is None or len(q.min) != 1 or len(q.max) != 1:
                continue
            widened = _widened(float(q.min[0]), float(q.max[0]))
            if widened is None:
                continue
            q.min = np.array([widened[0]], np.float32)
            q.max = np.array([widened[1]], np.float32)
            name = tensor.name
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    if not names:
        return data, names
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output()), names
