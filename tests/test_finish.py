"""Run the job, finish the day later: preprocess and embed launched as a Flex Template launches
them (``--template_location``), then ``vsearch finish STAGE`` in another process.

The launches here run on the DirectRunner, which ignores ``--template_location`` and runs the
job: the stage still treats the launch as one that only described its job, so the job's files
are there and the day is not finished. ``vsearch finish`` must then write what a normal run of
the same day writes, refuse while the job's counts are missing, load neither Beam nor
TensorFlow, and do nothing the second time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from core import embeddings, partitions, paths, runs, storage
from pipelines import job_record
from tests import embed_fixtures as fx
from tests.conftest import TINY_STAGE_FLAGS
from tests.own_process import REPO, run_json
from tests.pipeline_graph import upstream
from vsearch import cli

pytestmark = pytest.mark.timeout(900)
DAY = "2026-01-01"
# What differs between two runs of the same day: when and how fast they ran, and Beam's
# distributions (model batch sizes and latencies), which only the waiting process can read.
TIMINGS = {"wall_s", "throughput_per_s", "finished_at"}
DISTRIBUTIONS = {"batch_size", "inference_ms", "load_model_latency_milli_secs"}


def _vsearch(*argv: str) -> tuple[int, str, str]:
    """``vsearch ARGV`` in this process (Beam and TensorFlow are loaded here already)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


# `vsearch finish ...` in a fresh interpreter; the last line says which heavy packages it loaded.
_FINISH = r"""
import json, sys
from vsearch import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(
    m for m in ("apache_beam", "tensorflow", "tensorflow_transform") if m in sys.modules)}))
"""


def _finish(stage: str, workdir: str, date: str, *flags: str) -> tuple[dict[str, Any], str]:
    """``vsearch finish STAGE`` as the DAG's finish task runs it: its own process."""
    result, output = run_json(
        _FINISH, "finish", stage, "--workdir", workdir, "--date", date, *flags
    )
    return dict(result), output


def _comparable(summary: dict[str, Any], workdir: str) -> dict[str, Any]:
    """A run summary without its timings, and with its workdir's paths made relative."""
    out = {k: v for k, v in summary.items() if k not in TIMINGS}
    extra = {k: v for k, v in summary["extra"].items() if k not in DISTRIBUTIONS}
    out["extra"] = {
        k: v.replace(workdir, "WORKDIR") if isinstance(v, str) else v for k, v in extra.items()
    }
    return out


def _files(root: str) -> list[str]:
    return sorted(u[len(root) :] for u in storage.list_prefix(root))


def _day_recorded(workdir: str, stage: str, date: str) -> bool:
    return storage.exists(paths.run_summary(workdir, stage, date)) or runs.is_done(
        workdir, stage, date
    )


# ------------------------------------------------------------------ preprocess


@pytest.mark.slow
def test_preprocess_launched_as_a_template_is_finished_like_a_normal_run(
    tiny_catalog: str, tmp_path: Path
) -> None:
    common = ["--catalog", tiny_catalog, "--date", DAY, *TINY_STAGE_FLAGS["preprocess"]]
    common += ["--max-listings", "25"]  # some photos outside the sample: skipped is counted
    normal, launched = str(tmp_path / "normal"), str(tmp_path / "launched")
    code, _, err = _vsearch("preprocess", "--workdir", normal, *common)
    assert code == 0, err

    # The launch: the job runs and leaves its outputs, its record and its counts, but the day
    # is not finished (no summary, no marker), and the stage says who finishes it.
    template = str(tmp_path / "template.json")
    code, out, err = _vsearch(
        "preprocess", "--workdir", launched, *common, "--template_location", template
    )
    assert code == 0, err
    line = f"vsearch finish preprocess --workdir {launched} --date {DAY}"
    assert "the day is finished by the finish step" in out and line in out, out
    assert not _day_recorded(launched, "preprocess", DAY)
    (record,) = job_record.launched(launched, "preprocess", DAY)
    counts = json.loads(storage.read_text(record.counts_uri))
    assert counts["run_id"] == record.run_id and counts["counts"]["preprocess_rows"] > 0
    outputs = [f for f in _files(paths.transformed_dir(launched, DAY)) if not f.startswith("/tmp")]
    assert outputs == _files(paths.transformed_dir(normal, DAY))

    got, said = _finish("preprocess", launched, DAY)
    assert got == {"code": 0, "heavy": []}, said
    assert runs.is_done(launched, "preprocess", DAY)
    a = runs.read_summary(normal, "preprocess", DAY)
    b = runs.read_summary(launched, "preprocess", DAY)
    assert _comparable(b, launched) == _comparable(a, normal)
    assert a["skipped"] > 0 and a["ok"] > 0
    # Like a normal run, the finish leaves no run folder and no TF Transform temp files.
    for w in (normal, launched):
        assert not storage.list_prefix(storage.join(w, "staging")), w
        assert not any("tmp" in f for f in _files(paths.transformed_dir(w, DAY)))

    # Again: nothing to do, nothing rewritten.
    got, said = _finish("preprocess", launched, DAY)
    assert got["code"] == 0 and "already finished" in said, said
    assert runs.read_summary(launched, "preprocess", DAY) == b


@pytest.mark.slow
def test_preprocess_counts_file_holds_the_beam_counters(tiny_catalog: str, tmp_path: Path) -> None:
    """The job's counts file and Beam's counters of the same run agree on every count the
    summary reports: the summaries are what they were when they were read from the counters."""
    from pipelines import preprocess, preprocess_job

    work = str(tmp_path / "work")
    settings = preprocess.PreprocessSettings(
        catalog=tiny_catalog, date=DAY, workdir=work, image_size=32, max_listings=25
    )
    run_id, _ = job_record.new_run(work, "preprocess", DAY)
    record = job_record.launch(work, "preprocess", DAY, run_id, {})
    job = preprocess_job.run_job(settings, record)
    names = [
        preprocess.IMAGES,
        preprocess.ROWS,
        preprocess.REJECTED_ROWS,
        preprocess.BAD_IMAGES,
        preprocess.UNSAMPLED,
    ]
    counts = job_record.read_counts(record)
    assert {n: counts.get(n) for n in names} == {n: job.counters.get(n, 0) for n in names}
    assert job.counters[preprocess.UNSAMPLED] > 0
    # The counts are written after every output (the graph of the same job, not run).
    p = beam.Pipeline()
    preprocess_job.build(p, settings, record)
    waits_for = upstream(p, "WriteCounts")
    for sink in ("WriteTrain", "WriteEval", "WriteTransformFn", "WriteDeadLetters"):
        assert any(label.startswith(f"{sink}/") for label in waits_for), sink


# ------------------------------------------------------------------ embed


@pytest.fixture(scope="module")
def fake_model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return fx.fake_model(tmp_path_factory)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> str:
    from synthetic.generate import generate_catalog

    out = str(tmp_path_factory.mktemp("catalog"))
    generate_catalog(out, listings=30, days=2, seed=11, image_size=32, workers=1, progress_every=0)
    return out


def _embed_flags(catalog: str, workdir: str, date: dt.date) -> list[str]:
    return [
        "--catalog", catalog, "--workdir", workdir, "--date", date.isoformat(),
        "--min-batch-size", "2", "--max-batch-size", "8", "--num-shards", "2",
        "--intra-op-threads", "1", *fx.BEAM_ARGS,
    ]  # fmt: skip


def test_embed_launched_as_a_template_commits_only_when_finished(
    generated: str, fake_model_dir: tuple[str, str], tmp_path: Path
) -> None:
    normal, launched = str(tmp_path / "normal"), str(tmp_path / "launched")
    version = fx.install_model(fake_model_dir, normal)
    fx.install_model(fake_model_dir, launched)
    for day in (fx.D1, fx.D2):  # day 2 skips day 1's photos: the skip counts are compared too
        code, _, err = _vsearch("embed", *_embed_flags(generated, normal, day))
        assert code == 0, err
        template = str(tmp_path / f"template-{day}.json")
        flags = _embed_flags(generated, launched, day)
        code, out, err = _vsearch("embed", *flags, "--template_location", template)
        assert code == 0, err
        assert "the day is finished by the finish step" in out, out
        # The job's rows wait in its run folder; the partition is not committed yet.
        partition = paths.embeddings_dir(launched, version, day)
        assert not storage.exists(storage.join(partition, "_manifest.json"))
        assert not _day_recorded(launched, "embed", day.isoformat())
        (record,) = job_record.launched(launched, "embed", day, version)
        assert storage.exists(record.counts_uri)
        assert storage.list_prefix(storage.join(record.root, "rows"))

        got, said = _finish("embed", launched, day.isoformat())
        assert got == {"code": 0, "heavy": []}, said
        a = runs.read_summary(normal, "embed", day)
        b = runs.read_summary(launched, "embed", day)
        assert _comparable(b, launched) == _comparable(a, normal)
        assert sorted(
            fx.read_partition(launched, version, day).column("image_sha256").to_pylist()
        ) == (sorted(fx.read_partition(normal, version, day).column("image_sha256").to_pylist()))
        assert not storage.list_prefix(storage.join(launched, "staging"))
    assert b["skipped"] > 0 and b["ok"] > 0
    committed = embeddings.committed_partitions(launched, version)
    assert sorted(committed) == [fx.D1, fx.D2]

    # Again: nothing to do, the commit stays the one made.
    got, said = _finish("embed", launched, fx.D2.isoformat())
    assert got["code"] == 0 and "already finished" in said, said
    assert embeddings.committed_partitions(launched, version) == committed


def test_embed_counts_file_holds_the_beam_counters(
    generated: str, fake_model_dir: tuple[str, str], tmp_path: Path
) -> None:
    """Every count of embed's summary, from the counts file and from Beam's counters of the same
    job, agree (the job run as ``embed.run`` runs it)."""
    from pipelines import embed, embed_checks, embed_commit, embed_job, embed_plan
    from transforms.change_detection import buckets_for

    work = str(tmp_path / "work")
    fx.install_model(fake_model_dir, work)
    embed.run(fx.settings(generated, work, fx.D1), fx.BEAM_ARGS)
    s = fx.settings(generated, work, fx.D2)
    model = embed_checks.resolve_model(work, None)
    earlier = embed._earlier_partitions(work, model.version, s.date)
    plan = embed_plan.plan_skip(work, model.version, s.date, earlier)
    buckets = buckets_for(embed_checks.count_listings(generated, s.date))
    staging = embed_commit.new_staging(work, "embed", s.date, model.version)
    record = job_record.launch(work, "embed", s.date, staging.attempt, {}, model.version)
    job, _ = embed_job.run_job(s, model, plan, staging, buckets, record, fx.BEAM_ARGS)
    names = [
        "images", "catalog_rejected", "embedded", "skipped_unchanged", "dead_letter_records",
        "listing_rows_parsed_alone", "images_read", "skipped_by_metadata", "metadata_listed",
        "metadata_stat",
    ]  # fmt: skip
    counts = job_record.read_counts(record)
    assert {n: counts.get(n) for n in names} == {n: job.counters.get(n, 0) for n in names}
    assert job.counters["skipped_unchanged"] > 0 and job.counters["metadata_stat"] > 0
    # The counts are written after every output (the graph of the same job, not run).
    p = beam.Pipeline()
    embed_job.build(p, s, model, plan, staging, buckets, record)
    waits_for = upstream(p, "WriteCounts")
    for sink in ("WriteEmbeddings", "WriteState", "WriteKeptState", "WriteDeadLetters"):
        assert any(label == sink or label.startswith(f"{sink}/") for label in waits_for), sink


# ------------------------------------------------------------------ two models, one day

CANDIDATE = "20260102-cand0000"


def _install_candidate(workdir: str, published: str) -> str:
    """A second, unpublished model version in ``workdir``: the published one's copy, renamed."""
    src, dst = paths.model_dir(workdir, published), paths.model_dir(workdir, CANDIDATE)
    shutil.copytree(src, dst)
    config = storage.join(dst, "config.json")
    storage.write_text(
        config, json.dumps({**json.loads(storage.read_text(config)), "version": CANDIDATE})
    )
    return CANDIDATE


def _launch(catalog: str, workdir: str, template: Path, *flags: str) -> job_record.JobRecord:
    """A template launch of embed for day 1; returns its record."""
    code, out, err = _vsearch(
        "embed",
        *_embed_flags(catalog, workdir, fx.D1),
        *flags,
        "--template_location",
        str(template),
    )
    assert code == 0, err
    assert "the day is finished by the finish step" in out, out
    model = flags[flags.index("--model") + 1] if "--model" in flags else None
    (record,) = [
        r for r in job_record.launched_any_model(workdir, "embed", fx.D1) if r.run_id in out
    ]
    assert model is None or record.model_version == model
    assert f"--date {fx.D1} --model {record.model_version}" in out, out
    return record


def _staged(record: job_record.JobRecord) -> list[str]:
    """The run folder's files: its record, its counts and the job's rows and state."""
    return _files(record.root)


def test_embed_launches_for_two_models_of_one_day_are_finished_apart(
    generated: str, fake_model_dir: tuple[str, str], tmp_path: Path
) -> None:
    """Production's job and a candidate's, launched for the same day: neither launch clears the
    other's run folder, and each is finished on its own, into its own summary and partition."""
    work = str(tmp_path / "work")
    production = fx.install_model(fake_model_dir, work)
    candidate = _install_candidate(work, production)
    day = fx.D1.isoformat()

    prod = _launch(generated, work, tmp_path / "prod.json")
    prod_files = _staged(prod)
    assert "/job.json" in prod_files and "/counts.json" in prod_files
    assert any(f.startswith("/rows/") for f in prod_files), prod_files
    # The candidate's launch while production's job would still run on Dataflow.
    cand = _launch(generated, work, tmp_path / "cand.json", "--model", candidate)
    assert _staged(prod) == prod_files
    assert cand.root != prod.root and any(f.startswith("/rows/") for f in _staged(cand))
    assert [r.run_id for r in job_record.launched(work, "embed", day, production)] == [prod.run_id]

    # The candidate first: production's job is left as it was.
    got, said = _finish("embed", work, day, "--model", candidate)
    assert got == {"code": 0, "heavy": []}, said
    assert runs.is_done(work, "embed", day, candidate=candidate)
    assert not _day_recorded(work, "embed", day)  # production's day is not finished yet
    assert _staged(prod) == prod_files
    assert sorted(embeddings.committed_partitions(work, candidate)) == [fx.D1]
    assert not embeddings.committed_partitions(work, production)

    # Again: the candidate's day is finished, nothing to do (not "no launched job").
    summary = runs.read_summary(work, "embed", day, candidate=candidate)
    code, out, err = _vsearch(
        "finish", "embed", "--workdir", work, "--date", day, "--model", candidate
    )
    assert code == 0 and "already finished" in out and f"model={candidate}" in out, out + err
    assert runs.read_summary(work, "embed", day, candidate=candidate) == summary

    # Production's, as the DAG's finish task runs it: no --model.
    got, said = _finish("embed", work, day)
    assert got == {"code": 0, "heavy": []}, said
    assert runs.is_done(work, "embed", day)
    prod_summary = runs.read_summary(work, "embed", day)
    assert prod_summary["model_version"] == production and prod_summary["production"]
    assert summary["model_version"] == candidate and not summary["production"]
    assert prod_summary["ok"] == summary["ok"] > 0  # the same weights, the same photos
    assert sorted(embeddings.committed_partitions(work, production)) == [fx.D1]
    for version in (production, candidate):
        assert fx.read_partition(work, version, fx.D1).num_rows == summary["ok"]
    assert not storage.list_prefix(storage.join(work, "staging"))


def test_a_new_launch_clears_only_its_own_models_unfinished_run(
    generated: str, fake_model_dir: tuple[str, str], tmp_path: Path
) -> None:
    """Launching the same model's embed again for a day deletes its earlier unfinished run
    folder (one job to finish), and leaves another model's."""
    work = str(tmp_path / "work")
    production = fx.install_model(fake_model_dir, work)
    candidate = _install_candidate(work, production)
    day = fx.D1.isoformat()
    prod = _launch(generated, work, tmp_path / "prod.json")
    first = _launch(generated, work, tmp_path / "cand-1.json", "--model", candidate)
    second = _launch(generated, work, tmp_path / "cand-2.json", "--model", candidate)
    assert not _staged(first) and _staged(second)
    assert [r.run_id for r in job_record.launched(work, "embed", day, candidate)] == [second.run_id]
    assert [r.run_id for r in job_record.launched(work, "embed", day, production)] == [prod.run_id]

    # Finishing the candidate commits the second run's rows, under its run id.
    got, said = _finish("embed", work, day, "--model", candidate)
    assert got["code"] == 0, said
    manifest = partitions.read_manifest(paths.embeddings_dir(work, candidate, fx.D1))
    assert manifest is not None and manifest["attempt"] == second.run_id
    assert job_record.launched(work, "embed", day, production)  # still waiting for its finish


# ------------------------------------------------------------------ refusals


def test_finish_refuses_a_job_that_did_not_finish_and_writes_nothing(
    generated: str, fake_model_dir: tuple[str, str], tmp_path: Path
) -> None:
    work = str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, work)
    day = fx.D1.isoformat()

    # Nothing launched: one line naming the missing record.
    code, _, err = _vsearch("finish", "embed", "--workdir", work, "--date", day)
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("vsearch finish:")]
    assert "no launched embed job for 2026-01-01" in line and "job.json is missing" in line

    # Launched, but the job's last step never wrote its counts (it failed or was cancelled).
    template = str(tmp_path / "template.json")
    code, _, err = _vsearch(
        "embed", *_embed_flags(generated, work, fx.D1), "--template_location", template
    )
    assert code == 0, err
    (record,) = job_record.launched(work, "embed", day, version)
    storage.delete([record.counts_uri])
    code, _, err = _vsearch("finish", "embed", "--workdir", work, "--date", day)
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("vsearch finish:")]
    assert f"(run {record.run_id}) has not finished" in line and "counts.json is missing" in line
    assert not _day_recorded(work, "embed", day)
    partition = paths.embeddings_dir(work, version, fx.D1)
    assert not storage.exists(storage.join(partition, "_manifest.json"))
    assert storage.list_prefix(storage.join(record.root, "rows"))  # kept for a look

    # No --model: production's job is finished, and only the candidate's was launched. The
    # refusal names the candidate and the flag that finishes it.
    candidate = _install_candidate(work, version)
    storage.delete_prefix(storage.join(work, "staging"))
    cand = _launch(generated, work, tmp_path / "cand.json", "--model", candidate)
    code, _, err = _vsearch("finish", "embed", "--workdir", work, "--date", day)
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("vsearch finish:")]
    assert f"no launched embed job for 2026-01-01 with model {version}" in line, line
    assert f"another model: {candidate} (finish one with --model {candidate})" in line, line
    assert _staged(cand) and not _day_recorded(work, "embed", day)
    code, _, err = _vsearch(
        "finish", "preprocess", "--workdir", work, "--date", day, "--model", candidate
    )
    assert code == 1 and "only embed's jobs are per model" in err, err

    # A stage that cannot leave its day to a finish step is a usage error.
    code, _, err = _vsearch("finish", "train", "--workdir", work, "--date", day)
    assert code == 2 and "invalid choice: 'train'" in err


# ------------------------------------------------------------------ a real template launch


@pytest.mark.slow
def test_a_dataflow_template_launch_describes_the_job_and_finishes_nothing(
    tiny_catalog: str, gcs_bucket: str, tmp_path: Path
) -> None:
    """On Beam's DataflowRunner, ``--template_location`` (what the Flex launcher passes) writes
    the job's description and returns at once: the stage exits 0 saying who finishes the day,
    the record is there but no counts, and ``vsearch finish`` refuses the day."""
    workdir, template = str(tmp_path / "work"), tmp_path / "template.json"
    cmd = [
        sys.executable, "-m", "vsearch", "preprocess",
        "--catalog", tiny_catalog, "--workdir", workdir, "--date", DAY,
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west4",
        "--temp_location", f"{gcs_bucket}/tmp", "--no_auth", "--sdk_location", "container",
        "--sdk_container_image", "europe-west4-docker.pkg.dev/my-project/vs/vsearch:abc123",
        "--template_location", str(template),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "job described for a template launch" in done.stdout, done.stdout[-2000:]
    described = json.loads(template.read_text())
    assert described["environment"] and described["type"] == "JOB_TYPE_BATCH", sorted(described)
    assert not _day_recorded(workdir, "preprocess", DAY)
    (record,) = job_record.launched(workdir, "preprocess", DAY)
    assert not storage.exists(record.counts_uri)  # the job has not run

    got, said = _finish_refused("preprocess", workdir, DAY)
    assert f"(run {record.run_id}) has not finished" in said and "counts.json is missing" in said
    assert not _day_recorded(workdir, "preprocess", DAY)


def _finish_refused(stage: str, workdir: str, date: str) -> tuple[int, str]:
    """``vsearch finish`` in its own process, expected to refuse: (exit status, its one line)."""
    argv = ["finish", stage, "--workdir", workdir, "--date", date]
    done = subprocess.run(
        [sys.executable, "-m", "vsearch", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in done.stderr.splitlines() if x.startswith("vsearch finish:")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    return done.returncode, lines[0]


def test_a_backfill_refuses_a_template_launch_before_any_work(tmp_path: Path) -> None:
    """A backfill runs each stage to its end: a launch that only describes the job is refused
    before the stage touches the day."""
    work = tmp_path / "work"
    code, _, err = _vsearch(
        "backfill", "--catalog", str(tmp_path / "catalog"), "--workdir", str(work),
        "--start", DAY, "--end", DAY, "--stages", "preprocess",
        "--template_location", str(tmp_path / "template.json"),
    )  # fmt: skip
    assert code == 1
    assert "--template_location only describes the job" in err and "vsearch finish" in err
    assert not work.exists() or not any(p.is_file() for p in work.rglob("*"))
