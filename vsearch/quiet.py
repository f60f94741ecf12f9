"""Start-up noise off by default: TensorFlow's and absl's banners are not what a user ran for.

``vsearch`` calls ``configure(argv)`` before importing a stage; ``--verbose`` (anywhere on the
command line) keeps every log line. Errors still reach the user: as Python exceptions, which the
CLI prints as one line, and as ERROR-level Python log records.

TensorFlow is imported lazily (a light command never loads it), so its first import can happen
anywhere: in a stage module, in a settings check, in the service's index loader. ``configure``
therefore mutes its banner at the import itself (``_MuteFirstImport``), not around one call site.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

VERBOSE_FLAG = "--verbose"
# Imported with file descriptor 2 muted: their native start-up lines bypass every log level.
NOISY_NATIVE_MODULES = ("tensorflow",)
# Python warnings that describe our own correct use of a library, not a problem of the run.
# Keras warns that fit(shuffle=True) is ignored for a tf.data.Dataset: ours is shuffled already.
# Beam's BatchElements fits batch sizes to timings with numpy's polyfit, which warns on the few
# batches of a small day; Beam copes with that fit itself.
IGNORED_WARNINGS = (
    r"`shuffle=True` was passed, but will be ignored",
    r"Polyfit may be poorly conditioned",
)
# Root-logger records that are false: Beam's RunInference says `resource` is missing on Linux when
# an optional import beside it failed (apache_beam/ml/inference/base.py), once per bundle.
IGNORED_ROOT_RECORDS = ("Resource module is not available for current platform",)


def configure(argv: list[str]) -> tuple[list[str], bool]:
    """Removes ``--verbose`` from ``argv`` and, without it, silences start-up logs.

    Must run before TensorFlow is imported: its C++ side reads TF_CPP_MIN_LOG_LEVEL once, at load.
    Returns the remaining arguments and whether the run is verbose.
    """
    verbose = VERBOSE_FLAG in argv
    rest = [a for a in argv if a != VERBOSE_FLAG]
    let_dataflow_job_id_through()
    if not verbose:
        # 3 = C++ INFO, WARNING and ERROR off: the CPU-features banner, "could not find cuda
        # drivers" and cuInit errors on CPU machines. A real failure still raises in Python.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        for name in ("tensorflow", "absl", "keras"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            from absl import logging as absl_logging  # small, no TensorFlow

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # absl comes with TensorFlow; without it there is nothing to quiet
            pass
        for message in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        root = logging.getLogger()
        if not any(isinstance(f, _DropRecords) for f in root.filters):
            root.addFilter(_DropRecords(IGNORED_ROOT_RECORDS))
        for name in NOISY_NATIVE_MODULES:
            mute_first_import(name)
    return rest, verbose


class _DropRecords(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


class _MuteFirstImport(importlib.abc.MetaPathFinder):
    """Finds one top-level module the normal way and mutes fd 2 while it executes; then steps
    aside (only the first import prints the banner)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the finders after this one
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_muted(module: ModuleType) -> None:
            with native_stderr_muted():
                execute(module)

        spec.loader.exec_module = exec_muted  # type: ignore[method-assign]
        return spec


def mute_first_import(name: str) -> None:
    """Mute what the first ``import NAME`` writes to fd 2, wherever it happens (no-op if done)."""
    if name in sys.modules:
        return
    if not any(isinstance(f, _MuteFirstImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _MuteFirstImport(name))


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """Drops what is written to file descriptor 2 inside the block (TensorFlow's import).

    XLA logs "could not find cuda drivers" through absl before any log level applies, so only
    the descriptor can stop it. Exceptions raised inside still propagate, and are printed after
    the descriptor is restored. The descriptor is the process's: another thread's stderr lines
    in the block are dropped too, so a server imports TensorFlow before its threads start.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


# Beam's DataflowRunner logs the new job's id at INFO, which the CLI's WARNING level drops; Airflow's
# Beam/Google providers find the job in exactly this line (JOB_ID_PATTERN in the Google provider's
# hooks/dataflow.py), so a killed task can cancel its job and the UI can link to it.
DATAFLOW_JOB_LOGGER = "apache_beam.runners.dataflow.internal.apiclient"
DATAFLOW_JOB_ID_LINE = "Created job with id: ["


def _is_job_id_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or str(record.msg).startswith(DATAFLOW_JOB_ID_LINE)


def let_dataflow_job_id_through() -> None:
    """Beam's "Created job with id: [ID]" reaches stderr whatever the log level; its other INFO
    lines from that logger stay out."""
    logger = logging.getLogger(DATAFLOW_JOB_LOGGER)
    if _is_job_id_or_warning not in logger.filters:
        logger.addFilter(_is_job_id_or_warning)
    logger.setLevel(logging.INFO)
