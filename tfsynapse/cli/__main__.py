"""``python -m tfsynapse.cli``: the command-line interface (see ``tfsynapse --help``)."""

import sys

from tfsynapse.cli import main

sys.exit(main())
