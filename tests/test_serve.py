"""``vsearch serve`` in process (Starlette's TestClient drives the ASGI app and its lifespan):
search by photo with attributes, filters, the no-match signal, metrics, and a clear 4xx JSON
error for every kind of bad input."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from benchmarks import embedding_tables
from core.catalog import is_eval_listing
from tests import serve_fixtures as fx
from tests.test_index_query import photo
from vsearch import cli
from vsearch.serve.app import create_app
from vsearch.serve.command import ServeSettings

LIMIT = 200_000  # max upload bytes in these tests


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    workdir, catalog, _ = fx.make_served_workdir(str(tmp_path_factory.mktemp("serve")))
    return workdir, catalog


@pytest.fixture(scope="module")
def client(served: tuple[str, str]) -> Iterator[TestClient]:
    workdir, catalog = served
    settings = ServeSettings(workdir=workdir, catalog=catalog, poll_s=0.2, max_upload_bytes=LIMIT)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.05)
        yield c


def jpeg(i: int, size: int = 80) -> bytes:
    return photo(fx.listing_rgb(i), "JPEG", size=size)


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def error_of(r: object) -> tuple[int, str, str]:
    body = r.json()  # type: ignore[attr-defined]
    return r.status_code, body["error"]["code"], body["error"]["message"]  # type: ignore[attr-defined]


def test_search_returns_the_listing_with_attributes_index_and_model(client: TestClient) -> None:
    ready = client.get("/readyz").json()
    assert ready["checksums_verified"] and ready["index"]["build_id"] == "20260101T000000Z-aaaaaa"
    assert ready["attributes"] == f"catalog snapshot dt={fx.SERVE_DAY}"

    # Raw body and multipart give the same answer: listing 7 first, with its catalog attributes.
    raw = client.post("/search?k=5", content=jpeg(7), headers={"content-type": "image/jpeg"})
    multi = client.post(
        "/search", files={"image": ("q.jpg", jpeg(7), "image/jpeg")}, data={"k": "5"}
    )
    for r in (raw, multi):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index"]["build_id"] == "20260101T000000Z-aaaaaa"
        assert body["index"]["model_version"] == "20260101-tiny"
        assert len(body["results"]) == 5 and body["k"] == 5
        top = body["results"][0]
        assert top["listing_id"] == embedding_tables.listing_id(7)
        assert top["image_uri"].endswith("img/7.png") and top["score"] > 0.9
        assert top["attributes"] == {**fx.listing_attrs(7), "title": "thing 7"}
        assert body["no_match"] is False and body["no_match_threshold"] < top["score"]
    assert raw.json()["results"] == multi.json()["results"]


def test_filters_hold_for_every_result(client: TestClient) -> None:
    q = jpeg(7)
    for params, check in [
        ("color=green", lambda a: a["color"] == "green"),
        ("category=home", lambda a: a["category"].startswith("home/")),
        (
            "category=home/decor&shape=square",
            lambda a: a["category"] == "home/decor/vases" and a["shape"] == "square",
        ),
        (
            "material=WOOD&color=red,blue",
            lambda a: a["material"] == "wood" and a["color"] in ("red", "blue"),
        ),
    ]:
        r = client.post(f"/search?k=40&{params}", content=q, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        expected = [i for i in range(fx.N_LISTINGS) if check(fx.listing_attrs(i))]
        # Exact semantics: every listing that passes is found (k is large), and only those.
        assert sorted(x["listing_id"] for x in results) == sorted(
            embedding_tables.listing_id(i) for i in expected
        ), params
        assert all(check(x["attributes"]) for x in results)
        scores = [x["score"] for x in results]
        assert scores == sorted(scores, reverse=True)
    # A filter nothing satisfies: an empty answer, flagged as no match.
    r = client.post("/search?color=purple", content=q, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["results"] == [] and r.json()["no_match"] is True


def test_no_match_threshold_is_calibrated_on_review_photos(client: TestClient) -> None:
    # The fixture's manifest predates the stored calibration: the service calibrates at start,
    # on the review photos of the held-out (eval split) listings only.
    calib = client.get("/readyz").json()["no_match"]
    held_out = sum(is_eval_listing(embedding_tables.listing_id(i)) for i in range(fx.N_LISTINGS))
    assert calib["source"] == "computed at start" and calib["photos"] == held_out
    assert calib["false_accept_rate"] <= calib["target_false_accept_rate"] == 0.1
    assert calib["right_first_flagged"] <= 0.1 and "held-out buyer review photos" in calib["method"]
    # Every catalog photo clears the threshold.
    r = client.post(
        "/search/batch",
        files=[("images", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(0, 40, 5)],
    )
    assert all(p["no_match"] is False for p in r.json()["photos"])


def test_batch_answers_good_photos_and_reports_bad_ones(client: TestClient) -> None:
    files = [
        ("images", ("a.jpg", jpeg(3), "image/jpeg")),
        ("images", ("notes.txt", b"hello, not a photo", "text/plain")),
        ("images", ("b.png", photo(fx.listing_rgb(11), "PNG"), "image/png")),
    ]
    r = client.post("/search/batch?k=3", files=files)
    assert r.status_code == 200, r.text
    photos = r.json()["photos"]
    assert [p["image"] for p in photos] == ["a.jpg", "notes.txt", "b.png"]
    assert photos[0]["results"][0]["listing_id"] == embedding_tables.listing_id(3)
    assert (
        photos[1]["error"]["code"] == "not_an_image"
        and "not an image" in photos[1]["error"]["message"]
    )
    assert photos[2]["results"][0]["listing_id"] == embedding_tables.listing_id(11)


def test_bad_input_gets_a_clear_4xx_json_error(client: TestClient) -> None:
    img = {"content-type": "image/jpeg"}
    cases = [
        (client.post("/search", content=b"GIF? no, plain text", headers=img), 422, "not_an_image"),
        (client.post("/search", content=b"", headers=img), 400, "empty_body"),
        (client.post("/search", content=png_bomb(), headers=img), 422, "not_an_image"),
        (client.post("/search", content=b"\xff" * (LIMIT + 1), headers=img), 413, "too_large"),
        (client.post("/search", json={"image": "x"}), 415, "unsupported_media_type"),
        (
            client.post("/search", content=jpeg(1), headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (client.post("/search?k=0", content=jpeg(1), headers=img), 400, "bad_k"),
        (client.post("/search?k=101", content=jpeg(1), headers=img), 400, "bad_k"),
        (client.post("/search?k=ten", content=jpeg(1), headers=img), 400, "bad_k"),
        (client.post("/search?size=XL", content=jpeg(1), headers=img), 400, "bad_filter"),
        (client.post("/search", files={"image": ("e.jpg", b"", "image/jpeg")}), 400, "empty_body"),
        (client.post("/search", data={"k": "3"}, files={"x": ("", b"", "")}), 400, "no_image"),
        (
            client.post(
                "/search/batch",
                files=[("i", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(33)],
            ),
            400,
            "bad_multipart",
        ),
        (client.get("/search"), 405, "method_not_allowed"),
        (client.get("/nope"), 404, "not_found"),
    ]
    for r, status, code in cases:
        got = error_of(r)
        assert got[:2] == (status, code), got
        assert got[2]  # a message that says what is wrong
    bomb = error_of(client.post("/search", content=png_bomb(), headers=img))[2]
    assert "pixels" in bomb
    assert (
        "200000-byte limit"
        in error_of(client.post("/search", content=b"\xff" * (LIMIT + 1), headers=img))[2]
    )
    assert (
        "unknown filter field 'size'"
        in error_of(client.post("/search?size=XL", content=jpeg(1), headers=img))[2]
    )


def test_metrics_count_requests_latency_errors_and_the_index(client: TestClient) -> None:
    client.post("/search", content=jpeg(2), headers={"content-type": "image/jpeg"})
    client.post("/search?k=0", content=jpeg(2), headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    assert 'vsearch_serve_requests_total{endpoint="/search",status="200"}' in text
    assert 'vsearch_serve_request_seconds_bucket{endpoint="/search",le="0.05"}' in text
    assert 'vsearch_serve_errors_total{code="bad_k",endpoint="/search"}' in text
    assert (
        'vsearch_serve_index_info{build_id="20260101T000000Z-aaaaaa",model_version="20260101-tiny"} 1.0'
        in text
    )


def test_settings_from_flags() -> None:
    s, _, _ = cli.command_line("serve").parse(
        ["--workdir", "w", "--port", "9000", "--max-upload", "5K"]
    )
    assert (s.workdir, s.port, s.max_upload_bytes, s.host) == ("w", 9000, 5 << 10, "127.0.0.1")
    with pytest.raises(ValueError, match="--max-k must be >= 1"):
        cli.command_line("serve").parse(["--workdir", "w", "--max-k", "0"])


def test_without_catalog_only_predicted_category_filters(
    served: tuple[str, str], tmp_path: Path
) -> None:
    workdir, _ = served
    settings = ServeSettings(workdir=workdir, catalog=None, poll_s=0.2)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = c.get("/readyz").json()
        assert ready["attributes"] == "id maps (predicted category)"
        assert ready["no_match"]["threshold"] is None
        r = c.post("/search?color=red", content=jpeg(1), headers={"content-type": "image/jpeg"})
        assert error_of(r)[:2] == (400, "filter_unavailable")
        r = c.post("/search", content=jpeg(1), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["no_match"] is None
        assert np.isfinite(r.json()["results"][0]["score"])


def test_query_cli_reports_each_bad_photo_and_answers_the_good_ones(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    workdir, _ = served
    good, text, bomb = tmp_path / "good.jpg", tmp_path / "notes.jpg", tmp_path / "bomb.png"
    good.write_bytes(jpeg(9))
    text.write_bytes(b"just text, named .jpg")
    bomb.write_bytes(png_bomb())
    missing = tmp_path / "missing.jpg"
    argv = [str(good), str(text), str(missing), str(bomb), str(good), "--workdir", workdir]
    assert cli.main(["query", *argv, "--k", "2", "--json"]) == 1  # some photos failed
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.strip().splitlines()]
    assert [x["image"] for x in lines] == argv[:5]
    assert lines[0]["hits"][0]["listing_id"] == embedding_tables.listing_id(9)
    assert lines[4]["hits"] == lines[0]["hits"]
    assert "not an image" in lines[1]["error"]
    assert "cannot read" in lines[2]["error"] and "missing.jpg" in lines[2]["error"]
    assert "pixels" in lines[3]["error"]
    # One line per bad photo, then the command's one-line verdict.
    assert out.err.count("error:") == 4 and str(text) in out.err
    assert "3 of 5 photos could not be searched" in out.err.strip().splitlines()[-1]
