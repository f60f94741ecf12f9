"""The CLI: generated from the settings dataclasses, strict, one error boundary, README in step.

The boundary tests run the installed ``vsearch`` script for real and check what a user sees:
one line on stderr naming the file or flag, a non-zero exit, no traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core import paths, storage
from vsearch import cli, flags, stages

REPO = Path(__file__).resolve().parents[1]
VSEARCH = Path(sys.executable).with_name("vsearch")
DESIGN_STAGES = ["preprocess", "train", "gate", "embed", "build-index", "publish"]
DESIGN_STAGES += ["query", "backfill", "demo"]


def _vsearch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VSEARCH), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _one_error_line(out: subprocess.CompletedProcess[str], command: str) -> str:
    """The boundary's line: exactly one `vsearch COMMAND: error:` line and no traceback."""
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"vsearch {command}:")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


def test_help_lists_every_stage_and_python_m_vsearch_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vsearch", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0
    for stage in DESIGN_STAGES + ["generate-catalog", "check-catalog"]:
        assert f"  {stage} " in out.stdout, stage


def test_unknown_command_is_a_clear_error() -> None:
    out = _vsearch("embedd")
    assert out.returncode == 2
    assert "unknown command 'embedd'" in out.stderr


def test_every_help_answers_without_tensorflow_or_beam() -> None:
    """`vsearch STAGE --help` must not import TensorFlow (issue 15 point 5) nor Beam: the stage
    registry names each stage's light face, whose job loads only when the stage runs."""
    script = (
        "import contextlib, io, json, sys\n"
        "from vsearch import cli\n"
        "helps = {}\n"
        "for name in cli.COMMANDS:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "        cli.main([name, '--help'])\n"
        "    helps[name] = buf.getvalue()\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tensorflow_transform', 'apache_beam')\n"
        "               if m in sys.modules)\n"
        "print(json.dumps({'helps': helps, 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    for name, text in got["helps"].items():
        assert text.startswith(f"usage: vsearch {name}"), (name, text[:200])
        # Every command that reads a working directory says so; the human-evaluation commands
        # after eval-sample read one task file (under WORKDIR/eval/).
        if name in ("rate", "eval-report", "eval-simulate"):
            assert "--task" in text, name
        elif name != "generate-catalog":
            assert "--workdir" in text, name


def test_every_flag_comes_from_a_documented_settings_field() -> None:
    """No flag without help, and each default shown is the dataclass default (cannot drift)."""
    for name in cli.COMMANDS:
        parser = cli.command_line(name).parser
        for action in parser._actions:
            if action.dest in ("help", "debug"):
                continue
            nested = "__" in action.dest  # the index's own settings (index/builder.py)
            assert action.help and (nested or "." not in action.help.split(" ")[0]), (
                name,
                action.dest,
            )
    settings = stages.load(stages.STAGES["check-catalog"].settings)
    parsed, _, _ = stages.command("check-catalog").parse(
        ["--catalog", "c", "--date", "2026-01-01", "--workdir", "w"]
    )
    assert parsed == settings(catalog="c", date=parsed.date, workdir="w")


def test_preprocess_defaults_are_the_model_features_defaults() -> None:
    from models import features
    from pipelines import input_size
    from pipelines.preprocess import PreprocessSettings

    assert PreprocessSettings.image_size == 0  # chosen from the photos
    assert input_size.SMALL == features.DEFAULT_IMAGE_SIZE
    assert PreprocessSettings.min_class_count == features.DEFAULT_MIN_CLASS_COUNT


def test_a_misspelt_flag_fails_and_beam_options_pass_through(tmp_path: Path) -> None:
    out = _vsearch(
        "embed", "--catalog", str(tmp_path), "--date", "2026-01-01", "--workdir", str(tmp_path),
        "--fulll",
    )  # fmt: skip
    assert out.returncode == 2
    line = _one_error_line(out, "embed")
    assert "--fulll" in line and "Beam pipeline option" in line
    assert not list(tmp_path.iterdir())  # nothing ran

    beam = [
        "--runner", "DirectRunner", "--direct_num_workers", "2",
        "--direct_running_mode", "multi_processing", "--project", "p",
        "--temp_location=gs://b/tmp",
    ]  # fmt: skip
    common = ["--catalog", "c", "--date", "2026-01-01", "--workdir", "w"]
    for name in ("check-catalog", "preprocess", "embed", "build-index"):
        settings, pipeline_args, _ = stages.command(name).parse([*common, *beam])
        assert pipeline_args == beam and settings.workdir == "w", name
    with pytest.raises(flags.UsageError, match="unrecognized arguments: --runner"):
        stages.command("train").parse(["--workdir", "w", "--date", "2026-01-01", *beam])
    with pytest.raises(flags.UsageError, match="--ful "):
        stages.command("embed").parse([*common, "--ful"])  # no silent abbreviation


def test_date_errors_read_the_same_in_every_command() -> None:
    messages = set()
    for name in cli.COMMANDS:
        parser = cli.command_line(name).parser
        for action in parser._actions:
            if action.metavar != "YYYY-MM-DD":
                continue
            with pytest.raises(flags.UsageError) as e:
                parser.parse_known_args([action.option_strings[0], "2026-13-01"])
            messages.add(str(e.value).split(": ", 1)[1].split(" (see")[0])
    assert messages == {"expected a date YYYY-MM-DD, got '2026-13-01'"}


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("publish", "--min-recall"),
        ("embed", "--max-bad-fraction"),
        ("gate", "--margin"),
        ("build-index", "--target-recall"),
        ("preprocess", "--eval-fraction"),
    ],
)
def test_non_finite_numbers_are_usage_errors(command: str, flag: str) -> None:
    parser = cli.command_line(command).parser
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(flags.UsageError, match=f"argument {flag}: expected a finite number"):
            parser.parse_known_args([f"{flag}={bad}"])


def _readme_commands() -> list[list[str]]:
    """Every `vsearch ...` command in the shell blocks of README.md and docs/*.md, placeholders
    filled in."""
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted(REPO.glob("docs/*.md"))])
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if not line.startswith("vsearch "):
                continue
            line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # optional flags: check them too
            commands.append(shlex.split(line)[1:])
    return commands


def test_readme_examples_parse_against_the_generated_flags() -> None:
    commands = _readme_commands()
    assert len(commands) >= 11
    seen = set()
    for argv in commands:
        name, rest = argv[0], argv[1:]
        assert name in cli.COMMANDS, argv
        cli.command_line(name).parse(rest)  # raises UsageError on a flag the command lacks
        seen.add(name)
    assert seen >= set(DESIGN_STAGES) | {"generate-catalog", "check-catalog"}


# ------------------------------------------------------------------ the error boundary


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    from synthetic.generate import generate_catalog

    out = str(tmp_path_factory.mktemp("catalog"))
    generate_catalog(out, listings=6, days=1, seed=3, image_size=32, workers=1, progress_every=0)
    return out


def test_a_workdir_that_is_a_file_is_one_line(small_catalog: str, tmp_path: Path) -> None:
    workdir = tmp_path / "not-a-dir"
    workdir.write_text("x")
    out = _vsearch(
        "check-catalog", "--catalog", small_catalog, "--date", "2026-01-01",
        "--workdir", str(workdir),
    )  # fmt: skip
    assert out.returncode == 1
    line = _one_error_line(out, "check-catalog")
    assert str(workdir) in line and "Not a directory" in line, line


def test_a_truncated_parquet_is_one_line_naming_it(small_catalog: str, tmp_path: Path) -> None:
    import shutil

    catalog = tmp_path / "catalog"
    shutil.copytree(small_catalog, catalog)
    listings = catalog / "dt=2026-01-01" / "listings.parquet"
    listings.write_bytes(listings.read_bytes()[:300])
    out = _vsearch(
        "check-catalog", "--catalog", str(catalog), "--date", "2026-01-01",
        "--workdir", str(tmp_path / "work"),
    )  # fmt: skip
    assert out.returncode == 1
    assert str(listings) in _one_error_line(out, "check-catalog")


def test_a_missing_savedmodel_is_one_line_naming_it(small_catalog: str, tmp_path: Path) -> None:
    workdir = str(tmp_path / "work")
    storage.write_text(paths.published_model_pointer(workdir), "v1\n")
    config = storage.join(paths.model_dir(workdir, "v1"), "config.json")
    storage.write_text(config, '{"embedding_dim": 8, "image_size": 32}\n')
    out = _vsearch(
        "embed", "--catalog", small_catalog, "--date", "2026-01-01", "--workdir", workdir
    )
    assert out.returncode == 1
    line = _one_error_line(out, "embed")
    assert paths.embedder_dir(workdir, "v1") in line and "SavedModel" in line, line
    assert not storage.exists(paths.completion_marker(workdir, "embed", "2026-01-01"))

    debug = _vsearch(
        "embed", "--catalog", small_catalog, "--date", "2026-01-01", "--workdir", workdir, "--debug"
    )
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_settings_dataclasses_are_frozen() -> None:
    for name in cli.COMMANDS:
        cls = stages.load(cli.COMMANDS[name].settings)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name


def test_results_round_trip_through_summaries_and_xcoms() -> None:
    """What a resumed backfill and the DAG's XComs read back is the result the stage returned,
    through one codec for every stage (core.results)."""
    from core import results
    from pipelines.embed import EmbedResult
    from pipelines.gate import GateDecision
    from pipelines.train import TrainResult

    train = TrainResult("20260101-abc", {"review_recall_at_10": 0.9}, "/w/models/20260101-abc")
    gate = GateDecision(
        True, train.version, None, ("first model", "floors ok"), {"x": 1.0}, eval_date="2026-01-01"
    )
    for name, result in (("train", train), ("gate", gate)):
        assert stages.result_from_json(name, stages.result_to_json(result)) == result
        summary = {"stage": name, "date": "2026-01-01", "extra": dataclasses.asdict(result)}
        assert results.from_summary(stages.load(stages.STAGES[name].result), summary) == result
    summary = {"read": 5, "ok": 3, "dead_lettered": 1, "skipped": 1, "wall_s": 2.0}
    embed = results.from_summary(
        EmbedResult, {**summary, "extra": {"model_version": "v", "full": True}}
    )
    assert (embed.ok, embed.skipped, embed.model_version, embed.full) == (3, 1, "v", True)
    with pytest.raises(KeyError, match="has no 'version'"):
        results.from_summary(TrainResult, {"stage": "train", "extra": {}})


def test_each_stage_takes_earlier_results_as_typed_settings() -> None:
    """The registry's hand-offs: gate measures train's version, embed re-embeds everything after
    a promotion (or when asked), publish flips to build-index's manifest; the day's fields are
    typed values, and a user's extra flags for a stage still parse."""
    from pipelines.build_index import BuildIndexResult
    from pipelines.gate import GateDecision
    from pipelines.train import TrainResult

    day = stages.DayRun("cat", "/w", dt.date(2026, 1, 1), stage_args={"gate": ("--margin", "0.1")})
    train = TrainResult("20260101-abc", {}, "/w/models/20260101-abc")
    gate = GateDecision(True, train.version, None, ())
    settings, _ = stages.settings_for("gate", day, {"train": train})
    assert (settings.candidate, settings.workdir, settings.margin) == (train.version, "/w", 0.1)
    embed, _ = stages.settings_for("embed", day, {"gate": gate})
    assert embed.full and embed.date == day.date and embed.catalog == "cat"
    not_promoted = dataclasses.replace(gate, promoted=False)
    assert not stages.settings_for("embed", day, {"gate": not_promoted})[0].full
    forced = dataclasses.replace(day, full=True)
    assert stages.settings_for("embed", forced, {"gate": not_promoted})[0].full
    built = BuildIndexResult("/w/indexes/v/b/manifest.json", "v", "b", 0.9, 10)
    publish, _ = stages.settings_for("publish", day, {"build-index": built})
    assert publish.manifest == built.manifest_uri
    preprocess, _ = stages.settings_for("preprocess", day, {})
    assert preprocess.date == "2026-01-01"  # a str field gets the ISO date


def test_demo_refuses_a_catalog_too_small_to_train(tmp_path: Path) -> None:
    out = _vsearch("demo", "--listings", "120", "--workdir", str(tmp_path / "d"))
    assert out.returncode == 2
    line = _one_error_line(out, "demo")
    assert "--listings 120 is too small" in line and "--listings 300" in line
    assert not (tmp_path / "d").exists()  # refused before generating anything


@pytest.mark.parametrize("stage", ["check-catalog"])
def test_a_template_launch_is_refused_before_the_day_is_touched(
    stage: str, tiny_catalog: str, tmp_path: Path
) -> None:
    """A Flex Template launch passes --template_location: Beam then only describes the job and
    returns at once, so a stage that cannot leave its day to a finish step (all but preprocess
    and embed: tests/test_finish.py) would record a day whose job never ran. It is one clear
    error instead, naming the way that works, and nothing of the day is written."""
    work = tmp_path / "work"
    out = _vsearch(
        stage,
        "--catalog", tiny_catalog, "--workdir", str(work), "--date", "2026-01-01",
        "--runner", "DataflowRunner", "--project", "p", "--region", "europe-west4",
        "--temp_location", "gs://b/tmp", "--template_location", str(tmp_path / "job.json"),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    line = _one_error_line(out, stage)
    assert "cannot run as a Dataflow template" in line and "vsearch finish" in line
    assert not (tmp_path / "job.json").exists()
    assert not work.exists() or not any(p.is_file() for p in work.rglob("*")), list(work.rglob("*"))


_EXIT = """
import atexit, logging, multiprocessing, sys, time
from vsearch import cli
if sys.argv[1] != "light":
    import tensorflow  # noqa: F401
if sys.argv[1] == "child":
    multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0.5,)).start()
atexit.register(lambda: print("finalised", file=sys.stderr))
print("x" * 100_000, end="")
logging.basicConfig()
logging.getLogger("job").warning("logged last")
cli.exit_now(3)
"""


@pytest.mark.parametrize(
    ("mode", "finalised"), [("light", True), ("tensorflow", False), ("child", True)]
)
def test_the_exit_keeps_the_code_and_all_output_and_skips_finalising_only_after_tf(
    mode: str, finalised: bool
) -> None:
    """After TensorFlow the process ends without Python's finalisation (its teardown costs
    ~1.2 s a run), but never loses the exit code or a byte of output; a live child process
    (Beam's shared-model server) gets the normal exit that stops it."""
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT, mode], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "x" * 100_000
    assert "logged last" in proc.stderr
    assert ("finalised" in proc.stderr) is finalised
