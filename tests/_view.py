"""The package as it installs, laid out as links to the repository's folders and files.

The stage folders (``scanner/``, ``workers/``, ...) install as subpackages of
``dfscan`` through setuptools' ``package-dir``; a tool that reads source
rather than importing it (import-linter, a type checker, an IDE) needs the
installed layout to follow ``dfscan.workers.…`` to its file.  :func:`build_view`
makes ``ROOT/dfscan`` from the same ``package-dir`` table: links to each entry
of ``dfscan/`` and to each stage folder, so a file added to a stage folder is
in the view at once.

``python -m tests._view build/ide`` (``make ide``, run by ``make install``)
builds the view that ``[tool.mypy] mypy_path`` and ``[tool.pyright] extraPaths``
in ``pyproject.toml`` point to.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def build_view(root: Path) -> Path:
    """``root/dfscan`` laid out as the package installs: links to the repository's folders and files."""
    top = root / "dfscan"
    top.mkdir(parents=True)
    for entry in (REPO / PACKAGE_DIR["dfscan"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in PACKAGE_DIR.items():
        if package != "dfscan":
            (top / package.split(".", 1)[1]).symlink_to(REPO / folder)
    return root


def main(argv: list[str]) -> None:
    root = (REPO / (argv[0] if argv else "build/ide")).resolve()
    if REPO not in root.parents:
        raise SystemExit(f"the view goes inside the repository, not {root}")
    shutil.rmtree(root, ignore_errors=True)
    build_view(root)
    print(f"{root}/dfscan: the installed layout, for type checkers and IDEs")


if __name__ == "__main__":
    main(sys.argv[1:])
