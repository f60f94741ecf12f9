"""One codec for the typed results that stages return: to JSON (an Airflow XCom, a log line) and
back, and back from the stage's run summary. No result class decodes itself.

A stage records its result in its run summary (``core.runs``): the counts every summary has
(``read``, ``ok``, ``dead_lettered``, ``skipped``, ``wall_s``) at the top level, every other
field in ``extra`` under the field's name, or under the key its ``summary_key`` metadata names
(``field(metadata={"summary_key": "manifest"})``). So a resumed backfill, the DAG and the health
page read a result back the same way for every stage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

SUMMARY_KEY = "summary_key"
_COUNTS = ("read", "ok", "dead_lettered", "skipped", "wall_s")


def to_json(result: Any) -> dict[str, Any]:
    """A result as plain JSON values (dates as ISO strings, tuples as lists)."""
    return dict(json.loads(json.dumps(dataclasses.asdict(result), default=str)))


def from_json(cls: type[T], value: Mapping[str, Any]) -> T:
    """The typed result back from ``to_json`` (or any mapping with its fields)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in value:
            kwargs[f.name] = _typed(hints[f.name], value[f.name])
        elif not _has_default(f):
            raise KeyError(f"{cls.__name__}: no value for {f.name!r}")
    return cls(**kwargs)


def from_summary(cls: type[T], summary: Mapping[str, Any]) -> T:
    """The result a stage returned, read back from the run summary it wrote."""
    extra = summary.get("extra") or {}
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get(SUMMARY_KEY, f.name)
        if key in _COUNTS and key in summary:
            found[f.name] = summary[key]
        elif key in extra:
            found[f.name] = extra[key]
        elif not _has_default(f):
            stage = summary.get("stage", "?")
            raise KeyError(f"the {stage} run summary has no {key!r} for {cls.__name__}")
    return from_json(cls, found)


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _typed(tp: Any, v: Any) -> Any:
    """``v`` (a JSON value) as type ``tp``: nested results, tuples, dates, optionals."""
    if v is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], v) if len(inner) == 1 else v
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_json(tp, v)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_typed(args[0], x) for x in v)
        return tuple(_typed(a, x) for a, x in zip(args, v, strict=True)) if args else tuple(v)
    if tp is dt.date:
        return dt.date.fromisoformat(v) if isinstance(v, str) else v
    if tp in (int, float, str, bool):
        return tp(v)
    return v
