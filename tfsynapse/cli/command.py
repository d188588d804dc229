"""The ``tfsynapse`` command: inspect, prune, shrink, export and benchmark models from a shell.

Subcommands::

    tfsynapse inspect MODEL
    tfsynapse criteria
    tfsynapse prune MODEL (--sparsity S | --ratios FILE.json | --target-macs N |
                    --target-params N | --target-size BYTES | --target-latency MS
                    [--quantize Q --calibration F --float-layers L1,L2])
                    [--sensitivity TABLE.json] [--criterion C]
                    [--data X.npy[,Y.npy]] [--finetune-epochs N] -o OUT
    tfsynapse shrink MODEL [--round-to N] -o OUT
    tfsynapse export MODEL [--quantize {none,dynamic,float16,int8}] [--calibration FILE]
                     [--int8-io] [--float-layers L1,L2] [--sparse-weights] -o OUT.tflite
    tfsynapse bench MODEL.tflite [--threads N] [--runs N]

Models are read from ``.keras`` and ``.h5`` files and SavedModel directories (tfsynapse/tfmot
pruning wrappers included) and written by the output's extension (a path without one is a
SavedModel directory), atomically. Errors are one line on stderr, ``tfsynapse: error: ...``,
with exit status 1 (2 for command-line usage errors); ``--debug`` shows the traceback instead.
TensorFlow is imported only once the arguments have been checked.
"""

import contextlib
import logging
import math
import signal
import sys
import warnings

from tfsynapse.fileio import atomic_write
from tfsynapse.cli import budget as cli_budget
from tfsynapse.cli.args import EXIT_USAGE, PROG
from tfsynapse.cli.files import (
    CliError,
    check_output,
    check_samples,
    load_calibration,
    load_data_pair,
    load_model,
    load_ratios,
    model_format,
    one_line,
    require_input,
    save_model,
    strip_wrappers,
)

from tfsynapse.cli.parser import build_parser

EXIT_ERROR = 1


# ---------------------------------------------------------------------------------------------
# Subcommands


def _cmd_inspect(args):
    import tfsynapse  # noqa: PLC0415

    model = load_model(args.model)
    graph = tfsynapse.dependency_groups(model)
    macs, macs_by_layer = tfsynapse.count_macs(graph, per_layer=True)
    params, params_by_layer = tfsynapse.count_params(graph, per_layer=True)
    print(f"model {model.name!r}: {len(graph.groups)} dependency groups, "
          f"{len(graph.prunable_groups)} prunable")
    print(graph.summary())
    print()
    print(f"{'layer':<40} {'MACs':>14} {'params':>12}")
    names = list(params_by_layer) + [n for n in macs_by_layer if n not in params_by_layer]
    for name in names:
        layer_macs, layer_params = macs_by_layer.get(name, 0), params_by_layer.get(name, 0)
        print(f"{name[:40]:<40} {layer_macs:>14,} {layer_params:>12,}")
    print(f"{'total':<40} {macs:>14,} {params:>12,}")
    return 0


def _cmd_criteria(args):
    from tfsynapse.criteria.registry import table  # noqa: PLC0415

    print(table())
    return 0


def _recalibrated(pruned, model):
    """Whether a BatchNormalization of ``pruned`` has moving statistics other than the dense
    ``model``'s (recalibration ran: not for a model without one, nor for a budget the dense
    model already meets)."""
    import numpy as np  # noqa: PLC0415

    import tfsynapse  # noqa: PLC0415

    dense = {bn.name: bn for bn in tfsynapse.analysis.batchnorm_layers(model)}
    return any(bn.name in dense and not np.array_equal(np.asarray(bn.moving_mean),
                                                        np.asarray(dense[bn.name].moving_mean))
               for bn in tfsynapse.analysis.batchnorm_layers(pruned))


def _cmd_prune(args):
    import tfsynapse  # noqa: PLC0415
    from tfsynapse.cli import finetune as cli_finetune  # noqa: PLC0415

    cli_budget.check(args)
    ratios = load_ratios(require_input(args.ratios, "ratios file")) if args.ratios else None
    check_output(args.output, model_format(args.output), args.model)
    x, y = load_data_pair(args.data) if args.data else (None, None)
    if args.finetune_epochs and y is None:
        raise CliError("--finetune-epochs needs labels: --data x.npy,y.npy")
    if args.lr is not None and not args.finetune_epochs:
        raise CliError("--lr is the fine-tuning learning rate: it needs --finetune-epochs N")
    model = strip_wrappers(load_model(args.model))
    if x is not None:
        check_samples(x, model, "--data", args.data.split(",")[0])
    labelled = y is not None and cli_finetune.is_classifier(model, y)
    if y is not None and not labelled:
        raise CliError(f"--data labels of shape {list(y.shape)} ({y.dtype}) do not fit the "
                       "model's output "
                       f"{[list(t.shape) for t in model.outputs]}: give class ids (N,) or one-hot "
                       "(N, classes) for a single-output classifier")
    before = cli_finetune.accuracy(model, x, y) if labelled else None
    if cli_budget.wanted(args):
        pruned, target = cli_budget.prune(args, model, x)
    else:
        pruned = tfsynapse.prune_once(
            model, ratios if ratios is not None else args.sparsity, criterion=args.criterion,
            granularity=args.granularity, scope=args.scope, round_to=args.round_to or 1,
            max_pruning_ratio=args.max_pruning_ratio, data=x)
        target = (f"ratios from {args.ratios}" if ratios is not None else
                  f"sparsity {args.sparsity:g}")
    print(f"pruned in one shot with {args.criterion} ({args.granularity}, {args.scope}, "
          f"{target})")
    if x is not None and _recalibrated(pruned, model):
        print(f"BatchNormalization statistics recalibrated on {min(len(x), 50 * 64)} samples "
              f"of {args.data.split(',')[0]}")
    elif x is None and tfsynapse.analysis.batchnorm_layers(pruned):
        print("warning: no --data given: one-shot pruning without recalibration or "
              "fine-tuning usually ruins accuracy (the BatchNormalization statistics still "
              "describe the unpruned model). Pass --data x_train.npy to recalibrate them, "
              "--data x.npy,y.npy to see the accuracy, and --finetune-epochs N to fine-tune",
              file=sys.stderr)
    if labelled:
        after = cli_finetune.accuracy(pruned, x, y)
        print(f"accuracy on the {len(x)} --data samples: {before:.2%} before pruning, "
              f"{after:.2%} after (one-shot)")
        if args.finetune_epochs:
            print(f"fine-tuning {args.finetune_epochs} epoch(s), pruned units kept at zero:",
                  flush=True)
            cli_finetune.finetune_keeping_zeros(pruned, x, y, args.finetune_epochs,
                                                args.lr or 1e-4)
            print(f"accuracy after fine-tuning: {cli_finetune.accuracy(pruned, x, y):.2%} "
                  f"(on the samples it was fine-tuned on: pass held-out data to measure)")
        elif before - after > 0.01:
            print(f"warning: one-shot pruning cost {100 * (before - after):.1f} points; "
                  "fine-tune before shipping (--finetune-epochs N)", file=sys.stderr)
    save_model(pruned, args.output)
    print(f"saved {args.output}")
    _print_estimate(pruned, args.round_to or 1)
    return 0


def _print_estimate(pruned, round_to):
    """Prints the MACs and parameters the pruned model will have once shrunk."""
    import tfsynapse  # noqa: PLC0415

    try:
        _, report = tfsynapse.shrink(pruned, round_to=round_to, return_report=True, check=False)
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"MACs after shrink: unknown ({one_line(err)})")
        return
    removed = sum(report.removed_units.values())
    print(f"estimate after 'tfsynapse shrink': MACs {report.macs_before:,} -> "
          f"{report.macs_after:,} "
          f"(-{report.mac_reduction:.1%}); params {report.params_before:,} -> "
          f"{report.params_after:,} (-{report.param_reduction:.1%}); {removed} channels removable")


def _cmd_shrink(args):
    import tfsynapse  # noqa: PLC0415

    check_output(args.output, model_format(args.output), args.model)
    model = load_model(args.model)
    small, report = tfsynapse.shrink(model, round_to=args.round_to, return_report=True)
    print(report.table())
    save_model(small, args.output)
    print(f"saved {args.output}")
    return 0


def _cmd_export(args):
    quantize = None if args.quantize == "none" else args.quantize
    if quantize == "int8" and args.calibration is None:
        raise CliError(
            "--quantize int8 needs calibration data: pass --calibration FILE.npy (an array of "
            "representative input samples, shape (N, ...)), or use --quantize dynamic/float16"
        )
    if quantize != "int8" and args.calibration is not None:
        raise CliError("--calibration is only used by --quantize int8")
    if args.int8_io and quantize != "int8":
        raise CliError("--int8-io needs --quantize int8")
    if args.float_layers and quantize != "int8":
        raise CliError("--float-layers needs --quantize int8")
    auto = args.float_layers == ["auto"]
    if args.float_tolerance != 0.02 and not auto:
        raise CliError("--float-tolerance is only used by --float-layers auto")
    if args.sparse_weights and quantize == "dynamic":
        raise CliError("--sparse-weights works with --quantize none, float16 or int8, not dynamic")
    if not args.output.lower().endswith(".tflite"):
        raise CliError(f"the output of export is a .tflite file, got {args.output!r}")
    output = check_output(args.output, "tflite")
    calibration = None
    if args.calibration is not None:
        calibration = load_calibration(require_input(args.calibration, "calibration file"))
    import tflite_export  # noqa: PLC0415

    from tfsynapse.quiet import native_stderr_hidden  # noqa: PLC0415

    model = strip_wrappers(load_model(args.model))
    if calibration is not None:
        check_samples(calibration, model, "--calibration", args.calibration)
    with native_stderr_hidden(not getattr(args, "verbose", False)):  # the converter's chatter
        if auto:
            _export_auto(tflite_export, model, calibration, args, output)
        else:
            tflite_export.convert(model, quantize=quantize, representative_dataset=calibration,
                                  int8_io=args.int8_io, output=output,
                                  sparse_weights=args.sparse_weights,
                                  float_layers=args.float_layers, quantizer=args.quantizer,
                                  weights=args.weights, activations=args.activations)
    info = tflite_export.inspect(output)
    print(f"saved {args.output}: {info['size_bytes']:,} bytes, quantize={args.quantize}")
    print(f"ops: {', '.join(info['ops'])}")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            print(f"{kind[:-1]} {t['name']}: {t['dtype']} {t['shape_signature']}")
    return 0


def _export_auto(tflite_export, model, calibration, args, output):
    """``--float-layers auto``: choose, say what was chosen and what it measured, write."""
    if args.quantizer != "tensorflow" or (args.weights, args.activations) != ("int8", "int8"):
        raise CliError("--float-layers auto chooses with --quantizer tensorflow (int8 weights "
                       "and activations)")
    choice = tflite_export.choose_float_layers(
        model, calibration, tolerance=args.float_tolerance, int8_io=args.int8_io,
        sparse_weights=args.sparse_weights)
    for layers, error in choice.tried:
        print(f"float layers {', '.join(layers) or '(none)'}: output error {error:.2%}")
    print(f"kept float: {', '.join(choice.layers) or '(none)'} (output error "
          f"{choice.error:.2%}, tolerance {args.float_tolerance:.2%})")
    atomic_write(output, lambda stream: stream.write(choice.data))


def _ms(value):
    """Milliseconds with at least three significant digits (sub-millisecond models too)."""
    if not value > 0 or value >= 1:
        return f"{value:.3f}"
    return f"{value:.{min(6, 2 - math.floor(math.log10(value)))}f}"


def _cmd_bench(args):
    require_input(args.model)
    import tflite_export  # noqa: PLC0415

    result = tflite_export.benchmark(args.model, num_threads=args.threads, runs=args.runs,
                                     runtime=args.runtime)
    print(f"median {_ms(result['median_ms'])} ms, p90 {_ms(result['p90_ms'])} ms "
          f"(mean {_ms(result['mean_ms'])} ms, min {_ms(result['min_ms'])} ms; "
          f"{result['runs']} runs, {result['num_threads']} thread(s))")
    accelerated = {True: "fully accelerated", False: "not fully accelerated",
                   None: "acceleration not reported"}[result["fully_accelerated"]]
    print(f"{result['runtime']}: init {_ms(result['init_ms'])} ms, first run "
          f"{_ms(result['first_run_ms'])} ms, p5 {_ms(result['p5_ms'])} ms, p95 "
          f"{_ms(result['p95_ms'])} ms; {accelerated}")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_tensorflow():
    """One-line warnings and no TensorFlow INFO/WARNING log chatter while a command runs."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    finally:
        logger.setLevel(level)


def _known_errors():
    errors = (CliError, ValueError, TypeError, OSError, RuntimeError, ImportError)
    if "tfsynapse.graph" in sys.modules:
        errors += (sys.modules["tfsynapse.graph"].UnsupportedLayerError,)
    return errors


_RUNS = {"inspect": _cmd_inspect, "criteria": _cmd_criteria, "prune": _cmd_prune,
         "shrink": _cmd_shrink, "export": _cmd_export, "bench": _cmd_bench}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a CI timeout) during a command."""


_TERMINATED = []  # set by the SIGTERM handler: an exception raised inside native code may come
# out wrapped in another one (a SystemError, a converter error), and is still a termination


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises ``Terminated`` while a command runs, so that its ``finally`` and
    ``with`` blocks still remove temporary files and folders (a conversion's SavedModel, a
    half-written output) instead of the process dying where it stands."""
    def stop(signum, frame):
        _TERMINATED.append(signum)
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    """Runs the ``tfsynapse`` command.

    Args:
      argv: the arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
      The exit status: 0 on success, 1 on an error, 2 on a usage error.
    """
    _TERMINATED.clear()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    debug = getattr(args, "debug", False)
    try:
        from tfsynapse.quiet import import_tensorflow_quietly  # noqa: PLC0415

        import_tensorflow_quietly(not getattr(args, "verbose", False))
        with _quiet_tensorflow(), _terminate_as_interrupt():
            return _RUNS[args.command](args)
    except KeyboardInterrupt as stop:
        if debug:
            raise
        terminated = isinstance(stop, Terminated) or bool(_TERMINATED)
        print(f"{PROG}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as err:
        if _TERMINATED and not debug:  # the termination, wrapped by the code it stopped
            print(f"{PROG}: terminated", file=sys.stderr)
            return 143
        if debug or not isinstance(err, _known_errors()):
            raise
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
