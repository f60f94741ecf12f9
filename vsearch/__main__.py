"""``python -m vsearch COMMAND ...``: the same CLI as ``vsearch`` (the DAG's Beam tasks use it)."""

import sys

from vsearch.cli import main

sys.exit(main())
