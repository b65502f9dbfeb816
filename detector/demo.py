"""``make demo``: the whole product on this machine, CPU only, in a few minutes.

It synthesises a labelled sample archive (NOT a deepfake data set: see
:mod:`detector.synth`), trains a compact detector on it, exports and calibrates
it, scans the held-apart test part through the real ``dfscan scan`` pipeline
into SQLite, checks the stored verdicts against the known labels with SQL, and
writes the evaluation report. Every step is a ``dfscan`` command, printed as a
user would type it.

Usage: ``python -m dfscan.detector.demo [--out demo] [--n 2000] [--epochs 10]``
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from dfscan.trt.model_info import ModelFolder

# The demo's compact detector: the in-house tiny backbone and a small LSTM, trained on
# 224x224 images (the model's input size, so the scanner does not resample them). Random
# rotation is off: it resamples the pixel grid and smears the up-sampling traces the
# synthetic fakes carry; flips and colour jitter stay.
DEFAULTS = {"n": 2000, "epochs": 10, "batch_size": 32, "backbone": "tiny", "lstm_hidden": 64, "target_fpr": 0.05}
# What the demo writes inside --out; only these are removed when it starts again.
OWNED = ("data", "clips", "train", "model", "report", "demo.db", "demo.db-wal", "demo.db-shm")


def _run(args: list[str], log: list[tuple[str, float]]) -> None:
    shown = "dfscan " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dfscan.cli", *args], check=False)
    elapsed = time.perf_counter() - t0
    log.append((args[0], elapsed))
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed (exit {proc.returncode}): {shown}")


def _table(cursor: sqlite3.Cursor) -> str:
    names = [d[0] for d in cursor.description]
    rows = [["" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r] for r in cursor]
    widths = [max(len(n), *(len(r[i]) for r in rows)) if rows else len(n) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


TRUTH = "CASE WHEN path LIKE '%/fake/%' THEN 'fake' WHEN path LIKE '%/real/%' THEN 'real' END"

ACCURACY_SQL = f"""
SELECT COUNT(*) AS scored,
       SUM(CASE WHEN label = {TRUTH} THEN 1 ELSE 0 END) AS correct,
       ROUND(1.0 * SUM(CASE WHEN label = {TRUTH} THEN 1 ELSE 0 END) / COUNT(*), 4) AS accuracy
FROM scan_results
WHERE scan_id = :scan AND kind = 'image' AND status = 'ok' AND {TRUTH} IS NOT NULL
"""

EXAMPLES = (
    ("Verdicts against the known labels (a confusion matrix in SQL)", f"""
SELECT {TRUTH} AS truth, label AS verdict, COUNT(*) AS images, ROUND(AVG(p_fake), 3) AS mean_p_fake
FROM scan_results
WHERE scan_id = :scan AND status = 'ok'
GROUP BY 1, 2 ORDER BY 1, 2"""),
    ("The five most confident 'fake' verdicts", """
SELECT path, p_fake, confidence
FROM scan_results
WHERE scan_id = :scan AND label = 'fake'
ORDER BY p_fake DESC, path LIMIT 5"""),
    ("The videos: one row per clip, its sampled frames scored as one sequence by the BiLSTM (this detector "
     "learnt from single images, so its video verdicts say little: a video detector trains on clips, "
     "`dfscan synth --video` then `dfscan train --frames 16`)", """
SELECT path, frames, duration_s, label, p_fake
FROM scan_results
WHERE scan_id = :scan AND kind = 'video'
ORDER BY p_fake DESC, path"""),
    ("Closest calls, for a human to review (nearest the scan's threshold), and every error row", """
SELECT r.path, r.status, r.label, r.p_fake, r.error
FROM scan_results AS r JOIN scans AS s ON s.id = r.scan_id
WHERE r.scan_id = :scan
ORDER BY CASE WHEN r.status = 'error' THEN -1 ELSE ABS(r.p_fake - s.threshold) END, r.path LIMIT 6"""),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfscan.detector.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="Output folder [demo].")
    parser.add_argument("--n", type=int, default=DEFAULTS["n"], help="Images to synthesise [%(default)s].")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="Training epochs [%(default)s].")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    data, train_dir, model_dir, report_dir = out / "data", out / "train", out / "model", out / "report"
    clips = out / "clips"
    db_path = out / "demo.db"
    log: list[tuple[str, float]] = []
    print(f"dfscan demo: everything goes to {out.resolve()}/ (CPU only)")
    print("The sample archive is synthetic, NOT a deepfake data set: its 'fakes' are procedural images passed "
          "through a simulator of generator up-sampling artefacts.")

    _run(["synth", str(data), "--n", str(args.n), "--size", "224", "--seed", "0", "--no-progress"], log)
    # One broken file among the held-apart images: the scan must still give it a row (an error with a reason).
    broken = data / "test" / "unsorted" / "truncated.jpg"
    broken.parent.mkdir(parents=True, exist_ok=True)
    sample = next((data / "test" / "real").glob("*.jpg"))
    broken.write_bytes(sample.read_bytes()[:1500])
    # A few synthetic clips (panning procedural scenes; fakes through the same simulator), scanned with the
    # held-apart images: each is one row, its 16 sampled frames one sequence through the exported video graph.
    _run(["synth", str(clips), "--video", "--n", "4", "--layout", "flat", "--size", "224", "--clip-frames", "16",
          "--seed", "1", "--no-progress"], log)
    _run(["train", str(data), "--out", str(train_dir), "--backbone", DEFAULTS["backbone"],
          "--lstm-hidden", str(DEFAULTS["lstm_hidden"]), "--epochs", str(args.epochs),
          "--batch-size", str(DEFAULTS["batch_size"]), "--rotation", "0", "--device", "cpu", "--workers", "1",
          "--no-progress"], log)
    _run(["export", str(train_dir / "best.pt"), "--out", str(model_dir)], log)
    model = ModelFolder.export_to(model_dir).model
    _run(["calibrate", str(model), str(data), "--target-fpr", str(DEFAULTS["target_fpr"]), "--no-progress"], log)
    _run(["scan", str(data / "test"), str(clips), "--model", str(model), "--db", f"sqlite:///{db_path}",
          "--name", "demo-test", "--no-progress"], log)

    print("\n# The stored verdicts against the known labels (the folder each image came from), in SQL:")
    with sqlite3.connect(db_path) as conn:
        scan_id = conn.execute("SELECT MAX(id) FROM scans").fetchone()[0]
        print(ACCURACY_SQL.strip().replace(":scan", str(scan_id)))
        cur = conn.execute(ACCURACY_SQL, {"scan": scan_id})
        text = _table(cur)
        print(text)
        scored, correct, acc = conn.execute(ACCURACY_SQL, {"scan": scan_id}).fetchone()
        for title, sql in EXAMPLES:
            print(f"\n# {title}:\n{sql.strip().replace(':scan', str(scan_id))}")
            print(_table(conn.execute(sql, {"scan": scan_id})))

    _run(["evaluate", str(model), str(data), "--split", "test", "--out", str(report_dir), "--no-progress"], log)
    wall = time.perf_counter() - started
    print("\n# Demo finished")
    print(f"accuracy of the stored verdicts on the held-apart test images: {acc:.2%} ({correct} of {scored})")
    print(f"wall time {wall:.0f} s: " + ", ".join(f"{name} {secs:.0f} s" for name, secs in log))
    print("outputs:")
    for path, what in (
        (data, "the synthetic archive (train/valid/test, real/fake)"),
        (clips, "synthetic video clips (real/, fake/), scanned with the test images"),
        (train_dir, "best.pt, last.pt, training_results.json, dataset_info.json"),
        (model_dir, "model.onnx and model_info.json (calibrated temperature and threshold)"),
        (db_path, f"SQLite results; try: dfscan results --db sqlite:///{db_path} --label fake"),
        (report_dir / "report.html", "the evaluation report (open it in a browser); metrics.json beside it"),
    ):
        print(f"  {path}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
