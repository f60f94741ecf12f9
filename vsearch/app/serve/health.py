"""``GET /health``: the operators' page, server-rendered HTML with inline SVG (no scripts).

Per stage: the last run (finish time, day, counts read / ok / skipped / dead-lettered, the most
frequent dead-letter errors, duration) and a sparkline of ``ok`` over the last N days (a red dot
marks a day with dead letters); then every stage run of those days; then the index in service
with its validation recall and no-match threshold. Runs come from ``WORKDIR/runs/dt=D/STAGE.json``
(``vsearch.core.runs``); a summary that cannot be read is shown as an error, not skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from html import escape
from typing import Any

from vsearch.app.serve.holder import ServedIndex
from vsearch.core import deadletter, paths, storage


@dataclass(frozen=True)
class StageRun:
    stage: str
    day: str
    summary: dict[str, Any] | None  # None: unreadable
    problem: str | None = None
    errors: tuple[tuple[str, int], ...] = ()  # most frequent dead-letter errors


def read_runs(workdir: str, days: int) -> list[StageRun]:
    """Stage runs of the last ``days`` days that have runs, newest day first."""
    root = storage.parent(storage.parent(paths.run_summary(workdir, "x", "x")))
    found = storage.glob(storage.join(root, "dt=*", "*.json"))
    by_day: dict[str, list[str]] = {}
    for uri in found:
        by_day.setdefault(storage.basename(storage.parent(uri))[3:], []).append(uri)
    out: list[StageRun] = []
    for day in sorted(by_day, reverse=True)[:days]:
        for uri in sorted(by_day[day]):
            stage = storage.basename(uri)[: -len(".json")]
            try:
                summary = dict(json.loads(storage.read_text(uri)))
            except (storage.StorageError, ValueError) as e:
                out.append(StageRun(stage, day, None, f"unreadable summary {uri}: {e}"))
                continue
            errors: tuple[tuple[str, int], ...] = ()
            if summary.get("dead_lettered"):
                reasons = Counter(
                    str(r.get("error", "?"))[:80]
                    for r in deadletter.read_dead_letters(workdir, stage, day)
                )
                errors = tuple(reasons.most_common(3))
            out.append(StageRun(stage, day, summary, None, errors))
    return out


def sparkline(
    values: list[float | None], marks: list[bool], width: int = 140, height: int = 28
) -> str:
    """Inline SVG, oldest day left: a line and a dot per known value (scaled min..max), a red
    dot where ``marks`` (dead letters or an unreadable summary; at the baseline if no value)."""
    known = [v for v in values if v is not None]
    low, high = (min(known), max(known)) if known else (0.0, 1.0)
    step = (width - 6) / max(1, len(values) - 1)

    def xy(i: int, v: float | None) -> tuple[float, float]:
        if v is None:
            return round(3 + i * step, 1), height - 3
        share = (v - low) / (high - low) if high > low else 0.5
        return round(3 + i * step, 1), round(height - 3 - (height - 6) * share, 1)

    pts = [xy(i, v) for i, v in enumerate(values) if v is not None]
    line = " ".join(f"{x},{y}" for x, y in pts)
    dots = "".join(f'<circle cx="{x}" cy="{y}" r="1.8" fill="#2c7be5"/>' for x, y in pts)
    dots += "".join(
        f'<circle class="flag" cx="{xy(i, v)[0]}" cy="{xy(i, v)[1]}" r="2.8" fill="#c0392b"/>'
        for i, (v, m) in enumerate(zip(values, marks, strict=True))
        if m
    )
    label = ", ".join("-" if v is None else f"{v:g}" for v in values)
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="ok per day: {label}"><title>ok per day: {label}</title>'
        f'<polyline fill="none" stroke="#2c7be5" stroke-width="1.5" points="{line}"/>{dots}</svg>'
    )


def _ok(run: StageRun | None) -> float | None:
    return float(run.summary.get("ok", 0)) if run is not None and run.summary else None


def _flagged(run: StageRun) -> bool:
    return run.summary is None or bool(run.summary.get("dead_lettered"))


def _num(s: dict[str, Any] | None, key: str) -> str:
    return "" if s is None else escape(str(s.get(key, "")))


def _errors(run: StageRun) -> str:
    if run.problem:
        return f'<span class="bad">{escape(run.problem)}</span>'
    return "<br>".join(f"{escape(e)} ({n})" for e, n in run.errors)


def _index_section(served: ServedIndex | None, last_error: str | None) -> str:
    if served is None:
        return f'<p class="bad" id="index">No index in service. {escape(last_error or "")}</p>'
    m = served.photos.manifest
    v = m.validation
    c = served.calibration
    rows = [
        ("build", m.build_id),
        ("model version", m.model_version),
        ("manifest", served.manifest_uri),
        ("index", f"{m.factory}, {m.ntotal} vectors, {len(m.shards)} shard(s), dim {m.dim}"),
        (
            "validation recall@10",
            f"{v.recall_at_10:.4f} on {v.sample_size} queries" if v else "none",
        ),
        ("latency p50 / p99", f"{v.latency_ms_p50:.2f} / {v.latency_ms_p99:.2f} ms" if v else ""),
        ("attributes", served.attributes.source),
        (
            "no-match threshold",
            f"{c.threshold} ({c.method})" if c.threshold is not None else c.method,
        ),
        ("loaded at", served.loaded_at),
    ]
    if last_error:
        rows.append(("last refusal", last_error))
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(x))}</td></tr>" for k, x in rows)
    return f'<table id="index"><caption>Index in service</caption>{body}</table>'


STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
caption{text-align:left;font-weight:600;padding:4px 0}td.n{text-align:right}.bad{color:#c0392b}
"""


def render(workdir: str, served: ServedIndex | None, last_error: str | None, days: int) -> str:
    runs = read_runs(workdir, days)
    all_days = sorted({r.day for r in runs})
    stages = sorted({r.stage for r in runs})
    latest: dict[str, StageRun] = {}
    for r in runs:  # newest day first: the first seen is the latest
        latest.setdefault(r.stage, r)
    head = (
        "<tr><th>stage</th><th>last run</th><th>day</th><th>read</th><th>ok</th><th>skipped</th>"
        "<th>dead-lettered</th><th>errors</th><th>duration (s)</th>"
        f"<th>ok, last {len(all_days)} day(s)</th></tr>"
    )
    rows = []
    for stage in stages:
        r = latest[stage]
        s = r.summary
        per_day = {x.day: x for x in runs if x.stage == stage}
        values = [_ok(per_day.get(d)) for d in all_days]
        marks = [d in per_day and _flagged(per_day[d]) for d in all_days]
        rows.append(
            f'<tr class="stage" data-stage="{escape(stage)}"><td>{escape(stage)}</td>'
            f"<td>{_num(s, 'finished_at')}</td><td>{escape(r.day)}</td>"
            + "".join(
                f'<td class="n">{_num(s, key)}</td>'
                for key in ("read", "ok", "skipped", "dead_lettered")
            )
            + f'<td>{_errors(r)}</td><td class="n">{_num(s, "wall_s")}</td>'
            f"<td>{sparkline(values, marks)}</td></tr>"
        )
    daily = "".join(
        f"<tr><td>{escape(r.day)}</td><td>{escape(r.stage)}</td><td>{_num(r.summary, 'finished_at')}</td>"
        + "".join(
            f'<td class="n">{_num(r.summary, key)}</td>'
            for key in ("read", "ok", "skipped", "dead_lettered", "wall_s")
        )
        + f"<td>{_errors(r)}</td></tr>"
        for r in runs
    )
    stage_table = (
        f'<table id="stages"><caption>Stages</caption>{head}{"".join(rows)}</table>'
        if rows
        else '<p id="stages">No stage runs under runs/ yet.</p>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>vsearch health</title><style>{STYLE}</style></head><body>"
        f"<h1>vsearch health</h1><p>workdir {escape(workdir)}</p>"
        f"{_index_section(served, last_error)}{stage_table}"
        '<table id="days"><caption>Runs per stage and day</caption><tr><th>day</th><th>stage</th>'
        "<th>finished</th><th>read</th><th>ok</th><th>skipped</th><th>dead-lettered</th>"
        f"<th>duration (s)</th><th>errors</th></tr>{daily}</table></body></html>"
    )
