"""What a conversion produced, checked against what was asked: a warning with the numbers
when the file is not what the options promise (never a silent float or dense model)."""

import warnings

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export import _runtime


def warn_float_parts(interpreter):
    """A QAT model converted from its learned ranges alone keeps every op without fake
    quantisation in float; say so (a full-integer model has float tensors only at its I/O)."""
    inputs, outputs = _runtime.io_details(interpreter)
    edges = {d["index"] for d in inputs + outputs}
    floating = [d["name"] for d in interpreter.get_tensor_details()
                if d["dtype"] == np.float32 and d["index"] not in edges]
    if floating:
        warnings.warn(
            f"the quantisation-aware model converted to int8 from its learned ranges keeps "
            f"{len(floating)} float32 tensor(s) between its inputs and outputs (e.g. "
            f"{', '.join(floating[:3])}): some ops had no fake quantisation and run in float, "
            "so the .tflite is not full-integer (NNAPI / Edge TPU need full-integer). Pass "
            "representative_dataset to force full-integer conversion (it fails with the "
            "ops that cannot be int8).",
            stacklevel=4)


def warn_if_nothing_quantised(data):
    """Dynamic-range quantisation that quantised no weight is a float32 model: say so."""
    details = _runtime.load_interpreter(data).get_tensor_details()
    weights = [d for d in details if len(d["shape"]) >= 2]
    if any(d["dtype"] == np.int8 for d in weights):
        return
    largest = max((int(np.prod(d["shape"])) for d in weights), default=0)
    warnings.warn(
        "quantize='dynamic' left every weight float32: the TFLite converter quantises only "
        f"weight tensors of at least 1024 elements, and the largest here has {largest:,}. "
        "The file is a float32 model; use quantize='float16' or 'int8' for this model.",
        stacklevel=4)


def sparse_tensor_count(data):
    """How many tensors of a .tflite flatbuffer are stored sparse (TFLite's sparsity
    encoding), over all subgraphs."""
    model = schema.Model.GetRootAs(data, 0)
    return sum(model.Subgraphs(s).Tensors(t).Sparsity() is not None
               for s in range(model.SubgraphsLength())
               for t in range(model.Subgraphs(s).TensorsLength()))


def warn_if_nothing_sparse(data, model):
    """``sparse_weights=True`` that stored no tensor sparse is a dense file: say so, with the
    zeros of the model's most sparse weight tensor."""
    if sparse_tensor_count(data):
        return
    kernels = [np.asarray(w) for w in model.weights if len(w.shape) >= 2]
    zeros = max((float(np.mean(k == 0)) for k in kernels), default=0.0)
    warnings.warn(
        "sparse_weights=True stored no weight tensor sparse: the converter encodes only weight "
        "tensors of CONV_2D / FULLY_CONNECTED ops with enough zeros, and this model's most "
        f"sparse weight tensor is {zeros:.0%} zeros. A filter-pruned model, once shrunk, has "
        "its pruned channels removed, not zeroed; zeros to encode come from connection "
        "pruning (granularity='connection'). The file is a dense model.",
        stacklevel=4)
