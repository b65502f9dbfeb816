"""Each distinct image scored once: copies in a batch, across chunks, across scans (--reuse-verdicts).

Real parts: JPEG files and their byte copies on disk, the tiny detector through
the real ONNX Runtime (wrapped in a counter, :class:`dfscan.bench.dedupe.CountedRuntime`,
to prove what went through inference), real SQLite and PostgreSQL, the real CLI,
a real Celery worker for the fleet.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.bench.dedupe import CountedRuntime, counting, dedupe_rows, format_dedupe
from dfscan.cli import main
from dfscan.scanner import Chunk, ScanSource, WalkOptions
from dfscan.core.settings import Settings, from_env
from dfscan.workers.scoring import Stages
from dfscan.workers.scoring.images import ImageStage
from tests._stages import score_paths
from dfscan.workers.images.decode import PillowDecoder, Preprocess
from dfscan.workers.scoring.local import LocalScan
from tests._images import jpeg_bytes, write_jpegs
from tests._models import export_tiny_model, tiny_onnx_model  # noqa: F401 - fixture

# Every column of a copy's row equals its original's but these: the key and the file's name, and the
# field that says it is a copy.  (mtime: the copies keep their original's, shutil.copy2.)
DIFFERS = {"path", "path_hash", "verdict_source"}


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def archive(root: Path, n: int = 4) -> tuple[list[Path], list[Path]]:
    """``n`` distinct JPEGs, a byte copy of each (same mtime), a file that is no image and its copy."""
    originals = write_jpegs(root / "a", n)
    (root / "b").mkdir()
    copies = [Path(shutil.copy2(p, root / "b" / f"copy_{p.name}")) for p in originals]
    bad = root / "a" / "notes.jpg"
    bad.write_bytes(b"this is no image, whatever its name says\n" * 4)
    originals.append(bad)
    copies.append(Path(shutil.copy2(bad, root / "b" / "copy_notes.jpg")))
    return originals, copies


def run_scan(settings: Settings, *roots: Path, name: str = "t") -> tuple[db.ScanSummary, CountedRuntime]:
    counters: list[CountedRuntime] = []
    job = LocalScan(settings, ScanSource(tuple(str(r) for r in roots), (), WalkOptions(settings.extensions)), name=name)
    summary = job.run(instrument=counting(counters))
    return summary, counters[0]


def table_rows(url: str, scan_id: int) -> dict[str, dict]:
    """The scan's rows of the results table (every column), by path."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM results WHERE scan_id = :s"), {"s": scan_id}).mappings().all()
            view = conn.execute(text("SELECT path, content_hash, verdict_source FROM scan_results WHERE scan_id = :s"),
                                {"s": scan_id}).all()
            faces = conn.execute(text("SELECT * FROM result_faces WHERE scan_id = :s"), {"s": scan_id}).mappings().all()
    finally:
        engine.dispose()
    out = {r["path"]: dict(r) for r in rows}
    for path, content_hash, source in view:  # the analysts' view shows the same two columns
        assert (out[path]["content_hash"], out[path]["verdict_source"]) == (content_hash, source)
    for f in faces:
        out[f["path"]].setdefault("face_rows", []).append(
            {k: v for k, v in f.items() if k not in ("id", "path", "path_hash")})
    return out


def same_but(a: dict, b: dict, differs: set[str]) -> None:
    assert {k: v for k, v in a.items() if k not in differs} == {k: v for k, v in b.items() if k not in differs}


# -- within a batch ----------------------------------------------------------------------------------


def test_batch_maker_hashes_and_decodes_one_copy(tmp_path: Path) -> None:
    originals, copies = archive(tmp_path)
    paths = [str(p) for pair in zip(originals, copies) for p in pair]  # a, copy of a, b, copy of b, ...
    stages = Stages([ImageStage(PillowDecoder(Preprocess(size=(64, 64))))])
    try:
        batch = stages.prepare(paths)
    finally:
        stages.close()
    items = batch.items
    assert {i: it.copy_of for i, it in enumerate(items) if it.copy_of is not None} == {
        i: i - 1 for i in range(1, len(paths), 2)}
    assert sum(it.payload is not None for it in items) == 4  # one decode per distinct image
    errors = {i: it.error for i, it in enumerate(items) if it.error is not None}
    assert set(errors) == {8} and errors[8].code == "not-image"
    assert items[0].content_hash == items[1].content_hash != items[2].content_hash
    import hashlib

    assert items[0].content_hash == hashlib.sha256(originals[0].read_bytes()).hexdigest()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_copies_in_one_batch_are_scored_once_with_identical_rows(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                                 backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    originals, copies = archive(tmp_path / "in")
    settings = Settings(db_url=url, model=tiny_onnx_model, batch_size=64)
    summary, counter = run_scan(settings, tmp_path / "in")
    assert counter.images == 4 and counter.calls == 1  # 10 files, 4 distinct images through the runtime
    assert (summary.total, summary.ok, summary.errors) == (10, 8, 2)
    assert (summary.computed, summary.copied, summary.reused) == (5, 5, 0)
    rows = table_rows(url, summary.scan_id)
    for original, copy in zip(originals, copies):
        a, b = rows[str(original)], rows[str(copy)]
        # Walk order puts a/ first: the original is computed, the copy says it is one.
        assert (a["verdict_source"], b["verdict_source"]) == ("computed", "copy")
        same_but(a, b, DIFFERS)  # same batch: scanned_at too
    assert rows[str(copies[-1])]["error_code"] == "not-image"


# -- across batches and chunks ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_copies_across_batches_and_chunks(tmp_path: Path, tiny_onnx_model: Path, backend: str,  # noqa: F811
                                          request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    originals, copies = archive(tmp_path / "in")
    # Batches of 2 in chunks of 3: every copy (under b/) is in a later chunk than its original.
    settings = Settings(db_url=url, model=tiny_onnx_model, batch_size=2, chunk_size=3)
    summary, counter = run_scan(settings, tmp_path / "in")
    assert counter.images == 4
    assert (summary.computed, summary.copied, summary.reused) == (5, 5, 0)
    assert summary.chunks_done == 4
    rows = table_rows(url, summary.scan_id)
    for original, copy in zip(originals, copies):
        a, b = rows[str(original)], rows[str(copy)]
        assert (a["verdict_source"], b["verdict_source"]) == ("computed", "copy")
        same_but(a, b, DIFFERS | {"scanned_at"})  # written by a later batch


def test_a_redelivered_chunk_rewrites_the_same_rows(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                    sqlite_url: str) -> None:
    """Scoring a chunk again meets its own rows: the original stays computed, the copy a copy."""
    from dfscan.workers.scoring.context import ScanContext
    from dfscan.workers.scoring.loop import score_chunk

    originals, copies = archive(tmp_path / "in", n=2)
    ctx = ScanContext.open(Settings(db_url=sqlite_url, model=tiny_onnx_model, batch_size=2))
    try:
        model_id = ctx.register_model()
        with ctx.sessions.begin() as session:
            scan_id = db.create_scan(session, name="t", roots=[], model_id=model_id, threshold=0.5, settings={})
            paths = [str(p) for p in originals + copies]
            chunk_id = db.add_chunk(session, scan_id=scan_id, seq=0, paths=paths)
        chunk = Chunk(scan_id, 0, tuple(paths), chunk_id)
        score_chunk(ctx, chunk, model_id)
        first = table_rows(sqlite_url, scan_id)
        score_chunk(ctx, chunk, model_id)
        again = table_rows(sqlite_url, scan_id)
    finally:
        ctx.close()
    assert {p: r["verdict_source"] for p, r in again.items()} == {p: r["verdict_source"] for p, r in first.items()}
    for path in first:
        same_but(first[path], again[path], {"scanned_at"})
    assert sorted(r["verdict_source"] for r in again.values()) == ["computed"] * 3 + ["copy"] * 3


# -- across scans: --reuse-verdicts -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_reuse_verdicts_of_an_earlier_scan_without_inference(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                             backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    originals, copies = archive(tmp_path / "in")
    settings = Settings(db_url=url, model=tiny_onnx_model, batch_size=3)
    first, counter = run_scan(settings, tmp_path / "in" / "a")
    assert counter.images == 4 and first.computed == 5

    # The copies, in a new scan that may reuse: every image's verdict comes from the first scan.
    second, counter = run_scan(settings.with_(reuse_verdicts=True), tmp_path / "in" / "b")
    assert counter.calls == 0 and counter.images == 0  # nothing went through the runtime
    assert (second.reused, second.copied, second.computed) == (4, 0, 1)  # the error is tried again
    old, new = table_rows(url, first.scan_id), table_rows(url, second.scan_id)
    for original, copy in zip(originals[:4], copies[:4]):
        a, b = old[str(original)], new[str(copy)]
        assert b["verdict_source"] == "reused"
        same_but(a, b, DIFFERS | {"scan_id", "scanned_at"})
    assert new[str(copies[-1])]["error_code"] == "not-image" and new[str(copies[-1])]["verdict_source"] == "computed"

    # Without --reuse-verdicts each scan scores its images itself.
    third, counter = run_scan(settings, tmp_path / "in" / "b")
    assert counter.images == 4 and (third.computed, third.reused) == (5, 0)


def test_reused_verdicts_follow_this_scans_threshold(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                     sqlite_url: str) -> None:
    write_jpegs(tmp_path / "in", 3)
    settings = Settings(db_url=sqlite_url, model=tiny_onnx_model)
    first, _ = run_scan(settings, tmp_path / "in")
    p_fakes = {p: r["p_fake"] for p, r in table_rows(sqlite_url, first.scan_id).items()}
    cut = sorted(p_fakes.values())[1]  # one image below the new threshold, two at or above it
    second, counter = run_scan(settings.with_(reuse_verdicts=True, threshold=cut), tmp_path / "in")
    assert counter.images == 0 and second.reused == 3
    for path, row in table_rows(sqlite_url, second.scan_id).items():
        assert row["p_fake"] == p_fakes[path]
        assert row["label"] == ("fake" if p_fakes[path] >= cut else "real")
        assert row["confidence"] == pytest.approx(p_fakes[path] if row["label"] == "fake" else 1 - p_fakes[path])
    assert (second.fake, second.real) == (2, 1)


def test_a_different_model_does_not_reuse(tmp_path: Path, tiny_onnx_model: Path, sqlite_url: str) -> None:  # noqa: F811
    write_jpegs(tmp_path / "in", 3)
    other = export_tiny_model(tmp_path / "other", seed=12345)
    settings = Settings(db_url=sqlite_url, model=tiny_onnx_model, reuse_verdicts=True)
    run_scan(settings, tmp_path / "in")
    second, counter = run_scan(settings.with_(model=other), tmp_path / "in")
    assert counter.images == 3 and (second.computed, second.reused) == (3, 0)
    # The first model again: the earlier scan of that model is what it reuses.
    third, counter = run_scan(settings, tmp_path / "in")
    assert counter.images == 0 and third.reused == 3


def test_cli_option_env_summary_and_audit(tmp_path: Path, tiny_onnx_model: Path, sqlite_url: str) -> None:  # noqa: F811
    archive(tmp_path / "in", n=2)
    out = cli("scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert out.exit_code == 0, out.output
    assert "scored 3, copies 3 (same bytes earlier in this scan), reused 0" in out.output
    out = cli("scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--json",
              env={"DFSCAN_REUSE_VERDICTS": "1"})
    summary = json.loads(out.output)
    # Each distinct image is reused once; its copy (same batch) is a copy of that row.
    assert (summary["reused"], summary["copied"], summary["computed"]) == (2, 3, 1)
    out = cli("scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--json",
              "--no-reuse-verdicts", env={"DFSCAN_REUSE_VERDICTS": "1"})
    assert json.loads(out.output)["reused"] == 0
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            audits = [json.loads(a) if isinstance(a, str) else a
                      for a in conn.execute(text("SELECT settings FROM scans ORDER BY id")).scalars()]
    finally:
        engine.dispose()
    assert [a["reuse_verdicts"] for a in audits] == [False, True, False]
    out = cli("results", "--db", sqlite_url, "--scan", str(summary["scan_id"]), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert {"content_hash", "verdict_source"} <= set(rows[0])
    assert sorted(r["verdict_source"] for r in rows) == ["computed", "copy", "copy", "copy", "reused", "reused"]
    report = tmp_path / "report.html"
    out = cli("report", str(summary["scan_id"]), "--db", sqlite_url, "--out", str(report))
    assert out.exit_code == 0, out.output
    assert "1 scored, 3 copies (same bytes earlier in this scan), 2 reused (earlier scans, same model)" in (
        report.read_text(encoding="utf-8"))
    assert from_env({"DFSCAN_REUSE_VERDICTS": "yes"}).reuse_verdicts is True
    assert from_env({"DFSCAN_REUSE_VERDICTS": "0"}).reuse_verdicts is False


def test_schedule_entry_takes_reuse_verdicts(tmp_path: Path) -> None:
    from dfscan.workers.fleet.schedule import ScheduleError, load_schedule

    path = tmp_path / "s.toml"
    path.write_text('[[scan]]\nname = "n"\ncron = "0 2 * * *"\nroots = ["/data"]\nmodel = "/m.onnx"\n'
                    "reuse_verdicts = true\n")
    (entry,) = load_schedule(path)
    assert entry.reuse_verdicts is True and entry.message()["reuse_verdicts"] is True
    path.write_text(path.read_text().replace("true", '"yes"'))
    with pytest.raises(ScheduleError, match="reuse_verdicts"):
        load_schedule(path)


# -- errors ------------------------------------------------------------------------------------------


def test_copies_of_failing_files_get_the_same_error_row(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                        sqlite_url: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_truncated.jpg").write_bytes(jpeg_bytes(1)[:700])
    (folder / "a_text.jpg").write_bytes(b"plain text\n" * 10)
    for name in ("a_truncated.jpg", "a_text.jpg"):
        shutil.copy2(folder / name, folder / f"b_{name}")  # same batch
        shutil.copy2(folder / name, folder / f"z_{name}")  # a later chunk
    summary, counter = run_scan(Settings(db_url=sqlite_url, model=tiny_onnx_model, batch_size=4, chunk_size=4),
                                folder)
    assert counter.images == 0 and summary.errors == 6 and (summary.computed, summary.copied) == (2, 4)
    rows = table_rows(sqlite_url, summary.scan_id)
    for name in ("a_truncated.jpg", "a_text.jpg"):
        original = rows[str(folder / name)]
        assert original["verdict_source"] == "computed" and original["status"] == "error"
        for prefix in ("b_", "z_"):
            copy = rows[str(folder / f"{prefix}{name}")]
            assert copy["verdict_source"] == "copy"
            same_but(original, copy, DIFFERS | {"scanned_at"})


def test_score_keeps_rows_in_order_for_a_batch_of_copies(tmp_path: Path, tiny_onnx_model: Path) -> None:  # noqa: F811
    """score() on a batch holding copies: one row per path, in order, copies equal to their original."""
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.onnxruntime import OnnxRuntime

    (p,) = write_jpegs(tmp_path, 1)
    paths = [str(p)] * 3 + [str(Path(shutil.copy2(p, tmp_path / "c.jpg")))]
    info = inspect_model(tiny_onnx_model)
    runtime = CountedRuntime(OnnxRuntime(info))
    try:
        rows = score_paths(paths, PillowDecoder(Preprocess(size=info.input_size, mean=info.mean, std=info.std)),
                           runtime)
    finally:
        runtime.close()
    assert [r.path for r in rows] == paths and runtime.images == 1
    assert [r.verdict_source for r in rows] == ["computed", "copy", "copy", "copy"]
    assert len({(r.p_fake, r.label, r.content_hash) for r in rows}) == 1


# -- the bench -------------------------------------------------------------------------------------


def test_bench_rows_show_half_the_inference(tmp_path: Path, tiny_onnx_model: Path) -> None:  # noqa: F811
    rows, ratio = dedupe_rows(8, tmp_path, lambda _msg: None,
                              lambda name: Settings(db_url=f"sqlite:///{tmp_path / name}", model=tiny_onnx_model,
                                                    batch_size=4))
    assert [r.status for r in rows] == ["ok", "ok"], [r.reason for r in rows]
    assert (ratio["inferred_distinct"], ratio["inferred_half_copies"]) == (16, 8)  # two scans each
    assert rows[1].details["copied"] == 4 and rows[1].details["computed"] == 4 and rows[1].repeats == 2
    assert "infer_seconds_ratio" in ratio and any("half copies / distinct" in line for line in format_dedupe(ratio))


def test_dfscan_bench_dedupe_prints_both_and_the_ratio(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                       monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out_json = tmp_path / "bench.json"
    result = cli("bench", "--synthetic", "4", "--model", str(tiny_onnx_model), "--min-time", "0", "--no-naive",
                 "--dedupe", "6", "--output", str(out_json))
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    rows = {(r["stage"], r["variant"]): r for r in data["rows"]}
    assert rows[("scan", "end-to-end, half copies")]["details"]["inferred_images"] == 6  # 3 per scan, two scans
    assert data["dedupe"]["infer_seconds_ratio"] == pytest.approx(
        data["dedupe"]["infer_seconds_half_copies"] / data["dedupe"]["infer_seconds_distinct"], rel=1e-2)
    assert "inference time, half copies / distinct =" in result.output


# -- the fleet ---------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_fleet_worker_scores_copies_once_and_reuses(tmp_path: Path, tiny_onnx_model: Path, redis_server,  # noqa: F811
                                                    pg_url: str) -> None:
    """A real ``dfscan worker``: copies in other chunks are copies; a --reuse-verdicts scan reuses."""
    from tests._cluster import Worker, wait_for

    originals, copies = archive(tmp_path / "in", n=3)
    (tmp_path / "logs").mkdir()
    broker = redis_server.url()
    worker = Worker(broker, pg_url, tmp_path / "logs")
    engine = db.make_engine(pg_url)

    def scan(*extra: str) -> int:
        out = cli("scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model), "--db", pg_url, "--broker", broker,
                  "--chunk-size", "2", "--json", *extra)
        assert out.exit_code == 0, out.output
        scan_id = json.loads(out.stdout)["scan_id"]

        def status() -> str | None:
            with engine.connect() as conn:
                s = conn.execute(text("SELECT status FROM scans WHERE id = :s"), {"s": scan_id}).scalar_one()
            return None if s == "running" else s

        assert wait_for(status, 120, "the scan to complete", interval=0.3) == "completed", worker.log()[-3000:]
        return scan_id

    try:
        worker.wait_ready()
        first = scan()
        second = scan("--reuse-verdicts")
        with engine.connect() as conn:
            sources = {
                s: dict(conn.execute(text("SELECT verdict_source, COUNT(*) FROM results WHERE scan_id = :s "
                                          "GROUP BY verdict_source"), {"s": s}).all())
                for s in (first, second)
            }
            with db.session_factory(engine)() as session:
                summary = db.scan_summary(session, second)
        status = cli("status", str(second), "--db", pg_url)
        assert "verdicts 1 scored, 4 copies (same bytes earlier in this scan), 3 reused" in status.output
    finally:
        worker.stop()
        engine.dispose()
    # One worker takes the chunks in order: each copy (b/ walks after a/) finds its original committed.
    assert sources[first] == {"computed": 4, "copy": 4}
    # a/: 3 images reused, the error computed again (errors are never reused); b/: copies of those rows.
    assert sources[second] == {"computed": 1, "copy": 4, "reused": 3}
    assert (summary.computed, summary.copied, summary.reused) == (1, 4, 3)


# -- faces -------------------------------------------------------------------------------------------


def test_copies_share_face_rows(tmp_path: Path, tiny_onnx_model: Path, sqlite_url: str) -> None:  # noqa: F811
    """Faces on: a copy in the same batch and one in a later chunk have the original's face rows."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "a.png")
    shutil.copy2(folder / "a.png", folder / "b.png")  # same batch
    Image.fromarray(skimage_data.chelsea()).save(folder / "c.jpg")  # no face
    shutil.copy2(folder / "a.png", folder / "d.png")  # next chunk
    shutil.copy2(folder / "c.jpg", folder / "e.jpg")
    settings = Settings(db_url=sqlite_url, model=tiny_onnx_model, faces="on", batch_size=3, chunk_size=3,
                        decoder="pillow")
    summary, counter = run_scan(settings, folder)
    assert counter.images == 1  # one face crop, of one image
    assert (summary.ok, summary.no_face, summary.computed, summary.copied) == (3, 2, 2, 3)
    rows = table_rows(sqlite_url, summary.scan_id)
    a = rows[str(folder / "a.png")]
    assert a["faces"] == 1 and len(a["face_rows"]) == 1
    same_but(a, rows[str(folder / "b.png")], DIFFERS)
    same_but(a, rows[str(folder / "d.png")], DIFFERS | {"scanned_at"})
    same_but(rows[str(folder / "c.jpg")], rows[str(folder / "e.jpg")], DIFFERS | {"scanned_at"})


# -- the migration -----------------------------------------------------------------------------------


def test_migration_0011_down_and_up_keeps_rows(db_engine) -> None:
    """Downgrade to 0009 drops the two columns and keeps the rows and the view; upgrading marks them computed."""
    from datetime import datetime, timezone

    from sqlalchemy import inspect
    from sqlalchemy.exc import IntegrityError

    with db.session_factory(db_engine).begin() as session:
        model_id = db.get_or_create_model(session, sha256="a" * 64, name="m", path="/m", info={})
        scan_id = db.create_scan(session, name="s", roots=[], model_id=model_id, threshold=0.5, settings={})
        now = datetime.now(timezone.utc)
        db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[
            db.ResultRow("/x", 1, 1.0, "ok", "real", 0.1, 0.9, None, None, now, content_hash="b" * 64,
                         verdict_source="reused")])
    db.downgrade(db_engine, "0009")
    assert not {"content_hash", "verdict_source"} & {c["name"] for c in inspect(db_engine).get_columns("results")}
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, label FROM scan_results")).all() == [("/x", "real")]
    db.upgrade(db_engine)
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, content_hash, verdict_source FROM scan_results")).all() == [
            ("/x", None, "computed")]
        with pytest.raises(IntegrityError, match="verdict_source"):
            conn.execute(text("UPDATE results SET verdict_source = 'guessed'"))


def test_a_batch_of_images_and_videos_reuses_its_images(tmp_path: Path, sqlite_url: str) -> None:
    """A batch that mixes images and videos looks up each kind on its own: the images' verdicts are reused."""
    from tests._models import export_tiny_video_model
    from tests._videos import write_video

    model = export_tiny_video_model(tmp_path / "model", frames=4).parent  # the folder: image and video graphs
    originals, copies = archive(tmp_path / "in", n=3)
    write_video(tmp_path / "in" / "a" / "clip.mp4", 12)
    write_video(tmp_path / "in" / "b" / "clip.mp4", 12)
    settings = Settings(db_url=sqlite_url, model=model, batch_size=16, frames=4)
    scan_of = lambda root: LocalScan(settings.with_(reuse_verdicts=True),  # noqa: E731
                                     ScanSource((str(root),), (), WalkOptions(settings.scan_extensions)), name="m")
    first = scan_of(tmp_path / "in" / "a").run()
    assert (first.total, first.computed) == (5, 5)
    second = scan_of(tmp_path / "in" / "b").run()
    assert (second.total, second.reused, second.computed) == (5, 3, 2)  # the video and the non-image are scored
    rows = table_rows(sqlite_url, second.scan_id)
    assert rows[str(tmp_path / "in" / "b" / "clip.mp4")]["kind"] == "video"
    assert rows[str(tmp_path / "in" / "b" / "clip.mp4")]["verdict_source"] == "computed"
    assert {rows[str(c)]["verdict_source"] for c in copies[:3]} == {"reused"}


def test_a_fleet_chunk_scores_copies_in_its_later_batches_once(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                               pg_url: str) -> None:
    """A fleet chunk commits once, at its end: copies in its later batches take its uncommitted rows."""
    from dfscan.workers.scoring import loop as pipeline
    from dfscan.workers.scoring.context import ScanContext

    originals, copies = archive(tmp_path / "in", n=3)
    paths = tuple(str(p) for p in originals + copies)  # batches of 4: every copy is in a later batch
    ctx = ScanContext.open(Settings(db_url=pg_url, model=tiny_onnx_model, batch_size=4))
    try:
        counters: list[CountedRuntime] = []
        counting(counters)(ctx)
        model_id = ctx.register_model()
        with ctx.sessions.begin() as s:
            scan_id = db.create_scan(s, name="chunk", roots=[], model_id=model_id, threshold=0.5, settings={})
            chunk_id = db.add_chunk(s, scan_id=scan_id, seq=0, paths=list(paths))
        result = pipeline.score_chunk(ctx, Chunk(scan_id, 0, paths, chunk_id), model_id)
    finally:
        ctx.close()
    assert (result.total, result.ok, result.errors) == (8, 6, 2)
    rows = table_rows(pg_url, scan_id)
    assert [rows[str(c)]["verdict_source"] for c in copies] == ["copy"] * 4
    for original, copy in zip(originals, copies):
        same_but(rows[str(original)], rows[str(copy)], DIFFERS | {"scanned_at"})  # scored in another batch
    assert counters[0].images == 3  # the three distinct images, once each
