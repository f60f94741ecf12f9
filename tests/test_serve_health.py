"""``GET /health`` in a real headless browser (Debian's chromium through playwright): stages with
their last run, counts, errors, duration and a sparkline over the days, and the index in service
with its validation recall."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests import serve_fixtures as fx
from vsearch.app.serve.app import create_app
from vsearch.app.serve.command import ServeSettings
from vsearch.core import paths, runs, storage

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
        runs.write_summary(
            workdir, runs.RunSummary("embed", day, ok + dead, ok, dead, wall_s=12.5 + n), echo=False
        )
    runs.write_summary(
        workdir, runs.RunSummary("check-catalog", DAYS[0], 40, 39, 1, wall_s=3.0), echo=False
    )
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
            assert stages.count() == 4  # build-index, check-catalog, embed, gate
            embed = page.locator('#stages tr[data-stage="embed"]')
            cells = embed.locator("td").all_inner_texts()
            # stage, last run, day, read, ok, skipped, dead-lettered, errors, duration, sparkline
            assert cells[0] == "embed" and cells[2] == "2026-01-03"
            assert cells[3:7] == ["120", "120", "0", "0"] and cells[8] == "14.5"
            assert cells[1].startswith(runs.dt.date.today().isoformat()[:4])  # a timestamp
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
