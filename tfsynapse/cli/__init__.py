"""The ``tfsynapse`` command: one module per concern.

* ``command``: the subcommands and ``main``;
* ``parser``: the argument parser, one function per subcommand;
* ``args``: parsing of amounts, budgets and lists;
* ``files``: reading models and data files, writing results;
* ``budget``: ``prune --target-*`` (``prune_to_budget``);
* ``finetune``: ``prune --data/--finetune-epochs``.

Nothing here imports TensorFlow until a subcommand needs it, so ``tfsynapse --help`` is fast.
"""

from tfsynapse.cli.command import CliError, main
from tfsynapse.cli.parser import build_parser

__all__ = ["CliError", "build_parser", "main"]
