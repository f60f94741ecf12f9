"""The Flex Template entry point of the image (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

Dataflow's template launcher runs this file with the template's parameters as ``--name=value``
flags. One image serves every Beam stage, so one parameter names the stage and the rest are its
flags and Beam's pipeline options, exactly as ``vsearch STAGE ...`` takes them:

    --stage=embed --catalog=gs://... --workdir=gs://... --date=2026-12-04 --runner=DataflowRunner ...

becomes ``vsearch embed --catalog=gs://... ...``. A template parameter is always a value, so a
switch arrives as ``--full=true``: it becomes ``--full`` (``--full=false`` is dropped). Nothing
else happens here: the CLI is the one place that maps names to stages. The launcher also passes
``--template_location``: preprocess and embed then only describe their job and exit, and the day
is finished after the job by ``vsearch finish STAGE`` (pipelines/job_record.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _switch(arg: str) -> list[str]:
    """``--name=true`` -> ``--name``; ``--name=false`` -> nothing; any other flag unchanged."""
    name, eq, value = arg.partition("=")
    if eq and name.startswith("--") and value.lower() in ("true", "false"):
        return [name] if value.lower() == "true" else []
    return [arg]


def to_cli_args(argv: Sequence[str]) -> list[str]:
    """``--stage=NAME`` (or ``--stage NAME``) moved to the front as the command; switches given
    as ``--name=true|false`` turned into the CLI's form; the rest kept."""
    args = [a for arg in argv for a in _switch(arg)]
    for i, arg in enumerate(args):
        if arg.startswith("--stage="):
            return [arg.split("=", 1)[1], *args[:i], *args[i + 1 :]]
        if arg == "--stage" and i + 1 < len(args):
            return [args[i + 1], *args[:i], *args[i + 2 :]]
    raise SystemExit("flex_launch: the template needs a --stage parameter (e.g. --stage=embed)")


def main(argv: Sequence[str] | None = None) -> int:
    from vsearch.cli import main as cli_main

    return cli_main(to_cli_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
