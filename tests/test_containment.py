"""Paths stay inside their roots after the check: a scan that follows no symbolic link reads none.

The roots of such a scan (every scan the service starts; ``dfscan scan
--no-follow-symlinks``) are checked when it starts, its files read later,
perhaps on another machine.  A directory swapped for a link to somewhere
else in between must not lead the read there: the walker, the reader and the
video sampler open files with no link on their path (``scanner.confine``),
and a file reached through one ends as an error row, ``outside-root``, with
nothing of the outside file (not even its size) in it.  Scans that follow
links (the CLI's default) and ``s3://`` roots are unchanged.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.core.settings import Settings
from dfscan.scanner import ScanSource, WalkOptions, walk
from dfscan.workers.reading.errors import ImageError, VideoError
from dfscan.workers.reading.reader import read_file, stat_quietly
from dfscan.workers.scoring.local import LocalScan
from dfscan.workers.video.sample import sample_video
from tests._cluster import Worker, wait_for
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests._videos import write_video

OPTS = WalkOptions(extensions=(".jpg", ".mp4"), follow_symlinks=False)


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """``root`` with a/ and b/ (three JPEGs each, b/ also a video), and ``outside`` with a b/ of the same names."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_jpegs(root / "a", 3)
    write_jpegs(root / "b", 3, start=3)
    write_video(root / "b" / "clip.mp4", 12)
    write_jpegs(outside / "b", 3, start=3)
    write_video(outside / "b" / "clip.mp4", 12)
    return root, outside


def _swap(directory: Path, target: Path) -> None:
    """Replace ``directory`` with a symbolic link to ``target``, as someone with write access to its parent can."""
    directory.rename(directory.with_name(directory.name + ".old"))
    directory.symlink_to(target, target_is_directory=True)


def test_a_root_swapped_for_a_link_after_the_check_is_not_walked(tmp_path):
    root, outside = _layout(tmp_path)
    roots = [os.path.realpath(root)]  # as the service's check gives them
    _swap(root, outside)
    skipped: list[tuple[str, str]] = []
    assert list(walk(roots, OPTS, on_skip=lambda p, why: skipped.append((p, why)))) == []
    assert skipped == [(str(root), skipped[0][1])] and "symbolic link" in skipped[0][1]
    # Following links (the CLI's default) the same root is walked through its link, as before.
    assert len(list(walk(roots, WalkOptions(extensions=(".jpg",))))) == 3


def test_check_roots_resolves_links_only_when_asked(tmp_path):
    from dfscan.scanner.confine import confined_roots, roots_from_record
    from dfscan.scanner.walker import check_roots

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert check_roots([tmp_path / "link"]) == [str(tmp_path / "link")]
    assert check_roots([tmp_path / "link"], resolve=True) == [str(real)]
    assert confined_roots([str(real), "s3://bucket/p"], follow_symlinks=False) == (str(real),)
    assert confined_roots([str(real)], follow_symlinks=True) is None
    assert roots_from_record({"roots": [str(real)], "follow_symlinks": False}) == (str(real),)


def test_reads_under_a_confined_root_follow_no_link(tmp_path):
    from dfscan.scanner.confine import open_confined
    from dfscan.scanner.errors import OutsideRoot

    root, outside = _layout(tmp_path)
    roots = (str(root),)
    inside = root / "a" / "img_00000.jpg"
    assert read_file(str(inside), roots=roots).data == inside.read_bytes()
    (root / "a" / "alias.jpg").symlink_to(outside / "b" / "img_00003.jpg")
    _swap(root / "b", outside / "b")
    for path in (root / "b" / "img_00003.jpg", root / "a" / "alias.jpg"):  # a directory, then the file itself
        with pytest.raises(ImageError) as refused:
            read_file(str(path), roots=roots)
        assert refused.value.code == "outside-root", refused.value.message
        assert stat_quietly(str(path), roots) == (None, None)  # nothing of the outside file on its row
        assert read_file(str(path)).size > 0  # unconfined (a scan that follows links): read as before
    with pytest.raises(OutsideRoot):
        open_confined(str(root / "b" / "img_00003.jpg"), roots, os.O_RDONLY)
    assert read_file(str(outside / "b" / "img_00004.jpg"), roots=roots).size > 0  # under no root: a listed path
    with pytest.raises(VideoError) as video:
        sample_video(str(root / "b" / "clip.mp4"), 4, roots=roots)
    assert video.value.code == "outside-root"
    assert len(sample_video(str(root / "b" / "clip.mp4"), 4).frames) == 4  # unconfined: as before
    original = root / "b.old" / "clip.mp4"  # the video as it was, inside: sampled from the descriptor opened here
    assert len(sample_video(str(original), 4, roots=roots).frames) == 4


class _SwapAfterWalk(ScanSource):
    """The real walk, then ``root/b`` swapped for a link to ``outside/b`` before a file is read."""

    def paths(self, on_skip=None):
        walked = list(super().paths(on_skip))
        root = Path(self.roots[0])
        _swap(root / "b", root.parent / "outside" / "b")
        return iter(walked)


def _expect_outside_rows(rows: dict[str, dict], root: Path) -> None:
    assert len(rows) == 7, sorted(rows)
    for name in ("img_00000.jpg", "img_00001.jpg", "img_00002.jpg"):
        assert rows[str(root / "a" / name)]["status"] == "ok"
    for name in ("img_00003.jpg", "img_00004.jpg", "img_00005.jpg", "clip.mp4"):
        row = rows[str(root / "b" / name)]
        assert (row["status"], row["error_code"]) == ("error", "outside-root"), row
        assert row["size"] is None and row["mtime"] is None and row["p_fake"] is None


def _rows(url: str, scan_id: int) -> dict[str, dict]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT path, status, error_code, size, mtime, p_fake FROM results "
                                      "WHERE scan_id = :s"), {"s": scan_id})
            return {r.path: dict(r._mapping) for r in found}
    finally:
        engine.dispose()


def test_an_embedded_scan_refuses_files_reached_through_a_link_swapped_in_after_the_walk(tmp_path, db_url,
                                                                                         tiny_onnx_model):
    root, _ = _layout(tmp_path)
    settings = Settings(db_url=db_url, model=tiny_onnx_model, decoder="pillow", runtime="onnxruntime",
                        follow_symlinks=False, batch_size=4, chunk_size=4)
    source = _SwapAfterWalk((os.path.realpath(root),), (),
                            WalkOptions(settings.scan_extensions, follow_symlinks=False))
    summary = LocalScan(settings, source).run()
    _expect_outside_rows(_rows(db_url, summary.scan_id), root)


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_a_fleet_worker_checks_containment_where_it_opens_files(tmp_path, sqlite_url, redis_server, tiny_onnx_model):
    """The producer walks and enqueues; ``b/`` is swapped before any worker runs; a real Celery worker refuses it.

    The root is named through a link the user chose (``storage``): ``--no-follow-symlinks`` records its real
    path, and the worker confines reads to that.
    """
    root, _ = _layout(tmp_path)
    (tmp_path / "storage").symlink_to(root)
    broker = redis_server.url()
    produced = CliRunner().invoke(main, ["scan", str(tmp_path / "storage"), "--model", str(tiny_onnx_model),
                                         "--db", sqlite_url, "--broker", broker, "--no-follow-symlinks",
                                         "--chunk-size", "4", "--batch-size", "4", "--json"], catch_exceptions=False)
    assert produced.exit_code == 0, produced.output
    scan_id = json.loads(produced.stdout)["scan_id"]
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as con:
        (stored,) = con.execute("SELECT roots FROM scans WHERE id = ?", (scan_id,)).fetchone()
    assert json.loads(stored) == [str(root)]
    _swap(root / "b", tmp_path / "outside" / "b")
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = Worker(broker, sqlite_url, logs, name="confined").wait_ready()
    try:
        def complete() -> bool:
            assert worker.alive(), worker.log()[-3000:]
            with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as con:
                return con.execute("SELECT status FROM scans WHERE id = ?", (scan_id,)).fetchone()[0] != "running"

        wait_for(complete, 180, "the scan to complete", interval=0.5)
    finally:
        worker.stop()
    _expect_outside_rows(_rows(sqlite_url, scan_id), root)
