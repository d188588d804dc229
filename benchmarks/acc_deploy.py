"""Accuracy (c): distillation while fine-tuning, and int8 accuracy with and without QAT.

* Distillation: the Synaptic Strength arm at ``kd_sparsity`` fine-tuned with the dense model
  as teacher (``tfsynapse.Distiller``), paired with the same run without it, per seed.
* int8: the shrunk model of that distilled run, exported to int8 TFLite by post-training
  quantisation (calibrated on 256 training images) and, separately, after ``qat_epochs`` of
  quantisation-aware fine-tuning (``tflite_export.quantize_aware``); LiteRT test accuracy
  against the float model's.
"""

import numpy as np

from benchmarks import acc_connection
from benchmarks import acc_setup as S

QAT_LR = 1e-3


def _lite_accuracy(tflite, x, y):
    import tflite_export

    logits = tflite_export.predict(tflite, x)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def distilled(run, seed, lam):
    """The KD run's numbers, with int8 PTQ and QAT accuracies of its shrunk model (cached)."""
    import tflite_export
    from tfsynapse.backends.tf_keras import keras

    sparsity = run.cfg["kd_sparsity"]

    def compute():
        base, _ = acc_connection.synaptic_base(run, seed, lam)
        keras.utils.set_random_seed(seed)
        numbers, small = acc_connection.prune_and_finetune(
            run, base, "synaptic_strength", sparsity, seed, distill_from=run.dense(seed))
        x_test, y_test = run.data["test"]
        calibration = run.data["train"][0][:256]
        ptq = tflite_export.convert(small, quantize="int8", representative_dataset=calibration,
                                    calibration_steps=256)
        numbers["float_test"] = numbers["test"]
        numbers["int8_ptq_test"] = _lite_accuracy(ptq, x_test, y_test)
        from tflite_export.qat import quantize_aware

        qat = quantize_aware(small)
        run.train(qat, run.data, run.cfg["qat_epochs"], QAT_LR, seed + 300)
        numbers["qat_float_test"] = S.accuracy(qat, x_test, y_test)
        lite = tflite_export.convert(qat, quantize="int8", representative_dataset=calibration)
        numbers["int8_qat_test"] = _lite_accuracy(lite, x_test, y_test)
        return numbers

    return run.cache.result(f"{run.arch}/seed{seed}/kd/ss_l{lam:g}/{sparsity:g}", compute)


def run_deploy(run, lam):
    """Every seed: the distilled run beside its plain twin; returns rows."""
    rows = []
    for seed in run.cfg["kd_seeds"]:
        try:
            plain = acc_connection.connection_arm(run, seed, "synaptic_strength",
                                                  run.cfg["kd_sparsity"], lam)
            kd = distilled(run, seed, lam)
        except S.NotCached:
            continue
        rows.append({"part": "deploy", "seed": seed, "sparsity": run.cfg["kd_sparsity"],
                     "plain_test": plain["test"], **kd})
        run.log(f"seed {seed}: distilled {kd['test']:.2%} vs plain {plain['test']:.2%}; int8 "
                f"PTQ {kd['int8_ptq_test']:.2%}, QAT {kd['int8_qat_test']:.2%}")
    return rows
