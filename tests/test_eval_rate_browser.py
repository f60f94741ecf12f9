"""The rating page in a real headless browser (Debian chromium via playwright) on a real server."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.eval_helpers import BROWSER_ARGS, catalog_task, serving
from vsearch.evaluation.ratings import RatingStore
from vsearch.evaluation.server import RateSettings, create_app
from vsearch.evaluation.task import read_task

CANDIDATE, BASELINE = "20260102-candidate", "20260101-published"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        yield b
        b.close()


def _rated_classes(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.grade || '')")


def test_keyboard_ratings_survive_a_reload_and_resume(
    tiny_catalog: str, tmp_path: Path, browser
) -> None:  # type: ignore[no-untyped-def]
    task_uri = catalog_task(tiny_catalog, str(tmp_path / "w"), (CANDIDATE,), queries=3, k=4)
    task = read_task(task_uri)
    with serving(create_app(RateSettings(task_uri))) as url:
        page = browser.new_page()
        page.goto(f"{url}/?rater=alice")
        assert page.url.endswith("/q/0")
        assert page.locator(".card").count() == 4
        page.keyboard.press("1")  # relevant, focus moves on
        page.keyboard.press("2")  # partly
        page.keyboard.press("3")  # not
        page.wait_for_function("document.getElementById('rated').textContent === '3'")
        assert "3 / 12" in page.inner_text("header")

        # Stored before the browser was told: on disk, keyed by (rater, query, listing).
        q0 = task.queries[0]
        mine = RatingStore(task_uri).of_rater("alice")
        ids = [r.listing_id for r in q0.results[CANDIDATE]]
        assert [mine[(q0.query_id, lid)].grade for lid in ids[:3]] == [2, 1, 0]

        # Change one (k moves back up), then reload: the page shows what is stored.
        page.keyboard.press("k")
        page.keyboard.press("1")
        page.wait_for_function("document.querySelectorAll('.card')[2].dataset.grade === '2'")
        page.reload()
        assert _rated_classes(page) == ["2", "1", "2", ""]
        assert "3 / 12" in page.inner_text("header")
        assert len(RatingStore(task_uri).of_rater("alice")) == 3  # a change is not a new rating

        # Finish the query; a new session (closed browser) resumes at the next unrated query.
        page.keyboard.press("3")
        page.wait_for_function("document.getElementById('rated').textContent === '4'")
        page.close()
        ctx = browser.new_context()
        fresh = ctx.new_page()
        fresh.goto(f"{url}/?rater=alice")
        assert fresh.url.endswith("/q/1")
        fresh.keyboard.press("n")
        fresh.wait_for_url("**/q/2")
        fresh.keyboard.press("p")
        fresh.wait_for_url("**/q/1")
        ctx.close()


def test_two_raters_at_once_keep_their_own_ratings(
    tiny_catalog: str, tmp_path: Path, browser
) -> None:  # type: ignore[no-untyped-def]
    task_uri = catalog_task(tiny_catalog, str(tmp_path / "w"), (CANDIDATE,), queries=3, k=4)
    with serving(create_app(RateSettings(task_uri))) as url:
        a_ctx, b_ctx = browser.new_context(), browser.new_context()
        a, b = a_ctx.new_page(), b_ctx.new_page()
        a.goto(f"{url}/?rater=alice")
        b.goto(f"{url}/?rater=bob")
        for _ in range(4):  # interleaved: alice says relevant, bob says not, result by result
            a.keyboard.press("1")
            b.keyboard.press("3")
        a.wait_for_function("document.getElementById('rated').textContent === '4'")
        b.wait_for_function("document.getElementById('rated').textContent === '4'")
        # The cookie keeps each browser's rater: a plain reload of "/" resumes as that rater.
        a.goto(f"{url}/")
        assert a.url.endswith("/q/1") and "alice" in a.inner_text("header")
        a_ctx.close()
        b_ctx.close()
    store = RatingStore(task_uri).all()
    assert sorted(store) == ["alice", "bob"]
    assert {r.grade for r in store["alice"].values()} == {2}
    assert {r.grade for r in store["bob"].values()} == {0}


def test_side_by_side_is_blind(tiny_catalog: str, tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    task_uri = catalog_task(tiny_catalog, str(tmp_path / "w"), (CANDIDATE, BASELINE), queries=4)
    task = read_task(task_uri)
    assert {q.sides[0] for q in task.queries} == {CANDIDATE, BASELINE}  # left is not fixed
    with serving(create_app(RateSettings(task_uri, rater="carol"))) as url:
        page = browser.new_page()
        page.goto(f"{url}/q/0")
        html = page.content()
        assert "List A" in html and "List B" in html
        assert CANDIDATE not in html and BASELINE not in html
        q = task.queries[0]
        left = [
            c
            for c in page.eval_on_selector_all(
                ".lists > section:first-child .card", "cs=>cs.map(c=>c.dataset.listing)"
            )
        ]
        assert left == [r.listing_id for r in q.results[q.sides[0]]]
        page.close()


def test_bad_task_file_is_a_clear_message_not_a_traceback(tmp_path: Path, browser, caplog) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "eval" / "t" / "task.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    caplog.set_level(logging.ERROR, logger="vsearch.rate")
    with serving(create_app(RateSettings(str(bad)))) as url:
        page = browser.new_page()
        response = page.goto(f"{url}/?rater=alice")
        assert response is not None and response.status == 503
        message = page.inner_text("#error")
        assert "bad rating task" in message and str(bad) in message
        assert "Traceback" not in page.content()
        page.close()
        assert httpx.post(f"{url}/api/rate", json={}).status_code == 503
    assert any(
        "bad rating task" in r.getMessage() and str(bad) in r.getMessage() for r in caplog.records
    )


def test_missing_image_is_shown_as_missing_and_logged(
    tiny_catalog: str, tmp_path: Path, browser, caplog
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    catalog = str(tmp_path / "catalog")
    shutil.copytree(tiny_catalog, catalog)
    task_uri = catalog_task(catalog, str(tmp_path / "w"), (CANDIDATE,), queries=3, k=4)
    task = read_task(task_uri)
    gone = task.queries[0].results[CANDIDATE][1].image_uri
    os.remove(gone)
    caplog.set_level(logging.WARNING, logger="vsearch.rate")
    with serving(create_app(RateSettings(task_uri, rater="dave"))) as url:
        page = browser.new_page()
        page.goto(f"{url}/q/0")
        page.wait_for_selector(".card .missing")
        assert page.locator(".card .missing").count() == 1
        page.close()
        n = task.image_uris().index(gone)
        r = httpx.get(f"{url}/img/{n}")
        assert r.status_code == 404 and gone in r.text and "Traceback" not in r.text
        # Only images of the task are served, by position: anything else is a plain 404.
        assert httpx.get(f"{url}/img/99999").status_code == 404
        assert httpx.get(f"{url}/img/..%2F..%2Fetc%2Fpasswd").status_code == 404
        assert httpx.get(f"{url}/img/0").headers["content-type"] == "image/jpeg"
    assert any(gone in rec.getMessage() for rec in caplog.records)


def _rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_card_borders_and_buttons_follow_the_grade_scale(
    tiny_catalog: str, tmp_path: Path, browser
) -> None:  # type: ignore[no-untyped-def]
    from vsearch.evaluation.ratings import GRADE_COLOURS, UNRATED_COLOUR

    task_uri = catalog_task(tiny_catalog, str(tmp_path / "w"), (CANDIDATE,), queries=3, k=4)
    with serving(create_app(RateSettings(task_uri, rater="erin"))) as url:
        page = browser.new_page()
        page.goto(f"{url}/q/0")
        page.keyboard.press("1")
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.wait_for_function("document.getElementById('rated').textContent === '3'")
        colour = "els => els.map(e => getComputedStyle(e).borderTopColor)"
        # Relevant, partly, not, unrated: the grade scale's colours, live and after a reload.
        expected = [_rgb(GRADE_COLOURS[g]) for g in (2, 1, 0)] + [_rgb(UNRATED_COLOUR)]
        assert page.eval_on_selector_all(".card", colour) == expected
        page.reload()
        assert page.eval_on_selector_all(".card", colour) == expected
        # Each grade's button wears its colour, and the legend on the page says which is which.
        for label, grade in (("relevant", 2), ("partly", 1), ("not", 0)):
            buttons = page.eval_on_selector_all(f"button[data-label={label}]", colour)
            assert set(buttons) == {_rgb(GRADE_COLOURS[grade])}
        legend = page.eval_on_selector_all("p span[style*='border']", colour)
        assert legend == expected
        page.close()


def test_a_person_cannot_rate_as_the_simulated_rater(
    tiny_catalog: str, tmp_path: Path, browser
) -> None:  # type: ignore[no-untyped-def]
    task_uri = catalog_task(tiny_catalog, str(tmp_path / "w"), (CANDIDATE,), queries=3, k=4)
    with serving(create_app(RateSettings(task_uri))) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        page.fill("#rater", "simulated-ground-truth")
        with page.expect_navigation() as nav:
            page.click("button[type=submit]")
        response = nav.value
        assert response is not None and response.status == 403
        assert "reserved for the simulated rater" in page.inner_text("#error")
        assert page.locator("#rater").count() == 1  # the form again, to pick another name
        # A script posting under the name is refused too, and nothing is stored.
        r = httpx.post(
            f"{url}/api/rate",
            json={
                "rater": "simulated-ground-truth",
                "query_id": read_task(task_uri).queries[0].query_id,
                "listing_id": read_task(task_uri).queries[0].results[CANDIDATE][0].listing_id,
                "label": "relevant",
            },
        )
        assert r.status_code == 403 and "reserved" in r.json()["error"]
        page.close()
    assert RatingStore(task_uri).all() == {}
