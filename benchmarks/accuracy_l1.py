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
"""

import numpy as np

from benchmarks import acc_connection, accuracy, common

SECTION = "accuracy_l1"


def settings(quick):
    return {"seeds": (0,), "lambda": 1e-2 if quick else 8e-3}


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


def diagnose(run, seed, lam):
    """Per-layer strength statistics before and after the L1 phase (cached numbers)."""
    import tfsynapse

    def compute():
        before = _layer_stats(tfsynapse.to_synaptic(run.dense(seed), l1=0.0))
        model, numbers = acc_connection.synaptic_base(run, seed, lam)
        return {"before": before, "after": _layer_stats(model), "val": numbers["val"],
                "strength_sparsity": numbers["strength_sparsity"]}

    return run.cache.result(f"{run.arch}/seed{seed}/l1_diagnosis_{lam:g}", compute)


def run(ctx):
    cfg = settings(ctx.quick)
    run_ = accuracy.Run(ctx, accuracy.settings(ctx.quick), accuracy.cache_folder(ctx))
    seeds = {str(seed): diagnose(run_, seed, cfg["lambda"]) for seed in cfg["seeds"]}
    for seed, result in seeds.items():
        after = result["after"]
        dead = sum(r["dead_columns"] * r["outputs"] for r in after.values())
        total = sum(r["outputs"] for r in after.values())
        ctx.log(SECTION, f"seed {seed}: {dead:.0f} of {total} output columns dead after L1; "
                         f"strength sparsity {result['strength_sparsity']:.1%}")
    return {"settings": {**cfg, "seeds": list(cfg["seeds"])}, "seeds": seeds, "targets": []}


def markdown(result):
    s = result["settings"]
    lines = [f"VGG on Fashion-MNIST, the accuracy section's dense model and L1 phase "
             f"(lambda {s['lambda']:g}); strengths per synaptic layer before and after the "
             "phase. Dead columns: output channels whose every strength is zero; 'if "
             "independent': p_zero ** fan-in, what scattered zeros would kill.", ""]
    for seed, r in result["seeds"].items():
        lines.append(f"Seed {seed} (validation after the phase {r['val']:.2%}, strength "
                     f"sparsity {r['strength_sparsity']:.1%}):")
        lines.append("")
        rows = []
        for name, a in r["after"].items():
            b = r["before"][name]
            rows.append([name, a["fan_in"], a["outputs"], f"{b['median']:.3g}",
                         f"{a['median_nonzero']:.3g}", f"{a['zero']:.1%}",
                         f"{a['dead_columns']:.1%}", f"{a['independent_dead_columns']:.1e}",
                         f"{a['dead_rows']:.1%}"])
        lines.append(common.md_table(
            ["layer", "fan-in", "outputs", "median before", "median non-zero after", "zeros",
             "dead columns", "if independent", "dead rows"], rows))
        lines.append("")
    return "\n".join(lines)
