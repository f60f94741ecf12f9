"""The layers in the folder tree hold: import-linter's contracts (pyproject.toml) are kept, and
the two folders import-linter cannot cover (tests/ and dags/ are no layer packages it checks) are
held to theirs here: benchmarks never import tests, the DAG files import only ``vsearch``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The project's top-level packages (tests included): what a DAG file must not reach around
# vsearch for.
PROJECT_PACKAGES = frozenset(p.parent.name for p in ROOT.glob("*/__init__.py"))


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_back_arrow_is_caught(tmp_path: Path) -> None:
    """The contract is live: an index module importing a network module breaks it."""
    bad = ROOT / "index" / "_arch_probe_back_arrow.py"
    bad.write_text("import models.model  # noqa: F401\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        done = subprocess.run(
            [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    finally:
        bad.unlink()
    assert done.returncode != 0
    assert "index._arch_probe_back_arrow -> models.model" in done.stdout


def imported_packages(path: Path) -> set[str]:
    """The top-level names a Python file imports, at any depth (an import inside a function
    counts: it runs the same when called). Relative imports stay inside their own package."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def offenders(folder: Path, forbidden: frozenset[str]) -> dict[str, list[str]]:
    """Each file under ``folder`` that imports one of ``forbidden``: {relative path: names}."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        bad = sorted(imported_packages(path) & forbidden)
        if bad:
            found[str(path.relative_to(folder))] = bad
    return found


def test_benchmarks_do_not_import_tests() -> None:
    """Tests may use the benchmarks' helpers (vectors, the GCS emulator, the fake embedder);
    never the other way round: a benchmark must run without the test suite."""
    assert offenders(ROOT / "benchmarks", frozenset({"tests"})) == {}


def test_dags_import_only_the_application_layer() -> None:
    """dags/ is Airflow's folder, not a package, so import-linter does not see it: its files
    reach the project only through ``vsearch`` (the stage registry); they import each other as
    top-level modules (``import vsearch_gcp``), which no project package is named like."""
    dags = ROOT / "dags"
    assert list(dags.glob("*.py")), "no DAG files found"
    assert offenders(dags, PROJECT_PACKAGES - {"vsearch"}) == {}


def test_the_import_scan_sees_lazy_and_dotted_imports(tmp_path: Path) -> None:
    """The two checks above are live: imports inside functions and ``from a.b import c`` count,
    relative imports and names that merely start alike do not."""
    (tmp_path / "bench.py").write_text(
        "import os\nfrom . import helpers\nimport testsuite\n\n"
        "def f():\n    from tests.fixtures import x\n    import index.searcher\n"
    )
    assert offenders(tmp_path, frozenset({"tests"})) == {"bench.py": ["tests"]}
    assert offenders(tmp_path, PROJECT_PACKAGES - {"vsearch"}) == {"bench.py": ["index", "tests"]}
