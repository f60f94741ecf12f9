"""What the image and Dataflow workers get: exactly the pinned set (CPU or GPU variant), one faiss,
this package built as Beam's stager builds it, and Beam's boot binary as the entrypoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from deploy import flex_launch
from deploy import worker_requirements as wr

REPO = Path(__file__).resolve().parents[1]
UV = str(Path(sys.executable).with_name("uv"))
DOCKERFILE = REPO / "deploy" / "Dockerfile"
BEAM_BASE = REPO / "deploy" / "beam-base-image-requirements-py311.txt"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_canon(name)] = version
    return pins


def _uv_compile(*args: str) -> dict[str, str]:
    out = subprocess.run(
        [
            UV, "pip", "compile", "--quiet", "--no-header", "--no-annotate",
            "--constraint", str(REPO / "constraints.txt"),
            "--python-version", wr.PYTHON_VERSION, "--python-platform", wr.PLATFORM, *args,
        ],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=240,
    ).stdout  # fmt: skip
    return {_canon(line.split("==")[0]): line.split("==")[1] for line in out.splitlines() if line}


def test_worker_pins_are_constraints_pins_for_everything_pyproject_needs() -> None:
    constraints = _pins(REPO / "constraints.txt")
    cpu, gpu = _pins(wr.CPU_FILE), _pins(wr.GPU_FILE)
    required, _ = wr.setup_lists()
    assert {wr._name(r) for r in required} <= cpu.keys()
    assert {n: v for n, v in cpu.items() if constraints.get(n) != v} == {}  # all from constraints
    assert not {"pytest", "ruff", "fastapi", "apache-airflow"} & cpu.keys()  # workers only
    # GPU: the CPU set plus TensorFlow's CUDA wheels; nothing removed, nothing at another version.
    assert {n: v for n, v in gpu.items() if n in cpu and cpu[n] != v} == {}
    assert cpu.keys() <= gpu.keys()
    cuda = gpu.keys() - cpu.keys()
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= cuda
    assert all(n.startswith("nvidia-") for n in cuda), cuda
    assert [n for n in gpu if "faiss" in n] == ["faiss-cpu"]  # one faiss, the tested one


@pytest.mark.timeout(300)
def test_every_extra_together_installs_one_faiss() -> None:
    """`pip install ".[gpu,serve,test]"` as the resolver sees it: one faiss build, not two."""
    resolved = _uv_compile(
        "pyproject.toml", "--extra", "gpu", "--extra", "serve", "--extra", "test"
    )
    assert [n for n in resolved if "faiss" in n] == ["faiss-cpu"]
    assert "nvidia-cudnn-cu12" in resolved and "tensorflow" in resolved


@pytest.mark.timeout(300)
def test_worker_requirement_files_are_what_pyproject_and_constraints_resolve_to() -> None:
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
def test_image_set_and_stager_sdist_install_check_and_import_in_a_fresh_venv(
    tmp_path: Path,
) -> None:
    """What deploy/Dockerfile does, in a clean venv: the CPU pins with --no-deps, this package from
    the sdist Beam's stager builds for --setup_file pyproject.toml, then `pip check` and imports."""
    dist = tmp_path / "dist"
    dist.mkdir()
    build = (
        "import sys\nfrom apache_beam.runners.portability.stager import Stager\n"
        "print(Stager._build_setup_package(sys.argv[1], sys.argv[2]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", build, str(REPO / "pyproject.toml"), str(dist)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    sdist = Path(out.stdout.strip().splitlines()[-1])
    assert sdist.name == "visual_search-0.1.0.tar.gz"
    with tarfile.open(sdist) as tar:
        info = tar.extractfile("visual_search-0.1.0/PKG-INFO").read().decode()  # type: ignore[union-attr]
        assert "visual_search-0.1.0/LICENSE" in tar.getnames()
    assert "License-Expression: Apache-2.0" in info

    venv = tmp_path / "image"
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # pip from ensurepip
    subprocess.run(
        [UV, "pip", "install", "-q", "--python", python, "--no-deps", "-r", str(wr.CPU_FILE)],
        check=True,
    )
    # pip itself, as the Dockerfile: no dependencies, no index, the pinned setuptools builds it.
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         str(sdist)],
        check=True,
    )  # fmt: skip
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    freeze = subprocess.run(
        [UV, "pip", "freeze", "--python", python], check=True, capture_output=True, text=True
    ).stdout
    installed = dict(re.split(r"==| @ ", line, maxsplit=1) for line in freeze.splitlines())
    installed = {_canon(k): v for k, v in installed.items()}
    assert sdist.name in installed.pop("visual-search")  # pip records the file it came from
    installed.pop("pip", None)
    assert installed == _pins(wr.CPU_FILE)  # exactly the pins: nothing more, nothing less

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    probe = (
        "import pipelines.check_catalog, pipelines.preprocess, pipelines.embed, "
        "pipelines.build_index, models.train, models.gate, pipelines.gate, pipelines.publish, vsearch.cli, faiss\n"
        "print(pipelines.embed.__file__)"
    )
    out = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().startswith(str(venv))  # the installed package, not this checkout
    # The Flex Template entry point as the image runs it: a file beside, not inside, the package.
    launcher = tmp_path / "flex_launch.py"
    launcher.write_text((REPO / "deploy" / "flex_launch.py").read_text())
    out = subprocess.run(
        [python, str(launcher), "--stage=build-index", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("usage: vsearch build-index"), out


def test_flex_launch_moves_the_stage_parameter_to_the_command() -> None:
    assert flex_launch.to_cli_args(["--date=2026-12-04", "--stage=embed", "--runner=X"]) == [
        "embed",
        "--date=2026-12-04",
        "--runner=X",
    ]
    assert flex_launch.to_cli_args(["--stage", "preprocess", "--full"]) == ["preprocess", "--full"]
    with pytest.raises(SystemExit, match="--stage"):
        flex_launch.to_cli_args(["--date=2026-12-04"])


def _major(version: str) -> tuple[int, ...]:
    """The part of a version that signals incompatible change: 3.17.1 -> (3,), 0.4.1 -> (0, 4)."""
    out = []
    for part in Version(version).release:
        out.append(part)
        if part:
            break
    return tuple(out)


def _documented_differences() -> dict[str, tuple[str, str]]:
    """The table in docs/deploy.md under "Our pins against Beam's base image"."""
    text = DEPLOY_DOC.read_text().split("### Our pins against Beam's base image", 1)[1]
    rows = re.findall(r"^\| `([^`]+)` \| ([^ |]+) \| ([^ |]+) \|", text, flags=re.M)
    return {name: (beam, ours) for name, beam, ours in rows}


def test_worker_pins_agree_with_beams_base_image_except_the_documented_differences() -> None:
    """Where Beam's SDK image pins a package we pin too, ours is the same major version and not
    older, or docs/deploy.md names the difference (no undocumented one, no stale row)."""
    beam = _pins(BEAM_BASE)
    assert "protobuf" in beam and "grpcio" in beam and len(beam) > 150  # the whole file is there
    for path in (wr.CPU_FILE, wr.GPU_FILE):
        ours = _pins(path)
        differ = {
            name: (beam[name], ours[name])
            for name in beam.keys() & ours.keys()
            if _major(ours[name]) != _major(beam[name]) or Version(ours[name]) < Version(beam[name])
        }
        assert differ == _documented_differences(), path.name
    # The wire protocol between Beam's runner and SDK harness: the same protobuf major.
    assert _major(_pins(wr.CPU_FILE)["protobuf"]) == _major(beam["protobuf"])


def test_worker_pins_meet_beam_2_77s_own_requirements_with_its_gcp_extra() -> None:
    """What the pinned apache-beam release itself declares (its core and `gcp` requirements), read
    from its installed metadata; `pip check` alone skips an extra's requirements."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    ours = _pins(wr.CPU_FILE)
    assert version("apache-beam") == ours["apache-beam"]
    checked = 0
    for line in requires("apache-beam") or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": "gcp", "python_version": PY}):
            continue
        name = _canon(req.name)
        assert name in ours, f"apache-beam needs {req}, which the worker set does not pin"
        assert req.specifier.contains(ours[name], prereleases=True), f"{req} vs {ours[name]}"
        checked += 1
    assert checked > 30  # the core list and the gcp extra, not an empty parse


def _instructions(dockerfile: Path) -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_follows_dataflows_custom_container_and_flex_template_conventions() -> None:
    instructions = _instructions(DOCKERFILE)
    beam = _pins(REPO / "constraints.txt")["apache-beam"]
    froms = [i for i in instructions if i.startswith("FROM ")]
    assert froms[-1] == f"FROM python:{PY}-slim-bookworm"  # Beam's SDK image: Debian bookworm
    # Beam's boot binary from the SDK image of the pinned Beam and this Python, as the entrypoint.
    boot = f"COPY --from=apache/beam_python{PY}_sdk:{beam} /opt/apache/beam /opt/apache/beam"
    assert boot in instructions
    assert instructions[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    assert "COPY --from=launcher /opt/google/dataflow/python_template_launcher" in " ".join(
        instructions
    )
    # The Flex Template launcher runs the copied entry point; the image stages nothing itself.
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/vsearch/flex_launch.py" in instructions
    assert "COPY deploy/flex_launch.py /opt/vsearch/flex_launch.py" in instructions
    assert not re.search(r"FLEX_TEMPLATE_PYTHON_(REQUIREMENTS|SETUP)_FILE=", DOCKERFILE.read_text())
    assert any(re.search(r"pip install --no-cache-dir --no-deps -r ", i) for i in instructions)
    # Everything it copies from the context exists and is let in by its .dockerignore, including
    # what pyproject.toml's build reads (readme, licence files).
    ignore = (DOCKERFILE.parent / (DOCKERFILE.name + ".dockerignore")).read_text().splitlines()
    copies = [i.split()[1:-1] for i in instructions if i.startswith("COPY ") and "--from" not in i]
    sources = [src for srcs in copies for src in srcs]
    assert all(f"!{src}" in ignore for src in sources), sources
    assert all((REPO / src).exists() for src in sources), sources
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {project["readme"], *project["license-files"], "pyproject.toml"} <= set(sources)
    assert {"deploy/requirements-worker.txt", "deploy/requirements-worker-gpu.txt"} <= set(sources)
    # Every package the project installs is in the image.
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.rstrip("*") for p in found["packages"]["find"]["include"]} <= set(sources)


@pytest.mark.parametrize(
    ("variant", "requirements"),
    [("cpu", "requirements-worker.txt"), ("gpu", "requirements-worker-gpu.txt"), ("tpu", None)],
)
def test_dockerfile_variant_picks_its_pinned_set(
    variant: str, requirements: str | None, tmp_path: Path
) -> None:
    """The Dockerfile's install step, run by sh with a pip that records its arguments."""
    (script,) = [
        i[4:] for i in _instructions(DOCKERFILE) if i.startswith("RUN ") and "$VARIANT" in i
    ]
    fake = tmp_path / "pip"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "VARIANT": variant}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    if requirements is None:
        assert out.returncode != 0 and "VARIANT must be cpu or gpu" in out.stderr and not calls
        return
    assert out.returncode == 0, out.stderr
    assert calls == [f"install --no-cache-dir --no-deps -r /opt/vsearch/{requirements}", "check"]
