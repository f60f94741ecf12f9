"""Command lines built from settings dataclasses, so that flags and defaults cannot drift.

Each field of a settings dataclass is one flag: ``--field-name`` (or ``doc(flag=...)``), its help
from ``doc(...)`` with the default appended, its parser from the field's type:

=============================  ==============================================================
``str`` / ``int`` / ``float``  one value; a float must be finite (``nan``/``inf`` are refused)
``dt.date``                    ``YYYY-MM-DD``, the same message in every command
``bool``                       ``--flag`` (default False) or ``--flag/--no-flag`` (default True)
``X | None``                   as ``X``; absent means None
``tuple[X, ...]``              repeatable (``--allowed-bucket A --allowed-bucket B``)
``doc(parse=f)``               ``f(text)`` (a ValueError is a usage error naming the flag)
a nested settings dataclass    its fields become flags too (a ``*_bytes`` int takes 16G, 512M)
=============================  ==============================================================

Flags are strict. A Beam stage hands what is not its own flag to Beam, but only Beam pipeline
options (``--runner``, ``--project``, ``--direct_num_workers`` ...): anything else, such as a
misspelt flag, is a usage error (exit 2), never silently dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from core.settings import parse_date

BEAM_EPILOG = (
    "Beam pipeline options (e.g. --runner DataflowRunner --project P --region R "
    "--temp_location gs://B/tmp, --direct_num_workers 2) may follow; any other unknown flag is "
    "an error."
)
DEBUG_HELP = "print the full traceback of an error (default: one line)"


class UsageError(ValueError):
    """A bad command line; the CLI prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are exceptions (one line at the CLI boundary, exit 2), so
    that a backfill or a DAG task parsing a stage's flags fails the stage, not the process."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _memory(text: str) -> int:
    from index.factory import parse_memory

    return parse_memory(text)


_SCALARS: dict[Any, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: _finite_float,
    dt.date: parse_date,
}


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser whose ValueError reads as ``argument --flag: <message>`` in the usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, TypeError) as e:
            if parse is int:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
            if parse is _finite_float and "finite" not in str(e):
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _unwrap_optional(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag_name(f: dataclasses.Field[Any]) -> str:
    name = f.metadata.get("flag", f.name.replace("_", "-"))
    if "flag" not in f.metadata and f.name.endswith("_bytes"):
        name = name.removesuffix("-bytes")
    return f"--{name}"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, path: tuple[str, ...], dests: dict[str, Any]
) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            _add_fields(parser, tp, (*path, f.name), dests)
            continue
        dest = "__".join((*path, f.name))
        default = _default(f)
        dests[dest] = (f, default)
        if f.metadata.get("cli") is False:  # set by the command itself, not a flag
            continue
        help_ = f.metadata.get("help", f"{cls.__name__}.{f.name}")
        if f.metadata.get("positional"):  # e.g. query's IMAGE...: a tuple takes one or more
            nargs = "+" if typing.get_origin(tp) is tuple else None
            metavar = f.metadata.get("metavar", f.name.upper())
            choices = f.metadata.get("choices")  # e.g. finish's STAGE: one of these
            parser.add_argument(dest, nargs=nargs, metavar=metavar, help=help_, choices=choices)
            continue
        kw: dict[str, Any] = {"dest": dest, "metavar": f.metadata.get("metavar")}
        if not any(default is v for v in (dataclasses.MISSING, None, False)) and default != ():
            help_ += f" (default: {_show(default)})"
        if tp is bool:
            kw.pop("metavar")
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
            kw["default"] = default
        else:
            parse = f.metadata.get("parse")
            origin = typing.get_origin(tp)
            repeat = origin is tuple and (parse is None or f.metadata.get("repeat", False))
            if parse is None:
                item = typing.get_args(tp)[0] if origin is tuple else tp
                if item is int and f.name.endswith("_bytes"):
                    parse = _memory
                elif item in _SCALARS:
                    parse = _SCALARS[item]
                else:
                    raise TypeError(f"{cls.__name__}.{f.name}: no flag parser for {tp}")
            kw["type"] = _checked(parse)
            if kw["metavar"] is None and parse in (int, _finite_float):
                kw["metavar"] = "N" if parse is int else "X"
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            if repeat:
                kw["action"], kw["default"] = "append", None
            elif default is dataclasses.MISSING:
                kw["required"] = True
            else:
                kw["default"] = default
        parser.add_argument(_flag_name(f), help=help_, **kw)


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ",".join(f"{k}={v}" for k, v in value)
    return str(value)


def _build(
    cls: type, namespace: dict[str, Any], dests: dict[str, Any], path: tuple[str, ...]
) -> Any:
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            kwargs[f.name] = _build(tp, namespace, dests, (*path, f.name))
            continue
        dest = "__".join((*path, f.name))
        value = namespace.get(dest, dests[dest][1])
        if isinstance(value, list):  # a repeatable flag given at least once
            value = tuple(value)
        elif value is None and dests[dest][1] not in (dataclasses.MISSING, None):
            value = dests[dest][1]  # a repeatable flag not given: the field's default
        kwargs[f.name] = value
    return cls(**kwargs)


class Command:
    """One command line: a settings dataclass (plus optional positionals) -> settings."""

    def __init__(
        self,
        prog: str,
        settings: type,
        description: str = "",
        *,
        beam: bool = False,
        extra: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> None:
        self.prog, self.settings, self.beam = prog, settings, beam
        self.parser = Parser(
            prog=prog,
            description=description,
            epilog=BEAM_EPILOG if beam else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # --ful must not silently mean --full
        )
        self._dests: dict[str, Any] = {}
        _add_fields(self.parser, settings, (), self._dests)
        if extra is not None:
            extra(self.parser)
        self.parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)

    def parse(
        self, argv: Sequence[str], given: Mapping[str, Any] | None = None
    ) -> tuple[Any, list[str], argparse.Namespace]:
        """-> (settings, Beam pipeline args, the raw namespace for command-only flags).

        ``given``: typed values of top-level fields that a caller already has (a backfill's
        date, an earlier stage's result); their flags become optional and a flag given in
        ``argv`` still wins.
        """
        for action in self.parser._actions:
            if given and action.dest in given:
                action.required = False
                action.default = given[action.dest]
        ns, rest = self.parser.parse_known_args(list(argv))
        if rest and not self.beam:
            self.parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if rest:
            unknown = unknown_beam_args(rest)
            if unknown:
                self.parser.error(
                    f"unrecognized arguments: {' '.join(unknown)} "
                    "(neither a flag of this command nor a Beam pipeline option)"
                )
        try:
            settings = _build(self.settings, vars(ns), self._dests, ())
        except UsageError:
            raise
        except ValueError as e:  # a settings check (__post_init__) is a usage error too
            self.parser.error(str(e))
        return settings, rest, ns


def unknown_beam_args(args: Sequence[str]) -> list[str]:
    """The args that no Beam PipelineOptions class defines (Beam would drop them with a warning)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():  # as PipelineOptions.get_all_options does
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(args))
    return list(unknown)
