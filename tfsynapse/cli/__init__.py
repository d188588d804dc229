"""The ``tfsynapse`` command: one module per concern.

* ``command``: the parser, the subcommands and ``main``;
* ``args``: parsing of amounts, budgets and lists;
* ``files``: reading models and data files, writing results;
* ``budget``: ``prune --target-*`` (``prune_to_budget``);
* ``finetune``: ``prune --data/--finetune-epochs``.

Nothing here imports TensorFlow until a subcommand needs it, so ``tfsynapse --help`` is fast.
"""

from tfsynapse.cli.command import CliError, build_parser, main

__all__ = ["CliError", "build_parser", "main"]
