"""What Dataflow workers get: exactly the pinned set, for CPU workers and for the GPU image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import worker_requirements as wr

REPO = Path(__file__).resolve().parents[1]
UV = str(Path(sys.executable).with_name("uv"))
DOCKERFILE = REPO / "deploy" / "worker-gpu.Dockerfile"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_worker_pins_are_constraints_pins_for_everything_setup_py_needs() -> None:
    constraints = _pins(REPO / "constraints.txt")
    cpu, gpu = _pins(wr.CPU_FILE), _pins(wr.GPU_FILE)
    required, _ = wr.setup_lists()
    assert {wr._name(r) for r in required} <= cpu.keys()
    assert {n: v for n, v in cpu.items() if constraints.get(n) != v} == {}  # all from constraints
    assert not {"pytest", "ruff", "fastapi", "apache-airflow"} & cpu.keys()  # workers only
    # GPU: the same pins wherever constraints.txt has one; CUDA builds instead of CPU packages.
    assert {n: v for n, v in gpu.items() if n in constraints and constraints[n] != v} == {}
    assert gpu["tensorflow"] == constraints["tensorflow"] and "faiss-cpu" not in gpu
    assert {"faiss-gpu-cu12", "nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= gpu.keys()


@pytest.mark.timeout(300)
def test_worker_requirement_files_are_what_setup_py_and_constraints_resolve_to() -> None:
    """`make worker-requirements` would write the committed files (resolved by uv, both sets)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "worker_requirements.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sdist_with_the_worker_pins_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    """What a Dataflow worker does with --requirements_file and --setup_file, in a clean venv."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (sdist,) = dist.glob("visual_search-*.tar.gz")
    venv = tmp_path / "worker"
    python = str(venv / "bin" / "python")
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [UV, "pip", "install", "-q", "--python", python, "-r", str(wr.CPU_FILE)], check=True
    )
    subprocess.run([UV, "pip", "install", "-q", "--python", python, str(sdist)], check=True)

    freeze = subprocess.run(
        [UV, "pip", "freeze", "--python", python], check=True, capture_output=True, text=True
    ).stdout
    installed = dict(re.split(r"==| @ ", line, maxsplit=1) for line in freeze.splitlines())
    assert installed.pop("visual-search").endswith(sdist.name)
    assert {k.lower(): v for k, v in installed.items()} == _pins(wr.CPU_FILE)  # nothing else

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    probe = (
        "import pipelines.check_catalog, pipelines.preprocess, pipelines.embed, "
        "pipelines.build_index, models.train, models.gate, index.publish, vsearch.app.cli, faiss\n"
        "print(pipelines.embed.__file__)"
    )
    out = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().startswith(str(venv))  # the installed package, not this checkout


def test_gpu_dockerfile_follows_dataflows_custom_container_convention() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0] == "FROM apache/beam_python3.11_sdk:2.77.0"
    beam = _pins(REPO / "constraints.txt")["apache-beam"]
    assert instructions[0].endswith(f":{beam}")  # the SDK image matches the launching Beam
    assert f"python{sys.version_info.major}.{sys.version_info.minor}_sdk" in instructions[0]
    assert instructions[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    assert "COPY deploy/requirements-worker-gpu.txt" in text
    assert re.search(
        r"pip install --no-cache-dir --no-deps -r \S+requirements-worker-gpu.txt", text
    )
    # Everything it copies is allowed into the build context by its .dockerignore.
    ignore = (DOCKERFILE.parent / (DOCKERFILE.name + ".dockerignore")).read_text().splitlines()
    copied = [line.split()[1] for line in instructions if line.startswith("COPY ")]
    assert all(f"!{src}" in ignore for src in copied), copied
    assert all((REPO / src).exists() for src in copied)
