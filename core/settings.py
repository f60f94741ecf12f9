"""Help text and parsing hints for the fields of settings dataclasses (the CLI is built from them).

Every stage and command has a frozen settings dataclass; each field that is a flag carries its
help in ``field(metadata=doc("..."))``, so the command line (``vsearch.flags``), the
defaults and the documentation come from one place and cannot drift. This module is the
foundation layer: settings modules of every layer use it without importing argparse or
TensorFlow (``vsearch STAGE --help`` must answer without it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from core.paths import parse_date


def doc(
    help: str,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    positional: bool = False,
) -> Mapping[str, Any]:
    """Field metadata for a flag: its help; optionally its name (without ``--``, default: the
    field name with dashes), a parser from the command-line string (default: from the field's
    type), allowed values, the placeholder shown in usage, whether a ``parse``d tuple field is
    given once per item (``--floor a=1 --floor b=2``), and whether it is a positional argument."""
    meta: dict[str, Any] = {"help": help}
    if flag is not None:
        meta["flag"] = flag
    if parse is not None:
        meta["parse"] = parse
    if choices is not None:
        meta["choices"] = choices
    if metavar is not None:
        meta["metavar"] = metavar
    if repeat:
        meta["repeat"] = True
    if positional:
        meta["positional"] = True
    return meta


def iso_date(value: str) -> str:
    """A date flag kept as its ``YYYY-MM-DD`` string (settings whose date is a string)."""
    return parse_date(value).isoformat()


# The flags every stage shares, written once.
CATALOG = doc("catalog root URI holding dt=YYYY-MM-DD/ snapshots (local path or gs://)")
WORKDIR = doc("working directory URI: every output of the pipeline goes under it")
DATE = doc("the snapshot date, YYYY-MM-DD", metavar="YYYY-MM-DD")
DATE_STR = doc("the snapshot date, YYYY-MM-DD", parse=iso_date, metavar="YYYY-MM-DD")
ALLOWED_BUCKETS = doc(
    "a gs:// bucket that image URIs may point into besides the catalog root (repeatable)",
    flag="allowed-bucket",
    metavar="BUCKET",
)
