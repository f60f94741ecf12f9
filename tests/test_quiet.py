"""`vsearch` starts light and quiet: a light command (--help, publish, query and serve before
they embed a photo) loads neither Beam nor TensorFlow, and TensorFlow's and absl's start-up
noise stays off unless asked (--verbose), wherever TensorFlow is first imported."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.own_process import REPO, run_json
from vsearch import quiet

HEAVY = ("apache_beam", "tensorflow")

# Runs `vsearch ARGS` (or imports a module) in a fresh interpreter, then prints which heavy
# packages it loaded as the last line of stdout.
_HEAVY_AFTER = r"""
import json, sys
what, args = sys.argv[1], sys.argv[2:]
if what == "import":
    __import__(args[0])
else:
    from vsearch import cli
    try:
        cli.main(args)
    except SystemExit:  # --help exits from the parser
        pass
print(json.dumps(sorted(m for m in ("apache_beam", "tensorflow") if m in sys.modules)))
"""


def heavy_modules_after(*argv: str) -> list[str]:
    return list(run_json(_HEAVY_AFTER, *argv)[0])


@pytest.mark.parametrize(
    "argv",
    [
        ("cli", "--help"),
        ("cli", "publish", "--help"),
        ("cli", "query", "--help"),
        ("cli", "serve", "--help"),
        ("cli", "finish", "--help"),
        ("import", "vsearch.finish"),  # and what `vsearch finish` runs:
        ("import", "pipelines.preprocess"),
        ("import", "pipelines.embed"),
        ("import", "pipelines.publish"),  # what `vsearch publish` runs
        ("import", "vsearch.query"),
        ("import", "vsearch.serve.app"),  # serve's routes, index holder and loader
    ],
    ids=lambda a: " ".join(a),
)
def test_light_commands_load_neither_beam_nor_tensorflow(argv: tuple[str, ...]) -> None:
    assert heavy_modules_after(*argv) == []


def test_publish_runs_without_beam_or_tensorflow(tmp_path: Path) -> None:
    from core import paths, pointers
    from tests import serve_fixtures as fx

    workdir, version, build_id = str(tmp_path / "work"), "20260101-light", "20260101T000000Z-aaaaaa"
    out = paths.index_build_dir(workdir, version, build_id)
    manifest = fx.build(fx.clustered(600, 16, seed=1), out, version, build_id, 2, "Flat", 2)
    manifest_uri = manifest.manifest_uri
    argv = ("cli", "publish", "--workdir", workdir, "--manifest", manifest_uri)
    assert heavy_modules_after(*argv) == []
    assert pointers.read_pointer(paths.current_index_pointer(workdir)).value == manifest_uri


def test_configure_removes_the_flag_and_says_whether_the_run_is_verbose() -> None:
    assert quiet.configure(["embed", "--verbose", "--full"])[1] is True
    assert quiet.configure(["embed", "--verbose", "--full"])[0] == ["embed", "--full"]
    assert quiet.configure(["embed", "--full"]) == (["embed", "--full"], False)


@pytest.mark.timeout(600)
def test_a_tensorflow_stage_prints_only_its_error_unless_verbose(tmp_path: Path) -> None:
    """gate imports TensorFlow; a missing candidate is a user error: one line, no TF banners."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    cmd = [sys.executable, "-m", "vsearch.cli", "gate", "--workdir", str(tmp_path)]
    runs = [
        subprocess.Popen(
            [*cmd, "--candidate", "nope", *extra],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in ((), ("--verbose",))
    ]
    (_, quiet_err), (_, verbose_err) = (r.communicate(timeout=500) for r in runs)
    assert [r.returncode for r in runs] == [1, 1]
    error = "vsearch gate: error: model nope has no config.json"
    assert quiet_err.startswith(error) and len(quiet_err.strip().splitlines()) == 1, quiet_err
    lines = verbose_err.strip().splitlines()
    assert lines[-1].startswith(error) and len(lines) > 1  # TensorFlow's own start-up lines


def quiet_stderr_of(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(list(cmd), env=env, cwd=REPO, capture_output=True, text=True, timeout=500)


@pytest.mark.timeout(600)
def test_tensorflow_imported_outside_a_stage_module_is_quiet_too(tmp_path: Path) -> None:
    """train's settings load TensorFlow lazily (to check label keys), before its stage module:
    the banner is muted at the import itself, wherever it happens."""
    cli = [sys.executable, "-m", "vsearch.cli"]
    run = quiet_stderr_of(*cli, "train", "--workdir", str(tmp_path), "--date", "2026-01-01")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsearch train: error: "), run.stderr


@pytest.mark.timeout(600)
def test_keras_fit_on_a_dataset_prints_nothing(tmp_path: Path) -> None:
    """A first TensorFlow import in a thread and a Keras fit on a tf.data.Dataset (train's way,
    which makes Keras warn that shuffle=True is ignored): nothing on stderr."""
    script = """
import threading
from tests.own_process import REPO, run_json
from vsearch import quiet
quiet.configure([])
t = threading.Thread(target=lambda: __import__("tensorflow"))
t.start(); t.join()
import keras, numpy as np, tensorflow as tf
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.compile(loss="mse")
data = tf.data.Dataset.from_tensor_slices((np.ones((4, 2)), np.ones((4, 1)))).batch(2)
model.fit(data, epochs=1, verbose=0)
print("fitted")
"""
    run = quiet_stderr_of(sys.executable, "-c", script)
    assert run.returncode == 0 and run.stdout.strip() == "fitted", run.stderr
    assert run.stderr == ""


def test_beams_batching_fit_warning_prints_nothing() -> None:
    """Beam's BatchElements warns through numpy when its timing fit has few batches (a small
    day's embed): not the user's problem, so nothing on stderr; other warnings still print."""
    script = """
import warnings, numpy as np
from tests.own_process import REPO, run_json
from vsearch import quiet
quiet.configure([])
warnings.warn("Polyfit may be poorly conditioned", np.exceptions.RankWarning)
warnings.warn("something else")
"""
    run = quiet_stderr_of(sys.executable, "-c", script)
    assert run.returncode == 0, run.stderr
    assert "Polyfit" not in run.stderr and "something else" in run.stderr


@pytest.mark.timeout(900)
def test_serve_logs_swaps_and_refusals_and_requests_only_when_asked(tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    from core import paths, pointers
    from tests import serve_fixtures as fx
    from tests.test_serve_swap import corrupt

    workdir, catalog, emb = fx.make_served_workdir(str(tmp_path))

    def serve(*extra: str) -> tuple[subprocess.Popen[str], str]:
        port = fx.free_port()
        cmd = [sys.executable, "-m", "vsearch.cli", "serve", "--workdir", workdir]
        cmd += ["--port", str(port), "--poll-s", "0.2", "--calibration-photos", "0", *extra]
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        out, both = subprocess.PIPE, subprocess.STDOUT  # uvicorn's access log goes to stdout
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=both, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # a guard against a hung server, not a timing assert
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the service never became ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return proc, url
            time.sleep(0.2)

    def search(url: str) -> None:
        r = httpx.post(f"{url}/search", content=fx_photo(), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text

    def stop(proc: subprocess.Popen[str]) -> str:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=120)[0]

    proc, url = serve()
    search(url)
    first = pointers.read_pointer(paths.current_index_pointer(workdir))
    swapped = fx.build_and_publish(workdir, catalog, "20260101T000001Z-bbbbbb", emb)
    fx.wait_ready(url, "20260101T000001Z-bbbbbb")
    # CURRENT set behind publish's back to the first build, corrupted since: the service refuses it.
    refused = str(first.value)
    corrupt(refused)
    pointer = paths.current_index_pointer(workdir)
    pointers.compare_and_swap(pointer, refused, pointers.read_pointer(pointer))
    deadline = time.monotonic() + 120
    while not httpx.get(f"{url}/readyz").json().get("last_error"):
        assert time.monotonic() < deadline, "the corrupt index was not refused"
        time.sleep(0.1)
    search(url)
    log = stop(proc)
    assert f"serving index {swapped}" in log and f"refused index {refused}" in log, log
    assert "POST /search" not in log and "GET /readyz" not in log, log
    assert "absl" not in log and "oneDNN" not in log and "cuda" not in log, log

    proc, url = serve("--access-log")
    search(url)
    assert "POST /search" in stop(proc)


def fx_photo() -> bytes:
    from tests import serve_fixtures as fx
    from tests.test_index_query import photo

    return photo(fx.listing_rgb(7), "PNG")


def test_beams_false_resource_warning_is_dropped_and_other_records_kept() -> None:
    script = """
import logging
from tests.own_process import REPO, run_json
from vsearch import quiet
quiet.configure([])
logging.warning("Resource module is not available for current platform, memory usage cannot be fetched.")
logging.warning("a real warning")
"""
    run = quiet_stderr_of(sys.executable, "-c", script)
    assert run.returncode == 0 and run.stderr == "WARNING:root:a real warning\n", run.stderr
