"""What is inside a .tflite: size, operators, input and output tensors.

Operators are read from the flatbuffer itself (``ai_edge_litert.schema_py_generated``), not
from the interpreter: once LiteRT applies its default XNNPACK delegate, the interpreter's node
list shows ``DELEGATE`` nodes instead of the ops. All subgraphs are read.
"""

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export import _runtime

_BUILTIN_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}


def _op_names(data):
    """Returns ``(builtin_names, custom_codes)`` of the operators used in any subgraph."""
    model = schema.Model.GetRootAs(data, 0)
    builtins, customs = set(), set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            # Codes >= 127 live in BuiltinCode; older files only fill DeprecatedBuiltinCode.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                custom = code.CustomCode()
                customs.add(custom.decode() if isinstance(custom, bytes) else str(custom))
            else:
                builtins.add(_BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    return builtins, customs


def _tensor(detail):
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape"]],
        "shape_signature": [int(d) for d in detail["shape_signature"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": (float(scale), int(zero_point)),
    }


def inspect(tflite):
    """Describes a TFLite model.

    Args:
      tflite: the flatbuffer bytes from ``convert`` or a path to a ``.tflite`` file.

    Returns:
      A dict with ``size_bytes``; ``ops``: the sorted names of all operators used (builtin
      names such as ``'CONV_2D'``, and the custom code of custom ops, e.g. ``'FlexErf'`` for a
      TF Select op); ``custom_ops``: the sorted custom codes alone (empty when the model runs
      with builtin ops only); ``inputs`` and ``outputs``: lists of dicts with ``name``,
      ``shape`` (as allocated, batch 1), ``shape_signature`` (-1 marks a dynamic dim),
      ``dtype`` (numpy name, e.g. ``'int8'``) and ``quantization`` ``(scale, zero_point)``,
      ``(0.0, 0)`` for float tensors.

    Raises:
      TypeError: ``tflite`` is not bytes or a path.
      FileNotFoundError: the path does not exist.
      ValueError: the content is not a TFLite model.
    """
    data = _runtime.read_model(tflite)
    builtins, customs = _op_names(data)
    interpreter = _runtime.load_interpreter(data)
    inputs, outputs = _runtime.io_details(interpreter)
    return {
        "size_bytes": len(data),
        "ops": sorted(builtins | customs),
        "custom_ops": sorted(customs),
        "inputs": [_tensor(d) for d in inputs],
        "outputs": [_tensor(d) for d in outputs],
    }
