"""``python -m vsearch COMMAND ...``: the same CLI as ``vsearch`` (the DAG's Beam tasks use it)."""

from vsearch.cli import entry

entry()
