"""``vsearch``: a thin map from command names to the library functions that run them.

Every command is ``run(settings)``: its flags are generated from its settings dataclass
(``vsearch.flags``), strict (a misspelt flag is an error, exit 2), and Beam stages hand the
rest to Beam only when they are Beam pipeline options. Modules load only when their command
runs, and settings live in light modules, so ``vsearch STAGE --help`` never loads TensorFlow.

This is also the one error boundary: a failing command prints ONE line on stderr (``vsearch
embed: error: ...`` naming the file or flag) and exits 1 (2 for a usage error); its traceback
goes to a log file in $TMPDIR, named in that line, and ``--debug`` prints it instead.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

from vsearch import flags, quiet, stages


@dataclass(frozen=True)
class Command:
    help: str
    settings: str  # "module:Class"
    run: str  # "module:function": run(settings) or, with beam, run(settings, pipeline_args)
    beam: bool = False


# The commands that are not daily stages; stages come from the stage registry.
_TOOLS: dict[str, Command] = {
    "generate-catalog": Command(
        "write a synthetic marketplace catalog (K daily snapshots) for demos, tests, benchmarks",
        "synthetic.command:GenerateSettings",
        "synthetic.command:run",
    ),
    "query": Command(
        "search by photo: top-k listings for an image file",
        "vsearch.query:QuerySettings",
        "vsearch.query:run",
    ),
    "serve": Command(
        "HTTP search by photo with filters, following each publish (hot swap); /health page",
        "vsearch.serve.command:ServeSettings",
        "vsearch.serve.command:run",
    ),
    "eval-sample": Command(
        "human eval: draw stratified query photos, retrieve top-k (one model or two), write a task",
        "vsearch.evaluation.sample:SampleSettings",
        "vsearch.evaluation.sample:cli_run",
    ),
    "rate": Command(
        "human eval: a local web page to rate a task's results (blind side by side for two models)",
        "vsearch.evaluation.server:RateSettings",
        "vsearch.evaluation.server:run",
    ),
    "eval-simulate": Command(
        "human eval: rate a task from the generated catalog's ground truth (labelled simulated)",
        "vsearch.evaluation.simulate:SimulateSettings",
        "vsearch.evaluation.simulate:cli_run",
    ),
    "eval-report": Command(
        "human eval: precision/nDCG with intervals, rater agreement, side-by-side sign test",
        "vsearch.evaluation.report:ReportSettings",
        "vsearch.evaluation.report:cli_run",
    ),
    "upgrade-embeddings": Command(
        "rewrite embedding partitions of earlier versions (dt column in the files) for every reader",
        "vsearch.upgrade_embeddings:UpgradeSettings",
        "vsearch.upgrade_embeddings:run",
    ),
    "finish": Command(
        "finish a day whose preprocess or embed job ran from a Flex Template (summary, commit)",
        "vsearch.finish:FinishSettings",
        "vsearch.finish:run",
    ),
    "backfill": Command(
        "run the stages for every date in a range, resuming after failure",
        "vsearch.backfill:BackfillSettings",
        "vsearch.backfill:cli_run",
        beam=True,
    ),
    "demo": Command(
        "the whole pipeline on a generated catalog, locally, and a results page",
        "vsearch.demo:DemoSettings",
        "vsearch.demo:run",
    ),
}

# name -> Command, in pipeline order (generate-catalog first, the tools after the stages).
COMMANDS: dict[str, Command] = {
    "generate-catalog": _TOOLS["generate-catalog"],
    **{n: Command(s.help, s.settings, s.run, s.beam) for n, s in stages.STAGES.items()},
    **{n: c for n, c in _TOOLS.items() if n != "generate-catalog"},
}


def command_line(name: str) -> flags.Command:
    """The generated parser of a command (also used by the README test)."""
    c = COMMANDS[name]
    return flags.Command(f"vsearch {name}", stages.load(c.settings), c.help, beam=c.beam)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: vsearch COMMAND [flags] [--verbose]   (vsearch COMMAND --help for its flags)",
        "       python -m vsearch COMMAND [flags]",
        "",
        "Search by photo for marketplaces: the daily batch pipeline.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    lines += [
        "",
        "Beam stages accept Beam pipeline options after their own flags, e.g.",
        "  vsearch embed ... --runner DataflowRunner --project P --region R --temp_location gs://...",
        "Any other unknown flag is an error. --debug prints the traceback of an error.",
        "--verbose keeps TensorFlow's and absl's start-up logs (off by default).",
    ]
    return "\n".join(lines)


def one_line(error: BaseException) -> str:
    """An exception as one line: its message, or for a wrapped traceback its last line."""
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:  # Beam re-raises a worker's traceback
        text = [line for line in text.splitlines() if line.strip()][-1].strip()
    text = " ".join(text.split()) or type(error).__name__
    if not isinstance(error, ValueError | OSError | RuntimeError | LookupError):
        text = f"{type(error).__name__}: {text}"  # not an expected kind of error: say which
    return text if len(text) <= 1000 else text[:1000] + " ..."


class _NoTracebacks(logging.Formatter):
    """Log records as one line each: libraries (Beam) log a failing bundle's traceback."""

    def formatException(self, ei: object) -> str:  # noqa: N802 (logging's name)
        return ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_text = None
        return " ".join(super().format(record).split("\n", 1)[:1])


class _TracebacksToLog:
    """stderr that moves traceback blocks to a log file and passes everything else through.

    Beam prints a failed bundle's traceback straight to stderr (sdk_worker), once per attempt;
    without --debug the boundary's one line is what the user sees, and the log file keeps them.
    """

    def __init__(self, real: object, log_path: str) -> None:
        self._real, self.log_path = real, log_path

    def write(self, text: str) -> int:
        if "Traceback (most recent call last)" in text:
            with open(self.log_path, "a", encoding="utf-8") as log:  # a local temp file
                log.write(text)
            return len(text)
        return int(self._real.write(text))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@contextlib.contextmanager
def _logging(debug: bool) -> Iterator[None]:
    """One-line log records (no tracebacks) unless --debug; restored afterwards (tests call
    ``main`` in-process, and their captured stderr closes after each test)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    quiet = [
        logging.getLogger(n)
        for n in ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker")
    ]
    levels = [q.level for q in quiet]
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(logging.BASIC_FORMAT)
        if debug
        else _NoTracebacks("%(levelname)s:%(name)s:%(message)s")
    )
    root.handlers, root.level = [handler], logging.WARNING
    if not debug:
        # Beam logs each failed attempt of a bundle; the boundary prints the error once.
        for q in quiet:
            q.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.handlers, root.level = saved
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def run_command(name: str, argv: Sequence[str]) -> object:
    c = COMMANDS[name]
    settings, pipeline_args, _ = command_line(name).parse(argv)
    fn = stages.load(c.run)  # TensorFlow's start-up banner is muted where it loads (quiet.py)
    return fn(settings, pipeline_args) if c.beam else fn(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = quiet.configure(list(sys.argv[1:] if argv is None else argv))  # before any import
    debug = "--debug" in args
    if args[:1] == ["--debug"]:  # `vsearch --debug COMMAND ...` works too
        args = args[1:] + ["--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"vsearch: error: unknown command {name!r} (see vsearch --help)", file=sys.stderr)
        return 2
    real_stderr = sys.stderr
    log_path = os.path.join(tempfile.gettempdir(), f"vsearch-{name}-{os.getpid()}.log")
    if not debug:
        sys.stderr = _TracebacksToLog(real_stderr, log_path)  # type: ignore[assignment]
    try:
        with _logging(debug):
            run_command(name, rest)
    except flags.UsageError as e:
        print(f"vsearch {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during a Beam job (pipelines/stage.py)
        print(f"vsearch {name}: {e or 'interrupted'}", file=real_stderr)
        return int(getattr(e, "exit_code", 130))
    except Exception as e:
        if debug:
            traceback.print_exc()
        else:
            with open(log_path, "a", encoding="utf-8") as log:
                traceback.print_exc(file=log)
        where = "" if debug else f" (traceback: {log_path}; --debug prints it)"
        print(f"vsearch {name}: error: {one_line(e)}{where}", file=real_stderr)
        return 1
    finally:
        sys.stderr = real_stderr
    return 0


def entry() -> NoReturn:
    """The ``vsearch`` console script and ``python -m vsearch``: ``main``, then the exit."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once its output is flushed. After TensorFlow, without
    Python's finalisation: TensorFlow's teardown takes ~1.2 s of every run (1.4 s with Beam)
    after the command's work is done. Not while a child process (Beam's shared-model server, a
    multi_processing worker) waits for the normal exit to stop it."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    if "tensorflow" not in sys.modules or multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    entry()
