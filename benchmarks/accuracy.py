"""Accuracy: which criterion keeps the most accuracy at equal sparsity?

One small CNN with BatchNormalization is trained per seed, then:

(a) **Synaptic Strength vs kernel norm**, connection pruning at equal connection sparsity:
    ``to_synaptic`` + ``prune_synaptic(criterion='synaptic_strength', granularity='connection',
    scope='global', max_pruning_ratio=0.99)`` against the plain model +
    ``prune_synaptic(criterion='kernel_norm', ...)``; both fine-tuned the same way
    (``PolynomialDecay`` from 0 reaching the target at ~70% of the fine-tuning steps).
(b) **Filter criteria at equal MAC reduction**: ``prune_once(model, ratio, criterion=c,
    scope='layer')`` prunes the same number of channels in every group for every criterion,
    so the MACs match; accuracy right after pruning and after an equal short fine-tune. The
    fine-tune keeps the one-shot channels pruned: ``prune_synaptic`` with
    ``ConstantSparsity(ratio, 0, frequency=10**9)`` computes its masks once, at step 0, with
    criterion 'l1' on the already pruned weights, whose zeroed channels score exactly 0 and are
    therefore the ones masked (re-scoring with ``c`` itself would re-select different channels
    for criteria that do not rank a zero filter lowest, such as FPGM or random). The benchmark
    checks that every channel zeroed by the one-shot pruning is still zero after fine-tuning.

A dense control fine-tuned for as long as (a) shows how much of the result is extra training.
"""

import math
import time

import numpy as np

from benchmarks import common

SECTION = "accuracy"
CRITERIA = ("dscore", "dstep", "dstep_gm", "fpgm", "l1", "bn_scale", "random")
METHODS = ("synaptic_strength", "kernel_norm")
WITHIN_POINTS = 0.5  # "no accuracy loss": mean within 0.5 points of the dense mean


def settings(quick):
    if quick:
        return {"data": "digits", "seeds": (0,), "widths": (16, 32, 32, 64), "batch_size": 64,
                "pretrain_epochs": 6, "pretrain_lr": 3e-3, "finetune_epochs": 2,
                "filter_finetune_fraction": 1.0, "finetune_lr": 1e-3, "mask_updates": 5,
                "sparsities": (0.9,), "ratios": (0.5,), "criteria": ("dscore", "fpgm"),
                "l1": 1e-4, "dense_control": True}
    return {"data": "fashion_mnist", "seeds": (0, 1, 2), "widths": (16, 32, 32, 64),
            "batch_size": 128, "pretrain_epochs": 3, "pretrain_lr": 2e-3, "finetune_epochs": 1,
            "filter_finetune_fraction": 1 / 3, "finetune_lr": 1e-3, "mask_updates": 16,
            "sparsities": (0.5, 0.7, 0.9, 0.95, 0.98), "ratios": (0.3, 0.5),
            "criteria": CRITERIA, "l1": 1e-4, "dense_control": True}


def load(cfg):
    from tfsynapse import datasets

    if cfg["data"] == "digits":
        return datasets.load_digits(size=16, seed=0)
    return datasets.load_fashion_mnist()


def _fit(model, train, cfg, epochs, callbacks=()):
    model.fit(*train, batch_size=cfg["batch_size"], epochs=epochs, verbose=0,
              callbacks=list(callbacks))
    return model


def _zero_filters(model):
    """{conv name: indices of output channels whose kernel slice is all zero}."""
    from tfsynapse._keras import keras

    zeros = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner) is keras.layers.Conv2D:
            kernel = inner.kernel.numpy()
            zeros[inner.name] = set(np.nonzero(~np.any(kernel != 0, axis=(0, 1, 2)))[0].tolist())
    return zeros


def connection_run(dense, method, sparsity, train, test, cfg):
    """(a): connection pruning during fine-tuning; returns accuracy and what was pruned."""
    import tfsynapse

    if method == "synaptic_strength":
        base = tfsynapse.to_synaptic(dense, l1=cfg["l1"])
    else:
        base = common.copy_model(dense)
    steps = math.ceil(len(train[0]) / cfg["batch_size"]) * cfg["finetune_epochs"]
    frequency = max(1, int(0.7 * steps) // cfg["mask_updates"])
    end = frequency * cfg["mask_updates"]  # the last update lands exactly on end_step
    schedule = tfsynapse.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end,
                                         frequency=frequency)
    pruned = tfsynapse.prune_synaptic(base, schedule, criterion=method, granularity="connection",
                                      scope="global", max_pruning_ratio=0.99)
    common.compile_classifier(pruned, cfg["finetune_lr"])
    _fit(pruned, train, cfg, cfg["finetune_epochs"], [tfsynapse.UpdatePruningStep()])
    stripped = tfsynapse.strip_pruning(pruned)
    connections = tfsynapse.connection_sparsity(stripped)[0]
    final = tfsynapse.from_synaptic(stripped) if method == "synaptic_strength" else stripped
    acc = common.accuracy(final, *test)
    _, report = tfsynapse.shrink(final, return_report=True)
    return {"accuracy": acc, "connection_sparsity": connections,
            "mac_reduction": report.mac_reduction, "param_reduction": report.param_reduction,
            "schedule_end_step": end, "schedule_frequency": frequency, "steps": steps}


def filter_run(dense, criterion, ratio, train, test, cfg, seed):
    """(b): one-shot filter pruning, then a short fine-tune (one pass over ``train``, the same
    subset for every criterion) that keeps the pruned channels at zero."""
    import tfsynapse

    one = tfsynapse.prune_once(dense, ratio, criterion=criterion, scope="layer", seed=seed)
    oneshot = common.accuracy(one, *test)
    _, report = tfsynapse.shrink(one, return_report=True)
    zero_before = _zero_filters(one)
    schedule = tfsynapse.ConstantSparsity(ratio, begin_step=0, frequency=10**9)
    wrapped = tfsynapse.prune_synaptic(one, schedule, criterion="l1", granularity="filter",
                                       scope="layer")
    common.compile_classifier(wrapped, cfg["finetune_lr"])
    _fit(wrapped, train, cfg, 1, [tfsynapse.UpdatePruningStep()])
    stripped = tfsynapse.strip_pruning(wrapped)
    tuned = common.accuracy(stripped, *test)
    zero_after = _zero_filters(stripped)
    kept = all(zero_before[name] <= zero_after.get(name, set()) for name in zero_before)
    return {"accuracy_oneshot": oneshot, "accuracy_finetuned": tuned,
            "mac_reduction": report.mac_reduction, "param_reduction": report.param_reduction,
            "channels_removed": int(sum(report.removed_units.values())),
            "pruned_channels_stayed_zero": bool(kept)}


def run(ctx):
    from tfsynapse._keras import keras

    cfg = settings(ctx.quick)
    (x_train, y_train), (x_test, y_test) = load(cfg)
    source = _source_name(cfg)
    train, test = (x_train, y_train), (x_test, y_test)
    classes = int(max(y_train.max(), y_test.max()) + 1)
    rows = []
    ctx.log(SECTION, f"{source}: {len(x_train)} train / {len(x_test)} test, seeds {cfg['seeds']}")
    for seed in cfg["seeds"]:
        keras.utils.set_random_seed(seed)
        dense = common.compile_classifier(
            common.small_cnn(x_train.shape[1:], classes, cfg["widths"]), cfg["pretrain_lr"])
        started = time.perf_counter()
        _fit(dense, train, cfg, cfg["pretrain_epochs"])
        dense_acc = common.accuracy(dense, *test)
        ctx.log(SECTION, f"seed {seed}: dense {dense_acc:.2%} after {cfg['pretrain_epochs']} "
                         f"epochs ({time.perf_counter() - started:.0f}s)")
        row = {"part": "dense", "seed": seed, "accuracy": dense_acc}
        if cfg["dense_control"]:
            keras.utils.set_random_seed(seed)
            control = common.compile_classifier(common.copy_model(dense), cfg["finetune_lr"])
            _fit(control, train, cfg, cfg["finetune_epochs"])
            row["accuracy_finetuned"] = common.accuracy(control, *test)
            del control
        rows.append(row)
        for sparsity in cfg["sparsities"]:
            for method in METHODS:
                keras.utils.set_random_seed(seed)
                started = time.perf_counter()
                out = _guarded(ctx, connection_run, dense, method, sparsity, train, test, cfg)
                rows.append({"part": "connection", "seed": seed, "method": method,
                             "sparsity": sparsity, **out})
                if "error" in out:
                    continue
                ctx.log(SECTION, f"seed {seed}: {method} at {sparsity:.0%} connections: "
                                 f"{out['accuracy']:.2%} (measured sparsity "
                                 f"{out['connection_sparsity']:.1%}, MACs "
                                 f"-{out['mac_reduction']:.1%}; {time.perf_counter() - started:.0f}s)")
        subset = np.random.default_rng(seed).permutation(len(x_train))[
            :int(round(len(x_train) * cfg["filter_finetune_fraction"]))]
        short = (x_train[subset], y_train[subset])
        for ratio in cfg["ratios"]:
            for criterion in cfg["criteria"]:
                keras.utils.set_random_seed(seed)
                started = time.perf_counter()
                out = _guarded(ctx, filter_run, dense, criterion, ratio, short, test, cfg, seed)
                rows.append({"part": "filter", "seed": seed, "criterion": criterion,
                             "ratio": ratio, **out})
                if "error" in out:
                    continue
                ctx.log(SECTION, f"seed {seed}: {criterion} {ratio:.0%} filters (MACs "
                                 f"-{out['mac_reduction']:.1%}): one-shot "
                                 f"{out['accuracy_oneshot']:.2%}, fine-tuned "
                                 f"{out['accuracy_finetuned']:.2%} "
                                 f"({time.perf_counter() - started:.0f}s)")
        del dense
        common.release_memory()
    result = {"settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                           "data_description": source, "train_size": len(x_train),
                           "test_size": len(x_test)},
              "rows": rows, "targets": []}
    result["summary"] = summarize(rows, cfg)
    result["plots"] = [plot_sparsity(result, ctx.path("accuracy_sparsity.png"))]
    if result["summary"]["filter"]:
        result["plots"].append(plot_criteria(result, ctx.path("accuracy_criteria.png")))
    return result


def _guarded(ctx, fn, *args):
    """Runs one experiment; a failure becomes an ``error`` entry instead of ending the section."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
        message = f"{type(err).__name__}: {str(err)[:300]}"
        ctx.log(SECTION, f"FAILED {fn.__name__}{tuple(a for a in args[1:3])}: {message}")
        return {"error": message}


def _source_name(cfg):
    return ("scikit-learn digits 16x16" if cfg["data"] == "digits"
            else "Fashion-MNIST (60k train / 10k test)")


def summarize(rows, cfg):
    """Means and standard deviations over seeds, and the headline findings."""
    rows = [r for r in rows if "error" not in r]
    dense = [r for r in rows if r["part"] == "dense"]
    dense_mean, dense_std = common.mean_std([r["accuracy"] for r in dense])
    summary = {"dense": {"mean": dense_mean, "std": dense_std}}
    if all("accuracy_finetuned" in r for r in dense):
        mean, std = common.mean_std([r["accuracy_finetuned"] for r in dense])
        summary["dense_finetuned"] = {"mean": mean, "std": std}
    connection = []
    for method in METHODS:
        for sparsity in cfg["sparsities"]:
            group = [r for r in rows if r["part"] == "connection" and r["method"] == method
                     and r["sparsity"] == sparsity]
            if not group:
                continue
            mean, std = common.mean_std([r["accuracy"] for r in group])
            connection.append({
                "method": method, "sparsity": sparsity, "mean": mean, "std": std,
                "connection_sparsity": common.mean_std([r["connection_sparsity"] for r in group])[0],
                "mac_reduction": common.mean_std([r["mac_reduction"] for r in group])[0],
                "within_dense": bool(mean >= dense_mean - WITHIN_POINTS / 100.0)})
    summary["connection"] = connection
    summary["highest_sparsity_within_dense"] = {
        method: max([c["sparsity"] for c in connection if c["method"] == method
                     and c["within_dense"]], default=None)
        for method in METHODS}
    filters = []
    for ratio in cfg["ratios"]:
        for criterion in cfg["criteria"]:
            group = [r for r in rows if r["part"] == "filter" and r["criterion"] == criterion
                     and r["ratio"] == ratio]
            if not group:
                continue
            one_mean, one_std = common.mean_std([r["accuracy_oneshot"] for r in group])
            ft_mean, ft_std = common.mean_std([r["accuracy_finetuned"] for r in group])
            macs = [r["mac_reduction"] for r in group]
            filters.append({
                "criterion": criterion, "ratio": ratio, "oneshot_mean": one_mean,
                "oneshot_std": one_std, "finetuned_mean": ft_mean, "finetuned_std": ft_std,
                "mac_reduction": float(np.mean(macs)), "mac_reduction_min": float(np.min(macs)),
                "mac_reduction_max": float(np.max(macs)),
                "pruned_channels_stayed_zero": all(r["pruned_channels_stayed_zero"] for r in group)})
    summary["filter"] = filters
    return summary


def plot_sparsity(result, path):
    plt = common.pyplot()
    summary = result["summary"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    dense = summary["dense"]
    ax.axhline(dense["mean"] * 100, color="black", lw=1, label="dense")
    ax.axhspan((dense["mean"] - WITHIN_POINTS / 100) * 100, dense["mean"] * 100, color="gray",
               alpha=0.2, label=f"within {WITHIN_POINTS} points")
    for method, marker in zip(METHODS, ("o", "s")):
        points = [c for c in summary["connection"] if c["method"] == method]
        if points:
            ax.errorbar([c["sparsity"] * 100 for c in points], [c["mean"] * 100 for c in points],
                        yerr=[c["std"] * 100 for c in points], marker=marker, capsize=3,
                        label=method)
    ax.set_xlabel("target connection sparsity (%)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def plot_criteria(result, path):
    plt = common.pyplot()
    filters = result["summary"]["filter"]
    ratios = sorted({f["ratio"] for f in filters})
    criteria = list(dict.fromkeys(f["criterion"] for f in filters))
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4), squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        items = {f["criterion"]: f for f in filters if f["ratio"] == ratio}
        pos = np.arange(len(criteria))
        for offset, key, label in ((-0.2, "oneshot", "one-shot"), (0.2, "finetuned", "fine-tuned")):
            ax.bar(pos + offset, [items[c][f"{key}_mean"] * 100 for c in criteria], width=0.4,
                   yerr=[items[c][f"{key}_std"] * 100 for c in criteria], capsize=3, label=label)
        ax.axhline(result["summary"]["dense"]["mean"] * 100, color="black", lw=1, label="dense")
        macs = np.mean([items[c]["mac_reduction"] for c in criteria])
        ax.set_title(f"{ratio:.0%} of filters per group (MACs -{macs:.0%})")
        ax.set_xticks(pos, criteria, rotation=30)
        ax.set_ylabel("test accuracy (%), mean ± std")
        ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def _pct(mean, std):
    return f"{mean * 100:.2f} ± {std * 100:.2f}"


def markdown(result):
    s, summary = result["settings"], result["summary"]
    seeds = len(s["seeds"])
    lines = [
        f"{s['data_description']}; CNN widths {tuple(s['widths'])} with BatchNormalization; "
        f"{seeds} seed(s); pre-training {s['pretrain_epochs']} epoch(s) (Adam "
        f"{s['pretrain_lr']:g}, batch {s['batch_size']}); fine-tuning Adam {s['finetune_lr']:g}. "
        "Test accuracy in %, mean ± std over seeds.", "",
        f"Dense: **{_pct(summary['dense']['mean'], summary['dense']['std'])}**"
        + (f"; dense fine-tuned {s['finetune_epochs']} more epoch(s) (control): "
           f"{_pct(summary['dense_finetuned']['mean'], summary['dense_finetuned']['std'])}"
           if "dense_finetuned" in summary else "") + ".", "",
        f"### (a) Synaptic Strength vs kernel norm (connection pruning, scope global, "
        f"{s['finetune_epochs']} fine-tuning epoch(s), PolynomialDecay reaching the target at "
        f"~70% of them in {s['mask_updates']} mask updates)", "",
    ]
    table = []
    for sparsity in s["sparsities"]:
        cells = {c["method"]: c for c in summary["connection"] if c["sparsity"] == sparsity}
        if len(cells) < len(METHODS):
            continue
        ss, kn = cells["synaptic_strength"], cells["kernel_norm"]
        table.append([f"{sparsity:.0%}", _pct(ss["mean"], ss["std"]),
                      f"{ss['connection_sparsity']:.1%} / -{ss['mac_reduction']:.1%}",
                      _pct(kn["mean"], kn["std"]),
                      f"{kn['connection_sparsity']:.1%} / -{kn['mac_reduction']:.1%}",
                      f"{(ss['mean'] - kn['mean']) * 100:+.2f}"])
    lines.append(common.md_table(
        ["target sparsity", "synaptic_strength acc", "SS measured sparsity / MACs",
         "kernel_norm acc", "KN measured sparsity / MACs", "SS - KN (points)"], table))
    best = summary["highest_sparsity_within_dense"]
    lines += ["", "Highest connection sparsity with mean accuracy within "
              f"{WITHIN_POINTS} points of the dense mean: " + "; ".join(
                  f"{m}: {'none' if v is None else f'{v:.0%}'}" for m, v in best.items()) + ".",
              "", "### (b) Filter criteria at equal MAC reduction (one-shot, scope layer; then "
              f"one fine-tuning pass over {s['filter_finetune_fraction']:.0%} of the training "
              "set, the same images for every criterion, with the pruned channels kept at "
              "zero)", ""]
    table = []
    for f in summary["filter"]:
        table.append([f"{f['ratio']:.0%}", f["criterion"],
                      f"-{f['mac_reduction']:.1%}" + (
                          "" if f["mac_reduction_max"] - f["mac_reduction_min"] < 1e-9 else
                          f" ({f['mac_reduction_min']:.1%}-{f['mac_reduction_max']:.1%})"),
                      _pct(f["oneshot_mean"], f["oneshot_std"]),
                      _pct(f["finetuned_mean"], f["finetuned_std"]),
                      "yes" if f["pruned_channels_stayed_zero"] else "**NO**"])
    lines.append(common.md_table(
        ["filters pruned per group", "criterion", "MACs", "one-shot acc", "fine-tuned acc",
         "pruned channels stayed zero"], table))
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["", f"**{len(failed)} run(s) failed** (left out of the means):", ""]
        lines += [f"- seed {r['seed']}, {r.get('method', r.get('criterion'))} "
                  f"{r.get('sparsity', r.get('ratio'))}: {r['error']}" for r in failed]
    return "\n".join(lines)
