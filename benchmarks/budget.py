"""Budget: does ``prune_to_budget`` meet MAC, parameter and file-size budgets from below, close?

Each model (``tf_keras.applications``, random weights, criterion 'l1', ``round_to=8``, uniform
allocation) is pruned to MAC and parameter budgets at 30/50/70% of dense and to a file-size
budget (float32 and int8 ``.tflite``) at 50% of the dense file, then shrunk (and converted) and
measured. Per row: the measured cost over the budget (at most 1.0: met from below) and the cost
of one step less pruning (the solver's uniform ratio lowered to the next unit count) over the
budget (above 1.0: no less-pruned uniform model fits, i.e. within one rounding step; the
returned model lies between the two, groups having kept one more step each while the budget
allowed). Latency budgets: ``budget_latency``.
"""

import time

from benchmarks import common

SECTION = "budget"
FRACTIONS = (0.3, 0.5, 0.7)


def settings(quick):
    if quick:
        return {"models": [("MobileNetV2", 64)], "fractions": (0.5,), "sizes": (None,),
                "calibration_batches": 4}
    return {"models": [("ResNet50", 224), ("MobileNetV2", 224)], "fractions": FRACTIONS,
            "sizes": (None, "int8"), "calibration_batches": 8}


def _one_step_less(model, kind, budget, round_to):
    """Cost of the next less-pruned uniform configuration, relative to the budget."""
    from tfsynapse.graph import dependency_groups
    from tfsynapse.plan import MaskPlan, PruningOptions
    from tfsynapse.budget.solver import BudgetSolver

    options = PruningOptions(criterion="l1", granularity="filter", scope="layer",
                             round_to=round_to, final_sparsity=1.0)
    solver = BudgetSolver(MaskPlan(dependency_groups(model), options))
    ratio, cost, _ = solver.uniform(kind, budget, options.max_pruning_ratio)
    counts = [solver.kept(ratio, p) for p in solver.groups]
    lower = ratio
    while lower > 0 and [solver.kept(lower, p) for p in solver.groups] == counts:
        lower = max(0.0, lower - 1e-3)
    return solver.cost([lower] * len(solver.groups), kind) / budget


def run(ctx):
    import tflite_export
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    cfg = settings(ctx.quick)
    rows, targets = [], []
    for name, size in cfg["models"]:
        keras.utils.set_random_seed(0)
        dense = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
        counts = {"macs": tfsynapse.count_macs(dense), "params": tfsynapse.count_params(dense)}
        for kind in ("macs", "params"):
            for fraction in cfg["fractions"]:
                budget = fraction * counts[kind]
                started = time.perf_counter()
                pruned, report = tfsynapse.prune_to_budget(dense, **{kind: budget}, round_to=8,
                                                           return_report=True)
                seconds = time.perf_counter() - started
                row = {"model": name, "input": size, "kind": kind, "fraction": fraction,
                       "budget": budget, "dense": counts[kind], "measured": report.measured,
                       "over_budget": report.measured / budget,
                       "one_step_less": _one_step_less(dense, kind, budget, 8),
                       "seconds": seconds}
                rows.append(row)
                ctx.log(SECTION, f"{name} {kind} {fraction:.0%}: {report.measured:,.0f} / "
                                 f"{budget:,.0f} = {row['over_budget']:.4f}; one step less "
                                 f"{row['one_step_less']:.4f} ({seconds:.0f}s)")
                del pruned
        calibration = common.calibration_batches((size, size, 3), cfg["calibration_batches"])
        for quantize in cfg["sizes"]:
            data = calibration if quantize == "int8" else None
            dense_bytes = len(tflite_export.convert(dense, quantize=quantize,
                                                    representative_dataset=data))
            budget = 0.5 * dense_bytes
            started = time.perf_counter()
            pruned, report = tfsynapse.prune_to_budget(
                dense, size_bytes=budget, quantize=quantize, representative_dataset=data,
                round_to=8, return_report=True)
            seconds = time.perf_counter() - started
            rows.append({"model": name, "input": size, "kind": f"bytes ({quantize or 'fp32'})",
                         "fraction": 0.5, "budget": budget, "dense": dense_bytes,
                         "measured": report.measured, "over_budget": report.measured / budget,
                         "one_step_less": None, "seconds": seconds, "steps": report.steps})
            ctx.log(SECTION, f"{name} bytes {quantize or 'fp32'} 50%: {report.measured:,.0f} / "
                             f"{budget:,.0f} = {report.measured / budget:.4f} ({seconds:.0f}s)")
            del pruned
        del dense
        common.release_memory()
    met = sum(r["over_budget"] <= 1.0 for r in rows)
    targets.append(common.target_entry(SECTION, "budgets met from below (fraction of rows)",
                                       met / len(rows), 1.0, ">="))
    stepped = [r for r in rows if r["one_step_less"] is not None]
    close = sum(r["one_step_less"] > 1.0 for r in stepped)
    targets.append(common.target_entry(SECTION, "MAC/parameter budgets within one rounding step "
                                       "(fraction of rows)", close / len(stepped), 1.0, ">="))
    return {"settings": dict(cfg), "rows": rows, "targets": targets, "plots": []}


def markdown(result):
    lines = [
        "`prune_to_budget` (uniform allocation, criterion `l1`, `round_to=8`), shrunk and "
        "measured: MACs and parameters counted on the shrunk model, file sizes of the converted "
        "shrunk model. measured / budget <= 1 is a budget met from below; one step less = the "
        "cost of the next less-pruned uniform configuration / budget (> 1: within one rounding "
        "step; the search then lets groups keep one more step each while the budget allows, "
        "which is how measured lands between the two). Latency budgets: `budget_latency`.", ""]
    headers = ["model", "budget", "% of dense", "budget value", "measured", "measured / budget",
               "one step less / budget", "seconds"]
    table = [[f"{r['model']} {r['input']}px", r["kind"], f"{r['fraction']:.0%}",
              f"{r['budget']:,.0f}", f"{r['measured']:,.0f}", f"{r['over_budget']:.4f}",
              "-" if r["one_step_less"] is None else f"{r['one_step_less']:.4f}",
              f"{r['seconds']:.0f}"] for r in result["rows"]]
    lines.append(common.md_table(headers, table))
    return "\n".join(lines)
