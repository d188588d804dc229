"""Accuracy at compression: both papers' procedures against the equal-budget dense control.

Fashion-MNIST (55k train / 5k validation / 10k test), a VGG-style CNN trained to convergence
(``acc_setup``), three seeds. Every pruned model is compared with the **equal-budget dense
control**: the same dense model trained as many extra epochs, with the same schedule, as the
pruned one was trained after the dense phase. Differences are paired by seed and reported
with 95% confidence intervals; lambda, floors and thresholds are chosen on validation data
and the test set is reported once.

(a) ``acc_connection``: Synaptic Strength (the paper's procedure) vs post-hoc gamma*||K|| vs
    kernel norm at several connection sparsities.
(b) ``acc_filters``: the D-Score paper's pipeline for D-Score, D-Step, D-Step GM, L1, FPGM,
    BN scale and random; equal-ratio runs; one-shot with and without BN recalibration.
(c) ``acc_deploy``: distillation while fine-tuning; int8 accuracy with and without QAT.
(d) ``acc_robust``: (a) and (b) once more on a ResNet-20-style net, one seed (a sanity check).

Stages are cached on disk (``TFSYNAPSE_BENCH_CACHE``, default ``benchmarks/cache/accuracy``;
a temporary folder in quick mode), so an interrupted run resumes where it stopped. The stages'
numbers (JSON) and the dense models' weights are committed, so a run continues across
machines; other weights stay local (``.gitignore``). Parts run in the order (a), (c), (b), (d), seed by seed. ``TFSYNAPSE_BENCH_CACHED_ONLY=1``
reports what the cache holds without training anything (missing stages are listed).
"""

import os

from benchmarks import acc_connection, acc_deploy, acc_filters, acc_report, acc_robust
from benchmarks import acc_setup as S

SECTION = "accuracy"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings(quick):
    if quick:
        return {"data": "digits", "arch": "vgg", "widths": ((8,), (16,), (16,)), "seeds": (0,),
                "batch": 32,
                "dense_epochs": 15, "phase1_epochs": 2, "ft_epochs": 2, "lambdas": (1e-2,),
                "sweep_sparsity": 0.9, "sparsities": (0.9,), "criteria": ("dscore", "random"),
                "pipeline_criteria": ("dscore", "random"),
                "floors": (0.05,), "step": 0.25, "max_ratio": 0.75, "oneshot_ratio": 0.3,
                "recalibration_images": 256, "recalibration_steps": 4, "kd_sparsity": 0.9,
                "kd_seeds": (0,), "qat_epochs": 1,
                "resnet_args": {"widths": (4, 8, 8), "blocks": 1}}
    return {"data": "fashion_mnist", "arch": "vgg", "widths": ((32,), (64, 64), (128, 128)),
            "seeds": (0, 1, 2), "dense_epochs": 15, "phase1_epochs": 4, "ft_epochs": 2,
            "lambdas": (5e-4, 2e-3, 8e-3), "sweep_sparsity": 0.96,
            "sparsities": (0.9, 0.94, 0.96, 0.98), "criteria": acc_filters.CRITERIA,
            "pipeline_criteria": ("dscore", "l1", "random"),
            "floors": (0.02, 0.05, 0.10), "step": 0.1, "max_ratio": 0.9, "oneshot_ratio": 0.3,
            "recalibration_images": 640, "recalibration_steps": 10, "kd_sparsity": 0.96,
            "kd_seeds": (0, 1, 2), "qat_epochs": 1}


class Run:
    """What every stage needs: data, settings, the cache, and the shared dense stages."""

    def __init__(self, ctx, cfg, cache_dir):
        self.ctx, self.cfg, self.arch = ctx, cfg, cfg["arch"]
        self.data = S.load_data(ctx.quick)
        self.shape = self.data["train"][0].shape[1:]
        self.cache = S.StageCache(cache_dir, log=self.log,
                                  cached_only=os.environ.get("TFSYNAPSE_BENCH_CACHED_ONLY") == "1",
                                  settings=cfg)

    def log(self, message):
        self.ctx.log(SECTION, message)

    def train(self, model, data, epochs, lr, seed, callbacks=()):
        """``acc_setup.train_phase`` with this run's batch size."""
        return S.train_phase(model, data, epochs, lr, seed, callbacks=callbacks,
                             batch=self.cfg.get("batch", S.BATCH))

    def build(self, seed):
        from tfsynapse.backends.tf_keras import keras

        keras.utils.set_random_seed(seed)
        if self.arch == "resnet20":
            return S.resnet20(self.shape, 10, **self.cfg.get("resnet_args", {}))
        return S.vgg(self.shape, 10, widths=self.cfg["widths"])

    def dense(self, seed):
        """The dense model of ``seed`` (trained ``dense_epochs`` once, then cached)."""
        def train(model):
            seconds = self.train(model, self.data, self.cfg["dense_epochs"], S.DENSE_LR, seed)
            return {**S.evaluate(model, self.data), "train_s": seconds}

        return self.cache.model(f"{self.arch}/seed{seed}/dense", lambda: self.build(seed), train)[0]

    def _continued(self, seed, key, start, epochs, offset):
        weights = start.get_weights()

        def build():
            model = self.build(seed)
            model.set_weights(weights)
            return model

        def train(model):
            seconds = self.train(model, self.data, epochs, S.PHASE_LR, seed + offset)
            return {**S.evaluate(model, self.data), "train_s": seconds}

        return self.cache.model(f"{self.arch}/seed{seed}/{key}", build, train)[0]

    def control(self, seed, phase):
        """The dense control after phase 1 (``phase=1``) or after both phases (``phase=2``)."""
        first = self._continued(seed, "control_p1", self.dense(seed), self.cfg["phase1_epochs"], 100)
        if phase == 1:
            return first
        return self._continued(seed, "control_p2", first, self.cfg["ft_epochs"], 200)

    def control_numbers(self, seed, which):
        """Numbers of 'p2' (dense + phase1 + ft epochs) or 'ft' (dense + ft epochs).

        Cached numbers are returned as they are: a control whose weights stay local (only
        the dense weights are committed) is never retrained on another machine, so every
        pruned arm of a seed is compared with the one control it was first compared with.
        """
        cached = self.cache.numbers(f"{self.arch}/seed{seed}/control_{which}")
        if cached is not None:
            return cached
        if which == "p2":
            self.control(seed, 2)
        else:
            self._continued(seed, "control_ft", self.dense(seed), self.cfg["ft_epochs"], 200)
        return self.cache.numbers(f"{self.arch}/seed{seed}/control_{which}")

    def control_after(self, seed, epochs, after_phase1=False):
        """Numbers of the dense model of ``seed`` trained ``epochs`` more epochs: the
        equal-budget control of a pipeline fine-tuned ``epochs`` epochs (cached).

        ``after_phase1``: the phase-1 control trained ``epochs`` more, the control of a
        connection arm fine-tuned ``epochs`` epochs after its ``phase1_epochs`` L1 phase.
        """
        if epochs == self.cfg["ft_epochs"]:
            return self.control_numbers(seed, "p2" if after_phase1 else "ft")
        key = f"control_{'p1_' if after_phase1 else ''}ft{int(epochs)}"
        cached = self.cache.numbers(f"{self.arch}/seed{seed}/{key}")
        if cached is not None:
            return cached
        start = self.control(seed, phase=1) if after_phase1 else self.dense(seed)
        self._continued(seed, key, start, int(epochs), 200)
        return self.cache.numbers(f"{self.arch}/seed{seed}/{key}")

    def distiller(self, student, teacher):
        from tfsynapse.pruning.distill import Distiller

        return Distiller(student, teacher)


def cache_folder(ctx):
    if ctx.quick:
        return ctx.path("cache-accuracy")
    return os.environ.get("TFSYNAPSE_BENCH_CACHE",
                          os.path.join(ROOT, "benchmarks", "cache", "accuracy"))


def run(ctx):
    cfg = settings(ctx.quick)
    run_ = Run(ctx, cfg, cache_folder(ctx))
    rows, lam, sweep = acc_connection.run_connection(run_)  # the lambda sweep on seed 0 first
    rows += acc_deploy.run_deploy(run_, lam)
    rows += acc_filters.run_filters(run_)
    rows += acc_robust.run_robust(run_, lam)
    for seed in cfg["seeds"]:
        try:
            rows.append({"part": "dense", "seed": seed,
                         **run_.cache.numbers(f"{run_.arch}/seed{seed}/dense"),
                         "control_p2_test": run_.control_numbers(seed, "p2")["test"],
                         "control_ft_test": run_.control_numbers(seed, "ft")["test"]})
        except (S.NotCached, TypeError):
            continue
    result = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
              "rows": rows, "lambda": lam, "lambda_sweep": sweep,
              "missing_stages": list(run_.cache.missing)}
    result["stage_seconds"] = stage_seconds(run_.cache.folder)
    result["summary"] = acc_report.summarize(result)
    result["targets"] = acc_report.targets(result)
    result["plots"] = acc_report.plots(result, ctx)
    return result


def stage_seconds(folder):
    """The compute time of every cached stage (a resumed run's own time is only the rest)."""
    import json  # noqa: PLC0415

    total = 0.0
    for name in os.listdir(folder):
        if name.endswith(".json") and name != "settings.json":
            with open(os.path.join(folder, name)) as handle:
                total += float(json.load(handle).get("seconds", 0.0))
    return total


def markdown(result):
    return acc_report.markdown(result)
