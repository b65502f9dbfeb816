"""``dfscan bench`` on a small synthetic set: every row this machine can produce is there and well-formed.

Speeds are never checked; only that each stage was measured (or says why not).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfscan.bench import INFER_VARIANTS
from dfscan.cli import main
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

N = 64


def _expected_rows(pg: bool) -> dict[tuple[str, str], set[str]]:
    """(stage, variant) -> the statuses acceptable for it on this machine."""
    from dfscan.trt.pytorch import cuda_status
    from dfscan.trt.registry import RUNTIMES
    from dfscan.workers.images.decoders import DECODERS

    rows: dict[tuple[str, str], set[str]] = {("read", "cached"): {"ok"}, ("read", "uncached"): {"ok"}}
    for name, spec in DECODERS.items():
        rows[("decode", name)] = {"ok"} if spec.available()[0] else {"skipped"}
    for name, spec in RUNTIMES.items():
        variants = [v for v in INFER_VARIANTS if v.runtime == name] or [None]
        for v in variants:
            label = f"{name} {v.precision if v else 'default'}"
            if not spec.available()[0]:
                rows[("infer", label)] = {"skipped"}
            elif name == "onnxruntime":
                rows[("infer", label)] = {"ok"}
            elif name == "torch":  # FP32 runs everywhere (the model has its model.pt2); FP16 on CUDA only
                rows[("infer", label)] = {"ok"} if v.precision == "fp32" or cuda_status()[0] else {"skipped"}
            else:  # e.g. TensorRT INT8 needs an engine built with calibration first
                rows[("infer", label)] = {"ok", "skipped"}
    rows[("decode-large", "pillow full")] = {"ok"}
    rows[("decode-large", "pillow draft")] = {"ok"}
    rows[("write", "sqlite")] = {"ok"}
    rows[("write", "postgresql")] = {"ok"} if pg else {"skipped"}
    rows[("scan", "end-to-end")] = {"ok"}
    rows[("hash", "pdq")] = {"ok"}
    rows[("provenance", "c2pa+xmp+settings+watermark")] = {"ok"}
    rows[("naive", "pillow+torchvision, eager torch, commit per row")] = {"ok"}
    return rows


def _check_rows(data: dict, pg: bool, naive: bool = True) -> dict[tuple[str, str], dict]:
    rows = {(r["stage"], r["variant"]): r for r in data["rows"]}
    expected = _expected_rows(pg)
    if not naive:
        expected[("naive", "pillow+torchvision, eager torch, commit per row")] = {"skipped"}
    assert set(rows) == set(expected)
    for key, row in rows.items():
        assert row["status"] in expected[key], (key, row)
        if row["status"] == "ok":
            assert row["images"] >= 1 and row["seconds"] > 0 and row["repeats"] >= 1, row
            assert math.isclose(row["images_per_s"], row["images"] / row["seconds"], rel_tol=0.01), row
            assert row["peak_rss_mib"] > 0 and row["peak_rss_mib"] >= row["start_rss_mib"] > 0, row
            assert row["images"] % (8 if key[0] == "decode-large" else N) == 0, row  # whole passes over the set
        else:
            assert row["reason"], row
    return rows


def test_bench_synthetic_measures_every_stage_it_can(tiny_onnx_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["bench", "--synthetic", str(N), "--model", str(tiny_onnx_model), "--min-time", "0", "--json",
         "--output", str(out)],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert json.loads(out.read_text()) == data
    rows = _check_rows(data, pg=False)

    assert data["images"]["count"] == N and data["batch_size"] == 64
    assert data["model"]["precision"] == "fp32"
    for key in ("cpu", "usable_cpus", "memory_gib", "versions", "platform"):
        assert data["machine"][key], key

    scan = rows[("scan", "end-to-end")]
    assert scan["images"] == N and scan["details"]["ok"] == N and scan["details"]["errors"] == 0
    assert rows[("naive", "pillow+torchvision, eager torch, commit per row")]["images"] == N
    # The INT8 row ran the model quantised on the fly, and its agreement was measured on the same images.
    assert rows[("infer", "onnxruntime int8")]["details"]["reported_precision"] == "int8"
    assert rows[("infer", "onnxruntime fp32")]["details"]["reported_precision"] == "fp32"
    assert data["int8"]["quantized_here"] and data["int8"]["agreement"]["images"] == N
    # The scan's own inference was measured before and after it.
    infer = rows[(("infer", f"{scan['details']['runtime']} {scan['details']['precision']}"))]
    assert infer["details"]["images_per_s_before_scan"] > 0 and infer["details"]["images_per_s_after_scan"] > 0

    slowest = data["slowest_stage"]
    assert slowest in {f"{s} {v}" for (s, v), r in rows.items() if r["status"] == "ok"}
    assert slowest.split()[0] in ("read", "decode", "infer", "write")
    slowest_row = next(r for (s, v), r in rows.items() if f"{s} {v}" == slowest)
    assert math.isclose(data["end_to_end_over_slowest"], scan["images_per_s"] / slowest_row["images_per_s"],
                        rel_tol=1e-3)  # fmt: skip
    provenance = rows[("provenance", "c2pa+xmp+settings+watermark")]["details"]
    assert provenance["share_of_classifier"] > 0 and provenance["ms_without_watermark"] > 0
    naive = rows[("naive", "pillow+torchvision, eager torch, commit per row")]
    assert math.isclose(data["dfscan_over_naive"], scan["images_per_s"] / naive["images_per_s"], rel_tol=1e-3)
    full, draft = rows[("decode-large", "pillow full")], rows[("decode-large", "pillow draft")]
    assert math.isclose(data["large_jpeg_full_over_draft"], draft["images_per_s"] / full["images_per_s"], rel_tol=1e-3)
    assert data["peak_rss_mib"] >= max(r["peak_rss_mib"] for r in rows.values())


def test_bench_table_names_every_row(tiny_onnx_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "--synthetic", "8", "--model", str(tiny_onnx_model), "--min-time", "0", "--no-naive"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for stage, variant in _expected_rows(pg=False):
        if stage != "naive":
            assert f"{stage:<7} {variant}" in out, (stage, variant)
    assert "end-to-end / slowest stage (" in out
    assert "naive pillow+torchvision, eager torch, commit per row: skipped: --no-naive" in out
    assert "write postgresql: skipped: no --pg URL given" in out
    assert "peak RSS of the whole run" in out


@pytest.mark.postgres
def test_bench_writes_to_postgresql_and_cleans_up(tiny_onnx_model, tmp_path, monkeypatch, pg_url):
    from dfscan import db
    from sqlalchemy import func, select

    from dfscan.db.models import Result, Scan

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "--synthetic", str(N), "--model", str(tiny_onnx_model), "--min-time", "0", "--no-naive",
               "--pg", pg_url, "--json"],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    rows = _check_rows(json.loads(result.output), pg=True, naive=False)
    assert rows[("write", "postgresql")]["images"] >= N
    engine = db.make_engine(pg_url)
    try:
        with db.session_factory(engine)() as session:
            assert session.execute(select(func.count()).select_from(Scan)).scalar_one() == 0
            assert session.execute(select(func.count()).select_from(Result)).scalar_one() == 0
    finally:
        engine.dispose()


def test_bench_needs_one_image_source(tiny_onnx_model, tmp_path):
    runner = CliRunner()
    neither = runner.invoke(main, ["bench", "--model", str(tiny_onnx_model)])
    assert neither.exit_code == 1 and "give either --images DIR or --synthetic N" in neither.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(main, ["bench", "--images", str(empty), "--model", str(tiny_onnx_model)])
    assert none.exit_code == 1 and "no image files under" in none.output
    assert "Traceback" not in neither.output + none.output


def test_bench_on_a_folder_counts_undecodable_files_in_the_scan(tiny_onnx_model, tmp_path, monkeypatch):
    from tests._images import write_bad_files, write_jpegs

    monkeypatch.chdir(tmp_path)
    write_jpegs(tmp_path / "imgs", 6)
    bad = write_bad_files(tmp_path / "imgs" / "bad")
    result = CliRunner().invoke(
        main, ["bench", "--images", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--min-time", "0",
               "--no-naive", "--json"],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {(r["stage"], r["variant"]): r for r in data["rows"]}
    assert data["images"]["count"] == 6 + len(bad)
    scan = rows[("scan", "end-to-end")]
    assert scan["images"] == 6 + len(bad) and scan["details"]["ok"] == 6 and scan["details"]["errors"] == len(bad)
    # Inference runs on the images that decode.
    assert rows[("infer", "onnxruntime fp32")]["images"] % 6 == 0
    assert Path(data["model"]["path"]) == tiny_onnx_model


@pytest.mark.slow  # writes 1080p clips and a 10-minute video: about a minute on 2 busy cores
def test_bench_videos_rows_and_the_seek_ratio(tiny_onnx_model, tmp_path, monkeypatch):
    """--videos: sampling alone and in a scan (videos/s, frames/s), and the 10-minute / 10-second ratio."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "--synthetic", "8", "--model", str(tiny_onnx_model), "--min-time", "0", "--no-naive",
               "--videos", "--video-count", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {(r["stage"], r["variant"]): r for r in data["rows"]}
    for key in (("video", "sample (16 frames, 1080p)"), ("scan", "end-to-end, videos"), ("video", "sample 10-min"),
                ("video", "sample 10-s")):
        row = rows[key]
        assert row["status"] == "ok" and row["images"] >= 1 and row["seconds"] > 0, row
    sample = rows[("video", "sample (16 frames, 1080p)")]
    assert sample["images"] % 2 == 0  # whole passes over the two clips
    assert math.isclose(sample["details"]["frames_per_s"], 16 * sample["images_per_s"], rel_tol=1e-2)
    scan = rows[("scan", "end-to-end, videos")]
    assert scan["details"]["ok"] == 2 and scan["details"]["errors"] == 0
    assert scan["details"]["scoring"] == "sequence"  # the tiny model's export has its video graph
    # Seeking: 16 frames of the 10-minute video decode about what the 10-second one does, not 60 times more.
    long, short = rows[("video", "sample 10-min")], rows[("video", "sample 10-s")]
    assert long["details"]["decoded_frames"] <= 16 * 20 and short["details"]["decoded_frames"] <= 100
    videos = data["videos"]
    assert math.isclose(videos["long_over_short"],
                        videos["seconds_per_video"]["10-min"] / videos["seconds_per_video"]["10-s"])
    result = CliRunner().invoke(
        main, ["bench", "--synthetic", "8", "--model", str(tiny_onnx_model), "--min-time", "0", "--no-naive"])
    assert "video" not in {r.split()[0] for r in result.output.splitlines() if r.strip()}
