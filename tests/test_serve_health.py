"""``GET /health`` in a real headless browser (Debian's chromium through playwright): what is
wrong first (a failed run, a stage that did not run for the day), the gate's verdict, stages
with their status, last run ("N hours ago"), counts, every distinct error with its count,
duration and an activity sparkline (read = ok + skipped + dead-lettered) over the days, and the
index in service with its validation recall. Run summaries are written by ``core.runs``
as the stages write them."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from core import paths, runs, storage
from tests import serve_fixtures as fx
from vsearch.serve.app import create_app
from vsearch.serve.command import ServeSettings

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")


def write_runs(workdir: str) -> None:
    """Three days of embed runs (day 2 with dead letters), a check-catalog run, a broken gate."""
    for n, day in enumerate(DAYS):
        dead = 2 if day == "2026-01-02" else 0
        ok = 100 + 10 * n
        runs.complete(workdir, runs.RunSummary("embed", day, ok + dead, ok, dead, wall_s=12.5 + n))
    runs.complete(workdir, runs.RunSummary("check-catalog", DAYS[0], 40, 39, 1, wall_s=3.0))
    for stage, day, error in (
        ("embed", DAYS[1], "not an image: unknown format"),
        ("check-catalog", DAYS[0], "image_uris: empty image_uris"),
    ):
        records = [{"listing_id": "L1", "uri": "x", "stage": stage, "error": error}] * (
            2 if stage == "embed" else 1
        )
        storage.write_text(
            storage.join(paths.deadletter_dir(workdir, stage, day), "part-0.jsonl"),
            "".join(json.dumps(r) + "\n" for r in records),
        )
    broken = paths.run_summary(workdir, "gate", DAYS[2])
    os.makedirs(os.path.dirname(broken), exist_ok=True)
    Path(broken).write_text("{not json")


def test_health_page_in_a_headless_browser(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    workdir, catalog, _ = fx.make_served_workdir(str(tmp_path))
    write_runs(workdir)
    settings = ServeSettings(workdir=workdir, catalog=catalog, poll_s=0.2)
    with fx.LiveServer(create_app(settings)) as url:
        fx.wait_ready(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            response = page.goto(f"{url}/health")
            assert response is not None and response.status == 200
            assert page.title() == "vsearch health"
            stages = page.locator("#stages tr.stage")
            assert stages.count() == 7  # the six daily stages, then check-catalog
            embed = page.locator('#stages tr[data-stage="embed"]')
            cells = embed.locator("td").all_inner_texts()
            # stage, status, last ran, day, read, ok, skipped, dead-lettered, errors, duration,
            # sparkline
            assert cells[:2] == ["embed", "ok"] and cells[3] == "2026-01-03"
            assert cells[4:8] == ["120", "120", "0", "0"] and cells[9] == "14.5"
            assert cells[2].startswith("just now")
            spark = embed.locator("svg.spark")
            assert spark.is_visible()
            points = spark.locator("polyline").get_attribute("points") or ""
            assert len(points.split()) == 3  # one point per day
            assert spark.locator("circle.flag").count() == 1  # day 2 had dead letters
            box = spark.bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 10
            # Errors: the dead-letter reasons, and an unreadable summary shown, not hidden.
            catalog_row = page.locator('#stages tr[data-stage="check-catalog"]')
            assert "image_uris: empty image_uris (1)" in catalog_row.inner_text()
            assert (
                "unreadable summary" in page.locator('#stages tr[data-stage="gate"]').inner_text()
            )
            days = page.locator("#days tr").count()
            assert days == 1 + 3 + 1 + 1 + 1  # header, embed x3, check-catalog, gate, build-index
            index = page.locator("#index").inner_text()
            assert "20260101T000000Z-aaaaaa" in index and "20260101-tiny" in index
            assert "validation recall@10\t1.0000" in index
            assert "no-match threshold" in index and "review photos" in index
            page.screenshot(path=str(tmp_path / "health.png"), full_page=True)
            browser.close()


# ------------------------------------------------------------ what an operator must see at once

D1, D2, D3 = "2026-02-01", "2026-02-02", "2026-02-03"
LONG_ERROR = (
    "listing image images/L7/0.png: cannot decode: the file ends after 512 of 48,210 bytes "
    "(truncated upload?); the stage read it twice from the bucket and got the same bytes both "
    "times, so the object itself is short"
)
EMBED_ERRORS = {  # error -> how many photos had it on day 3
    LONG_ERROR: 4,
    "not an image: unknown format": 3,
    "embedding is NaN or zero (model output)": 2,
    "listing image outside the catalog: gs://elsewhere/x.png": 1,
}


def _finished(workdir: str, stage: str, day: str, hours_ago: float) -> None:
    """The clock moved on: ``stage`` finished ``hours_ago`` hours before now."""
    uri = paths.run_summary(workdir, stage, day)
    summary = json.loads(storage.read_text(uri))
    when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
    summary["finished_at"] = when.isoformat(timespec="seconds")
    storage.write_text(uri, json.dumps(summary))


def write_three_days(workdir: str) -> None:
    """Day 1 full, day 2 incremental (mostly skipped), day 3: embed failed on dead letters, so
    build-index and publish did not run; check-catalog (optional) ran on day 1 only."""
    gate = {
        "promoted": False,
        "candidate": "20260203-cand",
        "published": "20260101-tiny",
        "reasons": [
            "retrieval_recall_at_10 0.7100 vs published 0.7300: gain -0.0200 < margin 0.0000",
            "keep the published model",
        ],
    }
    for day in (D1, D2, D3):
        runs.complete(workdir, runs.RunSummary("preprocess", day, 40, 40, 0, wall_s=9.0))
        runs.complete(workdir, runs.RunSummary("train", day, 40, 40, 0, wall_s=60.0))
        runs.complete(workdir, runs.RunSummary("gate", day, 1, 1, 0, extra=gate))
        if day != D3:
            skipped = 0 if day == D1 else 38  # day 2: the catalog barely changed
            embed = runs.RunSummary("embed", day, 40, 40 - skipped, 0, skipped, wall_s=5.0)
            runs.complete(workdir, embed)
            runs.complete(workdir, runs.RunSummary("build-index", day, 40, 40, 0, wall_s=2.0))
            runs.complete(workdir, runs.RunSummary("publish", day, 1, 1, 0, wall_s=0.2))
    runs.complete(workdir, runs.RunSummary("check-catalog", D1, 40, 40, 0, wall_s=3.0))
    # Day 3's embed: too many dead letters, so it records its summary but does not complete.
    dead = sum(EMBED_ERRORS.values())
    runs.write_summary(workdir, runs.RunSummary("embed", D3, 40, 40 - dead, dead, wall_s=5.0))
    records = [
        {"listing_id": f"L{i}", "uri": "x", "stage": "embed", "error": error}
        for error, n in EMBED_ERRORS.items()
        for i in range(n)
    ]
    storage.write_text(
        storage.join(paths.deadletter_dir(workdir, "embed", D3), "part-0.jsonl"),
        "".join(json.dumps(r) + "\n" for r in records),
    )
    for stage, hours in (("preprocess", 5), ("train", 3), ("gate", 2), ("embed", 1)):
        _finished(workdir, stage, D3, hours)


def test_health_page_says_what_is_wrong(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    workdir, catalog, _ = fx.make_served_workdir(str(tmp_path))
    write_three_days(workdir)
    settings = ServeSettings(workdir=workdir, catalog=catalog, poll_s=0.2)
    with fx.LiveServer(create_app(settings)) as url:
        fx.wait_ready(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            response = page.goto(f"{url}/health")
            assert response is not None and response.status == 200

            # First thing on the page: the failed run and the stages that did not run today.
            problems = page.locator("#problems li").all_inner_texts()
            assert problems == [
                f"embed: failed for {D3}: the run did not complete; 10 of 40 dead-lettered",
                f"build-index: has not run for {D3} (its last run is for {D2})",
                f"publish: has not run for {D3} (its last run is for {D2})",
            ]
            assert page.locator("#problems").is_visible()

            def row(stage: str) -> Any:
                return page.locator(f'#stages tr[data-stage="{stage}"]')

            def cells(stage: str) -> list[str]:
                return [c.strip() for c in row(stage).locator("td").all_inner_texts()]

            # The failed and the missing rows stand out (red); healthy rows do not.
            for stage in ("embed", "build-index", "publish"):
                assert "bad" in (row(stage).get_attribute("class") or "")
                colour = row(stage).evaluate("e => getComputedStyle(e).backgroundColor")
                assert colour == "rgb(253, 236, 234)", (stage, colour)
            for stage in ("preprocess", "train", "gate", "check-catalog"):
                assert "bad" not in (row(stage).get_attribute("class") or "")
            # check-catalog is optional: that it last ran on day 1 is not a problem.
            assert cells("check-catalog")[1] == "ok"

            # "last ran N hours ago", then the time itself.
            assert cells("preprocess")[2].startswith("5 hours ago")
            assert cells("gate")[2].startswith("2 hours ago")
            assert cells("embed")[2].startswith("1 hour ago")

            # The gate's verdict, with its reasons in full.
            assert cells("gate")[1] == "ok: not promoted"
            verdict = page.locator("#gate").inner_text()
            assert "NOT promoted: the published model stays" in verdict
            assert "20260203-cand" in verdict and "20260101-tiny" in verdict
            assert "gain -0.0200 < margin 0.0000" in verdict

            # Every distinct error with its count, most frequent first, none cut short or hidden.
            errors = row("embed").locator("ul.errors li")
            assert errors.all_inner_texts() == [f"{e} ({n})" for e, n in EMBED_ERRORS.items()]
            long_item = errors.first
            assert long_item.is_visible()
            clipped = long_item.evaluate("e => e.scrollWidth > e.clientWidth")
            assert clipped is False
            box = long_item.bounding_box()  # wrapped onto several lines, not one endless line
            assert box is not None and box["width"] < 700 and box["height"] > 30

            # Activity is what was read: the incremental day 2 is as busy as day 1, not a collapse.
            spark = row("embed").locator("svg.spark")
            # (the served index's own build, by the fixture, is a day earlier: no embed that day)
            assert spark.get_attribute("aria-label") == "read per day: -, 40, 40, 40"
            assert spark.locator("circle.flag").count() == 1  # day 3 failed
            day2 = page.locator("#days tr", has_text=D2).filter(has_text="embed")
            d2 = [c.strip() for c in day2.locator("td").all_inner_texts()]
            # day, stage, status, finished, read, ok, skipped, dead-lettered, duration, errors
            assert d2[:3] == [D2, "embed", "ok"] and d2[4:8] == ["40", "2", "38", "0"]
            page.screenshot(path=str(tmp_path / "health-wrong.png"), full_page=True)
            browser.close()


DAILY = ("preprocess", "train", "gate", "embed", "build-index", "publish")


def _levels(workdir: str, now: dt.datetime | None = None) -> dict[str, tuple[str, str]]:
    from vsearch.serve import health

    found = health.read_runs(workdir, 14)
    return {
        stage: (st.level, st.text)
        for stage, st in health.statuses(found, now or dt.datetime.now(dt.UTC)).items()
    }


def test_a_pipeline_that_stopped_running_stands_out(tmp_path: Path) -> None:
    """Nothing ran since yesterday morning: every daily stage is stale, not "ok"."""
    workdir = str(tmp_path)
    for stage in DAILY:
        runs.complete(workdir, runs.RunSummary(stage, D1, 4, 4, 0))
    assert set(_levels(workdir).values()) == {("ok", "ok"), ("ok", "ok: not promoted")}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=30)
    assert set(_levels(workdir, later).values()) == {("bad", "stale: last ran 30 hours ago")}


def test_a_day_without_retraining_is_healthy_but_a_chain_that_stopped_is_not(
    tmp_path: Path,
) -> None:
    workdir = str(tmp_path)
    for stage in DAILY:
        runs.complete(workdir, runs.RunSummary(stage, D1, 40, 40, 0))
    # Day 2 re-embeds incrementally with the published model, no preprocess/train/gate (the
    # demo's second day, or a team that retrains weekly): nothing is wrong.
    for stage in DAILY[3:]:
        runs.complete(workdir, runs.RunSummary(stage, D2, 40, 1, 0, skipped=39))
    levels = _levels(workdir)
    assert {stage: level for stage, (level, _) in levels.items()} == dict.fromkeys(DAILY, "ok")
    # Day 3 started (preprocess ran) and stopped: every later daily stage has not run for it.
    runs.complete(workdir, runs.RunSummary("preprocess", D3, 40, 40, 0))
    levels = _levels(workdir)
    assert levels["preprocess"] == ("ok", "ok")
    assert levels["train"] == ("bad", f"has not run for {D3} (its last run is for {D1})")
    assert levels["publish"] == ("bad", f"has not run for {D3} (its last run is for {D2})")
