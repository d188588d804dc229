"""Accuracy (b): the D-Score paper's pipeline for every filter criterion.

Per seed and criterion: ``sensitivity_analysis`` on the dense model (validation accuracy,
BatchNormalization recalibrated on training images inside every trial) -> per-group ratios
from an **absolute** floor (the baseline minus 2, 5 or 10 points: ``max_drop``) ->
``prune_once`` of all groups at once (recalibrated) -> ``ft_epochs`` of fine-tuning with the
pruned channels kept at zero -> shrink -> test accuracy, against the dense control trained
``ft_epochs`` more epochs.

The full pipeline runs for ``pipeline_criteria`` (D-Score and the two baselines that matter
most: L1 and random). Separating allocation from filter choice: **every** criterion also
prunes with D-Score's own ratios at the middle floor ("equal ratios"), so the same number of
channels per group goes and only the choice of filters differs.

Pipeline stages are cached under their ratios' digest (``ratios_tag``): a changed sensitivity
table (another baseline, another library version) never reuses a run made with other ratios.

Keeping the one-shot channels pruned during fine-tuning: ``prune_synaptic`` with
``ConstantSparsity(max ratio, begin_step=1, frequency=10**9)`` and ``layer_sparsity=ratios``
computes masks once, at the first step, with criterion 'l1' on the already pruned weights:
their zeroed channels score exactly 0, so they are the ones masked.
"""

import hashlib
import json

import numpy as np

from benchmarks import acc_setup as S

CRITERIA = ("dscore", "dstep", "dstep_gm", "l1", "fpgm", "bn_scale", "random")


def ratios_tag(ratios):
    """A short digest of ``{layer: ratio}``: pipeline stages are cached per ratio set, so a
    changed sensitivity table can never reuse a run made with other ratios."""
    text = json.dumps({k: round(float(v), 6) for k, v in sorted(ratios.items())})
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def recalibration_images(run):
    """The training images BatchNormalization is recalibrated on (``recalibration_images``)."""
    x = run.data["train"][0]
    return x[: run.cfg["recalibration_images"]]


def sensitivity(run, seed, criterion):
    """The sensitivity table of ``criterion`` on the dense model of ``seed`` (cached)."""
    import tfsynapse

    def compute():
        model = run.dense(seed)
        val = run.data["val"]
        table = tfsynapse.sensitivity_analysis(
            model, lambda m: S.accuracy(m, *val), criterion=criterion, step=run.cfg["step"],
            max_ratio=run.cfg["max_ratio"], verbose=0,
            recalibration_data=recalibration_images(run),
            recalibration_steps=run.cfg["recalibration_steps"])
        return table.to_dict()

    data = run.cache.result(f"{run.arch}/seed{seed}/sens/{criterion}", compute)
    return tfsynapse.SensitivityTable.from_dict(data)


def oneshot(run, seed, criterion):
    """Uniform one-shot pruning, accuracy without and with BN recalibration (cached)."""
    import tfsynapse

    def compute():
        dense = run.dense(seed)
        ratio = run.cfg["oneshot_ratio"]
        stale = tfsynapse.prune_once(dense, ratio, criterion=criterion, seed=seed)
        fresh = tfsynapse.prune_once(dense, ratio, criterion=criterion, seed=seed,
                                     data=recalibration_images(run),
                                     recalibration_steps=run.cfg["recalibration_steps"])
        return {"ratio": ratio, "test_stale": S.accuracy(stale, *run.data["test"]),
                "test_recalibrated": S.accuracy(fresh, *run.data["test"])}

    return run.cache.result(f"{run.arch}/seed{seed}/oneshot/{criterion}", compute)


def pipeline(run, seed, criterion, ratios, tag, ft_epochs=None):
    """Parallel pruning with ``ratios``, fine-tuning, shrink; numbers (cached).

    ``ft_epochs`` (default: the run's ``ft_epochs``) other than the run's own are cached under
    their own key (``...-ft<n>-...``).
    """
    import tfsynapse
    from tfsynapse.backends.tf_keras import keras

    epochs = run.cfg["ft_epochs"] if ft_epochs is None else int(ft_epochs)

    def compute():
        dense = run.dense(seed)
        keras.utils.set_random_seed(seed)
        one = tfsynapse.prune_once(dense, ratios, criterion=criterion, seed=seed,
                                   data=recalibration_images(run),
                                   recalibration_steps=run.cfg["recalibration_steps"])
        numbers = {"oneshot_val": S.accuracy(one, *run.data["val"])}
        top = max(ratios.values(), default=0.0)
        if top > 0:
            schedule = tfsynapse.ConstantSparsity(top, begin_step=1, frequency=10**9)
            wrapped = tfsynapse.prune_synaptic(one, schedule, criterion="l1",
                                               granularity="filter", scope="layer",
                                               layer_sparsity=ratios)
            numbers["train_s"] = run.train(wrapped, run.data, epochs, S.PHASE_LR, seed + 200,
                                               callbacks=[tfsynapse.UpdatePruningStep()])
            tuned = tfsynapse.strip_pruning(wrapped)
        else:
            tuned = one
            numbers["train_s"] = run.train(tuned, run.data, epochs, S.PHASE_LR, seed + 200)
        small, report = tfsynapse.shrink(tuned, return_report=True)
        pruned_channels = sum(report.removed_units.values())
        expected = sum(int(np.floor(r * _size(dense, name) + 0.5)) for name, r in ratios.items())
        return {**numbers, **S.evaluate(small, run.data), "mac_reduction": report.mac_reduction,
                "param_reduction": report.param_reduction, "channels_removed": pruned_channels,
                "channels_planned": expected}

    if epochs != run.cfg["ft_epochs"]:
        tag = f"{tag}-ft{epochs}"
    key = f"{run.arch}/seed{seed}/filter/{criterion}/{tag}-{ratios_tag(ratios)}"
    return run.cache.result(key, compute)


def _size(model, layer_name):
    import tfsynapse

    group = tfsynapse.dependency_groups(model).group_of_layer(layer_name)
    return group.size if group is not None else 0


def run_filters(run):
    """Every seed and criterion: sensitivity, floors, equal ratios, one-shot; returns rows."""
    import tfsynapse

    rows = []
    middle = run.cfg["floors"][len(run.cfg["floors"]) // 2]
    for seed in run.cfg["seeds"]:
        try:
            control = run.control_numbers(seed, "ft")
        except S.NotCached:
            continue
        reference = None
        for criterion in run.cfg["criteria"]:
            try:
                shot = oneshot(run, seed, criterion)
            except S.NotCached:
                continue
            rows.append({"part": "oneshot", "seed": seed, "criterion": criterion, **shot})
            if criterion in run.cfg["pipeline_criteria"]:
                try:
                    table = sensitivity(run, seed, criterion)
                except S.NotCached:
                    table = None
                for floor in run.cfg["floors"] if table is not None else ():
                    ratios = tfsynapse.ratios_from_sensitivity(table, max_drop=floor)
                    if criterion == run.cfg["pipeline_criteria"][0] and floor == middle:
                        reference = ratios
                    try:
                        numbers = pipeline(run, seed, criterion, ratios, f"drop{floor:g}")
                    except S.NotCached:
                        continue
                    rows.append({"part": "filter", "seed": seed, "criterion": criterion,
                                 "floor": floor, "ratios": ratios,
                                 "control_test": control["test"],
                                 "control_val": control["val"], **numbers})
            try:
                if reference is not None:
                    numbers = pipeline(run, seed, criterion, reference, "equal")
                    rows.append({"part": "equal", "seed": seed, "criterion": criterion,
                                 "ratios": reference, "control_test": control["test"],
                                 "control_val": control["val"], **numbers})
            except S.NotCached:
                pass
            run.log(f"seed {seed}: {criterion} done (one-shot at {shot['ratio']:.0%}: "
                    f"{shot['test_stale']:.2%} stale, {shot['test_recalibrated']:.2%} recalibrated)")
    return rows


def flops_at_drop(rows, criterion, points):
    """The floor with the largest MAC reduction whose validation drop is <= ``points``.

    Floors are selected on the paired mean validation difference to the control; the test
    difference at the chosen floor is returned beside it (reported once, not selected on).

    Returns:
      ``{"floor", "mac_reduction", "val_drop_points", "test_drop_points"}`` or None.
    """
    best = None
    for floor in sorted({r["floor"] for r in rows if r["part"] == "filter"}):
        runs = [r for r in rows if r["part"] == "filter" and r["criterion"] == criterion
                and r["floor"] == floor]
        if not runs:
            continue
        val_drop = -np.mean([r["val"] - r["control_val"] for r in runs]) * 100
        macs = float(np.mean([r["mac_reduction"] for r in runs]))
        if val_drop <= points and (best is None or macs > best["mac_reduction"]):
            best = {"floor": floor, "mac_reduction": macs, "val_drop_points": float(val_drop),
                    "test_drop_points": float(
                        -np.mean([r["test"] - r["control_test"] for r in runs]) * 100)}
    return best
