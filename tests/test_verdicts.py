"""No silent verdict: a sidecar whose numbers break every probability is refused, a non-finite p_fake is an
error row, and the database refuses an ``ok`` row without a p_fake in [0, 1] (migration 0004)."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from dfscan import db
from dfscan.cli import main
from dfscan.workers.scoring import Batch, Item, TensorPayload, Verdict
from dfscan.workers.scoring.verdict import InferStage
from dfscan.workers.reading.errors import ImageError
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

T0 = datetime(2026, 11, 26, tzinfo=UTC)


# --- the sidecar, end to end -------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-320, float("nan")])
def test_scan_refuses_a_sidecar_that_makes_every_probability_nan(tmp_path: Path, tiny_onnx_model: Path,
                                                                  sqlite_url: str, temperature: float) -> None:
    """The issue's case: ``{"temperature": 1e-320}`` stored every image ``ok``, ``real``, p_fake NULL."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model = Path(shutil.copy(tiny_onnx_model, model_dir / "model.onnx"))
    record = json.loads((tiny_onnx_model.parent / "model_info.json").read_text())
    record["temperature"] = temperature
    (model_dir / "model_info.json").write_text(json.dumps(record))
    images = tmp_path / "images"
    write_jpegs(images, 3)
    result = CliRunner().invoke(main, ["scan", str(images), "--model", str(model), "--db", sqlite_url, "--json"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "temperature" in message and "Traceback" not in message and len(message.splitlines()) == 1, message
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            has_table = conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name = 'results'")).scalar()
            if has_table:
                assert conn.execute(text("SELECT count(*) FROM results WHERE status = 'ok'")).scalar() == 0
    finally:
        engine.dispose()


# --- the verdict ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"temperature": 1e-320}, {"temperature": math.nan}, {"temperature": 0.0},
                                    {"threshold": math.nan}, {"threshold": 1.5}])
def test_verdict_refuses_numbers_that_break_probabilities(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Verdict(**kwargs)


def test_non_finite_probability_is_an_error_not_a_verdict() -> None:
    # Finite float64 logits that overflow once divided by a (valid) low temperature: inf - inf = NaN.
    logits = np.array([[1e307, -1e307], [0.0, 0.01], [-1e307, 1e307]])
    rows = Verdict(temperature=0.01).decide(logits)
    assert isinstance(rows[0], ImageError) and rows[0].code == "bad-probability"
    assert isinstance(rows[2], ImageError)
    label, p, conf = rows[1].label, rows[1].p_fake, rows[1].confidence
    assert label == "fake" and 0.5 < p < 1 and conf == p


class _Float64Runtime:
    """A runtime whose logits are float64 (as a future one may give): the real ones give float32, which a valid
    temperature cannot overflow, so this is how score()'s handling of a broken probability is reached."""

    name, version, precision, device, fixed_batch = "float64", "0", "fp64", "cpu", None

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.logits[: batch.shape[0]]

    def close(self) -> None:
        pass


def test_score_makes_an_error_row_of_a_non_finite_probability() -> None:
    paths = ["/a.jpg", "/b.jpg", "/c.jpg"]
    batch = Batch([Item(p, size, 0.0, payload=TensorPayload(np.zeros((3, 4, 4), np.float32)))
                   for p, size in zip(paths, [1, 2, 3])])
    runtime = _Float64Runtime(np.array([[1e307, -1e307], [2.0, 0.0], [0.0, 2.0]]))
    InferStage({"image": runtime}, Verdict(temperature=0.01)).run(batch)
    rows = batch.result
    assert [(r.path, r.status, r.error_code) for r in rows] == [
        ("/a.jpg", "error", "bad-probability"), ("/b.jpg", "ok", None), ("/c.jpg", "ok", None),
    ]  # fmt: skip
    assert rows[0].p_fake is None and rows[0].label is None and "not a probability" in rows[0].error


# --- the database --------------------------------------------------------------------------


def _scan(session) -> tuple[int, int]:
    model_id = db.get_or_create_model(session, sha256="d" * 64, name="m", path="/m.onnx", info={})
    scan_id = db.create_scan(session, name="s", roots=["/d"], model_id=model_id, threshold=0.5, settings={})
    return scan_id, model_id


def _ok(path: str, p_fake: float | None) -> db.ResultRow:
    return db.ResultRow(path, 1, 0.0, "ok", "real", p_fake, 0.5, None, None, T0)


@pytest.mark.parametrize("p_fake", [None, math.nan, 1.5, -0.1, math.inf])
def test_database_refuses_an_ok_row_without_a_probability(db_engine: Engine, p_fake: float | None) -> None:
    sessions = db.session_factory(db_engine)
    with sessions.begin() as s:
        scan_id, model_id = _scan(s)
    with pytest.raises(IntegrityError, match="ok_p_fake"), sessions.begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[_ok("/bad.jpg", p_fake)])
    with sessions.begin() as s:  # the bounds themselves, and error rows without a p_fake, are fine
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[
            _ok("/zero.jpg", 0.0), _ok("/one.jpg", 1.0),
            db.ResultRow("/err.jpg", None, None, "error", None, None, None, "boom", "decode-failed", T0),
        ])  # fmt: skip


def test_migration_0004_turns_old_bad_ok_rows_into_errors(db_engine: Engine) -> None:
    db.downgrade(db_engine, "0003")
    sessions = db.session_factory(db_engine)
    with sessions.begin() as s:
        # Plain SQL: today's create_scan and write_batch write columns that later migrations add.
        model_id = db.get_or_create_model(s, sha256="d" * 64, name="m", path="/m.onnx", info={})
        scan_id = s.execute(text("INSERT INTO scans (name, roots, model_id, status, threshold, settings) "
                                 "VALUES ('s', '[\"/d\"]', :m, 'running', 0.5, '{}') RETURNING id"),
                            {"m": model_id}).scalar_one()
        for path, p_fake in (("/nan.jpg", None), ("/fine.jpg", 0.25)):
            s.execute(text("INSERT INTO results (scan_id, model_id, path, size, mtime, status, label, p_fake, "
                           "confidence, scanned_at) VALUES (:s, :m, :p, 1, 0.0, 'ok', 'real', :f, 0.5, :t)"),
                      {"s": scan_id, "m": model_id, "p": path, "f": p_fake, "t": T0})
    db.upgrade(db_engine)
    with db_engine.connect() as conn:
        rows = conn.execute(text("SELECT path, status, label, p_fake, error_code FROM results ORDER BY path")).all()
        assert conn.execute(text("SELECT count(*) FROM scan_results")).scalar() == 2  # the view is back
    assert [tuple(r) for r in rows] == [("/fine.jpg", "ok", "real", 0.25, None),
                                        ("/nan.jpg", "error", None, None, "bad-probability")]
