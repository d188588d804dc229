"""Accuracy (d): a robustness check of (a) and (b) on a ResNet-20-style net, one seed.

The VGG-style CNN carries every comparison with confidence intervals; this part asks whether
the picture changes on a residual network (residual groups, projection shortcuts, convolutions
after an Add with no upstream BatchNormalization). One seed, so no interval: a sanity check,
not a claim. Same data, training schedule, lambda (the VGG sweep's choice) and equal-budget
controls as the VGG arms:

* connections at ``SPARSITY``: Synaptic Strength (the paper's procedure), post-hoc
  gamma*||K||, kernel norm, against the dense control trained the same two phases;
* filters: the D-Score pipeline (sensitivity with BN recalibration, floor baseline minus
  ``FLOOR``, parallel pruning, fine-tuning), against the dense control fine-tuned as long.
"""

import copy

from benchmarks import acc_connection, acc_filters

ARCH = "resnet20"
SEED = 0
SPARSITY = 0.96  # the Synaptic Strength paper's headline sparsity
FLOOR = 0.02  # the D-Score pipeline's tightest floor in (b)
CRITERION = "dscore"


def robust_run(run, arch=ARCH):
    """``run`` on another architecture (by default the ResNet-20-style net): same data,
    settings and cache (keys by arch)."""
    other = copy.copy(run)
    other.arch = arch
    return other


def run_robust(run, lam):
    """Both checks on seed ``SEED``; returns rows with ``part == 'robust'``."""
    import tfsynapse

    from benchmarks import acc_setup as S

    res = robust_run(run)
    rows = []
    try:
        control = res.control_numbers(SEED, "p2")
        sparsity = SPARSITY if not run.ctx.quick else run.cfg["sparsities"][0]
        for method in acc_connection.METHODS:
            numbers = acc_connection.connection_arm(res, SEED, method, sparsity, lam)
            rows.append({"part": "robust", "kind": "connection", "seed": SEED,
                         "method": method, "sparsity": sparsity,
                         "control_test": control["test"], "control_val": control["val"],
                         **numbers})
        control = res.control_numbers(SEED, "ft")
        floor = FLOOR if not run.ctx.quick else run.cfg["floors"][0]
        table = acc_filters.sensitivity(res, SEED, CRITERION)
        ratios = tfsynapse.ratios_from_sensitivity(table, max_drop=floor)
        numbers = acc_filters.pipeline(res, SEED, CRITERION, ratios, f"drop{floor:g}")
        rows.append({"part": "robust", "kind": "filter", "seed": SEED, "method": CRITERION,
                     "floor": floor, "ratios": ratios, "control_test": control["test"],
                     "control_val": control["val"], **numbers})
    except S.NotCached:
        pass
    for row in rows:
        run.log(f"{ARCH} seed {SEED}: {row['kind']} {row['method']}: test {row['test']:.2%} "
                f"vs control {row['control_test']:.2%}, MACs -{row['mac_reduction']:.1%}")
    return rows
