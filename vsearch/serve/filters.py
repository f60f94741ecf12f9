"""What a search filter means: parsed from request parameters, checked against attributes.

Semantics (exact: every returned listing satisfies the filter):

* ``category``: a taxonomy prefix matched on whole path segments: ``home`` matches ``home`` and
  ``home/decor/vases`` but not ``homeware``.
* ``color``, ``shape``, ``material``: the listing's value equals the given value.
* Comparison ignores case and surrounding spaces. Several values for one field (repeated
  parameters or ``a,b``) mean any of them; different fields must all hold.
* A listing whose attribute is unknown (null) never satisfies a filter on that attribute.
* Any other field name is an error (the caller answers 400), never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FIELDS = ("category", "color", "shape", "material")
MAX_VALUES = 32  # values per field: a filter is a short list, not a bulk id set


class FilterError(ValueError):
    """A filter the service cannot apply; the message names the field."""


@dataclass(frozen=True)
class Filter:
    category: tuple[str, ...] = ()
    color: tuple[str, ...] = ()
    shape: tuple[str, ...] = ()
    material: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.category or self.color or self.shape or self.material)

    def fields(self) -> dict[str, tuple[str, ...]]:
        return {f: getattr(self, f) for f in FIELDS if getattr(self, f)}

    def key(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Hashable and order-independent (the mask cache key)."""
        return tuple((f, tuple(sorted(v))) for f, v in self.fields().items())


def normalise(value: str) -> str:
    return value.strip().lower()


def parse(params: Iterable[tuple[str, str]]) -> Filter:
    """``[("color", "red"), ("category", "home/decor")]`` -> Filter; FilterError if unknown."""
    values: dict[str, list[str]] = {f: [] for f in FIELDS}
    for name, raw in params:
        if name not in values:
            raise FilterError(f"unknown filter field {name!r}; known: {', '.join(FIELDS)}")
        for part in raw.split(","):
            v = normalise(part).strip("/") if name == "category" else normalise(part)
            if not v:
                raise FilterError(f"filter {name!r} has an empty value")
            values[name].append(v)
        if len(values[name]) > MAX_VALUES:
            raise FilterError(f"filter {name!r} has more than {MAX_VALUES} values")
    return Filter(**{f: tuple(dict.fromkeys(v)) for f, v in values.items()})


def mask(f: Filter, columns: dict[str, pa.Array]) -> np.ndarray:
    """Which rows satisfy ``f``; ``columns`` holds normalised (lower-case) attribute strings."""
    n = len(columns["category"])
    keep = np.ones(n, dtype=bool)
    for name, wanted in f.fields().items():
        col = columns.get(name)
        if col is None:
            raise FilterError(f"filter {name!r} is not available for this index")
        hit = np.zeros(n, dtype=bool)
        for v in wanted:
            if name == "category":
                m = pc.or_(pc.equal(col, v), pc.starts_with(col, v + "/"))
            else:
                m = pc.equal(col, v)
            hit |= pc.fill_null(m, False).to_numpy(zero_copy_only=False)
        keep &= hit
    return keep
