"""The layout is a fact: one import name, the layers contract kept, the documented entry points working.

The stage folders (``scanner/``, ``workers/``, ...) install as subpackages of
``dfscan`` through setuptools' ``package-dir``. import-linter (grimp) only
reads a package from one directory tree, so the contract is checked on a view
of the installed layout: a temporary ``dfscan/`` whose entries are links to
the repository's files, built from the same ``package-dir`` table.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
GENERIC_NAMES = ("db", "workers", "trt", "scanner", "detector")


def _bin(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else (shutil.which(name) or name)


def build_view(root: Path) -> Path:
    """``root/dfscan`` laid out as the package installs: links to the repository's folders and files."""
    top = root / "dfscan"
    top.mkdir()
    for entry in (REPO / PACKAGE_DIR["dfscan"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in PACKAGE_DIR.items():
        if package != "dfscan":
            (top / package.split(".", 1)[1]).symlink_to(REPO / folder)
    return root


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
    (trt / "upward.py").write_text("from dfscan.workers.scoring.batches import BatchMaker\n")
    proc = subprocess.run([_bin("lint-imports"), str(REPO / "pyproject.toml"), "--no-cache"], cwd=view,
                          env={**os.environ, "PYTHONPATH": str(view)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "dfscan.trt.upward -> dfscan.workers.scoring.batches" in proc.stdout


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
