"""`dfscan scan` end to end: real images, a real ONNX model, real SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.trt.model_info import inspect_model
from dfscan.cli import main
from dfscan.core.settings import Settings
from dfscan.scanner import Chunk
from tests._images import write_bad_files, write_jpegs, write_mode_zoo
from tests._models import tiny_legacy_onnx_model, tiny_onnx_model  # noqa: F401 - fixtures
from dfscan.trt.onnxruntime import OnnxRuntime
from dfscan.workers.scoring.context import ScanContext
from dfscan.workers.images.decode import Preprocess, decode_one
from dfscan.workers.scoring.loop import score_chunk


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def rows_by_path(url: str, scan_id: int | None = None) -> dict[str, dict]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            q = "SELECT * FROM scan_results" + (" WHERE scan_id = :s" if scan_id else "")
            rows = [dict(r._mapping) for r in conn.execute(text(q), {"s": scan_id})]
    finally:
        engine.dispose()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path has more than one row"
    return {r["path"]: r for r in rows}


@pytest.fixture
def archive(tmp_path):
    """An archive with good images in many modes and every kind of bad input."""
    root = tmp_path / "archive"
    good = write_jpegs(root / "photos", 21) + list(write_mode_zoo(root / "modes").values())
    bad = {code: p for p, code in write_bad_files(root / "bad").values()}
    os.mkfifo(root / "bad" / "pipe.jpg")
    os.symlink(root / "nowhere.jpg", root / "bad" / "dangling.jpg")
    (root / "bad" / "ignored.txt").write_text("not an image extension: not scanned")
    expected_errors = {str(p): code for code, p in bad.items()}
    expected_errors[str(root / "bad" / "pipe.jpg")] = "not-regular"
    expected_errors[str(root / "bad" / "dangling.jpg")] = "missing"
    return root, [str(p) for p in good], expected_errors


@pytest.mark.parametrize("url_fixture", ["sqlite_url", "pg_url"])
def test_scan_gives_every_file_exactly_one_row(request, archive, tiny_onnx_model, url_fixture):
    url = request.getfixturevalue(url_fixture)
    root, good, expected_errors = archive
    result = run("scan", str(root), "--model", str(tiny_onnx_model), "--db", url, "--name", "t",
                 "--batch-size", "8", "--chunk-size", "16", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "completed"
    assert summary["total"] == len(good) + len(expected_errors)
    assert summary["errors"] == len(expected_errors)
    rows = rows_by_path(url, summary["scan_id"])
    assert set(rows) == set(good) | set(expected_errors)
    for path in good:
        r = rows[path]
        assert r["status"] == "ok" and r["error"] is None, (path, r)
        assert r["label"] in ("real", "fake")
        assert 0.0 <= r["p_fake"] <= 1.0
        assert r["confidence"] == pytest.approx(r["p_fake"] if r["label"] == "fake" else 1 - r["p_fake"])
        assert r["model_sha256"] == inspect_model(tiny_onnx_model).sha256
    for path, code in expected_errors.items():
        r = rows[path]
        assert r["status"] == "error" and r["label"] is None and r["p_fake"] is None, (path, r)
        assert r["error"], path
    assert summary["errors_by_reason"] == {
        code: list(expected_errors.values()).count(code) for code in set(expected_errors.values())
    }
    engine = db.make_engine(url)
    with engine.connect() as conn:
        chunks = conn.execute(text("SELECT status, ok, errors FROM chunks WHERE scan_id = :s"),
                              {"s": summary["scan_id"]}).all()
    engine.dispose()
    assert len(chunks) == -(-summary["total"] // 16)
    assert all(c.status == "done" for c in chunks)
    assert sum(c.ok for c in chunks) == len(good) and sum(c.errors for c in chunks) == len(expected_errors)


def test_stored_verdicts_are_the_models_own(tmp_path, tiny_onnx_model, sqlite_url):
    """p_fake in SQL equals softmax(ONNX Runtime(decode(file))) computed independently."""
    paths = write_jpegs(tmp_path / "imgs", 10)
    assert run("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url).exit_code == 0
    info = inspect_model(tiny_onnx_model)
    ort = OnnxRuntime(info)
    batch = np.stack([decode_one(p.read_bytes(), Preprocess()) for p in paths])
    logits = ort.infer(batch).astype(np.float64)
    p_fake = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    rows = rows_by_path(sqlite_url)
    got = np.array([rows[str(p)]["p_fake"] for p in paths])
    assert np.abs(got - p_fake).max() < 1e-5
    assert len(set(np.round(got, 6))) > 1  # the model does tell images apart


def test_threshold_option_moves_the_verdicts(tmp_path, tiny_onnx_model, sqlite_url):
    write_jpegs(tmp_path / "imgs", 6)
    run("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--threshold", "0")
    run("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--threshold", "1")
    engine = db.make_engine(sqlite_url)
    with engine.connect() as conn:
        labels = dict(conn.execute(text(
            "SELECT scan_id, group_concat(DISTINCT label) FROM scan_results GROUP BY scan_id")).all())
        thresholds = dict(conn.execute(text("SELECT id, threshold FROM scans")).all())
    engine.dispose()
    assert labels == {1: "fake", 2: "real"}
    assert thresholds == {1: 0.0, 2: 1.0}


def test_rerunning_a_chunk_rewrites_rather_than_duplicates(tmp_path, tiny_onnx_model, db_url):
    paths = tuple(str(p) for p in write_jpegs(tmp_path / "imgs", 5))
    settings = Settings(db_url=db_url, model=tiny_onnx_model, batch_size=2)
    ctx = ScanContext.open(settings)
    try:
        model_id = ctx.register_model()
        with ctx.sessions.begin() as s:
            scan_id = db.create_scan(s, name="rerun", roots=[], model_id=model_id, threshold=0.5, settings={})
            chunk_id = db.add_chunk(s, scan_id=scan_id, seq=0, paths=list(paths))
        chunk = Chunk(scan_id, 0, paths, chunk_id)
        first = score_chunk(ctx, chunk, model_id)
        before = rows_by_path(db_url, scan_id)
        second = score_chunk(ctx, chunk, model_id)
        after = rows_by_path(db_url, scan_id)
    finally:
        ctx.close()
    assert first.total == second.total == 5
    assert set(before) == set(after) == set(paths)
    assert all(before[p]["p_fake"] == after[p]["p_fake"] for p in paths)


def test_second_scan_of_the_same_folder_is_a_new_scan_with_the_same_verdicts(tmp_path, tiny_onnx_model, sqlite_url):
    write_jpegs(tmp_path / "imgs", 4)
    for _ in range(2):
        assert run("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url).exit_code == 0
    one, two = rows_by_path(sqlite_url, 1), rows_by_path(sqlite_url, 2)
    assert set(one) == set(two) and len(one) == 4
    assert all(one[p]["p_fake"] == two[p]["p_fake"] for p in one)


def test_legacy_fixed_batch_model_runs_at_its_batch_size(tmp_path, tiny_legacy_onnx_model, tiny_onnx_model, sqlite_url):
    info = inspect_model(tiny_legacy_onnx_model)
    assert info.fixed_batch == 1
    write_jpegs(tmp_path / "imgs", 5)
    res = run("scan", str(tmp_path / "imgs"), "--model", str(tiny_legacy_onnx_model), "--db", sqlite_url, "--json")
    assert res.exit_code == 0, res.output
    res2 = run("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--json")
    legacy, modern = rows_by_path(sqlite_url, 1), rows_by_path(sqlite_url, 2)
    assert all(r["status"] == "ok" for r in legacy.values())
    # Same weights, exported two ways: the same verdicts.
    assert max(abs(legacy[p]["p_fake"] - modern[p]["p_fake"]) for p in legacy) < 1e-4


def test_paths_from_stdin_including_one_that_vanished(tmp_path, tiny_onnx_model, sqlite_url):
    paths = [str(p) for p in write_jpegs(tmp_path / "imgs", 3)]
    listing = "\n".join(paths + [str(tmp_path / "gone.jpg")]) + "\n"
    res = run("scan", "--paths-from", "-", "--model", str(tiny_onnx_model), "--db", sqlite_url, input=listing)
    assert res.exit_code == 0, res.output
    rows = rows_by_path(sqlite_url)
    assert len(rows) == 4
    assert rows[str(tmp_path / "gone.jpg")]["status"] == "error"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/missing.onnx"], "missing.onnx"),
        (["--model", "{tmp}/junk.onnx"], "junk.onnx"),
        (["--model", "{model}", "--db", "mysql+nosuchdriver://x/y"], "nosuchdriver"),
        (["--model", "{model}", "--threshold", "1.5"], "threshold"),
        (["--model", "{model}", "--runtime", "nope"], "known runtimes"),
    ],
)
def test_setup_errors_fail_before_scanning_with_one_line(tmp_path, tiny_onnx_model, sqlite_url, args, message):
    write_jpegs(tmp_path / "imgs", 1)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    args = [a.format(tmp=tmp_path, model=tiny_onnx_model) for a in args]
    if "--db" not in args:
        args += ["--db", sqlite_url]
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), *args])
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert message in res.output
    assert "Traceback" not in res.output


def test_missing_root_is_refused(tmp_path, tiny_onnx_model, sqlite_url):
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "nope"), "--model", str(tiny_onnx_model), "--db", sqlite_url])
    assert res.exit_code != 0 and "no such file" in res.output


def test_results_csv_and_json_survive_awkward_paths(tmp_path, tiny_onnx_model, sqlite_url):
    folder = tmp_path / 'we,ird "names"'
    write_jpegs(folder, 2)
    odd = folder / "line\nbreak, and \"quotes\".jpg"
    (folder / "img_00000.jpg").rename(odd)
    assert run("scan", str(folder), "--model", str(tiny_onnx_model), "--db", sqlite_url).exit_code == 0
    out = run("results", "--db", sqlite_url, "--format", "csv").output
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["path"] for r in rows} == {str(odd), str(folder / "img_00001.jpg")}
    data = json.loads(run("results", "--db", sqlite_url, "--format", "json").output)
    assert {r["path"] for r in data} == {r["path"] for r in rows}
    fakes = json.loads(run("results", "--db", sqlite_url, "--format", "json", "--min-p", "0.0", "--label", "fake").output)
    assert all(r["label"] == "fake" for r in fakes)
    table = run("results", "--db", sqlite_url).output
    assert "img_00001.jpg" in table


def test_precision_is_refused_where_the_runtime_cannot_honour_it(tmp_path, tiny_onnx_model, sqlite_url):
    write_jpegs(tmp_path / "imgs", 1)
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url,
                                    "--runtime", "onnxruntime", "--precision", "fp16"])
    assert res.exit_code != 0 and "dfscan quantize" in res.output and "Traceback" not in res.output


def test_settings_without_an_option_come_from_the_environment(tmp_path, tiny_onnx_model, sqlite_url, monkeypatch):
    """DFSCAN_* fields the scan command has no option for (reader threads, ...) still apply."""
    write_jpegs(tmp_path / "imgs", 1)
    monkeypatch.setenv("DFSCAN_READ_THREADS", "0")
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url])
    assert res.exit_code != 0 and "thread counts must be at least 1" in res.output
