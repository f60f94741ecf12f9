"""The rating app on a real HTTP server, asked every bad request a browser, a script or a typo can
send: each is a 4xx saying what was wrong and stores nothing; a bad task or rating file is a 503
naming the file; nothing is ever a 500 or a traceback."""

from __future__ import annotations

import html
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import storage
from tests.eval_helpers import hand_task, photo, serving
from vsearch import cli
from vsearch.evaluation.ratings import RatingStore
from vsearch.evaluation.server import MAX_BODY, RateSettings, create_app
from vsearch.evaluation.task import Query, Result

JSON = {"Content-Type": "application/json"}
GOOD = {"rater": "alice", "query_id": "q0", "listing_id": "A0", "label": "relevant"}


def _task(tmp: Path) -> str:
    """Three review-photo queries with three results each (q0: A0 B0 C0, ...), real photos."""
    queries = []
    for i in range(3):
        results = [
            Result(f"{c}{i}", photo(str(tmp / "p" / f"{c}{i}.jpg"), (40 * i, 90, 200)), 0.9, "cat")
            for c in "ABC"
        ]
        image = photo(str(tmp / "p" / f"q{i}.jpg"), (200, 40 * i, 90))
        queries.append(Query(f"q{i}", image, "review", f"own{i}", "cat", "cat", {"vA": results}))
    return hand_task(str(tmp / "w"), queries)


def send(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """The request exactly as written (no client tidies the path): status and the body's text as
    a reader sees it (HTML entities decoded)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, html.unescape(response.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def _json(d: Any) -> bytes:
    return json.dumps(d).encode()


# (method, path, body, headers, status, what the answer says)
BAD: list[tuple[str, str, bytes | None, dict[str, str], int, str]] = [
    # Positions: plain digits within range, nothing else.
    ("GET", "/q/-1", None, {}, 404, "no query '-1' in this task (there are 3: 0-2)"),
    ("GET", "/q/3", None, {}, 404, "no query '3'"),
    ("GET", "/q/abc", None, {}, 404, "no query 'abc'"),
    ("GET", "/q/1.0", None, {}, 404, "no query '1.0'"),
    ("GET", "/q/%201", None, {}, 404, "no query"),
    ("GET", "/q/%EF%BC%91", None, {}, 404, "no query"),  # a full-width digit one
    ("GET", "/q/1_0", None, {}, 404, "no query"),
    ("GET", "/q/" + "9" * 40, None, {}, 404, "no query"),
    ("GET", "/img/-1", None, {}, 404, "no image '-1'"),
    ("GET", "/img/12", None, {}, 404, "no image '12' in this task (there are 12: 0-11)"),
    ("GET", "/img/x", None, {}, 404, "no image 'x'"),
    # Paths that try to leave the app.
    ("GET", "/img/..%2F..%2Fetc%2Fpasswd", None, {}, 404, "Not Found"),
    ("GET", "/q/..%2F..%2Fetc%2Fpasswd", None, {}, 404, "Not Found"),
    ("GET", "/../../etc/passwd", None, {}, 404, "Not Found"),
    ("GET", "/img/%2e%2e", None, {}, 404, "no image '..'"),
    ("GET", "/nope", None, {}, 404, "Not Found: GET /nope"),
    # Rater names in the URL.
    ("GET", "/?rater=..%2F..%2Fetc", None, {}, 400, "rater name '../../etc' must be"),
    ("GET", "/?rater=alice%0A", None, {}, 400, "rater name"),
    ("GET", "/?rater=" + "a" * 41, None, {}, 400, "rater name"),
    ("GET", "/q/0?rater=a%2Fb", None, {}, 400, "rater name"),
    ("GET", "/?rater=simulated-ground-truth", None, {}, 403, "reserved for the simulated rater"),
    ("GET", "/q/1?rater=Simulated-me", None, {}, 403, "reserved for the simulated rater"),
    # Methods.
    ("GET", "/api/rate", None, {}, 405, "Method Not Allowed"),
    ("DELETE", "/q/0", None, {}, 405, "Method Not Allowed"),
    # Rating bodies: JSON objects of four strings, nothing else.
    ("POST", "/api/rate", _json(GOOD), {}, 415, "send the rating as application/json"),
    (
        "POST",
        "/api/rate",
        urllib.parse.urlencode(GOOD).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "not application/x-www-form-urlencoded",
    ),
    ("POST", "/api/rate", _json(GOOD), {"Content-Type": "text/plain"}, 415, "not text/plain"),
    ("POST", "/api/rate", b"{not json", JSON, 400, "the body is not JSON"),
    ("POST", "/api/rate", b"\xff\xfe\x00", JSON, 400, "the body is not JSON"),
    ("POST", "/api/rate", b"[" * 10000, JSON, 400, "the body is not JSON"),
    ("POST", "/api/rate", b"", JSON, 400, "the body is not JSON"),
    ("POST", "/api/rate", b"[]", JSON, 400, "the body must be a JSON object"),
    ("POST", "/api/rate", b"null", JSON, 400, "the body must be a JSON object"),
    ("POST", "/api/rate", b'"alice"', JSON, 400, "the body must be a JSON object"),
    ("POST", "/api/rate", b"{}", JSON, 400, "'rater' must be a string"),
    (
        "POST",
        "/api/rate",
        _json({**GOOD, "rater": {"a": 1}}),
        JSON,
        400,
        "'rater' must be a string",
    ),
    ("POST", "/api/rate", _json({**GOOD, "label": 2}), JSON, 400, "'label' must be a string"),
    ("POST", "/api/rate", _json({**GOOD, "label": "great"}), JSON, 400, "rating must be one of"),
    ("POST", "/api/rate", _json({**GOOD, "rater": "../x"}), JSON, 400, "rater name '../x'"),
    ("POST", "/api/rate", _json({**GOOD, "rater": "alice\n"}), JSON, 400, "rater name"),
    (
        "POST",
        "/api/rate",
        _json({**GOOD, "rater": "simulated-ground-truth"}),
        JSON,
        403,
        "reserved for the simulated rater",
    ),
    ("POST", "/api/rate", _json({**GOOD, "query_id": "qx"}), JSON, 400, "query 'qx' is not in"),
    (
        "POST",
        "/api/rate",
        _json({**GOOD, "query_id": "../../q0"}),
        JSON,
        400,
        "is not in this task",
    ),
    (
        "POST",
        "/api/rate",
        _json({**GOOD, "listing_id": "../../A0"}),
        JSON,
        400,
        "listing '../../A0' is not a result of query q0",
    ),
    ("POST", "/api/rate", _json({**GOOD, "listing_id": "A1"}), JSON, 400, "is not a result"),
    (
        "POST",
        "/api/rate",
        _json({**GOOD, "pad": "x" * MAX_BODY}),
        JSON,
        413,
        f"a rating is at most {MAX_BODY} bytes",
    ),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    task_uri = _task(tmp_path_factory.mktemp("server"))
    with serving(create_app(RateSettings(task_uri))) as url:
        yield url, task_uri


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "says"),
    BAD,
    ids=[f"{m} {p[:40]} {s}" for m, p, _, _, s, _ in BAD],
)
def test_a_bad_request_is_a_clear_4xx_and_stores_nothing(  # type: ignore[no-untyped-def]
    app, method, path, body, headers, status, says
) -> None:
    url, task_uri = app
    got, text = send(url, method, path, body, headers)
    assert (got, says in text) == (status, True), text
    assert "Traceback" not in text and "unexpected error" not in text
    assert RatingStore(task_uri).all() == {}


def test_good_requests_still_work(tmp_path: Path) -> None:
    task_uri = _task(tmp_path)
    with serving(create_app(RateSettings(task_uri))) as url:
        status, text = send(url, "POST", "/api/rate", _json(GOOD), JSON)
        assert status == 200 and json.loads(text) == {"grade": 2, "rated": 1, "total": 9}
        charset = {"Content-Type": "application/json; charset=utf-8"}
        status, text = send(url, "POST", "/api/rate", _json({**GOOD, "label": "not"}), charset)
        assert status == 200 and json.loads(text)["rated"] == 1  # a change, not a new rating
        assert send(url, "GET", "/q/2?rater=alice")[0] == 200
        assert send(url, "GET", "/img/11")[0] == 200
    assert RatingStore(task_uri).of_rater("alice")[("q0", "A0")].grade == 0


def test_simulated_rater_names_are_reserved(tmp_path: Path) -> None:
    task_uri = _task(tmp_path)
    for name in ("simulated-ground-truth", "SIMULATED-bob", "bad name"):
        with pytest.raises(ValueError, match="reserved|rater name"):
            create_app(RateSettings(task_uri, rater=name))
    assert (
        cli.main(["rate", "--task", task_uri, "--rater", "simulated-me", "--port", "1"]) != 0
    )  # refused before a server starts
    assert RatingStore(task_uri).all() == {}


def _routes(url: str) -> dict[str, tuple[int, str]]:
    other = {**GOOD, "query_id": "q1", "listing_id": "B1"}
    return {
        "home": send(url, "GET", "/?rater=alice"),
        "query": send(url, "GET", "/q/0?rater=alice"),
        "image": send(url, "GET", "/img/0"),
        "rate": send(url, "POST", "/api/rate", _json(other), JSON),
    }


def test_a_task_whose_ids_hold_dot_dot_is_a_clear_503_on_every_route(tmp_path: Path) -> None:
    task_uri = _task(tmp_path)
    storage.write_text(task_uri, storage.read_text(task_uri).replace('"q0"', '"../../q0"'))
    with serving(create_app(RateSettings(task_uri))) as url:
        for route, (status, text) in _routes(url).items():
            assert status == 503, route
            assert "query id '../../q0'" in text and task_uri in text, route
            assert "Traceback" not in text
        health = json.loads(send(url, "GET", "/healthz")[1])
        assert health["ok"] is False and "../../q0" in health["error"]
    assert RatingStore(task_uri).all() == {}


def test_an_unknown_task_is_a_clear_503_on_every_route(tmp_path: Path) -> None:
    missing = str(tmp_path / "eval" / "nope" / "task.json")
    with serving(create_app(RateSettings(missing))) as url:
        for route, (status, text) in _routes(url).items():
            assert status == 503 and "does not exist" in text and missing in text, route


def test_a_corrupt_rating_file_is_a_503_naming_it(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    task_uri = _task(tmp_path)
    RatingStore(task_uri).put("alice", "q0", "A0", 2)
    (bad,) = storage.list_prefix(RatingStore(task_uri).root)
    storage.write_text(bad, "{truncated")
    with serving(create_app(RateSettings(task_uri))) as url:
        for route, (status, text) in _routes(url).items():
            if route == "image":
                assert status == 200
                continue
            assert status == 503 and f"rating file {bad} is not a rating" in text, route
        assert send(url, "GET", "/?rater=bob")[0] == 303  # other raters go on rating
    assert storage.read_text(bad) == "{truncated"  # left for a person to look at
    assert cli.main(["eval-report", "--task", task_uri]) != 0
    assert bad in capsys.readouterr().err


def test_result_photos_named_relative_to_the_catalog_are_served(tmp_path: Path) -> None:
    """Search results name photos as the catalog does (relative to CATALOG): the app opens them
    under the task's catalog, wherever that catalog lives now."""
    catalog = tmp_path / "moved" / "catalog"
    photo(str(catalog / "images" / "A0.jpg"), (200, 40, 90))
    query = photo(str(catalog / "reviews" / "q0.jpg"), (40, 200, 90))
    results = [Result("A0", "images/A0.jpg", 0.9, "cat")]
    task_uri = hand_task(
        str(tmp_path / "w"),
        [Query("q0", query, "review", "own0", "cat", "cat", {"vA": results})],
        k=1,
        catalog=str(catalog),
    )
    with serving(create_app(RateSettings(task_uri))) as url:
        for n in (0, 1):  # the query photo (a full path) and the result (a catalog name)
            status, _ = send(url, "GET", f"/img/{n}")
            assert status == 200, n
