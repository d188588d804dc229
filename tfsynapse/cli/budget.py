"""``tfsynapse prune --target-macs/--target-params/--target-size/--target-latency``.

The command-line face of ``tfsynapse.prune_to_budget``: the budget flags, the precision and
calibration of a measured budget (file size, latency), the LiteRT threads, where latency is
measured (here, a phone over adb, or a command of yours), an optional sensitivity table, the
progress and report printed, and a plot of the measured search.
"""

import os
import sys

from tfsynapse.cli.files import CliError, load_calibration, one_line, require_input

TARGET_FLAGS = ("target_macs", "target_params", "target_size", "target_latency")


def add_arguments(parser, target_group):
    """Adds the budget flags to the ``prune`` parser (the budgets to its target group)."""
    from tfsynapse.cli.args import (  # noqa: PLC0415
        amount, byte_size, layer_names, milliseconds, positive_int)

    target_group.add_argument("--target-macs", type=amount, metavar="N",
                              help="prune until the shrunk model needs at most N MACs per "
                                   "sample (e.g. 150M)")
    target_group.add_argument("--target-params", type=amount, metavar="N",
                              help="prune until it holds at most N parameters (e.g. 1.5M)")
    target_group.add_argument("--target-size", type=byte_size, metavar="BYTES",
                              help="prune until its .tflite file (in --quantize precision) is "
                                   "at most this large (e.g. 2MB: 2,000,000 bytes; 1.5MiB: "
                                   "1.5 x 2^20); converts and measures")
    target_group.add_argument("--target-latency", type=milliseconds, metavar="MS",
                              help="prune until its .tflite (in --quantize precision) runs in at "
                                   "most MS milliseconds in LiteRT here (median, batch 1, "
                                   "--threads); converts and times each candidate")
    parser.add_argument("--threads", type=positive_int, default=1, metavar="N",
                        help="--target-latency: LiteRT threads (default 1)")
    parser.add_argument("--quantize", choices=("none", "dynamic", "float16", "int8"),
                        default="none",
                        help="--target-size/--target-latency: the precision of the file")
    parser.add_argument("--calibration", metavar="FILE.npy",
                        help="--quantize int8: representative inputs")
    parser.add_argument("--float-layers", type=layer_names, metavar="L1,L2",
                        help="--quantize int8: layers kept float32 in every measured candidate "
                             "(export the result with the same --float-layers)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--adb", action="store_true",
                        help="--target-latency: time each candidate on the Android phone adb "
                             "sees with LiteRT's benchmark_model (push it to /data/local/tmp/ "
                             "and chmod +x it first)")
    device.add_argument("--measure-command", metavar="CMD",
                        help="--target-latency: time each candidate with CMD ({tflite} and "
                             "{threads} filled in; its last printed line: the ms)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="--target-size/--target-latency: plot predicted against measured "
                             "for every candidate")
    parser.add_argument("--sensitivity", metavar="TABLE.json",
                        help="with a --target-*: a sensitivity table (SensitivityTable.to_json "
                             "of this model) to spend the budget where it costs least accuracy; "
                             "default: one ratio for every group")


def wanted(args):
    """Whether the command line asks for a budget."""
    return any(getattr(args, name, None) is not None for name in TARGET_FLAGS)


def check(args):
    """Refuses flags that only a budget uses when no budget is given, and the reverse."""
    measured = getattr(args, "target_size", None) is not None or \
        getattr(args, "target_latency", None) is not None
    if wanted(args):
        if args.granularity != "filter" or args.scope != "layer":
            raise CliError("a --target-* budget prunes filters per group: drop --granularity "
                           "and --scope")
        quantize = None if args.quantize == "none" else args.quantize
        for flag, used, where in (
                ("--quantize", quantize is not None, measured),
                ("--plot", args.plot is not None, measured),
                ("--float-layers", args.float_layers is not None, measured),
                ("--threads", args.threads != 1, args.target_latency is not None),
                ("--adb", args.adb, args.target_latency is not None),
                ("--measure-command", args.measure_command is not None,
                 args.target_latency is not None)):
            if used and not where:
                raise CliError(f"{flag} only changes a --target-size or --target-latency budget"
                               if flag in ("--quantize", "--plot", "--float-layers") else
                               f"{flag} needs --target-latency")
        if args.measure_command and args.threads != 1 and "{threads}" not in \
                args.measure_command:
            raise CliError(f"--threads {args.threads} is not passed on: the --measure-command "
                           "has no {threads}; add it, or drop --threads")
        if quantize == "int8" and args.calibration is None:
            raise CliError("--quantize int8 needs --calibration FILE.npy (representative inputs)")
        if args.calibration is not None and quantize != "int8":
            raise CliError("--calibration is only used with --quantize int8")
        if args.float_layers and quantize != "int8":
            raise CliError("--float-layers needs --quantize int8")
        if args.plot:
            _check_plot(args.plot)
        return
    for flag, value in (("--quantize", args.quantize != "none"),
                        ("--calibration", args.calibration is not None),
                        ("--float-layers", args.float_layers is not None),
                        ("--sensitivity", args.sensitivity is not None),
                        ("--threads", args.threads != 1), ("--plot", args.plot is not None),
                        ("--adb", args.adb),
                        ("--measure-command", args.measure_command is not None)):
        if value:
            raise CliError(f"{flag} needs a budget: --target-macs, --target-params, "
                           "--target-size or --target-latency")


def prune(args, model, x):
    """``prune_to_budget`` with the command line's budget; it prints its progress and report.

    Returns:
      The pruned model and a one-line description of the target.
    """
    import tfsynapse  # noqa: PLC0415

    quantize = None if args.quantize == "none" else args.quantize
    calibration = (load_calibration(require_input(args.calibration, "calibration file"))
                   if args.calibration else None)
    table = None
    if args.sensitivity:
        path = require_input(args.sensitivity, "sensitivity table")
        try:
            table = tfsynapse.SensitivityTable.from_json(path)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise CliError(f"cannot read the sensitivity table {path!r}: {one_line(err)}; "
                           "write it with SensitivityTable.to_json (a .json file, not the "
                           "CSV)") from err
    budget = {"macs": args.target_macs, "params": args.target_params,
              "size_bytes": args.target_size, "latency_ms": args.target_latency}
    budget = {k: v for k, v in budget.items() if v is not None}
    print(f"pruning to a budget of {_describe(budget)} ({'sensitivity' if table else 'uniform'} "
          "allocation; a file-size or latency budget converts and measures each candidate)",
          flush=True)
    extra = {"threads": args.threads} if "latency_ms" in budget else {}
    if args.adb or args.measure_command:
        from tfsynapse.budget import device_latency  # noqa: PLC0415

        try:
            extra["measure_latency"] = (device_latency.adb_latency() if args.adb else
                                        device_latency.command_latency(args.measure_command))
        except ValueError as err:
            raise CliError(str(err)) from None
    pruned, report = tfsynapse.prune_to_budget(
        model, **budget, **extra, quantize=quantize, representative_dataset=calibration,
        float_layers=args.float_layers, criterion=args.criterion, sensitivity=table,
        round_to=args.round_to, max_pruning_ratio=args.max_pruning_ratio, data=x,
        return_report=True, verbose=1)  # progress lines and the report
    if args.plot:
        try:
            print(f"wrote {report.plot(args.plot)}")
        except (ImportError, OSError) as err:  # the model is still saved
            print(f"warning: the search plot was not written: {one_line(err)}", file=sys.stderr)
    return pruned, f"budget {_describe(budget)}"


def _check_plot(path):
    """Refuses a --plot that cannot be written, before the search runs."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("--plot needs matplotlib: pip install matplotlib (or drop --plot)")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise CliError(f"--plot {path!r}: give a .png file path in an existing folder")


def _describe(budget):
    (kind, value), = budget.items()
    unit = {"macs": "MACs", "params": "parameters", "size_bytes": "bytes", "latency_ms": "ms"}[kind]
    return f"{value:.4g} {unit}" if kind == "latency_ms" else f"{value:,.0f} {unit}"
