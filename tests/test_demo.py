"""`make demo` end to end, shrunk: a small archive and one epoch, through the real commands and SQLite."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "stale.txt").write_text("left by an earlier run")
    (out / "notes.txt").write_text("the user's own file")
    proc = subprocess.run(
        [sys.executable, "-m", "dfscan.detector.demo", "--out", str(out), "--n", "100", "--epochs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for step in ("synth", "train", "export", "calibrate", "scan", "evaluate"):
        assert f"$ dfscan {step} " in text, step
    assert "NOT a deepfake data set" in text
    match = re.search(r"accuracy of the stored verdicts on the held-apart test images: ([\d.]+)% \((\d+) of (\d+)\)", text)
    assert match, text[-2000:]
    accuracy, correct, scored = float(match.group(1)), int(match.group(2)), int(match.group(3))
    assert abs(accuracy - 100 * correct / scored) < 0.01
    assert text.count("SELECT") >= 5  # the accuracy query and four examples, printed with their output
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert not (out / "data" / "stale.txt").exists()

    test_images = sorted(p for p in (out / "data" / "test").rglob("*.jpg"))
    clips = sorted((out / "clips").rglob("*.mp4"))
    assert len(clips) == 4 and "synthetic video clips" in text
    with sqlite3.connect(out / "demo.db") as conn:
        rows = conn.execute("SELECT path, status, label, error FROM scan_results WHERE kind = 'image'").fetchall()
        videos = conn.execute("SELECT path, status, frames FROM scan_results WHERE kind = 'video'").fetchall()
    # Every file of the held-apart part has one row; the broken one is an error with a reason.
    assert sorted(r[0] for r in rows) == sorted(str(p) for p in test_images)
    errors = [r for r in rows if r[1] == "error"]
    assert len(errors) == 1 and errors[0][0].endswith("truncated.jpg") and errors[0][3]
    # Each clip is one row: 16 sampled frames scored as one sequence.
    assert sorted(v[0] for v in videos) == [str(c) for c in clips]
    assert {(v[1], v[2]) for v in videos} == {("ok", 16)}
    ok = [r for r in rows if r[1] == "ok"]
    assert scored == len(ok)
    assert correct == sum(1 for r in ok if r[2] == ("fake" if "/fake/" in r[0] else "real"))

    info = json.loads((out / "model" / "model_info.json").read_text())
    assert info["calibration"]["target_fpr"] == 0.05
    assert (out / "report" / "report.html").is_file() and (out / "report" / "metrics.json").is_file()
    assert (out / "train" / "training_results.json").is_file() and (out / "train" / "dataset_info.json").is_file()
