"""The rule of ``MultiHeadAttention`` (either Keras): a unit is one attention head.

Head ``h`` owns slice ``h`` of the query, key and value projections (their kernels
``(d, heads, dim)`` on axis 1, their biases ``(heads, dim)`` on axis 0; the gate's too when
``use_gate``) and slice ``h`` of the output projection's kernel ``(heads, value_dim, d_out)``
on axis 0. With its value slice zero a head outputs exactly zero: softmax(q k^T) weights a zero
value, whatever the scores, so masking is exact and ``shrink`` rebuilds the layer with fewer
heads (``num_heads``) and the same outputs.

The input channels of the projections are consumed like a Dense layer's (a prunable producer
upstream loses their rows); the output width is the residual width of a transformer and stays
frozen here, as does a call that returns attention scores. Criteria score a head over its
concatenated slices (the planner builds one row per unit from every member slot).
"""

from tfsynapse.graph.rules import Freeze, Rule, _prod, register_builtin


class MultiHeadAttentionRule(Rule):
    kind = "attention"

    def propagate(self, ctx):
        layer = ctx.layer
        dense = _projections(layer)
        if dense is None:
            return Freeze("a MultiHeadAttention that is not built, or whose projection kernels "
                          "are not (d, heads, dim)").propagate(ctx)
        args, kwargs = ctx.call.args, ctx.call.kwargs
        if kwargs.get("return_attention_scores") or len(ctx.output_shapes) != 1:
            return Freeze("returns its attention scores").propagate(ctx)
        query = _argument(args, kwargs, 0, "query")
        value = _argument(args, kwargs, 1, "value")
        key = _argument(args, kwargs, 2, "key")
        maps = {"query": self._map_of(ctx, query), "value": self._map_of(ctx, value)}
        maps["key"] = self._map_of(ctx, key) if key is not None else maps["value"]
        maps["gate"] = maps["query"]
        if any(m is None for m in maps.values()):
            return Freeze("called with tensors it cannot tell apart").propagate(ctx)
        heads = ctx.new_space(dense["query"].kernel.shape[1], index=1)
        for name, sub in dense.items():
            if name == "output":
                continue
            ctx.slot(sub.kernel, 0, maps[name], "in", zero_required=False)
            # a pruned head's value (and so its output) is zero whatever its scores or gate
            ctx.slot(sub.kernel, 1, heads, "out", zero_required=name == "value")
            if sub.bias is not None:
                ctx.slot(sub.bias, 0, heads, "out", zero_required=name == "value")
        ctx.slot(dense["output"].kernel, 0, heads, "in", zero_required=False)
        return ctx.frozen_maps(f"{layer.name}: the output width of a MultiHeadAttention is "
                               "the residual width (its heads are pruned, not its output)")

    @staticmethod
    def _map_of(ctx, tensor):
        if tensor is None:
            return None
        key = ctx.call.arg_keys.get(id(tensor))
        if key is None or key not in ctx.call.inputs:
            return None
        return ctx.inputs[ctx.call.inputs.index(key)]

    def call_macs(self, layer, input_shapes, output_shapes, shape_of):
        dense = _projections(layer)
        if dense is None:
            return 0
        q, k, v = (shape_of(dense[n].kernel) for n in ("query", "key", "value"))
        o = shape_of(dense["output"].kernel)
        t_q = _prod(output_shapes[0][1:-1])
        other = [_prod(s[1:-1]) for s in input_shapes if _prod(s[1:-1]) != t_q]
        t_kv = other[0] if other else t_q  # keys and values always have one length
        heads = q[1]
        macs = (t_q * q[0] * heads * q[2] + t_kv * k[0] * heads * k[2]
                + t_kv * v[0] * heads * v[2]  # the projections
                + t_q * t_kv * heads * (q[2] + v[2])  # scores and the weighted sum
                + t_q * _prod(o))  # the output projection
        if "gate" in dense:
            g = shape_of(dense["gate"].kernel)
            macs += t_q * g[0] * heads * g[2]
        return macs

    def rebuild_config(self, layer, config, out_channels, shape_of):
        config = dict(config)
        config["num_heads"] = int(shape_of(_projections(layer)["query"].kernel)[1])
        return config


def _argument(args, kwargs, index, name):
    if len(args) > index:
        return args[index]
    return kwargs.get(name)


def _projections(layer):
    """``{'query', 'key', 'value', ['gate',] 'output': EinsumDense}`` of a built layer whose
    kernels have the layout this rule slices, else None."""
    names = {"query": "_query_dense", "key": "_key_dense", "value": "_value_dense",
             "gate": "_gate_dense", "output": "_output_dense"}
    dense = {n: getattr(layer, a, None) for n, a in names.items()}
    if dense["gate"] is None:
        del dense["gate"]
    heads = getattr(layer, "num_heads", None) or getattr(layer, "_num_heads", None)
    if any(d is None or getattr(d, "kernel", None) is None for d in dense.values()):
        return None
    for name, sub in dense.items():
        shape = tuple(sub.kernel.shape)
        expected_axis = 0 if name == "output" else 1
        if len(shape) != 3 or shape[expected_axis] != heads:
            return None
        bias = getattr(sub, "bias", None)
        if name != "output" and bias is not None and tuple(bias.shape)[:1] != (heads,):
            return None
    return dense


register_builtin("MultiHeadAttention")(MultiHeadAttentionRule)
