"""Accuracy II, item 1 (issue #32): what the L1 phase of Synaptic Strength does to the strengths.

The accuracy section's Synaptic Strength pipeline converts the dense VGG to its synaptic form
(BatchNormalization scales folded into the strengths) and trains it ``phase1_epochs`` under
``ProximalL1(lambda)`` before any pruning. Per synaptic layer, before and after that phase (the
section's lambda, 8e-3, chosen at 96% of connections): the fan-in, the median |strength|, the
fraction of exact zeros, and the fraction of **dead output columns** (every strength into an
output channel zero) against what independent zeros would give (``p_zero ** fan_in``). Many
more dead columns than independent zeros explain means L1 removes whole output channels
(rescaling their columns, which the following BatchNormalization(scale=False) cannot feel)
rather than selecting connections. A diagnosis on one seed, not a claim; cached like the other
stages (the L1-phase model is the accuracy section's own stage).

**The fix** (``ProximalL1(hold_columns=True)``, ``tfsynapse/layers/column_scale.py``): every
column whose scale BN makes free is held at unit norm. The same diagnosis after the held phase, then
the held arm's accuracy: lambda from ``held.lambdas`` chosen per sparsity on seed 0's
**validation** accuracy (the grid goes past the accuracy section's 8e-3), every seed at the
chosen lambda, each against the equal-budget control (dense + L1 phase + fine-tuning epochs),
and against the unheld arm (accuracy section, lambda 8e-3) on the same seeds. Target: the held
arm within 0.5 pt of the control (validation) at >= 90% of connections.

**From scratch** (``acc_connection.scratch_base``, the paper's procedure): the VGG built afresh
in its synaptic form and trained ``dense_epochs + phase1_epochs`` epochs under
``ProximalL1(lambda)`` (the step as the paper writes it, no hold), then pruned and fine-tuned
like the other arms: as many epochs as the control. lambda from ``scratch.lambdas``, chosen per
sparsity on seed 0's validation; the same comparisons as the held arm.
"""

import numpy as np

from benchmarks import acc_connection, acc_stats, accuracy, common
from benchmarks import acc_setup as S

SECTION = "accuracy_l1"
HELD = "synaptic_strength_held"
SCRATCH = "synaptic_strength_scratch"
WITHIN = 0.5


def settings(quick):
    if quick:
        return {"seeds": (0,), "lambda": 1e-2,
                "held": {"lambdas": (1e-2,), "seeds": (0,), "sparsities": (0.9,)},
                "scratch": {"lambdas": (1e-3,), "seeds": (0,), "sparsities": (0.9,)}}
    return {"seeds": (0,), "lambda": 8e-3,
            "held": {"lambdas": (2e-3, 8e-3, 5e-4, 3.2e-2), "seeds": (0, 1, 2),
                     "sparsities": (0.9, 0.94, 0.96, 0.98)},
            "scratch": {"lambdas": (2e-3, 5e-4, 8e-3), "seeds": (0, 1, 2),
                        "sparsities": (0.9, 0.94, 0.96, 0.98)}}


def _layer_stats(model):
    from tfsynapse.layers.synaptic import is_synaptic

    rows = {}
    for layer in model.layers:
        if not is_synaptic(layer):
            continue
        s = np.abs(np.asarray(layer.strength)).reshape(-1, layer.strength.shape[-1])
        zero = s == 0
        p_zero = float(zero.mean())
        rows[layer.name] = {
            "fan_in": int(s.shape[0]), "outputs": int(s.shape[1]),
            "median": float(np.median(s)),
            "median_nonzero": float(np.median(s[~zero])) if (~zero).any() else 0.0,
            "zero": p_zero,
            "dead_columns": float(zero.all(axis=0).mean()),
            "independent_dead_columns": p_zero ** s.shape[0],
            "dead_rows": float(zero.all(axis=1).mean()),
        }
    return rows


def diagnose(run, seed, lam, hold=False):
    """Per-layer strength statistics before and after the L1 phase (cached numbers)."""
    import tfsynapse

    def compute():
        before = _layer_stats(tfsynapse.to_synaptic(run.dense(seed), l1=0.0))
        model, numbers = acc_connection.synaptic_base(run, seed, lam, hold=hold)
        return {"before": before, "after": _layer_stats(model), "val": numbers["val"],
                "strength_sparsity": numbers["strength_sparsity"]}

    tag = "l1_hold_diagnosis" if hold else "l1_diagnosis"
    return run.cache.result(f"{run.arch}/seed{seed}/{tag}_{lam:g}", compute)


def arm_rows(run, cfg, method, arm):
    """One arm (``HELD`` or ``SCRATCH``, settings ``arm``): lambda per sparsity on the first
    seed's validation, then every seed; rows with their control and the unheld arm's numbers
    on the same seed and sparsity. Returns ``(sweep, chosen lambda per sparsity, rows)``."""
    first = arm["seeds"][0]
    sweep = []
    for lam in arm["lambdas"]:
        for sparsity in arm["sparsities"]:
            numbers = S.if_cached(acc_connection.connection_arm, run, first, method, sparsity,
                                  lam)
            if numbers:
                sweep.append({"lambda": lam, "sparsity": sparsity, **numbers})
        run.log(f"{method}, lambda {lam:g}, seed {first}: done")
    chosen = {}
    for sparsity in arm["sparsities"]:
        cell = [r for r in sweep if r["sparsity"] == sparsity]
        if cell:
            chosen[sparsity] = max(cell, key=lambda r: r["val"])["lambda"]
    rows = []
    for seed in arm["seeds"]:
        control = S.if_cached(run.control_numbers, seed, "p2")
        for sparsity, lam in chosen.items():
            numbers = S.if_cached(acc_connection.connection_arm, run, seed, method, sparsity,
                                  lam)
            plain = S.if_cached(acc_connection.connection_arm, run, seed, "synaptic_strength",
                         sparsity, cfg["lambda"])
            if numbers and control:
                rows.append({"seed": seed, "sparsity": sparsity, "lambda": lam, **numbers,
                             "control_val": control["val"], "control_test": control["test"],
                             "plain_test": plain["test"] if plain else None,
                             "plain_mac_reduction": plain["mac_reduction"] if plain else None})
        run.log(f"{method}, seed {seed}: done")
    return sweep, chosen, rows


def summarize_arm(rows):
    """Per sparsity: the arm against its control and against the unheld arm."""
    cells = []
    for sparsity in sorted({r["sparsity"] for r in rows}):
        cell = [r for r in rows if r["sparsity"] == sparsity]
        plain = [r for r in cell if r["plain_test"] is not None]
        cells.append({
            "sparsity": sparsity, "n": len(cell), "lambda": cell[0]["lambda"],
            "test": float(np.mean([r["test"] for r in cell])),
            "mac_reduction": float(np.mean([r["mac_reduction"] for r in cell])),
            "plain_mac_reduction": (float(np.mean([r["plain_mac_reduction"] for r in plain]))
                                    if plain else None),
            "vs_control": acc_stats.paired([r["test"] for r in cell],
                                           [r["control_test"] for r in cell]),
            "vs_control_val": acc_stats.paired([r["val"] for r in cell],
                                               [r["control_val"] for r in cell]),
            "vs_plain": acc_stats.paired([r["test"] for r in plain],
                                         [r["plain_test"] for r in plain])})
    return cells


def highest_within(cells, points=WITHIN):
    """The arm's highest sparsity whose paired mean validation difference to its control
    is within ``points`` (on at least 2 seeds); None when there is none."""
    ok = [c for c in cells if c["n"] >= 2 and c["vs_control_val"]["mean"] >= -points]
    return max(ok, key=lambda c: c["sparsity"], default=None)


def run(ctx):
    cfg = settings(ctx.quick)
    run_ = accuracy.Run(ctx, accuracy.settings(ctx.quick), accuracy.cache_folder(ctx))
    seeds = {str(seed): diagnose(run_, seed, cfg["lambda"]) for seed in cfg["seeds"]}
    arms = {}
    for name, method in (("held", HELD), ("scratch", SCRATCH)):
        sweep, chosen, rows = arm_rows(run_, cfg, method, cfg[name])  # the held arm trains
        cells = summarize_arm(rows)                          # the L1 phases diagnosed below
        arms[name] = {"sweep": sweep, "lambda": {f"{k:g}": v for k, v in chosen.items()},
                      "rows": rows, "cells": cells, "best": highest_within(cells)}
    first = cfg["held"]["seeds"][0]
    held_diagnosis = {f"{lam:g}": d for lam in cfg["held"]["lambdas"]
                      if (d := S.if_cached(diagnose, run_, first, lam, hold=True))}
    for seed, result in seeds.items():
        after = result["after"]
        dead = sum(r["dead_columns"] * r["outputs"] for r in after.values())
        total = sum(r["outputs"] for r in after.values())
        ctx.log(SECTION, f"seed {seed}: {dead:.0f} of {total} output columns dead after L1; "
                         f"strength sparsity {result['strength_sparsity']:.1%}")
    settings_out = {**cfg, "seeds": list(cfg["seeds"]),
                    **{name: {k: list(v) for k, v in cfg[name].items()}
                       for name in ("held", "scratch")}}
    result = {"settings": settings_out, "seeds": seeds, "held_diagnosis": held_diagnosis,
              "missing_stages": list(run_.cache.missing), "targets": []}
    for name, arm in arms.items():
        result.update({f"{name}_{key}": value for key, value in arm.items()})
        best = arm["best"]
        result["targets"].append(common.target_entry(
            SECTION, f"Synaptic Strength ({name}): connection sparsity within 0.5 pt (val)",
            best["sparsity"] if best else 0.0, 0.90, ">="))
    return result


def _diagnosis_table(r):
    rows = []
    for name, a in r["after"].items():
        b = r["before"][name]
        rows.append([name, a["fan_in"], a["outputs"], f"{b['median']:.3g}",
                     f"{a['median_nonzero']:.3g}", f"{a['zero']:.1%}",
                     f"{a['dead_columns']:.1%}", f"{a['independent_dead_columns']:.1e}",
                     f"{a['dead_rows']:.1%}"])
    return common.md_table(
        ["layer", "fan-in", "outputs", "median before", "median non-zero after", "zeros",
         "dead columns", "if independent", "dead rows"], rows)


def _arm_lines(result, name, title):
    """The lambda sweep and the per-sparsity comparison of one arm (``held``, ``scratch``)."""
    s, lines = result["settings"], []
    sweep = result.get(f"{name}_sweep", [])
    if sweep:
        lines += [f"Lambda sweep on seed {s[name]['seeds'][0]} (validation accuracy after "
                  "pruning and fine-tuning; chosen per sparsity):", "", common.md_table(
                      ["lambda", "sparsity", "val", "MACs off"],
                      [[f"{r['lambda']:g}", f"{r['sparsity']:.0%}", f"{r['val'] * 100:.2f}",
                        f"{r['mac_reduction']:.1%}"] for r in sweep]), ""]
    cells = result.get(f"{name}_cells", [])
    if cells:
        lines += [f"{title} against its equal-budget control and against the unheld arm "
                  f"(lambda {s['lambda']:g}) on the same seeds (test, paired, points, 95% CI):",
                  "", common.md_table(
                      ["sparsity", "lambda", "test acc", "MACs off (unheld)", "vs control",
                       "vs control, val", f"{name} minus unheld"],
                      [[f"{c['sparsity']:.0%}", f"{c['lambda']:g}", f"{c['test'] * 100:.2f}",
                        f"{c['mac_reduction']:.1%} ({c['plain_mac_reduction']:.1%})"
                        if c["plain_mac_reduction"] is not None else f"{c['mac_reduction']:.1%}",
                        acc_stats.fmt(c["vs_control"]), acc_stats.fmt(c["vs_control_val"]),
                        acc_stats.fmt(c["vs_plain"])] for c in cells]), ""]
        best = result.get(f"{name}_best")
        lines.append("Highest sparsity within 0.5 pt of the control on validation: " + (
            f"{best['sparsity']:.0%} (test {acc_stats.fmt(best['vs_control'])})" if best
            else "none") + ".")
    if not (sweep or cells):
        lines.append("Not run yet.")
    return lines


def markdown(result):
    s = result["settings"]
    lines = [f"VGG on Fashion-MNIST, the accuracy section's dense model and L1 phase "
             f"(lambda {s['lambda']:g}); strengths per synaptic layer before and after the "
             "phase. Dead columns: output channels whose every strength is zero; 'if "
             "independent': p_zero ** fan-in, what scattered zeros would kill.", ""]
    for seed, r in result["seeds"].items():
        lines += [f"Seed {seed} (validation after the phase {r['val']:.2%}, strength "
                  f"sparsity {r['strength_sparsity']:.1%}):", "", _diagnosis_table(r), ""]
    lines += ["### The fix: columns held at unit norm (`ProximalL1(hold_columns=True)`)", "",
              "The same statistics after the held L1 phase (seed "
              f"{s['held']['seeds'][0]}; medians before are of the unheld strengths, the held "
              "ones start at unit norm):", ""]
    for lam, r in result.get("held_diagnosis", {}).items():
        lines += [f"lambda {lam} (validation after the phase {r['val']:.2%}, strength "
                  f"sparsity {r['strength_sparsity']:.1%}):", "", _diagnosis_table(r), ""]
    lines += _arm_lines(result, "held", "Held arm")
    lines += ["", "### The paper's procedure from scratch (L1 over the whole schedule)", "",
              "The synaptic VGG trained from scratch under the L1 step as written for dense + "
              "L1-phase epochs, then pruned and fine-tuned like the other arms.", ""]
    lines += _arm_lines(result, "scratch", "From-scratch arm")
    if result.get("missing_stages"):
        lines += ["", f"Stages not yet run ({len(result['missing_stages'])}): "
                  + ", ".join(result["missing_stages"][:8])
                  + (" ..." if len(result["missing_stages"]) > 8 else "")]
    return "\n".join(lines)
