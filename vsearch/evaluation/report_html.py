"""The report as one self-contained HTML page: an inline SVG chart and the worst queries as pictures.

Thumbnails are embedded as small JPEG data URIs (decoded safely, letterboxed), so the page opens
from anywhere (a laptop, a bucket, an e-mail attachment) with no server and no external file.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from core import images, storage
from vsearch.evaluation.pages import grade_legend
from vsearch.evaluation.ratings import GRADE_COLOURS, LABELS, display_grade
from vsearch.evaluation.task import RatingTask

THUMB = 96
# Models (and the side by side's wins and losses) get colours of their own: green, amber and red
# mean grades (ratings.GRADE_COLOURS) and nothing else.
_MODEL_COLOUR = ("#1565c0", "#6a1b9a")
_TIE_COLOUR = "#cfd8dc"


def thumbnail_data_uri(uri: str, size: int = THUMB) -> str | None:
    """A JPEG data URI of the photo, or None when it cannot be read or decoded."""
    from PIL import Image

    try:
        pixels = images.decode_image(storage.read_bytes(uri), size)
    except (storage.StorageError, images.ImageError):
        return None
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, border: str, title: str, cls: str = "") -> str:
    src = thumbnail_data_uri(uri)
    t = html.escape(title)
    style = f'style="border-color:{border}"'
    if src is None:
        return f'<div class="missing {cls}" {style} title="{t}">image missing</div>'
    return f'<img class="{cls}" src="{src}" {style} title="{t}" alt="{t}">'


def _chart(report: dict[str, Any]) -> str:
    """Grouped bars (both precisions and nDCG at k, per model) with 95 % bootstrap whiskers."""
    from vsearch.evaluation.report import LENIENT, STRICT

    k = report["k"]
    metrics = {
        f"precision_relevant_at_{k}": f"precision@{k} {STRICT}",
        f"precision_relevant_or_partly_at_{k}": f"precision@{k} {LENIENT}",
        f"ndcg_at_{k}": f"nDCG@{k}",
    }
    models = list(report["metrics"])
    w, h, pad, bar = 680, 220, 40, 36
    parts = [f'<svg width="{w}" height="{pad + h + 60}" role="img" aria-label="metrics chart">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = pad + h - tick * h
        parts.append(f'<line x1="{pad}" x2="{w - 10}" y1="{y}" y2="{y}" stroke="#eee"/>')
        parts.append(f'<text x="4" y="{y + 4}" font-size="11">{tick:.2f}</text>')
    for mi, (metric, name) in enumerate(metrics.items()):
        gx = pad + 20 + mi * 210
        parts.append(f'<text x="{gx}" y="{pad + h + 20}" font-size="12">{html.escape(name)}</text>')
        for vi, v in enumerate(models):
            m = report["metrics"][v][metric]
            if m["mean"] is None:
                continue
            x = gx + vi * (bar + 8)
            top = pad + h - m["mean"] * h
            colour = _MODEL_COLOUR[vi % 2]
            parts.append(
                f'<rect x="{x}" y="{top:.1f}" width="{bar}" height="{m["mean"] * h:.1f}" '
                f'fill="{colour}"><title>{html.escape(v)}: {m["mean"]:.3f}</title></rect>'
            )
            lo, hi = pad + h - m["ci_low"] * h, pad + h - m["ci_high"] * h
            cx = x + bar / 2
            parts.append(f'<line x1="{cx}" x2="{cx}" y1="{lo:.1f}" y2="{hi:.1f}" stroke="#000"/>')
    for vi, v in enumerate(models):
        parts.append(
            f'<rect x="{pad + vi * 210}" y="{pad + h + 34}" width="12" height="12" '
            f'fill="{_MODEL_COLOUR[vi % 2]}"/><text x="{pad + vi * 210 + 16}" y="{pad + h + 45}" '
            f'font-size="12">{html.escape(v)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _sbs(sbs: dict[str, Any]) -> str:
    n = max(1, sbs["queries_compared"])
    w = 460
    segs, x = [], 0.0
    colours = (("wins", _MODEL_COLOUR[0]), ("ties", _TIE_COLOUR), ("losses", _MODEL_COLOUR[1]))
    for key, colour in colours:
        width = sbs[key] / n * w
        segs.append(
            f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="24" fill="{colour}">'
            f"<title>{key}: {sbs[key]}</title></rect>"
        )
        x += width
    verdict = (
        "the candidate LOSES significantly"
        if sbs["candidate_loses_significantly"]
        else "the candidate wins significantly"
        if sbs["candidate_wins_significantly"]
        else "no significant difference"
    )
    return (
        f"<h2>Blind side by side</h2><p>{html.escape(sbs['candidate'])} (candidate) vs "
        f"{html.escape(sbs['baseline'])}: <b>{sbs['wins']}</b> wins, <b>{sbs['ties']}</b> ties, "
        f"<b>{sbs['losses']}</b> losses over {sbs['queries_compared']} queries; sign test "
        f"p = {sbs['p_value']:.4f} (alpha {sbs['alpha']}): <b>{verdict}</b>. A win is drawn in "
        "the candidate's colour, a loss in the baseline's.</p>"
        f'<svg width="{w}" height="24" role="img" aria-label="wins ties losses">{"".join(segs)}</svg>'
    )


def _result_cell(uri: str, listing: str, category: str | None, grades: list[int]) -> str:
    """A result's thumbnail, its border in the colour of its grade (dashed: raters disagree)."""
    mean = sum(grades) / len(grades)
    labels = ", ".join(LABELS[g] for g in sorted(grades, reverse=True))
    disagree = len(set(grades)) > 1
    title = f"{listing} {category}: {labels}" + (f" (mean {mean:.2f})" if disagree else "")
    colour = GRADE_COLOURS[display_grade(mean)]
    return _img(uri, colour, title, "disagree" if disagree else "")


def _known(p: dict[str, Any]) -> str:
    if p.get("known_relevant") is None:
        return ""
    rank = p.get("known_relevant_rank")
    return "<br>own listing " + (f"at {rank}" if rank else "<b>missed</b>")


def _worst(report: dict[str, Any], task: RatingTask, n: int) -> str:
    version = report["candidate"]
    per_query = sorted(
        report["metrics"][version]["per_query"],
        key=lambda p: (p["ndcg"], p["precision_relevant"]),
    )
    rows = []
    for p in per_query[:n]:
        q = task.query(p["query_id"])
        cells = [_img(task.photo_uri(q.image_uri), "#000", f"query ({q.kind} photo) {q.category}")]
        for r, grades in zip(q.results[version][: task.k], p["rater_grades"], strict=False):
            cells.append(
                _result_cell(task.photo_uri(r.image_uri), r.listing_id, r.category, grades)
            )
        rows.append(
            f"<div class='row'><div class='meta'>{html.escape(q.query_id)}<br>{html.escape(q.category)}"
            f"<br>nDCG {p['ndcg']:.2f} P {p['precision_relevant']:.2f}{_known(p)}</div>"
            f"{''.join(cells)}</div>"
        )
    return f"<h2>Worst queries of {html.escape(version)}</h2>" + (
        "".join(rows) or "<p>none rated</p>"
    )


def render(report: dict[str, Any], task: RatingTask, worst: int = 5) -> str:
    from vsearch.evaluation.report import LENIENT, STRICT, summary_lines

    banner = (
        '<p class="sim">SIMULATED RATINGS: answers from the generated catalog\'s ground truth '
        "(same listing = relevant, same category = partly), not from a person.</p>"
        if report["simulated"]
        else ""
    )
    raters = (
        ", ".join(
            f"{html.escape(r['name'])} ({r['ratings']}{', simulated' if r['simulated'] else ''})"
            for r in report["raters"]
        )
        or "none yet"
    )
    lines = "".join(
        f'<li class="warn">{html.escape(line)}</li>'
        if line.startswith("WARNING")
        else f"<li>{html.escape(line)}</li>"
        for line in summary_lines(report)
    )
    k = report["k"]
    sbs = _sbs(report["side_by_side"]) if report["side_by_side"] else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Human evaluation {html.escape(report["task_id"])}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1400px}} .sim{{background:#fff3cd;padding:.6em;border:2px solid #f9a825;font-weight:bold}}
.row{{display:flex;gap:4px;align-items:center;margin:6px 0}} .row img,.missing{{width:{THUMB}px;height:{THUMB}px;border:4px solid;}}
.row .disagree{{border-style:dashed}} .warn{{background:#fff3cd;border:2px solid #f9a825;padding:.4em}}
.missing{{display:flex;align-items:center;justify-content:center;font-size:11px;background:#eee}} .meta{{width:140px;font-size:12px}}
</style></head><body>
<h1>Human evaluation: {html.escape(report["task_id"])}</h1>{banner}
<p>Snapshot {html.escape(report["date"])}, top {report["k"]}; {report["ratings"]} ratings of
{report["results_to_rate"]} results; raters: {raters}.</p>
<ul>{lines}</ul>
<p style="font-size:12px">precision@{k} {STRICT}: the share of the top {k} that raters called
{STRICT}; {LENIENT}: called either. nDCG@{k}: gains 2/1/0; the ideal is the best order of every
result known for the query (both lists' rated results and a review photo's own listing), so a list
that missed the photo's own listing scores below 1.</p>
{_chart(report)}
{sbs}
{_worst(report, task, worst)}
<p style="font-size:12px">Border: {grade_legend()}; dashed: the raters disagree (the colour is the
mean grade's nearest, a tie going to the lower grade).</p>
</body></html>
"""
