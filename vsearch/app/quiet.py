"""Start-up noise off by default: TensorFlow's and absl's banners are not what a user ran for.

``vsearch`` calls ``configure(argv)`` before importing a stage; ``--verbose`` (anywhere on the
command line) keeps every log line. Errors still reach the user: as Python exceptions, which the
CLI prints as one line, and as ERROR-level Python log records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

VERBOSE_FLAG = "--verbose"


def configure(argv: list[str]) -> tuple[list[str], bool]:
    """Removes ``--verbose`` from ``argv`` and, without it, silences start-up logs.

    Must run before TensorFlow is imported: its C++ side reads TF_CPP_MIN_LOG_LEVEL once, at load.
    Returns the remaining arguments and whether the run is verbose.
    """
    verbose = VERBOSE_FLAG in argv
    rest = [a for a in argv if a != VERBOSE_FLAG]
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
    return rest, verbose


@contextlib.contextmanager
def native_stderr_muted(enabled: bool = True) -> Iterator[None]:
    """Drops what is written to file descriptor 2 inside the block (a stage module's import).

    XLA logs "could not find cuda drivers" through absl before any log level applies, so only
    the descriptor can stop it. Exceptions raised inside still propagate, and are printed after
    the descriptor is restored.
    """
    if not enabled:
        yield
        return
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
