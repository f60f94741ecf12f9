"""Run summaries: production's record of a stage and day is never overwritten by a run for a
candidate model (issue 30), and every reader (backfill, the DAG, the health page) reads
production's. The embed runs are real (`vsearch embed` on the DirectRunner with the fake model
of benchmarks/fake_embedder.py), as are the index builds and the DAG's own task functions."""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fake_embedder import build_fake_model
from core import paths, pointers, runs, storage
from tests.embed_fixtures import GOOD, write_catalog
from vsearch import cli, stages
from vsearch.serve import health

pytestmark = pytest.mark.timeout(600)

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
PUBLISHED, CANDIDATE, OTHER = "20260101-fake0000", "20260102-cand0001", "20260102-cand0002"
REPO = Path(__file__).resolve().parents[1]


def _embed(catalog: str, workdir: str, *flags: str) -> int:
    return cli.main(
        [
            "embed",
            *("--catalog", catalog, "--date", D1.isoformat(), "--workdir", workdir),
            *("--intra-op-threads", "1", "--num-shards", "1", *flags),
            "--direct_num_workers=1",
        ]
    )


def _files(workdir: str) -> dict[str, bytes]:
    root = paths.runs_root(workdir)
    return {os.path.relpath(u, root): storage.read_bytes(u) for u in storage.list_prefix(root)}


def test_candidate_embeds_never_touch_productions_record(tmp_path: Path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    write_catalog(catalog, D1, GOOD)
    build_fake_model(workdir, version=PUBLISHED)  # published
    for version in (CANDIDATE, OTHER):
        build_fake_model(workdir, version=version, publish=False)

    assert _embed(catalog, workdir) == 0  # production: the published model, incremental
    production = _files(workdir)
    assert set(production) == {"dt=2026-01-01/embed.json", "dt=2026-01-01/embed.done"}

    # A candidate tried for human evaluation, then a second one: each its own record.
    assert _embed(catalog, workdir, "--model", CANDIDATE, "--full") == 0
    assert _embed(catalog, workdir, "--model", OTHER, "--full") == 0
    after = _files(workdir)
    assert {k: after[k] for k in production} == production  # byte for byte
    assert set(after) - set(production) == {
        f"model={v}/dt=2026-01-01/embed.{ext}"
        for v in (CANDIDATE, OTHER)
        for ext in ("json", "done")
    }

    mine = runs.read_summary(workdir, "embed", D1)
    assert (mine["model_version"], mine["production"], mine["extra"]["full"]) == (
        PUBLISHED,
        True,
        False,
    )
    for version in (CANDIDATE, OTHER):
        theirs = runs.read_summary(workdir, "embed", D1, candidate=version)
        assert (theirs["model_version"], theirs["production"], theirs["extra"]["full"]) == (
            version,
            False,
            True,
        )
        assert (theirs["read"], theirs["ok"]) == (6, 6)
        assert runs.is_done(workdir, "embed", D1, candidate=version)

    # Every reader reads production's: a backfill's / the DAG's result, and the health page.
    assert stages.read_result("embed", workdir, D1).model_version == PUBLISHED
    [row] = [r for r in health.read_runs(workdir, 14) if r.stage == "embed"]
    assert row.summary is not None and row.summary["model_version"] == PUBLISHED


def test_a_candidates_run_does_not_mark_productions_stage_done(tmp_path: Path) -> None:
    """A backfill skips a stage whose production marker exists: a candidate's run must not
    leave one, or the day's real embed would never run."""
    workdir = str(tmp_path)
    storage.write_text(paths.published_model_pointer(workdir), PUBLISHED + "\n")
    summary = runs.RunSummary("embed", D2.isoformat(), 5, 5, 0, extra={"model_version": CANDIDATE})
    runs.complete(workdir, summary)
    assert not stages.is_done(workdir, "embed", D2)
    assert runs.is_done(workdir, "embed", D2, candidate=CANDIDATE)
    with pytest.raises(stages.StageFailed, match="embed has no run summary for 2026-01-02"):
        stages.read_result("embed", workdir, D2)
    assert runs.production_runs(workdir) == {}  # the health page sees no run that day


def test_which_runs_are_productions(tmp_path: Path) -> None:
    workdir = str(tmp_path)

    def written(stage: str, extra: dict[str, Any]) -> str:
        uri = runs.write_summary(
            workdir, runs.RunSummary(stage, "2026-01-01", 1, 1, 0, extra=extra)
        )
        return os.path.relpath(uri, workdir)

    # Nothing published yet: there is no production to protect; every run is production's.
    assert written("embed", {"model_version": CANDIDATE}) == "runs/dt=2026-01-01/embed.json"
    storage.write_text(paths.published_model_pointer(workdir), PUBLISHED + "\n")
    assert written("embed", {"model_version": PUBLISHED}) == "runs/dt=2026-01-01/embed.json"
    assert (
        written("build-index", {"model_version": CANDIDATE})
        == f"runs/model={CANDIDATE}/dt=2026-01-01/build-index.json"
    )
    assert written("preprocess", {}) == "runs/dt=2026-01-01/preprocess.json"
    # Train makes a candidate and the gate judges one: both are production's steps.
    assert written("train", {"version": CANDIDATE}) == "runs/dt=2026-01-01/train.json"
    assert written("gate", {"candidate": CANDIDATE}) == "runs/dt=2026-01-01/gate.json"
    assert runs.read_summary(workdir, "train", "2026-01-01")["model_version"] == CANDIDATE
    assert runs.read_summary(workdir, "preprocess", "2026-01-01")["model_version"] is None
    with pytest.raises(ValueError, match="not a model version"):
        paths.run_summary(workdir, "embed", D1, candidate="../x")


def _dag_functions() -> dict[str, Any]:
    """The DAG's Python-task functions as Airflow's ExternalPython runs them: their own source,
    executed in the pipeline environment (no Airflow here)."""
    source = (REPO / "dags" / "visual_search_daily.py").read_text()
    wanted = {"_run_stage", "_embed_branch"}
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {d.name for d in defs} == wanted
    code = "\n\n".join(
        [
            "from __future__ import annotations",
            *(ast.get_source_segment(source, d) or "" for d in defs),
        ]
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, "visual_search_daily.py", "exec"), namespace)
    return namespace


def test_the_dag_publishes_productions_build_not_a_candidates(tmp_path: Path) -> None:
    """Publish reads build-index's manifest from its run summary (a Beam task has no XCom). A
    candidate's index built the same day must not become the manifest the DAG publishes."""
    from benchmarks import embedding_tables, vectors
    from index import builder
    from pipelines import build_index

    workdir, model = str(tmp_path / "w"), PUBLISHED
    storage.write_text(paths.published_model_pointer(workdir), model + "\n")
    index = builder.IndexSettings(
        factory="Flat", shards=1, validation_queries=50, latency_queries=5
    )
    built = {}
    for version in (model, CANDIDATE):  # production's build first, then the candidate's
        table = embedding_tables.embedding_table(vectors.clustered(300, dim=16), 1, version)
        settings = build_index.BuildIndexSettings("unused", workdir, D1, index, version)
        built[version] = build_index.run(
            settings,
            ["--direct_num_workers=1"],
            batches_factory=embedding_tables.batches_factory(table, 100),
        ).manifest_uri
    assert runs.read_summary(workdir, "build-index", D1)["extra"]["manifest"] == built[model]

    dag = _dag_functions()
    result = dag["_run_stage"](
        "publish", "unused", workdir, D1.isoformat(), "", "", upstream={"build-index": None}
    )
    assert result["manifest_uri"] == built[model]
    assert pointers.read_pointer(paths.current_index_pointer(workdir)).value == built[model]
    assert runs.read_summary(workdir, "publish", D1)["extra"]["manifest_uri"] == built[model]


def test_the_dag_branches_on_productions_gate(tmp_path: Path) -> None:
    workdir = str(tmp_path)
    storage.write_text(paths.published_model_pointer(workdir), PUBLISHED + "\n")
    decision = {"promoted": False, "candidate": CANDIDATE, "published": PUBLISHED, "reasons": []}
    runs.complete(workdir, runs.RunSummary("gate", D1.isoformat(), 1, 1, 0, extra=decision))
    # A candidate's full embed the same day is not the gate's decision to re-embed.
    extra = {"model_version": CANDIDATE, "full": True}
    runs.complete(workdir, runs.RunSummary("embed", D1.isoformat(), 3, 3, 0, extra=extra))
    assert _dag_functions()["_embed_branch"](workdir, D1.isoformat()) == "embed_incremental"


def test_summary_line_says_when_a_run_was_a_candidates(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    workdir = str(tmp_path)
    storage.write_text(paths.published_model_pointer(workdir), PUBLISHED + "\n")
    runs.complete(
        workdir, runs.RunSummary("embed", "2026-01-01", 2, 2, 0, extra={"model_version": OTHER})
    )
    line = capsys.readouterr().out.strip()
    assert re.search(rf"candidate model {OTHER}, not the published one: .*model={OTHER}", line)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_readers_list_productions_runs_only(where: str, tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    """What the health page lists, locally and on gs:// (where a glob's ``*`` may cross '/')."""
    workdir = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket") + "/vs"
    storage.write_text(paths.published_model_pointer(workdir), PUBLISHED + "\n")
    runs.complete(workdir, runs.RunSummary("embed", "2026-01-01", 4, 4, 0, extra={}))
    runs.write_summary(workdir, runs.RunSummary("build-index", "2026-01-01", 4, 4, 0))
    runs.complete(
        workdir, runs.RunSummary("embed", "2026-01-02", 9, 9, 0, extra={"model_version": OTHER})
    )
    found = runs.production_runs(workdir)
    assert {day: {s: r.done for s, r in by.items()} for day, by in found.items()} == {
        "2026-01-01": {"embed": True, "build-index": False}
    }
    assert found["2026-01-01"]["embed"].summary_uri == paths.run_summary(workdir, "embed", D1)
