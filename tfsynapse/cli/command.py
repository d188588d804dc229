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

import argparse
import contextlib
import logging
import math
import signal
import sys
import warnings

from tfsynapse.cli import budget as cli_budget
from tfsynapse.cli.args import (
    EXIT_USAGE,
    PROG,
    Parser,
    layer_names,
    max_ratio,
    non_negative_int,
    positive_int,
    sparsity,
)
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

QUANTIZE_CHOICES = ("none", "dynamic", "float16", "int8")
GRANULARITY_CHOICES = ("filter", "connection")
SCOPE_CHOICES = ("layer", "global")
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


def _cmd_prune(args):
    import tfsynapse  # noqa: PLC0415
    from tfsynapse.cli import finetune as cli_finetune  # noqa: PLC0415

    cli_budget.check(args)
    ratios = load_ratios(require_input(args.ratios, "ratios file")) if args.ratios else None
    check_output(args.output, model_format(args.output))
    x, y = load_data_pair(args.data) if args.data else (None, None)
    if args.finetune_epochs and y is None:
        raise CliError("--finetune-epochs needs labels: --data x.npy,y.npy")
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
    if x is not None:
        print(f"BatchNormalization statistics recalibrated on {min(len(x), 50 * 64)} samples "
              f"of {args.data.split(',')[0]}")
    elif tfsynapse.analysis.batchnorm_layers(pruned):
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
            cli_finetune.finetune_keeping_zeros(pruned, x, y, args.finetune_epochs, args.lr)
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

    check_output(args.output, model_format(args.output))
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
        tflite_export.convert(model, quantize=quantize, representative_dataset=calibration,
                              int8_io=args.int8_io, output=output,
                              sparse_weights=args.sparse_weights,
                              float_layers=args.float_layers)
    info = tflite_export.inspect(output)
    print(f"saved {args.output}: {info['size_bytes']:,} bytes, quantize={args.quantize}")
    print(f"ops: {', '.join(info['ops'])}")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            print(f"{kind[:-1]} {t['name']}: {t['dtype']} {t['shape_signature']}")
    return 0


def _ms(value):
    """Milliseconds with at least three significant digits (sub-millisecond models too)."""
    if not value > 0 or value >= 1:
        return f"{value:.3f}"
    return f"{value:.{min(6, 2 - math.floor(math.log10(value)))}f}"


def _cmd_bench(args):
    require_input(args.model)
    import tflite_export  # noqa: PLC0415

    result = tflite_export.benchmark(args.model, num_threads=args.threads, runs=args.runs)
    print(f"median {_ms(result['median_ms'])} ms, p90 {_ms(result['p90_ms'])} ms "
          f"(mean {_ms(result['mean_ms'])} ms, min {_ms(result['min_ms'])} ms; "
          f"{result['runs']} runs, {result['num_threads']} thread(s))")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point


def build_parser():
    """The ``tfsynapse`` argument parser (subcommands inspect, prune, shrink, export, bench)."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of errors")
    debug.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show TensorFlow's native start-up and converter messages "
                            "(hidden by default)")
    parser = Parser(prog=PROG, parents=[debug],
                     description="Structured pruning for tf_keras: inspect, prune, shrink, export "
                                 "to TFLite and benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    model_help = "a .keras or .h5 file or a SavedModel directory"
    out_help = "output: .keras, .h5, or a directory (SavedModel)"

    p = sub.add_parser("inspect", parents=[debug], help="dependency groups, MACs and parameters",
                       description="Prints the dependency groups, then MACs and parameters per "
                                   "layer.")
    p.add_argument("model", help=model_help)
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser("criteria", parents=[debug], help="every importance criterion",
                       description="Lists every criterion (built-in and registered): the "
                                   "granularity it scores, what it needs, what it computes.")
    p.set_defaults(run=_cmd_criteria)

    p = sub.add_parser("prune", parents=[debug], help="one-shot structured pruning (zeroes units)",
                       description="Prunes in ONE SHOT, without training (tfsynapse.prune_once), "
                                   "and saves the model with the pruned units zeroed; run "
                                   "'shrink' to remove them. One-shot pruning loses accuracy: "
                                   "give --data x.npy to recalibrate BatchNormalization, "
                                   "--data x.npy,y.npy to see the accuracy before and after, "
                                   "and --finetune-epochs N to fine-tune. For the best accuracy "
                                   "prune during training with the Python API "
                                   "(tfsynapse.prune_synaptic).")
    p.add_argument("model", help=model_help)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--sparsity", type=sparsity, help="fraction of units pruned, in [0, 1)")
    target.add_argument("--ratios", metavar="FILE.json",
                        help='JSON {"layer name": ratio} used instead of --sparsity')
    cli_budget.add_arguments(p, target)
    p.add_argument("--criterion", default="l1",
                   help="importance criterion (default l1); 'tfsynapse criteria' lists them all "
                        "with the granularity each scores")
    p.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="filter")
    p.add_argument("--scope", choices=SCOPE_CHOICES, default="layer")
    p.add_argument("--round-to", type=positive_int, default=None, metavar="N",
                   help="keep channel counts multiples of N (default 1; with --target-latency, "
                        "measured: the multiple of 1, 4, 8 or 16 fastest per MAC here)")
    p.add_argument("--max-pruning-ratio", type=max_ratio, default=None, metavar="R",
                   help="the largest fraction of any group/layer pruned (default 0.9 for "
                        "filters, 0.99 for connections)")
    p.add_argument("--data", metavar="X.npy[,Y.npy]",
                   help="training images (N, ...) to recalibrate BatchNormalization statistics "
                        "after pruning (strongly advised); with labels (class ids or one-hot), "
                        "also the accuracy before and after pruning")
    p.add_argument("--finetune-epochs", type=non_negative_int, default=0, metavar="N",
                   help="fine-tune N epochs on --data x.npy,y.npy with the pruned units kept "
                        "at zero (Adam; default 0)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="fine-tuning learning rate (default 1e-4)")
    p.add_argument("-o", "--output", required=True, help=out_help)
    p.set_defaults(run=_cmd_prune)

    p = sub.add_parser("shrink", parents=[debug], help="remove pruned channels for real",
                       description="Removes the zeroed channels of a pruned model "
                                   "(tfsynapse.shrink).")
    p.add_argument("model", help=model_help)
    p.add_argument("--round-to", type=positive_int, default=1, metavar="N",
                   help="keep channel counts multiples of N (default 1)")
    p.add_argument("-o", "--output", required=True, help=out_help)
    p.set_defaults(run=_cmd_shrink)

    p = sub.add_parser("export", parents=[debug], help="convert to TFLite (builtin ops only)",
                       description="Converts a model to a .tflite file (tflite_export.convert).")
    p.add_argument("model", help=model_help)
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                   help="none (float32, default), dynamic, float16 or int8 (needs --calibration)")
    p.add_argument("--calibration", metavar="FILE",
                   help="int8 calibration samples: a .npy array (N, ...) or a .npz with one array")
    p.add_argument("--int8-io", action="store_true",
                   help="int8 input and output tensors (int8 only)")
    p.add_argument("--float-layers", type=layer_names, metavar="L1,L2",
                   help="layers kept float32 inside the int8 model (comma-separated names), "
                        "e.g. a 3-channel first convolution that int8 runs slower")
    p.add_argument("--sparse-weights", action="store_true",
                   help="store sparse (connection-pruned) weights compressed; smaller file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tflite")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("bench", parents=[debug], help="time a .tflite model in LiteRT",
                       description="Times invoke() on random inputs (tflite_export.benchmark).")
    p.add_argument("model", metavar="MODEL.tflite")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N")
    p.add_argument("--runs", type=positive_int, default=50, metavar="N")
    p.set_defaults(run=_cmd_bench)
    return parser


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
    errors = (CliError, ValueError, TypeError, OSError, RuntimeError)
    if "tfsynapse.graph" in sys.modules:
        errors += (sys.modules["tfsynapse.graph"].UnsupportedLayerError,)
    return errors


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a CI timeout) during a command."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises ``Terminated`` while a command runs, so that its ``finally`` and
    ``with`` blocks still remove temporary files and folders (a conversion's SavedModel, a
    half-written output) instead of the process dying where it stands."""
    def stop(signum, frame):
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
            return args.run(args)
    except KeyboardInterrupt as stop:
        if debug:
            raise
        terminated = isinstance(stop, Terminated)
        print(f"{PROG}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as err:
        if debug or not isinstance(err, _known_errors()):
            raise
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
