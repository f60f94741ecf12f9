"""``vsearch demo``: the whole pipeline on a generated catalog, on the local filesystem.

Day 1 runs every stage (preprocess, train, gate, full embed, build-index, publish); day 2 is the
incremental day (new, changed and removed listings: embed only what changed, rebuild, publish).
Then held-out buyer review photos (listings of the eval split, never trained on) are searched
against the published index, and the results are printed and written as an HTML page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import time
from dataclasses import dataclass, field

from core import paths, pointers, runs, storage
from core.settings import doc
from vsearch.stages import DAILY_STAGES, DayRun, run_day

START = dt.date(2026, 1, 1)
DAY2_STAGES = ("embed", "build-index", "publish")


# Below this the eval split (20 %) holds too few buyer review photos for the gate's comparison
# with the same-run baselines to be more than noise (two standard errors of ~0.1 at ~90 queries).
MIN_LISTINGS = 300


@dataclass(frozen=True)
class DemoSettings:
    workdir: str = field(default="demo-output", metadata=doc("where everything is written"))
    # Enough for retrieval to be fine-grained; trains in a few minutes on 2 cores.
    listings: int = field(default=800, metadata=doc(f"catalog size (at least {MIN_LISTINGS})"))
    seed: int = field(default=7, metadata=doc("catalog seed"))
    # Printed one by one; recall@10 is measured on every held-out review photo.
    queries: int = field(default=8, metadata=doc("queries printed one by one"))
    epochs: int | None = field(  # None: the train stage's default
        default=None, metadata=doc("training epochs (default: train's default)")
    )
    # A few broken images, to show the dead-letter path.
    corrupt_fraction: float = field(
        default=0.005, metadata=doc("fraction of catalog images written broken")
    )

    def __post_init__(self) -> None:
        if self.listings < MIN_LISTINGS:
            held_out = int(self.listings * 0.2)
            raise ValueError(
                f"--listings {self.listings} is too small to train anything useful: the eval split "
                f"would hold ~{held_out} listings, too few review photos for the gate to tell a "
                f"model from the same-run baselines; use --listings {MIN_LISTINGS} or more"
            )


@dataclass(frozen=True)
class QueryResult:
    review_uri: str
    true_listing: str
    rank: int | None  # 1-based rank of the true listing, None if not in the top k
    top: list[tuple[str, float, str, str]]  # (listing_id, score, category, image_uri)
    # The part of the photo searched (fractions of the photo as seen): the whole photo, or the
    # box the model's localiser found the item in.
    box: tuple[float, ...] | None = None


def _log(msg: str, t0: float) -> None:
    print(f"[demo +{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def run(settings: DemoSettings) -> dict[str, object]:
    """Run the demo end to end; returns the figures it printed (for tests)."""
    from synthetic.generate import generate_catalog
    from vsearch.evaluation.report import summary_lines
    from vsearch.evaluation.simulate import simulate_loop

    t0 = time.perf_counter()
    workdir = storage.normalize(settings.workdir)
    catalog = storage.join(workdir, "catalog")
    pipeline_workdir = storage.join(workdir, "work")
    # The demo owns its folder: start from scratch so completion markers of an earlier run
    # do not turn this run into a no-op.
    storage.delete_prefix(catalog)
    storage.delete_prefix(pipeline_workdir)
    _log(f"generating a catalog of {settings.listings} listings over 2 days in {catalog}", t0)
    generate_catalog(
        catalog,
        listings=settings.listings,
        days=2,
        seed=settings.seed,
        start_date=START,
        corrupt_fraction=settings.corrupt_fraction,
    )
    day1, day2 = START, START + dt.timedelta(days=1)
    stage_args = {"train": ("--epochs", str(settings.epochs))} if settings.epochs else {}

    def event(msg: str) -> None:
        _log(msg, t0)

    run_day(
        DayRun(catalog, pipeline_workdir, day1, stage_args=stage_args), DAILY_STAGES, on_event=event
    )
    run_day(
        DayRun(catalog, pipeline_workdir, day2, stage_args=stage_args), DAY2_STAGES, on_event=event
    )

    _log("searching the published index with held-out buyer review photos", t0)
    results = query_held_out(catalog, pipeline_workdir, day2)
    recall10 = sum(r.rank is not None and r.rank <= 10 for r in results) / max(len(results), 1)
    # The human-evaluation loop with no person in it: sample queries, two SIMULATED raters answer
    # from the generated catalog's ground truth, report (docs/evaluation.md).
    _log("human evaluation with a SIMULATED rater: eval-sample, eval-simulate, eval-report", t0)
    loop = simulate_loop(pipeline_workdir, catalog, day2.isoformat(), queries=24, raters=2)
    human = summary_lines(json.loads(storage.read_text(loop["report_json"])))
    report = _report(settings, catalog, pipeline_workdir, day1, day2, results, recall10)
    report += "\nhuman evaluation (SIMULATED raters, catalog ground truth):\n" + "\n".join(
        f"  {line}" for line in human
    )
    report += f"\n  report: {loop['report_html']}"
    page = storage.join(workdir, "results.html")
    storage.write_text(page, _html(results[: max(settings.queries * 3, 24)], recall10))
    print(report)
    print(f"results page: {page}")
    _log("done", t0)
    return {
        "recall_at_10": recall10,
        "queries": len(results),
        "page": page,
        "human_eval_report": loop["report_json"],
    }


def query_held_out(catalog: str, workdir: str, date: dt.date) -> list[QueryResult]:
    """Search with every review photo of an eval-split listing still in the day's snapshot."""
    from core.catalog import is_eval_listing, resolve_image_uri
    from core.snapshot import read_snapshot
    from search.photo_search import PhotoSearch

    snapshot = read_snapshot(catalog, date)
    listed = {listing.listing_id for listing in snapshot.listings}
    reviews = [
        r for r in snapshot.reviews if r.listing_id in listed and is_eval_listing(r.listing_id)
    ]
    from search.per_photo import embed_each

    searcher = PhotoSearch.open(workdir)
    out: list[QueryResult] = []
    batch = 64
    for i in range(0, len(reviews), batch):
        chunk = reviews[i : i + batch]
        embedded = embed_each(searcher, [storage.read_bytes(r.image_uri) for r in chunk])
        good = embedded.good
        found = embedded.search(searcher.searcher.search_vectors, good, 10)
        for j, boxed in zip(good, found, strict=True):
            hits = [h for h, _ in boxed]
            review = chunk[j]
            ids = [h.listing_id for h in hits]
            rank = ids.index(review.listing_id) + 1 if review.listing_id in ids else None
            top = [  # hits name photos as the catalog does: opened under CATALOG
                (
                    h.listing_id,
                    float(h.score),
                    h.category or "",
                    resolve_image_uri(h.image_uri, catalog),
                )
                for h in hits
            ]
            box = tuple(boxed[0][1]) if boxed else (0.0, 0.0, 1.0, 1.0)  # what found the first
            out.append(QueryResult(review.image_uri, review.listing_id, rank, top, box))
    return out


def _report(
    settings: DemoSettings,
    catalog: str,
    workdir: str,
    day1: dt.date,
    day2: dt.date,
    results: list[QueryResult],
    recall10: float,
) -> str:
    lines = ["", "=== visual-search demo ==="]
    for r in results[: settings.queries]:
        rank = f"rank {r.rank}" if r.rank else "not in top 10"
        lines.append(
            f"query {storage.basename(r.review_uri)} (true listing {r.true_listing}): {rank}"
        )
        for lid, score, cat, _ in r.top[:5]:
            mark = "*" if lid == r.true_listing else " "
            lines.append(f"   {mark} {lid}  {score:.3f}  {cat}")
    lines.append(
        f"review photo -> listing recall@10 over {len(results)} held-out review photos: {recall10:.3f}"
    )
    lines.append("stage counts:")
    for date, stages in ((day1, DAILY_STAGES), (day2, DAY2_STAGES)):
        for stage in stages:
            try:
                s = runs.read_summary(workdir, stage, date)
            except storage.StorageError:
                continue
            extra = {k: v for k, v in s.get("extra", {}).items() if not isinstance(v, dict | list)}
            lines.append(
                f"  {date} {stage:<12} read={s['read']} ok={s['ok']} skipped={s['skipped']} "
                f"dead_lettered={s['dead_lettered']} {s['wall_s']:.1f}s {json.dumps(extra)}"
            )
    version = pointers.read_pointer(paths.published_model_pointer(workdir)).value or "?"
    lines += [
        "outputs:",
        f"  catalog:       {catalog}",
        f"  model:         {paths.model_dir(workdir, version)}",
        f"  embeddings:    {paths.embeddings_root(workdir, version)} (Parquet)",
        f"  index:         {pointers.read_pointer(paths.current_index_pointer(workdir)).value}",
        f"  dead letters:  {storage.join(workdir, 'deadletter')}",
        f"  run summaries: {storage.join(workdir, 'runs')}",
    ]
    return "\n".join(lines)


def _thumb(uri: str) -> str:
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError:
        return ""
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data).decode()}" width="96">'


def _query_cell(r: QueryResult) -> str:
    """The buyer photo with the part that found the first result outlined (the localiser's box)."""
    box = ""
    if r.box and r.box != (0.0, 0.0, 1.0, 1.0):
        x0, y0, x1, y1 = (100 * v for v in r.box)
        box = (
            f"<div class='box' style='left:{x0:.1f}%;top:{y0:.1f}%;"
            f"width:{x1 - x0:.1f}%;height:{y1 - y0:.1f}%'></div>"
        )
    found = "whole photo" if not box else "the outlined box"
    return (
        f"<td class='q'><div class='photo'>{_thumb(r.review_uri)}{box}</div>"
        f"<br>true {html.escape(r.true_listing)}<br><small>found by {found}</small></td>"
    )


def _html(results: list[QueryResult], recall10: float) -> str:
    rows = []
    for r in results:
        cells = [_query_cell(r)]
        for lid, score, cat, uri in r.top:
            cls = "hit" if lid == r.true_listing else ""
            cells.append(
                f"<td class='{cls}'>{_thumb(uri)}<br>{html.escape(lid)}<br>{score:.3f}<br>"
                f"<small>{html.escape(cat)}</small></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"""<!doctype html><meta charset="utf-8"><title>visual-search demo</title>
<style>body{{font-family:sans-serif}} td{{text-align:center;vertical-align:top;padding:4px}}
td.q{{background:#eef}} td.hit{{outline:3px solid #2a2}}
.photo{{position:relative;display:inline-block;line-height:0}}
.box{{position:absolute;border:2px solid #f0a;box-sizing:border-box}}</style>
<h1>visual-search demo</h1>
<p>Buyer review photos (left, never seen in training) and the top listings the published index
returned. A pink box on a buyer photo: the part of it (found by the model's localiser) that
found the first result. Green outline: the photo's own listing. Review photo to listing recall@10 over all
held-out review photos: <b>{recall10:.3f}</b>.</p>
<table>{"".join(rows)}</table>
"""
