"""Every query in docs/sql.md, run unchanged on SQLite and PostgreSQL after real scans.

The databases are filled by ``dfscan scan`` itself (the tiny ONNX model, real
image files, bad files among them): three scans and two models.  Each query's
rows are compared with what an independent Python computation over the raw
tables says it must return, so a query that runs but answers the wrong
question fails.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from dfscan import db
from dfscan.db.models import Model, Result, ResultFace, ResultFrame, ResultProvenance, Scan
from dfscan.db.paths import path_hash
from dfscan.cli import main
from tests._images import write_bad_files, write_jpegs
from tests._models import export_tiny_model, tiny_onnx_model  # noqa: F401 - fixture
from tests._provenance_files import write_provenance_files
from tests._videos import write_face_video, write_video
from tests.conftest import throwaway_pg_database

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)
QUERY_NAME = re.compile(r"^--\s*query:\s*(\S+)\s*$", re.MULTILINE)
MODEL_B_SEED = 4321


def guide_queries() -> dict[str, str]:
    """``name -> SQL`` of every ```sql block; each block must be named ``-- query: NAME``."""
    queries: dict[str, str] = {}
    for block in SQL_BLOCK.findall(GUIDE.read_text()):
        match = QUERY_NAME.search(block)
        assert match, f"a ```sql block in {GUIDE.name} has no '-- query: NAME' line:\n{block}"
        assert match.group(1) not in queries, f"two queries named {match.group(1)}"
        queries[match.group(1)] = block.strip()
    return queries


QUERIES = guide_queries()


# --- the data: three real scans, two models -----------------------------------------------


@dataclass(frozen=True)
class Archive:
    root: Path
    alpha: list[str]
    beta: list[str]
    bad: list[str]
    model_a: Path
    model_b: Path
    threshold_a: float
    threshold_b: float
    faces: list[str]  # scan 4 (faces on): one face, three faces (capped at two), none
    videos: list[str]  # scan 5 (faces on, 4 frames): two face tracks, one, none, an empty file
    threshold_v: float
    copies: list[str]  # scan 6: photographs, near copies of two of them (re-encoded, resized), a flat image
    threshold_c: float
    provenance: list[str]  # scan 7: signed, tampered, generator settings, IPTC source types, a watermark, a plain file
    threshold_p: float


def scan(url: str, *args: str) -> dict:
    result = CliRunner().invoke(
        main, ["scan", *args, "--db", url, "--batch-size", "4", "--chunk-size", "6", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _scores(url: str, scan_id: int) -> dict[str, float]:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as s:
            return dict(s.execute(select(Result.path, Result.p_fake).where(Result.scan_id == scan_id, Result.status == "ok")).all())
    finally:
        engine.dispose()


def _cut(scores: list[float], n_fake: int) -> float:
    """A threshold that labels exactly the ``n_fake`` highest of ``scores`` fake."""
    ranked = sorted(scores, reverse=True)
    if n_fake == len(ranked):
        return ranked[-1]
    assert ranked[n_fake - 1] > ranked[n_fake], "two images score the same; the archive needs more variety"
    return (ranked[n_fake - 1] + ranked[n_fake]) / 2


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, tiny_onnx_model: Path) -> Archive:
    """Images in two folders plus bad files, and thresholds that make the scans disagree.

    The tiny model's scores sit close together, so the thresholds are cut
    between them (from a scratch scan with the same pipeline): scan 1 then
    labels 4 of the 9 images fake, and scan 2 (model B) labels a different
    number of the ``alpha`` images fake than scan 1 did, so verdicts change.
    """
    base = tmp_path_factory.mktemp("sql_guide")
    root = base / "archive"
    alpha = [str(p) for p in write_jpegs(root / "alpha", 5)]
    beta = [str(p) for p in write_jpegs(root / "beta", 4, start=5)]
    bad = [str(p) for p, _ in write_bad_files(root / "bad").values()]
    model_b = export_tiny_model(base / "model_b", seed=MODEL_B_SEED)

    scratch = f"sqlite:///{base / 'scratch.db'}"
    a_scores = _scores(scratch, scan(scratch, str(root), "--model", str(tiny_onnx_model))["scan_id"])
    b_scores = _scores(scratch, scan(scratch, str(root / "alpha"), "--model", str(model_b))["scan_id"])
    threshold_a = _cut(list(a_scores.values()), 4)
    a_fake_alpha = sum(a_scores[p] >= threshold_a for p in alpha)
    n_b = a_fake_alpha + 1 if a_fake_alpha < len(alpha) else a_fake_alpha - 1
    threshold_b = _cut([b_scores[p] for p in alpha], n_b)
    videos = _write_videos(base / "videos")
    v_scores = _scores(scratch, scan(scratch, str(base / "videos"), *VIDEO_SCAN, "--model",
                                     str(tiny_onnx_model))["scan_id"])
    threshold_v = _cut(list(v_scores.values()), 1)  # one of the two videos with faces is fake
    copies = _write_copies(base / "copies")
    c_scores = _scores(scratch, scan(scratch, str(base / "copies"), "--model", str(tiny_onnx_model))["scan_id"])
    threshold_c = _cut(list(c_scores.values()), 3)
    provenance = sorted(str(p) for p in write_provenance_files(base / "provenance").values())
    p_scores = _scores(scratch, scan(scratch, str(base / "provenance"), "--model", str(tiny_onnx_model))["scan_id"])
    threshold_p = _cut(list(p_scores.values()), 2)  # 2 of 8 fake: most files that declare themselves are real
    return Archive(root, alpha, beta, bad, tiny_onnx_model, model_b, threshold_a, threshold_b,
                   _write_faces(base / "faces"), videos, threshold_v, copies, threshold_c, provenance, threshold_p)


def _write_copies(folder: Path) -> list[str]:
    """scikit-image's photographs, a re-encoded and a resized copy of two of them, and a flat image (no PDQ match)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    astronaut, coffee = Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())
    astronaut.save(folder / "astronaut_q40.jpg", quality=40)
    astronaut.resize((256, 256)).save(folder / "astronaut_small.jpg", quality=80)
    coffee.resize((300, 200)).save(folder / "coffee_small.jpg", quality=60)
    Image.new("RGB", (96, 96), (70, 90, 110)).save(folder / "flat.png")
    return sorted(str(p) for p in folder.iterdir())


VIDEO_SCAN = ("--faces", "on", "--frames", "4")


def _write_videos(folder: Path) -> list[str]:
    """Faces through time: one moving and one still face, a single face, a video without one, an empty file."""
    folder.mkdir(parents=True)
    write_face_video(folder / "moving.avi", 20, lambda i: [(20 + 12 * i, 20, 1.0), (440, 170, 0.8)])
    write_face_video(folder / "single.avi", 12, lambda i: [(200, 60, 1.2)])
    write_video(folder / "plain.mp4", 10, size=(128, 96))
    (folder / "empty.mkv").write_bytes(b"")
    return sorted(str(p) for p in folder.iterdir())


def _write_faces(folder: Path) -> list[str]:
    """Real faces (scikit-image's astronaut) alone, three pasted on a photo, and a cat without a face."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    astronaut = Image.fromarray(data.astronaut())
    astronaut.save(folder / "astronaut.png")
    group = Image.fromarray(data.coffee()).resize((1200, 800))
    face = astronaut.crop((150, 30, 300, 200))
    for x, y, s in ((40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)):
        group.paste(face.resize((round(150 * s), round(170 * s))), (x, y))
    group.save(folder / "group.jpg", quality=95)
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg")
    return sorted(str(p) for p in folder.iterdir())


def _populate(url: str, a: Archive) -> None:
    """Scan 1: model A over everything. Scan 2: model B over alpha and bad. Scan 3: model A over alpha again,
    reusing scan 1's verdicts."""
    s1 = scan(url, str(a.root), "--model", str(a.model_a), "--threshold", repr(a.threshold_a), "--name", "first")
    s2 = scan(url, str(a.root / "alpha"), str(a.root / "bad"), "--model", str(a.model_b),
              "--threshold", repr(a.threshold_b), "--name", "model-b")
    # Scan 3 takes scan 1's verdicts (same model, same bytes), decided again at its own threshold.
    s3 = scan(url, str(a.root / "alpha"), "--model", str(a.model_a), "--threshold", "1", "--name", "strict",
              "--reuse-verdicts")
    s4 = scan(url, str(a.faces[0].rsplit("/", 1)[0]), "--model", str(a.model_a), "--faces", "on", "--max-faces", "2",
              "--name", "faces")
    s5 = scan(url, str(a.videos[0].rsplit("/", 1)[0]), *VIDEO_SCAN, "--model", str(a.model_a),
              "--threshold", repr(a.threshold_v), "--name", "videos")
    s6 = scan(url, str(a.copies[0].rsplit("/", 1)[0]), "--model", str(a.model_a), "--threshold", repr(a.threshold_c),
              "--name", "copies")
    s7 = scan(url, str(a.provenance[0].rsplit("/", 1)[0]), "--model", str(a.model_a), "--threshold",
              repr(a.threshold_p), "--name", "provenance")
    assert [s1["scan_id"], s2["scan_id"], s3["scan_id"], s4["scan_id"], s5["scan_id"], s6["scan_id"],
            s7["scan_id"]] == [1, 2, 3, 4, 5, 6, 7]
    assert (s7["fake"], s7["manifests"], s7["invalid_manifests"]) == (2, 2, 1)
    assert s6["fake"] == 3
    assert (s4["ok"], s4["no_face"]) == (2, 1)
    assert (s5["ok"], s5["no_face"], s5["errors"], s5["fake"]) == (2, 1, 1, 1)
    assert (s1["total"], s2["total"], s3["total"]) == (13, 9, 5)
    assert s1["fake"] == 4 and s3["fake"] == 0
    assert (s1["computed"], s3["reused"], s3["computed"]) == (13, 5, 0)


@dataclass
class Data:
    """The raw tables, read through the ORM: what the oracles compute from."""

    url: str
    results: list[dict[str, Any]]
    scans: dict[int, dict[str, Any]]
    models: dict[int, dict[str, Any]]
    faces: list[dict[str, Any]]
    frames: list[dict[str, Any]]
    provenance: list[dict[str, Any]]


def _read(url: str) -> Data:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as s:
            models = {m.id: {"sha256": m.sha256} for m in s.scalars(select(Model))}
            scans = {
                x.id: {c: getattr(x, c) for c in ("id", "name", "status", "model_id", "threshold", "total", "real",
                                                   "fake", "errors", "started_at", "finished_at")}
                for x in s.scalars(select(Scan))
            }
            results = [
                {c: getattr(r, c) for c in ("scan_id", "model_id", "path", "status", "label", "p_fake", "confidence",
                                            "error_code", "scanned_at", "faces", "faces_found", "kind", "frames",
                                            "duration_s", "content_hash",
                                            "verdict_source", "pdq", "pdq_quality")}
                | {"model_sha256": models[r.model_id]["sha256"]}
                for r in s.scalars(select(Result))
            ]
            faces = [
                {c: getattr(f, c) for c in ("scan_id", "path", "face_index", "x", "y", "w", "h", "detector_score",
                                            "p_fake", "label")}
                for f in s.scalars(select(ResultFace))
            ]
            frames = [
                {c: getattr(f, c) for c in ("scan_id", "path", "track", "frame_index", "timestamp_s", "x", "y", "w",
                                            "h", "p_fake", "track_p_fake")}
                for f in s.scalars(select(ResultFrame))
            ]
            provenance = [
                {c: getattr(p, c) for c in ("scan_id", "path", "c2pa", "c2pa_state", "c2pa_codes", "signer",
                                            "generator", "source_type", "watermark", "synthetic_declared")}
                for p in s.scalars(select(ResultProvenance))
            ]
    finally:
        engine.dispose()
    return Data(url, results, scans, models, faces, frames, provenance)


def _sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield f"sqlite:///{tmp_path_factory.mktemp('sql_guide_sqlite') / 'dfscan.db'}"


def _pg_database() -> Iterator[str]:
    with throwaway_pg_database() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def populated(request: pytest.FixtureRequest, archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    databases = _sqlite_database(tmp_path_factory) if request.param == "sqlite" else _pg_database()
    url = next(databases)
    try:
        _populate(url, archive)
        yield _read(url)
    finally:
        databases.close()


# --- what each query must return, computed from the raw rows --------------------------------


def _ok(d: Data, scan_id: int) -> list[dict]:
    return [r for r in d.results if r["scan_id"] == scan_id and r["status"] == "ok"]


def _folder(path: str) -> str:
    return path[: path.rindex("/") + 1]


def expect_scans_overview(d: Data, tz: ZoneInfo) -> list[tuple]:
    return [
        (s["id"], s["name"], s["status"], d.models[s["model_id"]]["sha256"], s["threshold"], s["total"], s["real"],
         s["fake"], s["errors"], s["started_at"], s["finished_at"])
        for s in sorted(d.scans.values(), key=lambda s: -s["id"])
    ]


def expect_top_fakes(d: Data, tz: ZoneInfo) -> list[tuple]:
    fakes = sorted((r for r in _ok(d, 1) if r["label"] == "fake"), key=lambda r: (-r["p_fake"], r["path"]))
    return [(r["path"], r["p_fake"], r["confidence"]) for r in fakes[:5]]


def expect_fake_rate_by_folder(d: Data, tz: ZoneInfo) -> list[tuple]:
    by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in _ok(d, 1):
        by[_folder(r["path"])][0] += 1
        by[_folder(r["path"])][1] += r["label"] == "fake"
    rows = [(f, n, k, k / n) for f, (n, k) in by.items()]
    return sorted(rows, key=lambda t: (-t[3], t[0]))


def expect_errors_by_reason(d: Data, tz: ZoneInfo) -> list[tuple]:
    by: dict[str, list[str]] = defaultdict(list)
    for r in d.results:
        if r["scan_id"] == 1 and r["status"] == "error":
            by[r["error_code"]].append(r["path"])
    return sorted(((c, len(p), min(p)) for c, p in by.items()), key=lambda t: (-t[1], t[0]))


def expect_borderline(d: Data, tz: ZoneInfo) -> list[tuple]:
    t = d.scans[1]["threshold"]
    rows = sorted(_ok(d, 1), key=lambda r: (abs(r["p_fake"] - t), r["path"]))
    return [(r["path"], r["label"], r["p_fake"], t, abs(r["p_fake"] - t)) for r in rows[:5]]


def expect_changed_between_scans(d: Data, tz: ZoneInfo, page: int = 1000, after: bytes = b"") -> list[tuple]:
    """Of the first ``page`` rows of scan 2 in key order after ``after``, those scan 1 judged differently."""
    one = {r["path"]: r for r in d.results if r["scan_id"] == 1}
    out = []
    for b in sorted((r for r in d.results if r["scan_id"] == 2 and _key(r) > after), key=_key)[:page]:
        a = one.get(b["path"])
        if a is not None and (a["status"] != b["status"] or a["label"] != b["label"]):
            out.append((b["path"], a["status"], b["status"], a["label"], b["label"], a["p_fake"], b["p_fake"],
                        _key(b)))
    return out


def _latest_ok(d: Data, key: Callable[[dict], Any]) -> dict[Any, dict]:
    latest: dict[Any, dict] = {}
    for r in d.results:
        if r["status"] == "ok" and (key(r) not in latest or r["scan_id"] > latest[key(r)]["scan_id"]):
            latest[key(r)] = r
    return latest


def _key(r: dict) -> bytes:
    return path_hash(r["path"])


def expect_changed_between_models(d: Data, tz: ZoneInfo, page: int = 1000, after: bytes = b"") -> list[tuple]:
    """Of the first ``page`` ok rows of scan 2 (the current model's) in key order after ``after``, those whose
    verdict differs from the previous model's latest in scans 1 and 3."""
    current = max(d.models)
    previous = max(m for m in d.models if m < current)
    older = [r for r in d.results if r["scan_id"] in (1, 3) and r["model_id"] == previous]
    latest = _latest_ok(Data(d.url, older, d.scans, d.models, [], [], []), lambda r: r["path"])
    out = []
    if d.scans[2]["model_id"] != current:
        return out
    for new in sorted((r for r in _ok(d, 2) if _key(r) > after), key=_key)[:page]:
        old = latest.get(new["path"])
        if old is not None and new["label"] != old["label"]:
            out.append((new["path"], old["label"], new["label"], old["p_fake"], new["p_fake"], _key(new)))
    return out


def expect_never_scored_by_current_model(d: Data, tz: ZoneInfo) -> list[tuple]:
    """Scan 1's files without an ok verdict of the current model in scan 2."""
    current = max(d.models)
    scored = {r["path"] for r in _ok(d, 2) if r["model_id"] == current}
    return [(p,) for p in sorted({r["path"] for r in d.results if r["scan_id"] == 1} - scored)]


def expect_daily_volume(d: Data, tz: ZoneInfo) -> list[tuple]:
    """Per day a scan started: its results rows counted (test_the_scans_exercise_... checks the counters agree)."""
    by: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0])
    for s in d.scans.values():
        day = by[s["started_at"].astimezone(tz).date().isoformat()]
        rows = [r for r in d.results if r["scan_id"] == s["id"]]
        day[0] += len(rows)
        day[1] += sum(r["label"] == "fake" for r in rows)
        day[2] += sum(r["status"] == "error" for r in rows)
        day[3] += 1
    return [(k, *v) for k, v in sorted(by.items())]


def expect_latest_verdict_per_file(d: Data, tz: ZoneInfo, page: int = 1000, after: bytes = b"") -> list[tuple]:
    """The newest ok row in scans 1, 2, 3 of each of the first ``page`` files in key order after ``after``."""
    few = [r for r in d.results if r["scan_id"] in (1, 2, 3) and _key(r) > after]
    latest = _latest_ok(Data(d.url, few, d.scans, d.models, [], [], []), lambda r: r["path"])
    rows = sorted(latest.values(), key=_key)[:page]
    return [(r["path"], r["scan_id"], r["label"], r["p_fake"], r["model_sha256"], _key(r)) for r in rows]


def expect_most_suspicious_faces(d: Data, tz: ZoneInfo) -> list[tuple]:
    faces = sorted((f for f in d.faces if f["scan_id"] == 4), key=lambda f: (-f["p_fake"], f["path"], f["face_index"]))
    return [(f["path"], f["face_index"], f["x"], f["y"], f["w"], f["h"], f["detector_score"], f["p_fake"], f["label"])
            for f in faces[:10]]


def expect_faces_per_image(d: Data, tz: ZoneInfo) -> list[tuple]:
    by: dict[tuple, int] = defaultdict(int)
    for r in d.results:
        if r["scan_id"] == 4:
            by[(r["status"], -1 if r["faces"] is None else r["faces"],
                -1 if r["faces_found"] is None else r["faces_found"])] += 1
    return [(*k, n) for k, n in sorted(by.items())]


def expect_fake_video_tracks(d: Data, tz: ZoneInfo) -> list[tuple]:
    out = []
    for r in d.results:
        if r["scan_id"] != 5 or r["kind"] != "video" or r["label"] != "fake":
            continue
        by_track: dict[int, list[float]] = defaultdict(list)
        for f in d.frames:
            if f["scan_id"] == 5 and f["path"] == r["path"] and f["track_p_fake"] == r["p_fake"]:
                by_track[f["track"]].append(f["timestamp_s"])
        out.extend((r["path"], r["p_fake"], r["frames"], r["duration_s"], k, min(ts), max(ts))
                   for k, ts in by_track.items())
    return sorted(out, key=lambda t: (-t[1], t[0], t[4]))


def expect_video_frames_over_time(d: Data, tz: ZoneInfo) -> list[tuple]:
    frames = sorted((f for f in d.frames if f["scan_id"] == 5 and f["path"].endswith("/moving.avi")),
                    key=lambda f: (f["track"], f["timestamp_s"]))
    return [(f["track"], f["frame_index"], f["timestamp_s"], f["x"], f["y"], f["w"], f["h"], f["p_fake"],
             f["track_p_fake"]) for f in frames]


def expect_same_bytes_as_flagged(d: Data, tz: ZoneInfo) -> list[tuple]:
    flagged = sorted(_ok(d, 1), key=lambda r: (-r["p_fake"], r["path"]))[0]
    same = [r for r in d.results if r["content_hash"] == flagged["content_hash"]]
    return [(r["scan_id"], r["path"], r["status"], r["label"], r["p_fake"], r["verdict_source"])
            for r in sorted(same, key=lambda r: (r["scan_id"], r["path"]))]


def expect_verdict_sources(d: Data, tz: ZoneInfo) -> list[tuple]:
    """Files per (scan, source), and the distinct contents each scan met first as that source: none for copies."""
    by: dict[tuple, list] = defaultdict(lambda: [0, set()])
    for r in d.results:
        if r["scan_id"] not in (1, 3):
            continue
        key = by[(r["scan_id"], r["verdict_source"])]
        key[0] += 1
        if r["content_hash"] is not None and r["verdict_source"] != "copy":
            key[1].add(r["content_hash"])
    return [(*k, n, len(h)) for k, (n, h) in sorted(by.items())]


def _near_pairs(d: Data, scan_id: int) -> list[tuple[dict, dict, int]]:
    """Every ordered pair of scan ``scan_id``'s matchable images within 31 bits that share an eighth of the hash
    (the same 8 hex digits at one of the eight positions: the guide's candidates), with their distance."""
    from dfscan.workers.hashing import hamming

    def candidates(a: str, b: str) -> bool:
        return any(a[k : k + 8] == b[k : k + 8] for k in range(0, 64, 8))

    images = [r for r in d.results if r["scan_id"] == scan_id and r["pdq"] and r["pdq_quality"] >= 50]
    return [(a, b, hamming(a["pdq"], b["pdq"])) for a in images for b in images
            if a["path"] != b["path"] and candidates(a["pdq"], b["pdq"]) and hamming(a["pdq"], b["pdq"]) <= 31]


def expect_near_copies(d: Data, tz: ZoneInfo) -> list[tuple]:
    """Every pair of scan 6 once, the smaller path first (what finish_scan stored in scan_near_copies)."""
    return sorted((a["path"], b["path"], n) for a, b, n in _near_pairs(d, 6) if a["path"] < b["path"])


def expect_near_copies_of_flagged(d: Data, tz: ZoneInfo) -> list[tuple]:
    fakes = [r for r in _ok(d, 6) if r["label"] == "fake" and r["pdq"] and r["pdq_quality"] >= 50]
    top = {r["path"] for r in sorted(fakes, key=lambda r: (-r["p_fake"], r["path"]))[:100]}
    rows = [(a["path"], a["p_fake"], b["path"], b["label"], n) for a, b, n in _near_pairs(d, 6) if a["path"] in top]
    return sorted(rows, key=lambda r: (-r[1], r[0], r[2]))


def _with_verdicts(d: Data) -> list[tuple[dict, dict]]:
    """(provenance row, result row) of every file read for provenance."""
    results = {(r["scan_id"], r["path"]): r for r in d.results}
    return [(p, results[(p["scan_id"], p["path"])]) for p in d.provenance]


def expect_declared_synthetic_but_scored_real(d: Data, tz: ZoneInfo) -> list[tuple]:
    rows = [(r["path"], r["p_fake"], p["source_type"], p["generator"], p["watermark"], p["c2pa_state"])
            for p, r in _with_verdicts(d)
            if p["scan_id"] == 7 and r["status"] == "ok" and r["label"] == "real" and p["synthetic_declared"]]
    return sorted(rows, key=lambda t: (-t[1], t[0]))


def expect_invalid_manifests(d: Data, tz: ZoneInfo) -> list[tuple]:
    return sorted((p["path"], p["c2pa_codes"], p["signer"], p["generator"], r["label"], r["p_fake"])
                  for p, r in _with_verdicts(d) if p["scan_id"] == 7 and p["c2pa_state"] == "invalid")


def expect_generators(d: Data, tz: ZoneInfo) -> list[tuple]:
    by: dict[str, list] = defaultdict(lambda: [0, 0, 0, []])
    for p, r in _with_verdicts(d):
        if p["scan_id"] == 7 and p["generator"] is not None:
            g = by[p["generator"]]
            g[0] += 1
            g[1] += bool(p["synthetic_declared"])
            g[2] += r["label"] == "fake"
            g[3].append(p["path"])
    return sorted(((k, n, k_d, k_f, min(paths)) for k, (n, k_d, k_f, paths) in by.items()),
                  key=lambda t: (-t[1], t[0]))


EXPECTED: dict[str, tuple[tuple[str, ...], Callable[[Data, ZoneInfo], list[tuple]]]] = {
    "scans-overview": (("id", "name", "status", "model_sha256", "threshold", "total", "real", "fake", "errors",
                        "started_at", "finished_at"), expect_scans_overview),
    "top-fakes": (("path", "p_fake", "confidence"), expect_top_fakes),
    "fake-rate-by-folder": (("folder", "scored", "fakes", "fake_rate"), expect_fake_rate_by_folder),
    "errors-by-reason": (("error_code", "files", "example"), expect_errors_by_reason),
    "borderline": (("path", "label", "p_fake", "threshold", "margin"), expect_borderline),
    "changed-between-scans": (("path", "status_before", "status_after", "label_before", "label_after",
                               "p_fake_before", "p_fake_after", "path_hash"), expect_changed_between_scans),
    "changed-between-models": (("path", "previous_label", "current_label", "previous_p_fake", "current_p_fake",
                                "path_hash"), expect_changed_between_models),
    "never-scored-by-current-model": (("path",), expect_never_scored_by_current_model),
    "daily-volume": (("day", "files", "fakes", "errors", "scans"), expect_daily_volume),
    "latest-verdict-per-file": (("path", "scan_id", "label", "p_fake", "model_sha256", "path_hash"),
                                expect_latest_verdict_per_file),
    "most-suspicious-faces": (("path", "face_index", "x", "y", "w", "h", "detector_score", "p_fake", "label"),
                              expect_most_suspicious_faces),
    "faces-per-image": (("status", "faces", "faces_found", "images"), expect_faces_per_image),
    "fake-video-tracks": (("path", "p_fake", "frames", "duration_s", "track", "first_s", "last_s"),
                          expect_fake_video_tracks),
    "video-frames-over-time": (("track", "frame_index", "timestamp_s", "x", "y", "w", "h", "p_fake",
                                "track_p_fake"), expect_video_frames_over_time),
    "same-bytes-as-flagged": (("scan_id", "path", "status", "label", "p_fake", "verdict_source"),
                              expect_same_bytes_as_flagged),
    "verdict-sources": (("scan_id", "verdict_source", "files", "contents"), expect_verdict_sources),
    "near-copies": (("path", "near_copy", "distance"), expect_near_copies),
    "near-copies-of-flagged": (("flagged", "p_fake", "near_copy", "label", "distance"), expect_near_copies_of_flagged),
    "declared-synthetic-but-scored-real": (("path", "p_fake", "source_type", "generator", "watermark", "c2pa_state"),
                                           expect_declared_synthetic_but_scored_real),
    "invalid-manifests": (("path", "c2pa_codes", "signer", "generator", "label", "p_fake"), expect_invalid_manifests),
    "generators": (("generator", "files", "declared_synthetic", "scored_fake", "example"), expect_generators),
}


# --- comparison ---------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def _norm(value: Any) -> Any:
    """One representation per value: drivers return Decimal, float, text or datetime."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str) and _TIMESTAMP.match(value):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _same(got: Any, want: Any) -> bool:
    got, want = _norm(got), _norm(want)
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    return got == want


def run_query(url: str, sql: str) -> tuple[tuple[str, ...], list[tuple], ZoneInfo]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            tz = ZoneInfo("UTC")
            if engine.dialect.name == "postgresql":
                tz = ZoneInfo(conn.exec_driver_sql("SHOW TIME ZONE").scalar_one())
            result = conn.exec_driver_sql(sql)
            return tuple(result.keys()), [tuple(r) for r in result], tz
    finally:
        engine.dispose()


# --- tests --------------------------------------------------------------------------------


def test_the_guide_has_ten_named_queries_each_with_an_expectation():
    assert len(QUERIES) >= 10
    assert set(QUERIES) == set(EXPECTED), "every query in docs/sql.md needs an expectation here, and back"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_query_returns_the_expected_rows(populated: Data, name: str):
    columns, rows, tz = run_query(populated.url, QUERIES[name])
    want_columns, expect = EXPECTED[name]
    want = expect(populated, tz)
    assert columns == want_columns
    assert want, f"the test data does not exercise {name}"
    assert len(rows) == len(want), (rows, want)
    for got_row, want_row in zip(rows, want):
        assert all(_same(g, w) for g, w in zip(got_row, want_row, strict=True)), (got_row, want_row)


# The paged queries (docs/sql.md 6, 7, 10), paged as the guide says: ``AND path_hash > ?`` where the page is
# chosen, bound to the last key of the page before.  That key is the last row's (10: a row per file), or the
# page's n-th file's, from the statement the guide gives (6, 7: rows only for some files; no row: last page).
_PAGE = re.compile(r"(\s+)ORDER BY ((?:\w+\.)?)path_hash(\s+)LIMIT 1000")
PAGE_END = {
    "changed-between-scans": "SELECT path_hash FROM results WHERE scan_id = 2{after} "
                             "ORDER BY path_hash LIMIT 1 OFFSET {skip}",
    "changed-between-models": "SELECT path_hash FROM results WHERE scan_id = 2 AND status = 'ok'{after} "
                              "ORDER BY path_hash LIMIT 1 OFFSET {skip}",
}


def _page_sql(sql: str, n: int, keyset: bool, mark: str) -> str:
    def page(m: re.Match) -> str:
        after = f" AND {m.group(2)}path_hash > {mark}" if keyset else ""
        return f"{after}{m.group(1)}ORDER BY {m.group(2)}path_hash{m.group(3)}LIMIT {n}"

    out, k = _PAGE.subn(page, sql)
    assert k, "the paged query has no 'ORDER BY path_hash LIMIT 1000'"
    return out


@pytest.mark.parametrize("name", ["latest-verdict-per-file", "changed-between-models", "changed-between-scans"])
def test_paged_query_pages_through_the_whole_answer(populated: Data, name: str):
    """Pages of two files, each after the last key of the one before: every row of the answer once, in order."""
    n = 2
    columns, expect = EXPECTED[name]
    engine = db.make_engine(populated.url)
    mark = "%s" if engine.dialect.name == "postgresql" else "?"
    got: list[tuple] = []
    pages = 0
    after: bytes | None = None
    try:
        with engine.connect() as conn:
            tz = ZoneInfo(conn.exec_driver_sql("SHOW TIME ZONE").scalar_one()) if mark == "%s" else ZoneInfo("UTC")
            while True:
                sql = _page_sql(QUERIES[name], n, after is not None, mark)
                params = (after,) * sql.count(mark) if after is not None else ()
                rows = [tuple(r) for r in conn.exec_driver_sql(sql, params)]
                want = expect(populated, tz, page=n, after=after or b"")
                assert len(rows) == len(want), (pages, rows, want)
                for got_row, want_row in zip(rows, want):
                    assert all(_same(g, w) for g, w in zip(got_row, want_row, strict=True)), (got_row, want_row)
                got += rows
                pages += 1
                if name in PAGE_END:
                    end = PAGE_END[name].format(after="" if after is None else f" AND path_hash > {mark}", skip=n - 1)
                    last = conn.exec_driver_sql(end, () if after is None else (after,)).scalar_one_or_none()
                else:
                    last = rows[-1][columns.index("path_hash")] if len(rows) == n else None
                if last is None:
                    break
                after = bytes(last)
    finally:
        engine.dispose()
    whole = expect(populated, tz)
    assert pages > 2 and whole, (pages, whole)
    assert len(got) == len(whole)
    for got_row, want_row in zip(got, whole):
        assert all(_same(g, w) for g, w in zip(got_row, want_row, strict=True)), (got_row, want_row)


def test_the_scans_exercise_what_the_queries_ask(populated: Data, archive: Archive):
    """The data has the shapes the guide talks about, so the expectations above are not vacuous."""
    d = populated
    assert len(d.models) == 2 and len(d.scans) == 7
    assert {r["error_code"] for r in d.results if r["scan_id"] == 1 and r["status"] == "error"} == {
        "empty", "truncated", "not-image", "too-many-pixels"}
    rates = [row[3] for row in expect_fake_rate_by_folder(d, ZoneInfo("UTC"))]
    assert len(rates) == 2 and rates[0] != rates[1]
    assert [r[0] for r in expect_never_scored_by_current_model(d, ZoneInfo("UTC"))] == sorted(archive.beta + archive.bad)
    # The scans' counters (what the daily volume sums) agree with their rows.
    for s in d.scans.values():
        rows = [r for r in d.results if r["scan_id"] == s["id"]]
        assert (s["total"], s["fake"], s["errors"]) == (
            len(rows), sum(r["label"] == "fake" for r in rows), sum(r["status"] == "error" for r in rows)), s
    sources = {(row[0], row[1]): row[2] for row in expect_verdict_sources(d, ZoneInfo("UTC"))}
    assert sources[(3, "reused")] == len(archive.alpha) and (3, "computed") not in sources
    # Scan 3 (model A, threshold 1: all real) is model A's latest verdict on alpha, not scan 1; scan 2 (model B)
    # is the current model's.
    changed = expect_changed_between_models(d, ZoneInfo("UTC"))
    assert changed and all(row[1] == "real" and row[2] == "fake" for row in changed)
    latest = expect_latest_verdict_per_file(d, ZoneInfo("UTC"))
    assert {row[0]: row[1] for row in latest} == {**{p: 3 for p in archive.alpha}, **{p: 1 for p in archive.beta}}
    # Scan 5: the moving video has two tracks of four frames each, the single one one track.
    tracks = {(Path(f["path"]).name, f["track"]) for f in d.frames if f["scan_id"] == 5}
    assert tracks == {("moving.avi", 0), ("moving.avi", 1), ("single.avi", 0)}
    assert len([f for f in d.frames if f["scan_id"] == 5]) == 3 * 4
    # Scan 4: the group photo's three faces were found and two (the cap) scored.
    assert expect_faces_per_image(d, ZoneInfo("UTC")) == [("no-face", 0, 0, 1), ("ok", 1, 1, 1), ("ok", 2, 3, 1)]
    # Scan 6: the three copies pair with their originals (and the two astronaut copies with each other), nothing
    # else does; some near copy is of a flagged image and some is not (the guide's queries 17 and 18).
    names = {frozenset((Path(a).name, Path(b).name)) for a, b, _ in expect_near_copies(d, ZoneInfo("UTC"))}
    assert names == {frozenset(p) for p in (("astronaut.png", "astronaut_q40.jpg"),
                                            ("astronaut.png", "astronaut_small.jpg"),
                                            ("astronaut_q40.jpg", "astronaut_small.jpg"),
                                            ("coffee.png", "coffee_small.jpg"))}
    flagged = expect_near_copies_of_flagged(d, ZoneInfo("UTC"))
    assert flagged and len(flagged) < 2 * len(names)
    # Scan 7: every file was read for provenance; the tampered copy fails validation on its data hash, the
    # signed one validates (untrusted: no trust anchors); some declared file is real and some is fake.
    by_name = {Path(p["path"]).name: p for p in d.provenance if p["scan_id"] == 7}
    assert set(by_name) == {Path(p).name for p in archive.provenance}
    assert (by_name["signed.jpg"]["c2pa"], by_name["signed.jpg"]["c2pa_state"]) == ("embedded", "valid")
    assert "assertion.dataHash.mismatch" in by_name["tampered.jpg"]["c2pa_codes"]
    assert {n for n, p in by_name.items() if p["synthetic_declared"]} == {
        "signed.jpg", "tampered.jpg", "sd.png", "comfy.png", "xmp_ai.jpg", "watermarked.png"}
    declared_labels = {r["label"] for p, r in _with_verdicts(d) if p["scan_id"] == 7 and p["synthetic_declared"]}
    assert "real" in declared_labels
    assert expect_generators(d, ZoneInfo("UTC"))
