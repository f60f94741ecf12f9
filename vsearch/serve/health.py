"""``GET /health``: the operators' page, server-rendered HTML with inline SVG (no scripts).

First what is wrong, in words: every stage whose last run failed (its summary has no
completion marker, or cannot be read), and every daily stage due for the newest day with runs
(``statuses``) that has not run for it or last ran more than ``STALE_AFTER`` ago; then the
gate's verdict. Per stage: its status, the last run ("N hours
ago", day, counts read / ok / skipped / dead-lettered, every distinct dead-letter error with its
count, in full, duration) and a sparkline of its activity over the last N days: ``read`` (= ok +
skipped + dead-lettered), so an incremental day that skips most photos is not a collapse (a red
dot marks a day with dead letters or a failed run); then every stage run of those days; then
the index in service with its validation recall and no-match threshold. Runs are production's:
``WORKDIR/runs/dt=D/STAGE.json`` (``core.runs``; a candidate model's runs live apart and
are not shown); a summary that cannot be read is shown as an error, not skipped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from html import escape
from typing import Any

from core import deadletter, runs, storage
from vsearch.serve.holder import ServedIndex
from vsearch.stages import DAILY_STAGES

# A daily stage whose last run finished longer ago than this stands out (a day, plus slack).
STALE_AFTER = dt.timedelta(hours=26)


@dataclass(frozen=True)
class StageRun:
    stage: str
    day: str
    summary: dict[str, Any] | None  # None: unreadable
    problem: str | None = None
    errors: tuple[
        tuple[str, int], ...
    ] = ()  # every distinct dead-letter error, most frequent first
    done: bool = True  # its completion marker exists (a summary without one: the run failed)


def read_runs(workdir: str, days: int) -> list[StageRun]:
    """Production's stage runs of the last ``days`` days that have runs, newest day first."""
    by_day = runs.production_runs(workdir)
    out: list[StageRun] = []
    for day in sorted(by_day, reverse=True)[:days]:
        for stage, rec in sorted(by_day[day].items()):
            try:
                summary = dict(json.loads(storage.read_text(rec.summary_uri)))
            except (storage.StorageError, ValueError) as e:
                problem = f"unreadable summary {rec.summary_uri}: {e}"
                out.append(StageRun(stage, day, None, problem, done=rec.done))
                continue
            errors: tuple[tuple[str, int], ...] = ()
            if summary.get("dead_lettered"):
                reasons = Counter(
                    str(r.get("error", "?"))
                    for r in deadletter.read_dead_letters(workdir, stage, day)
                )
                errors = tuple(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
            out.append(StageRun(stage, day, summary, None, errors, rec.done))
    return out


@dataclass(frozen=True)
class Status:
    level: str  # "ok", "warn" (dead letters) or "bad" (stands out: failed, missing, stale)
    text: str


def ago(finished_at: str | None, now: dt.datetime) -> str:
    """``"5 hours ago"`` for an ISO timestamp; ``""`` when there is none."""
    if not finished_at:
        return ""
    seconds = max(0.0, (now - dt.datetime.fromisoformat(finished_at)).total_seconds())
    if seconds < 60:
        return "just now"
    n, unit = (
        (int(seconds // 60), "minute")
        if seconds < 3600
        else (int(seconds // 3600), "hour")
        if seconds < 48 * 3600
        else (int(seconds // 86400), "day")
    )
    return f"{n} {unit}{'' if n == 1 else 's'} ago"


def status(stage: str, run: StageRun | None, due: str | None, now: dt.datetime) -> Status:
    """What an operator should know about a stage's last run, worst first. ``due``: the day
    this stage should have run for (``statuses``), None when no run is expected of it."""
    if due is not None and (run is None or run.day < due):
        last = f" (its last run is for {run.day})" if run is not None else ""
        return Status("bad", f"has not run for {due}{last}")
    if run is None:
        return Status("ok", "no run recorded")
    s = run.summary
    if s is None:
        return Status("bad", f"failed for {run.day}: its run summary cannot be read")
    dead = int(s.get("dead_lettered", 0) or 0)
    if not run.done:
        why = f"; {dead} of {s.get('read')} dead-lettered" if dead else ""
        return Status("bad", f"failed for {run.day}: the run did not complete{why}")
    finished = s.get("finished_at")
    if due is not None and finished and now - dt.datetime.fromisoformat(finished) > STALE_AFTER:
        return Status("bad", f"stale: last ran {ago(finished, now)}")
    text = "ok"
    if stage == "gate":
        text += ": promoted" if s.get("extra", {}).get("promoted") else ": not promoted"
    return Status("warn", f"{text}, {dead} dead-lettered") if dead else Status("ok", text)


def latest_runs(found: list[StageRun]) -> dict[str, StageRun]:
    """Each stage's latest run (``found`` is newest day first, as ``read_runs`` returns it)."""
    latest: dict[str, StageRun] = {}
    for r in found:
        latest.setdefault(r.stage, r)
    return latest


def statuses(found: list[StageRun], now: dt.datetime) -> dict[str, Status]:
    """Every daily stage (pipeline order), then any other stage that ran, with its status.

    A day's chain starts at the first daily stage that ran for the newest day with runs: from
    there on every daily stage is due for that day (a stage that has not run for it stands out,
    as does one whose run is over ``STALE_AFTER`` old: nothing ran since). The stages before it
    are not due: a day that did not retrain (embed, build-index, publish only) is a normal day.
    """
    latest = latest_runs(found)
    newest = max((r.day for r in found), default=None)
    ran = {r.stage for r in found if r.day == newest}
    first = min((DAILY_STAGES.index(x) for x in ran if x in DAILY_STAGES), default=None)
    due = set(DAILY_STAGES[first:]) if first is not None else set()
    stages = [*DAILY_STAGES, *sorted(set(latest) - set(DAILY_STAGES))]
    return {x: status(x, latest.get(x), newest if x in due else None, now) for x in stages}


def sparkline(
    values: list[float | None], marks: list[bool], width: int = 140, height: int = 28
) -> str:
    """Inline SVG, oldest day left: a line and a dot per known value (scaled min..max), a red
    dot where ``marks`` (dead letters or a failed run; at the baseline if no value)."""
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
        f'role="img" aria-label="read per day: {label}"><title>read per day: {label}</title>'
        f'<polyline fill="none" stroke="#2c7be5" stroke-width="1.5" points="{line}"/>{dots}</svg>'
    )


def _activity(run: StageRun | None) -> float | None:
    """What a run read (= ok + skipped + dead-lettered): an incremental day is not a collapse."""
    return float(run.summary.get("read", 0)) if run is not None and run.summary else None


def _flagged(run: StageRun) -> bool:
    return run.summary is None or not run.done or bool(run.summary.get("dead_lettered"))


def _num(s: dict[str, Any] | None, key: str) -> str:
    return "" if s is None else escape(str(s.get(key, "")))


def _errors(run: StageRun) -> str:
    """Every distinct error with its count, in full (the page wraps long lines, never cuts)."""
    if run.problem:
        return f'<span class="bad">{escape(run.problem)}</span>'
    if not run.errors:
        return ""
    items = "".join(f"<li>{escape(e)} ({n})</li>" for e, n in run.errors)
    return f'<ul class="errors">{items}</ul>'


def _last_ran(s: dict[str, Any] | None, now: dt.datetime) -> str:
    finished = None if s is None else s.get("finished_at")
    if not finished:
        return ""
    return f'{escape(ago(finished, now))}<br><span class="when">{escape(str(finished))}</span>'


def _gate_section(run: StageRun | None) -> str:
    """The gate's last verdict: promoted or not, which models, and its reasons in full."""
    if run is None or run.summary is None:
        return '<p id="gate">No gate verdict recorded.</p>'
    e = run.summary.get("extra", {})
    verdict = (
        "PROMOTED: the candidate is now the published model"
        if e.get("promoted")
        else "NOT promoted: the published model stays"
    )
    rows = [
        ("verdict", escape(verdict)),
        ("day", escape(run.day)),
        ("candidate", escape(str(e.get("candidate", "")))),
        ("published before", escape(str(e.get("published") or "none"))),
        ("reasons", "".join(f"<li>{escape(str(r))}</li>" for r in e.get("reasons", ()))),
    ]
    body = "".join(
        f"<tr><th>{k}</th><td>{f'<ul>{v}</ul>' if k == 'reasons' else v}</td></tr>" for k, v in rows
    )
    level = "ok" if e.get("promoted") else "warn"
    return f'<table id="gate" class="{level}"><caption>Gate verdict</caption>{body}</table>'


def _stage_row(
    stage: str,
    run: StageRun | None,
    st: Status,
    found: list[StageRun],
    all_days: list[str],
    now: dt.datetime,
) -> str:
    """A stage's status, last run and activity sparkline over ``all_days``."""
    s = run.summary if run is not None else None
    per_day = {x.day: x for x in found if x.stage == stage}
    values = [_activity(per_day.get(d)) for d in all_days]
    marks = [d in per_day and _flagged(per_day[d]) for d in all_days]
    return (
        f'<tr class="stage {st.level}" data-stage="{escape(stage)}"><td>{escape(stage)}</td>'
        f'<td class="status {st.level}">{escape(st.text)}</td><td>{_last_ran(s, now)}</td>'
        f"<td>{escape(run.day) if run is not None else ''}</td>"
        + "".join(
            f'<td class="n">{_num(s, key)}</td>'
            for key in ("read", "ok", "skipped", "dead_lettered")
        )
        + f"<td>{_errors(run) if run is not None else ''}</td>"
        f'<td class="n">{_num(s, "wall_s")}</td>'
        f"<td>{sparkline(values, marks) if per_day else ''}</td></tr>"
    )


def _runs_sections(workdir: str, days: int, now: dt.datetime) -> tuple[str, str, str]:
    """(what is wrong, the gate's verdict + the stage table, the table of runs per day)."""
    found = read_runs(workdir, days)
    all_days = sorted({r.day for r in found})
    if not found:
        return "", '<p id="stages">No stage runs under runs/ yet.</p>', ""
    newest, latest, by_stage = all_days[-1], latest_runs(found), statuses(found, now)
    wrong = [(stage, st) for stage, st in by_stage.items() if st.level == "bad"]
    problems = (
        '<ul id="problems" class="bad">'
        + "".join(f"<li>{escape(stage)}: {escape(st.text)}</li>" for stage, st in wrong)
        + "</ul>"
        if wrong
        else f'<p id="problems" class="ok">Nothing failed, missing or stale for {escape(newest)}.</p>'
    )
    head = (
        "<tr><th>stage</th><th>status</th><th>last ran</th><th>day</th><th>read</th><th>ok</th>"
        "<th>skipped</th><th>dead-lettered</th><th>errors</th><th>duration (s)</th>"
        f"<th>activity (read = ok + skipped + dead-lettered), last {len(all_days)} day(s)</th></tr>"
    )
    rows = [
        _stage_row(stage, latest.get(stage), st, found, all_days, now)
        for stage, st in by_stage.items()
    ]
    daily = "".join(
        f"<tr><td>{escape(r.day)}</td><td>{escape(r.stage)}</td>"
        f"<td>{'ok' if r.done and r.summary is not None else 'failed'}</td>"
        f"<td>{_num(r.summary, 'finished_at')}</td>"
        + "".join(
            f'<td class="n">{_num(r.summary, key)}</td>'
            for key in ("read", "ok", "skipped", "dead_lettered", "wall_s")
        )
        + f"<td>{_errors(r)}</td></tr>"
        for r in found
    )
    stage_table = (
        f"{_gate_section(latest.get('gate'))}"
        f'<table id="stages"><caption>Stages</caption>{head}{"".join(rows)}</table>'
    )
    days_table = (
        '<table id="days"><caption>Runs per stage and day</caption><tr><th>day</th><th>stage</th>'
        "<th>status</th><th>finished</th><th>read</th><th>ok</th><th>skipped</th>"
        f"<th>dead-lettered</th><th>duration (s)</th><th>errors</th></tr>{daily}</table>"
    )
    return problems, stage_table, days_table


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
tr.bad{background:#fdecea;color:#222}td.status{min-width:11em}td.status.bad{color:#c0392b;font-weight:600}
tr.warn td.status,#gate.warn tr:first-child td{color:#9a6700;font-weight:600}
#problems.bad{font-weight:600;border-left:4px solid #c0392b;padding:4px 1.5em}
ul{margin:0;padding-left:1.2em}.when{color:#777;font-size:12px}
.errors{min-width:20em;max-width:48em;white-space:pre-wrap;overflow-wrap:break-word}
"""


def render(workdir: str, served: ServedIndex | None, last_error: str | None, days: int) -> str:
    problems, stage_table, days_table = _runs_sections(workdir, days, dt.datetime.now(dt.UTC))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>vsearch health</title><style>{STYLE}</style></head><body>"
        f"<h1>vsearch health</h1><p>workdir {escape(workdir)}</p>{problems}"
        f"{_index_section(served, last_error)}{stage_table}{days_table}</body></html>"
    )
