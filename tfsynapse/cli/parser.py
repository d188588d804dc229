"""The ``tfsynapse`` command's parser: one function per subcommand's arguments.

Nothing here imports TensorFlow; ``command.main`` runs the subcommand the parser names
(``args.command``).
"""

import argparse

from tfsynapse.cli import budget as cli_budget
from tfsynapse.cli.args import (
    PROG,
    Parser,
    layer_names,
    learning_rate,
    max_ratio,
    non_negative_int,
    positive_int,
    sparsity,
)

QUANTIZE_CHOICES = ("none", "dynamic", "float16", "int8", "weight_only")
GRANULARITY_CHOICES = ("filter", "connection")
SCOPE_CHOICES = ("layer", "global")


def build_parser():
    """The ``tfsynapse`` argument parser (subcommands inspect, prune, shrink, export, bench)."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of errors")
    debug.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show TensorFlow's native start-up and converter messages "
                            "(hidden by default)")
    parser = Parser(prog=PROG, parents=[debug],
                     description="Structured pruning for tf_keras and Keras 3: inspect, prune, "
                                 "shrink, export to TFLite and benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _add_inspect(sub, debug)
    _add_criteria(sub, debug)
    _add_prune(sub, debug)
    _add_shrink(sub, debug)
    _add_export(sub, debug)
    _add_bench(sub, debug)
    return parser


_MODEL_HELP = "a .keras or .h5 file or a SavedModel directory"
_OUT_HELP = "output: .keras, .h5, or a directory (SavedModel)"


def _add_inspect(sub, debug):
    """``tfsynapse inspect MODEL``."""
    p = sub.add_parser("inspect", parents=[debug], help="dependency groups, MACs and parameters",
                       description="Prints the dependency groups, then MACs and parameters per "
                                   "layer.")
    p.add_argument("model", help=_MODEL_HELP)


def _add_criteria(sub, debug):
    """``tfsynapse criteria``."""
    sub.add_parser("criteria", parents=[debug], help="every importance criterion",
                   description="Lists every criterion (built-in and registered): the "
                               "granularity it scores, what it needs, what it computes.")


def _add_prune(sub, debug):
    """``tfsynapse prune MODEL ...``: one-shot pruning, to a sparsity or a budget."""
    p = sub.add_parser("prune", parents=[debug], help="one-shot structured pruning (zeroes units)",
                       description="Prunes in ONE SHOT, without training (tfsynapse.prune_once), "
                                   "and saves the model with the pruned units zeroed; run "
                                   "'shrink' to remove them. One-shot pruning loses accuracy: "
                                   "give --data x.npy to recalibrate BatchNormalization, "
                                   "--data x.npy,y.npy to see the accuracy before and after, "
                                   "and --finetune-epochs N to fine-tune. For the best accuracy "
                                   "prune during training with the Python API "
                                   "(tfsynapse.prune_synaptic).")
    p.add_argument("model", help=_MODEL_HELP)
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
    p.add_argument("--lr", type=learning_rate, default=None,
                   help="fine-tuning learning rate, with --finetune-epochs (default 1e-4)")
    p.add_argument("-o", "--output", required=True, help=_OUT_HELP)


def _add_shrink(sub, debug):
    """``tfsynapse shrink MODEL -o OUT``."""
    p = sub.add_parser("shrink", parents=[debug], help="remove pruned channels for real",
                       description="Removes the zeroed channels of a pruned model "
                                   "(tfsynapse.shrink).")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("--round-to", type=positive_int, default=1, metavar="N",
                   help="keep channel counts multiples of N (default 1)")
    p.add_argument("-o", "--output", required=True, help=_OUT_HELP)


def _add_export(sub, debug):
    """``tfsynapse export MODEL -o OUT.tflite``."""
    p = sub.add_parser("export", parents=[debug], help="convert to TFLite (builtin ops only)",
                       description="Converts a model to a .tflite file (tflite_export.convert).")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                   help="none (float32, default), dynamic, float16, int8 (needs --calibration) "
                        "or weight_only (--quantizer litert)")
    p.add_argument("--quantizer", choices=("tensorflow", "litert"), default="tensorflow",
                   help="who quantises: TensorFlow's converter (default) or litert-quantizer "
                        "(pip install 'tfsynapse[quantizer]')")
    p.add_argument("--weights", choices=("int8", "int4"), default="int8",
                   help="weight width with --quantizer litert (int4: dynamic or weight_only)")
    p.add_argument("--activations", choices=("int8", "int16"), default="int8",
                   help="activation width with --quantizer litert and --quantize int8")
    p.add_argument("--calibration", metavar="FILE",
                   help="int8 calibration samples: a .npy array (N, ...) or a .npz with one array")
    p.add_argument("--int8-io", action="store_true",
                   help="int8 input and output tensors (int8 only)")
    p.add_argument("--float-layers", type=layer_names, metavar="L1,L2",
                   help="layers kept float32 inside the int8 model (comma-separated names), "
                        "e.g. a 3-channel first convolution that int8 runs slower; 'auto': the "
                        "fewest layers that bring int8 within --float-tolerance of float32")
    p.add_argument("--float-tolerance", type=float, default=0.02, metavar="E",
                   help="with --float-layers auto: relative output error allowed (0.02)")
    p.add_argument("--sparse-weights", action="store_true",
                   help="store sparse (connection-pruned) weights compressed; smaller file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tflite")


def _add_bench(sub, debug):
    """``tfsynapse bench MODEL.tflite``."""
    p = sub.add_parser("bench", parents=[debug], help="time a .tflite model in LiteRT",
                       description="Times one inference on random inputs "
                                   "(tflite_export.benchmark).")
    p.add_argument("model", metavar="MODEL.tflite")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N")
    p.add_argument("--runs", type=positive_int, default=50, metavar="N")
    p.add_argument("--runtime", choices=("interpreter", "compiled_model"), default="interpreter",
                   help="LiteRT's Interpreter (default) or its CompiledModel")
