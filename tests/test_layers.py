"""The layout is a fact: one import name, the layers contract kept, the documented entry points working.

The stage folders (``scanner/``, ``workers/``, ...) install as subpackages of
``dfscan`` through setuptools' ``package-dir``. import-linter (grimp) only
reads a package from one directory tree, so the contract is checked on a view
of the installed layout: a temporary ``dfscan/`` whose entries are links to
the repository's files, built from the same ``package-dir`` table.
"""

from __future__ import annotations

import ast
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests._view import PACKAGE_DIR, build_view

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GENERIC_NAMES = ("db", "workers", "trt", "scanner", "detector")


def _bin(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else (shutil.which(name) or name)


def test_every_stage_folder_installs_under_dfscan():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert {f"dfscan.{name}" for name in GENERIC_NAMES} <= packages
    assert all(p == "dfscan" or p.startswith("dfscan.") for p in packages), packages
    assert {PACKAGE_DIR[f"dfscan.{name}"] for name in GENERIC_NAMES} == set(GENERIC_NAMES)


def test_layers_contract_is_kept(tmp_path):
    """lint-imports: the layers contract (every package) and the forbidden imports, on the installed layout."""
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    in_layers = {name.strip() for layer in layers for name in layer.split("|")}
    assert set(PACKAGE_DIR) - {"dfscan"} <= in_layers, "a package is missing from the layers contract"
    view = build_view(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(view)}
    # cwd is the view, not the repository: the contract must see dfscan as it installs.
    proc = subprocess.run([_bin("lint-imports"), str(REPO / "pyproject.toml"), "--no-cache"], cwd=view, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The check can fail: a runtime module that imports the workers breaks the contract."""
    view = build_view(tmp_path)
    trt = view / "dfscan" / "trt"
    trt.unlink()
    shutil.copytree(REPO / "trt", trt, ignore=shutil.ignore_patterns("__pycache__"))
    (trt / "upward.py").write_text("from dfscan.workers.scoring.loop import run_chunks\n")
    proc = subprocess.run([_bin("lint-imports"), str(REPO / "pyproject.toml"), "--no-cache"], cwd=view,
                          env={**os.environ, "PYTHONPATH": str(view)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "dfscan.trt.upward -> dfscan.workers.scoring.loop" in proc.stdout


def test_only_dfscan_is_importable_from_the_installation(tmp_path):
    """Outside the repository, ``import db`` fails and ``import dfscan.db`` works."""
    code = (
        "import importlib.util, json\n"
        f"names = {GENERIC_NAMES!r}\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))\n"
        "import dfscan.db, dfscan.workers, dfscan.trt, dfscan.scanner, dfscan.detector\n"
        "print(dfscan.db.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    found, db_file = proc.stdout.splitlines()
    assert found == '{"db": false, "workers": false, "trt": false, "scanner": false, "detector": false}'
    assert Path(db_file).parent.name == "db"
    proc = subprocess.run([sys.executable, "-c", "import db"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode != 0 and "No module named 'db'" in proc.stderr


def test_alembic_command_from_the_readme(tmp_path):
    """``alembic -c db/migrations/alembic.ini upgrade head`` takes its URL from DFSCAN_DB_URL."""
    target = tmp_path / "alembic.db"
    env = {**os.environ, "DFSCAN_DB_URL": f"sqlite:///{target}"}
    proc = subprocess.run([_bin("alembic"), "-c", "db/migrations/alembic.ini", "upgrade", "head"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(target) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert {"scans", "results", "scan_results", "alembic_version"} <= tables


@pytest.mark.parametrize("args", [["--help"], ["scan", "--help"], ["worker", "--help"]])
def test_console_script_runs(args):
    proc = subprocess.run([_bin("dfscan"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: dfscan" in proc.stdout


# --- Each contract can fail -------------------------------------------------------------------------------


def lint_imports(view: Path, *contracts: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on ``view`` (as :func:`test_layers_contract_is_kept` runs it), limited to ``contracts``."""
    return subprocess.run([_bin("lint-imports"), str(REPO / "pyproject.toml"), "--no-cache", "--no-logo",
                           *(f"--contract={c}" for c in contracts)],
                          cwd=view, env={**os.environ, "PYTHONPATH": str(view)}, capture_output=True, text=True,
                          timeout=300)


def view_with_module(root: Path, module: str, source: str) -> Path:
    """:func:`build_view` with one more module, ``module`` (e.g. ``dfscan.trt.upward``), holding ``source``.

    The stage folder that holds it is copied into the view rather than linked, so the
    repository itself is never written to.
    """
    view = build_view(root)
    parts = module.split(".")
    top = view / parts[0] / parts[1]
    if top.is_symlink():
        target = top.resolve()
        top.unlink()
        shutil.copytree(target, top, ignore=shutil.ignore_patterns("__pycache__"))
    path = view.joinpath(*parts).with_suffix(".py")
    assert path.parent.resolve().is_relative_to(view.resolve()), f"{path} would be written outside the view"
    path.write_text(source)
    return view


# (contract id, offending module, its source, the chain lint-imports must name).
BREAKS = [
    ("workers-by-concept", "dfscan.workers.images.offending", "import dfscan.workers.video\n",
     "dfscan.workers.images.offending -> dfscan.workers.video"),
    ("workers-by-concept", "dfscan.workers.reading.offending", "from dfscan.workers import scoring\n",
     "dfscan.workers.reading.offending -> dfscan.workers.scoring"),
    ("celery-only-in-the-fleet", "dfscan.workers.scoring.offending", "import celery\n",
     "dfscan.workers.scoring.offending -> celery"),
    ("celery-only-in-the-fleet", "dfscan.commands.offending", "from kombu import Connection\n",
     "dfscan.commands.offending -> kombu"),
    ("runtimes-take-tensors", "dfscan.trt.offending", "from PIL import Image\n", "dfscan.trt.offending -> PIL"),
]


def test_every_contract_has_a_test_that_breaks_it():
    ids = {c["id"] for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
    covered = {"layers"} | {contract for contract, *_ in BREAKS}  # layers: test_a_broken_layer_is_caught
    assert ids == covered, f"contracts without a breaking case: {ids - covered}; cases for no contract: {covered - ids}"


@pytest.mark.parametrize(("contract", "module", "source", "chain"), BREAKS, ids=[b[1] for b in BREAKS])
def test_a_broken_contract_is_caught(tmp_path, contract, module, source, chain):
    proc = lint_imports(view_with_module(tmp_path, module, source), contract)
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "0 kept, 1 broken" in proc.stdout and chain in proc.stdout, proc.stdout[-4000:]


# --- Static checks over the source ------------------------------------------------------------------------

MAX_FUNCTION_LINES = 80
# The product's folders are package-dir's; Alembic's migrations are generated, and exempt.
EXEMPT = (REPO / "db" / "migrations",)


def product_modules() -> dict[Path, str]:
    """Every product source file and its installed module name (``db/records.py`` -> ``dfscan.db.records``)."""
    out: dict[Path, str] = {}
    for package, folder in PACKAGE_DIR.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" in path.parts or any(path.is_relative_to(e) for e in EXEMPT):
                continue
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[path] = ".".join([package, *parts])
    return out


def long_functions(source: str, filename: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name length`` for each function longer than ``limit`` lines, ``def`` to its last line.

    Decorators are not counted; a nested function's lines count in its parent's too.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(f"{filename}:{node.lineno} {node.name} {length}")
    return found


def _private_part(module: str) -> str | None:
    """The package that owns the first private module in ``module``'s path (``a.b._c.d`` -> ``a.b``), if any."""
    parts = module.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def private_imports(source: str, module: str, is_package: bool, modules: set[str]) -> list[str]:
    """``module``'s imports of another package's private module: ``line: importer -> imported``.

    A private module (``_name``) may be imported from inside the package that holds it (its
    sub-packages included). ``from P import _name`` counts when ``P._name`` is in ``modules``.
    """
    here = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        else:
            continue
        for target in targets:
            owner = _private_part(target) if target.startswith("dfscan.") else None
            if owner is not None and here != owner and not here.startswith(owner + "."):
                found.append(f"{node.lineno}: {module} -> {target}")
    return found


def test_no_function_is_over_80_lines():
    files = [*product_modules(), *sorted((REPO / "tests").rglob("*.py"))]
    found = [hit for path in files if "__pycache__" not in path.parts
             for hit in long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not found, "functions over 80 lines (split them):\n" + "\n".join(found)


def test_no_module_imports_another_packages_private_module():
    modules = product_modules()
    names = set(modules.values())
    found = [f"{path.relative_to(REPO)}:{hit}" for path, name in modules.items()
             for hit in private_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", names)]
    assert not found, "imports of another package's private module:\n" + "\n".join(found)


def test_the_static_checks_can_fail():
    body = "\n".join(f"    x = {i}" for i in range(79))
    assert long_functions(f"@decorated\ndef fits():\n{body}\n", "f.py") == []  # 80 lines with its def
    nested = "\n".join("    " + line for line in body.splitlines())
    assert long_functions(f"def outer():\n    def inner():\n{nested}\n        y = 1\n    return inner\n", "f.py") == \
        ["f.py:1 outer 83", "f.py:2 inner 81"]
    known = {"dfscan.db._types", "dfscan.db.records", "dfscan.serve._keys"}
    source = ("import dfscan.db._types\nfrom dfscan.db import _types, records\nfrom dfscan.db._types import X\n"
              "from . import _keys\n")
    assert private_imports(source, "dfscan.serve.app", False, known) == [
        "1: dfscan.serve.app -> dfscan.db._types",
        "2: dfscan.serve.app -> dfscan.db._types",
        "3: dfscan.serve.app -> dfscan.db._types",
    ]
    assert private_imports("from dfscan.db._types import X\nfrom . import _types\n", "dfscan.db.records", False,
                           known) == []
    assert private_imports("from dfscan.db._types import X\n", "dfscan.db", True, known) == []


def test_a_type_checker_follows_dfscan_imports_to_the_files(tmp_path):
    """mypy, on the view ``make install`` builds (``[tool.mypy] mypy_path``), resolves ``dfscan.workers.…`` to the files.

    From the repository alone a checker finds ``dfscan/`` but not ``dfscan.workers`` (``workers/`` is mapped
    by ``package-dir``); through the view it types the loop's signature from ``workers/scoring/loop.py``.
    """
    pytest.importorskip("mypy")
    assert PYPROJECT["tool"]["mypy"]["mypy_path"] == "build/ide"
    assert PYPROJECT["tool"]["pyright"]["extraPaths"] == ["build/ide"]
    assert "-m tests._view build/ide" in (REPO / "Makefile").read_text()
    view = build_view(tmp_path / "ide")
    probe = tmp_path / "probe.py"
    probe.write_text("import dfscan.workers.scoring.loop as loop\nreveal_type(loop.run_chunks)\n")
    args = [sys.executable, "-m", "mypy", "--no-site-packages", "--ignore-missing-imports", "--follow-imports=silent",
            "--cache-dir", str(tmp_path / "cache"), "--config-file", "", str(probe)]

    def revealed(mypy_path: Path | None) -> str:
        env = {**os.environ, "MYPYPATH": str(mypy_path or "")}
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        return proc.stdout + proc.stderr

    out = revealed(view)
    assert 'Revealed type is "def (ctx: dfscan.workers.scoring.context.ScanContext' in out, out[-3000:]
    assert 'Revealed type is "Any"' in revealed(None)  # without the view: dfscan.workers is not found
