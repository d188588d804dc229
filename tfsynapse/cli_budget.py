"""``tfsynapse prune --target-macs/--target-params/--target-size``: prune to a budget.

The command-line face of ``tfsynapse.prune_to_budget``: the budget flags, the precision and
calibration of a file-size budget, an optional sensitivity table, and the report printed.
"""

from tfsynapse.cli_files import CliError, load_calibration, require_input

TARGET_FLAGS = ("target_macs", "target_params", "target_size", "target_latency")


def add_arguments(parser, target_group):
    """Adds the budget flags to the ``prune`` parser (the budgets to its target group)."""
    from tfsynapse.cli_args import amount, byte_size, milliseconds  # noqa: PLC0415

    target_group.add_argument("--target-macs", type=amount, metavar="N",
                              help="prune until the shrunk model needs at most N MACs per "
                                   "sample (e.g. 150M)")
    target_group.add_argument("--target-params", type=amount, metavar="N",
                              help="prune until it holds at most N parameters (e.g. 1.5M)")
    target_group.add_argument("--target-size", type=byte_size, metavar="BYTES",
                              help="prune until its .tflite file (in --quantize precision) is "
                                   "at most this large (e.g. 2MB); converts and measures")
    target_group.add_argument("--target-latency", type=milliseconds, metavar="MS",
                              help="not available yet (measured latency budgets come next)")
    parser.add_argument("--quantize", choices=("none", "dynamic", "float16", "int8"),
                        default="none", help="--target-size: the precision of the file")
    parser.add_argument("--calibration", metavar="FILE.npy",
                        help="--target-size with --quantize int8: representative inputs")
    parser.add_argument("--sensitivity", metavar="TABLE.json",
                        help="with a --target-*: a sensitivity table (SensitivityTable.to_json "
                             "of this model) to spend the budget where it costs least accuracy; "
                             "default: one ratio for every group")


def wanted(args):
    """Whether the command line asks for a budget."""
    return any(getattr(args, name, None) is not None for name in TARGET_FLAGS)


def check(args):
    """Refuses flags that only a budget uses when no budget is given, and the reverse."""
    if wanted(args):
        if args.target_latency is not None:
            raise CliError("--target-latency is not available yet: give --target-macs (latency "
                           "follows MACs closely for shrunk models) or --target-size")
        if args.granularity != "filter" or args.scope != "layer":
            raise CliError("a --target-* budget prunes filters per group: drop --granularity "
                           "and --scope")
        quantize = None if args.quantize == "none" else args.quantize
        if quantize is not None and args.target_size is None:
            raise CliError("--quantize only changes a --target-size budget")
        if quantize == "int8" and args.calibration is None:
            raise CliError("--target-size with --quantize int8 needs --calibration FILE.npy")
        if args.calibration is not None and quantize != "int8":
            raise CliError("--calibration is only used with --target-size and --quantize int8")
        return
    for flag, value in (("--quantize", args.quantize != "none"),
                        ("--calibration", args.calibration is not None),
                        ("--sensitivity", args.sensitivity is not None)):
        if value:
            raise CliError(f"{flag} needs a budget: --target-macs, --target-params or "
                           "--target-size")


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
        table = tfsynapse.SensitivityTable.from_json(require_input(args.sensitivity,
                                                                   "sensitivity table"))
    budget = {"macs": args.target_macs, "params": args.target_params,
              "size_bytes": args.target_size}
    budget = {k: v for k, v in budget.items() if v is not None}
    print(f"pruning to a budget of {_describe(budget)} ({'sensitivity' if table else 'uniform'} "
          "allocation; a file-size budget converts and measures each candidate)", flush=True)
    pruned = tfsynapse.prune_to_budget(
        model, **budget, quantize=quantize, representative_dataset=calibration,
        criterion=args.criterion, sensitivity=table, round_to=args.round_to,
        max_pruning_ratio=args.max_pruning_ratio, data=x, verbose=1)  # progress and report
    return pruned, f"budget {_describe(budget)}"


def _describe(budget):
    (kind, value), = budget.items()
    unit = {"macs": "MACs", "params": "parameters", "size_bytes": "bytes"}[kind]
    return f"{value:,.0f} {unit}"
