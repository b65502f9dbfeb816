"""Files whose paths are hard to name: deeper than PATH_MAX, or not valid UTF-8.

Each must end as exactly one row of its own, read from the right file: a
deep branch used to be skipped without a word (ENAMETOOLONG), and a
non-UTF-8 name used to share its stored text with a file literally named
with a ``\\xNN`` sequence, which took its row.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.scanner import WalkOptions, walk
from dfscan.scanner.paths import on_disk, open_path, stat_path, storable
from dfscan.workers.reading.reader import read_file
from tests._images import jpeg_bytes
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
OPTIONS = WalkOptions(extensions=(".jpg",))
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux file name semantics")


def make_deep_tree(root: str, levels: int = 200, name_len: int = 30) -> tuple[str, str]:
    """``levels`` nested directories of ``name_len``-character names, built through directory descriptors.

    Returns the paths of an image near the top (a short path) and of one at the bottom (past PATH_MAX).
    """
    os.makedirs(root, exist_ok=True)
    top = os.path.join(root, "shallow.jpg")
    with open(top, "wb") as f:
        f.write(jpeg_bytes(1))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    path = root
    for level in range(levels):
        name = f"{level:03d}".ljust(name_len, "d")
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, path = child, os.path.join(path, name)
    out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, jpeg_bytes(2))
    os.close(out)
    os.close(fd)
    return top, os.path.join(path, "deep.jpg")


def scan(root: str, model, url: str, *extra: str):
    res = CliRunner().invoke(main, ["scan", root, "--model", str(model), "--db", url, "--no-progress", *extra],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def result_rows(url: str) -> dict[str, tuple[str, str | None, int | None]]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT path, status, error_code, size FROM results")).all()
    finally:
        engine.dispose()
    assert len(rows) == len({r.path for r in rows}), "a path has more than one row"
    return {r.path: (r.status, r.error_code, r.size) for r in rows}


# --- deeper than PATH_MAX ---------------------------------------------------------------


def test_walk_and_read_reach_a_file_past_path_max(tmp_path):
    top, deep = make_deep_tree(str(tmp_path / "tree"))
    assert len(os.fsencode(deep)) > PATH_MAX
    with pytest.raises(OSError):
        os.stat(deep)  # what the old walker tripped on
    skipped = []
    assert list(walk([tmp_path / "tree"], OPTIONS, on_skip=lambda p, why: skipped.append(why))) == [deep, top]
    assert skipped == []
    assert read_file(deep).data == jpeg_bytes(2)
    assert stat_path(deep).st_size == len(jpeg_bytes(2))
    os.close(open_path(deep, os.O_RDONLY))


@pytest.mark.parametrize("url_fixture", ["sqlite_url", pytest.param("pg_url", marks=pytest.mark.postgres)])
def test_scan_gives_a_file_past_path_max_its_row(request, tmp_path, tiny_onnx_model, url_fixture):
    url = request.getfixturevalue(url_fixture)
    top, deep = make_deep_tree(str(tmp_path / "tree"))
    scan(str(tmp_path / "tree"), tiny_onnx_model, url)
    rows = result_rows(url)
    assert set(rows) == {top, deep}
    assert rows[deep] == ("ok", None, len(jpeg_bytes(2)))


@pytest.mark.postgres
def test_postgres_stores_an_incompressible_path_past_path_max(tmp_path, tiny_onnx_model, pg_url, monkeypatch):
    import secrets

    root = str(tmp_path / "tree")
    os.makedirs(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(200):
        name = secrets.token_hex(15)
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, jpeg_bytes(2))
    os.close(out)
    os.close(fd)
    monkeypatch.setenv("DFSCAN_DB_RETRY_SECONDS", "0")
    scan(root, tiny_onnx_model, pg_url)
    assert len(result_rows(pg_url)) == 1


def test_a_directory_that_cannot_be_opened_is_a_counted_warning(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    (tmp_path / "tree" / "closed").mkdir(parents=True)
    (tmp_path / "tree" / "closed" / "x.jpg").write_bytes(jpeg_bytes(1))
    os.chmod(tmp_path / "tree" / "closed", 0)
    try:
        skipped = []
        assert list(walk([tmp_path / "tree"], OPTIONS, on_skip=lambda p, why: skipped.append(p))) == []
        assert skipped == [str(tmp_path / "tree" / "closed")]
    finally:
        os.chmod(tmp_path / "tree" / "closed", 0o755)


# --- names that are not UTF-8 -----------------------------------------------------------

NAMES = [
    "plain.jpg",
    "é ünïcode.jpg",
    "back\\slash.jpg",          # a lone backslash: no escape sequence, stored as it is
    "bad\\xffname.jpg",         # the literal text of an escape: escaped itself
    "two\\\\back.jpg",
    os.fsdecode(b"bad\xffname.jpg"),
    os.fsdecode(b"mixed\\\xfe\\x41.jpg"),
]


@pytest.mark.parametrize("name", NAMES)
def test_storable_and_on_disk_are_inverse(name):
    path = "/data/" + name
    stored = storable(path)
    stored.encode("utf-8")  # always storable as text
    assert on_disk(stored) == path


def test_ordinary_names_are_stored_unchanged():
    for name in ("plain.jpg", "é ünïcode.jpg", "back\\slash.jpg", "C:\\photos\\a.jpg", "trailing\\", "\\x4.jpg"):
        assert storable("/data/" + name) == "/data/" + name


def test_stored_names_are_unique():
    stored = [storable("/data/" + n) for n in NAMES]
    assert len(set(stored)) == len(NAMES)


@pytest.mark.parametrize("url_fixture", ["sqlite_url", pytest.param("pg_url", marks=pytest.mark.postgres)])
def test_a_non_utf8_name_and_its_lookalike_get_a_row_each(request, tmp_path, tiny_onnx_model, url_fixture):
    url = request.getfixturevalue(url_fixture)
    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"bad\xffname.jpg")
    lookalike = folder / "bad\\xffname.jpg"  # the text the raw name used to be stored as
    with open(raw, "wb") as f:
        f.write(jpeg_bytes(1))
    lookalike.write_bytes(b"not an image")
    scan(str(folder), tiny_onnx_model, url)
    rows = result_rows(url)
    assert len(rows) == 2
    by_file = {on_disk(p): r for p, r in rows.items()}
    assert by_file[os.fsdecode(raw)] == ("ok", None, len(jpeg_bytes(1)))
    assert by_file[str(lookalike)][0:2] == ("error", "not-image")
    assert by_file[str(lookalike)][2] == len(b"not an image")


@pytest.mark.parametrize("url_fixture", ["sqlite_url", pytest.param("pg_url", marks=pytest.mark.postgres)])
def test_a_non_utf8_root_is_registered_and_replayable(request, tmp_path, tiny_onnx_model, url_fixture):
    """The scan's name, roots, audit record and command line hold the root in its stored form."""
    from dfscan.scanner import ScanSource

    url = request.getfixturevalue(url_fixture)
    root = os.path.join(os.fsencode(tmp_path), b"root\xff")
    os.mkdir(root)
    with open(os.path.join(root, b"a.jpg"), "wb") as f:
        f.write(jpeg_bytes(1))
    scan(os.fsdecode(root), tiny_onnx_model, url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            name, roots, record = conn.execute(text("SELECT name, roots, settings FROM scans")).one()
    finally:
        engine.dispose()
    record = record if isinstance(record, dict) else json.loads(record)  # SQLite gives JSON as text
    roots = roots if isinstance(roots, list) else json.loads(roots)
    assert name.startswith("root\\xff ") and roots == [storable(os.fsdecode(root))]
    assert ScanSource.from_record(record["walk"]).roots == (os.fsdecode(root),)
    assert list(result_rows(url)) == [storable(os.fsdecode(os.path.join(root, b"a.jpg")))]
