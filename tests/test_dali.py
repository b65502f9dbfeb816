"""The DALI decoder on real image files: header checks, recovery from a corrupt image, parity with Pillow.

DALI's CPU pipeline runs on every machine; the ``mixed`` (nvJPEG) tests need a GPU.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfscan.trt.model_info import inspect_model
from tests._images import jpeg_bytes, pattern, png_header_only, write_bad_files, write_jpegs, write_mode_zoo
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from dfscan.workers.reading.reader import sniff
from dfscan.workers.scoring import Verdict
from tests._stages import stages as make_stages
from dfscan.workers.images.decode import PillowDecoder, Preprocess, decode_one
from dfscan.workers.images.decoders import DecoderUnavailable, UnknownDecoder, create_decoder, resolve_decoder
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import FileData

dali_ok, dali_why = __import__("dfscan.workers.images.dali", fromlist=["dali_status"]).dali_status()
pytestmark = pytest.mark.skipif(not dali_ok, reason=f"DALI unavailable: {dali_why}")

PRE = Preprocess()


def _gpu_reason() -> str | None:
    from dfscan.workers.images.dali import dali_gpu_status

    ok, why = dali_gpu_status()
    return None if ok else why


def corrupt_jpeg(seed: int = 5) -> bytes:
    """A JPEG whose header passes every cheap check (frame header, end marker) but whose quantisation table is gone:
    DALI fails the batch holding it, Pillow refuses it too."""
    data = jpeg_bytes(seed)
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xDA:
            out += data[pos:]
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker != 0xDB:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out)


def as_file(path: Path) -> FileData:
    data = path.read_bytes()
    return FileData(str(path), len(data), 0.0, data)


def raw(name: str, data: bytes) -> FileData:
    return FileData(name, len(data), 0.0, data)


@pytest.fixture
def dali_cpu():
    from dfscan.workers.images.dali import DaliDecoder

    decoder = DaliDecoder(PRE, device="cpu", batch_size=64, threads=2)
    yield decoder
    decoder.close()


# -- header checks ---------------------------------------------------------------------


def test_headers_name_format_size_and_dali_safety(tmp_path):
    zoo = write_mode_zoo(tmp_path / "zoo")
    bad = write_bad_files(tmp_path / "bad")
    h = sniff(jpeg_bytes(1, (300, 200)))
    assert (h.format, h.width, h.height, h.dali_safe) == ("JPEG", 300, 200, True)
    assert sniff(zoo["rotated.jpg"].read_bytes()).dali_safe  # EXIF JPEGs go to DALI, which applies the orientation
    assert (sniff(zoo["gray.png"].read_bytes()).format, sniff(zoo["gray.png"].read_bytes()).dali_safe) == ("PNG", True)
    assert sniff(zoo["photo.webp"].read_bytes()).format == "WEBP"
    assert sniff(zoo["photo.bmp"].read_bytes()).dali_safe
    for name in ("photo.gif", "photo.tiff"):  # formats DALI lacks or decodes differently: Pillow's
        h = sniff(zoo[name].read_bytes())
        assert h.format is not None and not h.dali_safe and h.detail, name
    truncated = sniff(bad["truncated"][0].read_bytes())
    assert truncated.format == "JPEG" and not truncated.dali_safe and "truncated" in truncated.detail
    assert sniff(bad["not-image"][0].read_bytes()).format is None
    bomb = sniff(bad["bomb"][0].read_bytes())
    assert (bomb.format, bomb.pixels) == ("PNG", 50_000 * 50_000)
    assert sniff(b"").format is None
    assert sniff(b"\xff\xd8\xff").format == "JPEG" and not sniff(b"\xff\xd8\xff").dali_safe


def test_header_check_refuses_a_bomb_without_decoding(dali_cpu):
    out = dali_cpu.decode_batch([raw("bomb.png", png_header_only(50_000, 50_000))])
    assert isinstance(out[0], ImageError) and out[0].code == "too-many-pixels"
    assert dali_cpu.stats["builds"] == 0  # no pipeline was even built


def test_pixel_limit_applies_to_dali_images():
    from dfscan.workers.images.dali import DaliDecoder

    small = Preprocess(max_pixels=200 * 200)
    decoder = DaliDecoder(small, device="cpu")
    try:
        out = decoder.decode_batch([raw("big.jpg", jpeg_bytes(1, (256, 256))), raw("ok.jpg", jpeg_bytes(2, (190, 190)))])
    finally:
        decoder.close()
    assert isinstance(out[0], ImageError) and out[0].code == "too-many-pixels"
    assert isinstance(out[1], np.ndarray) and out[1].shape == (3, 224, 224)


# -- decoding --------------------------------------------------------------------------


def test_every_mode_matches_pillow_within_two_levels(tmp_path, dali_cpu):
    """All the awkward modes decode like Pillow (the worst measured: 0.07 normalised, about 4 of 255 levels)."""
    zoo = write_mode_zoo(tmp_path)
    files = [as_file(p) for p in zoo.values()]
    ours = dali_cpu.decode_batch(files)
    ref = PillowDecoder(PRE).decode_batch(files)
    for f, a, b in zip(files, ours, ref):
        assert isinstance(a, np.ndarray) and a.shape == (3, 224, 224) and a.dtype == np.float32, f.path
        assert np.abs(a - b).max() < 0.08, f.path
    assert dali_cpu.stats["dali"] >= 9  # most went through DALI, not the fallback


def test_exif_orientation_is_applied_by_dali(tmp_path, dali_cpu):
    zoo = write_mode_zoo(tmp_path)
    data = zoo["rotated.jpg"].read_bytes()
    (ours,) = dali_cpu.decode_batch([raw("rotated.jpg", data)])
    assert dali_cpu.stats["dali"] == 1
    upright = decode_one(data, PRE)
    # The same image without its orientation tag: what a decoder that ignores EXIF would show.
    stored = pattern(8, (320, 200)).resize((224, 224))
    sideways = (np.asarray(stored, dtype=np.float32).transpose(2, 0, 1) * PRE.scale_and_shift()[0]) + PRE.scale_and_shift()[1]
    assert np.abs(ours - upright).mean() < 0.01
    assert np.abs(ours - sideways).mean() > 0.3


def test_corrupt_image_in_the_middle_of_64_is_isolated(tmp_path, dali_cpu):
    paths = write_jpegs(tmp_path, 63)
    files = [as_file(p) for p in paths]
    files.insert(31, raw("corrupt.jpg", corrupt_jpeg()))
    assert sniff(files[31].data).dali_safe  # the header check can't see it: DALI must fail on it
    out = dali_cpu.decode_batch(files)
    ref = PillowDecoder(PRE).decode_batch(files)
    assert isinstance(out[31], ImageError) and out[31].code == ref[31].code
    for i, (a, b) in enumerate(zip(out, ref)):
        if i != 31:
            assert isinstance(a, np.ndarray) and np.abs(a - b).max() < 0.06, i  # at most 3 of 255 levels
    assert dali_cpu.stats["dali"] == 63 and dali_cpu.stats["rejected"] == 1
    assert dali_cpu.stats["failed_runs"] >= 1 and dali_cpu.stats["builds"] >= 2  # rebuilt after the failure
    # The rebuilt pipeline keeps working, with no further rebuilds.
    builds = dali_cpu.stats["builds"]
    again = dali_cpu.decode_batch(files[:8])
    assert all(isinstance(a, np.ndarray) for a in again) and dali_cpu.stats["builds"] == builds


def test_several_bad_images_in_one_batch(tmp_path, dali_cpu):
    paths = write_jpegs(tmp_path / "good", 40)
    bad = write_bad_files(tmp_path / "bad")
    files = [as_file(p) for p in paths]
    for pos, item in ((0, raw("c1.jpg", corrupt_jpeg(1))), (17, as_file(bad["truncated"][0])),
                      (30, raw("c2.jpg", corrupt_jpeg(2))), (35, as_file(bad["not-image"][0]))):
        files.insert(pos, item)
    out = dali_cpu.decode_batch(files)
    ref = PillowDecoder(PRE).decode_batch(files)
    assert [getattr(o, "code", "ok") for o in out] == [getattr(r, "code", "ok") for r in ref]
    assert sum(isinstance(o, np.ndarray) for o in out) == 40


def test_larger_than_pipeline_batch_is_split(tmp_path):
    from dfscan.workers.images.dali import DaliDecoder

    decoder = DaliDecoder(PRE, device="cpu", batch_size=8)
    try:
        files = [as_file(p) for p in write_jpegs(tmp_path, 19)]
        out = decoder.decode_batch(files)
    finally:
        decoder.close()
    assert len(out) == 19 and all(isinstance(o, np.ndarray) for o in out)


def test_a_pipeline_that_cannot_be_built_is_the_decoders_error_not_the_images():
    from dfscan.workers.images.dali import DaliDecoder

    if not _gpu_reason():
        pytest.skip("a GPU is present: the mixed pipeline builds here")
    decoder = DaliDecoder(PRE, device="gpu")  # forced onto a machine without a GPU
    try:
        with pytest.raises(DecoderUnavailable, match="DALI gpu pipeline can't be built"):
            decoder.decode_batch([raw("a.jpg", jpeg_bytes(1))])
    finally:
        decoder.close()


# -- choosing the decoder --------------------------------------------------------------


def test_decoder_choice_follows_the_hardware():
    gpu_missing = _gpu_reason()
    assert resolve_decoder("dali").name == "dali"
    assert resolve_decoder("dali-cpu").name == "dali-cpu"
    with pytest.raises(UnknownDecoder, match="dali-gpu"):
        resolve_decoder("nvjpeg")
    decoder = create_decoder("dali", PRE)
    try:
        if gpu_missing:
            assert resolve_decoder("auto").name == "pillow"
            assert decoder.name == "dali-cpu"  # `dali` without a GPU runs DALI's CPU pipeline
            with pytest.raises(DecoderUnavailable, match="no CUDA GPU"):
                resolve_decoder("dali-gpu")
        else:
            assert resolve_decoder("auto").name == "dali-gpu"
            assert decoder.name == "dali-gpu"
    finally:
        decoder.close()


# -- parity with Pillow through the model ----------------------------------------------


def _score_all(decoder, paths: list[str], runtime, verdict: Verdict, batch: int = 64) -> dict[str, object]:
    stages = make_stages(decoder, runtime, verdict, read_threads=4)
    rows = {}
    try:
        for start in range(0, len(paths), batch):
            for row in stages.run(paths[start : start + batch]).result:
                rows[row.path] = row
    finally:
        stages.close()
    return rows


def sensitive_model(onnx_path: Path, images: list[str], out_dir: Path) -> Path:
    """The tiny detector with an affine layer after its logits, so that ``images`` spread over p_fake in (0, 1).

    The randomly initialised tiny model gives every image p_fake ~0.5212 (its
    outputs differ by ~1e-5 between images): a parity check on it would pass
    for any decoder.  Shifting the fake logit by the median (over ``images``,
    decoded by Pillow) and scaling so its spread is 2 logits is what a trained
    model's last layer does; decoder differences are scaled exactly as much as
    differences between images, so the check measures the decoder, not the model.
    """
    import onnx
    from onnx import helper, numpy_helper

    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.trt.model_info import write_model_info

    info = inspect_model(onnx_path)
    runtime = OnnxRuntime(info, intra_op_threads=2)
    try:
        tensors = np.stack([decode_one(Path(p).read_bytes(), PRE) for p in images])
        logits = np.concatenate([runtime.infer(tensors[i : i + 64]) for i in range(0, len(tensors), 64)])
    finally:
        runtime.close()
    margin = logits[:, 1] - logits[:, 0]
    scale = 2.0 / float(margin.std())
    model = onnx.load(onnx_path)
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["raw_" + out if name == out else name for name in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0.0, float(np.median(margin))], dtype=np.float32), "calib_shift"),
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "calib_scale"),
    ])
    graph.node.extend([
        helper.make_node("Sub", ["raw_" + out, "calib_shift"], ["calib_shifted"]),
        helper.make_node("Mul", ["calib_shifted", "calib_scale"], [out]),
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    onnx.save(model, path)
    write_model_info(path, architecture="tiny+affine", threshold=0.5)
    return path


def test_parity_with_pillow_on_256_images(tmp_path, tiny_onnx_model):
    """The acceptance bar: same 256 images, max |delta p_fake| <= 0.02, verdicts agree on >= 99%."""
    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.workers.images.dali import DaliDecoder

    paths = [str(p) for p in write_jpegs(tmp_path / "imgs", 256)]
    model = sensitive_model(tiny_onnx_model, paths, tmp_path / "model")
    corrupt = tmp_path / "imgs" / "corrupt.jpg"
    corrupt.write_bytes(corrupt_jpeg())
    paths.insert(64 + 32, str(corrupt))  # the middle of the second batch of 64
    info = inspect_model(model)
    runtime = OnnxRuntime(info, intra_op_threads=2)
    verdict = Verdict(classes=info.classes, threshold=info.threshold, temperature=info.temperature)
    try:
        dali_rows = _score_all(DaliDecoder(PRE, device="cpu"), paths, runtime, verdict)
        pil_rows = _score_all(PillowDecoder(PRE), paths, runtime, verdict)
    finally:
        runtime.close()
    assert set(dali_rows) == set(paths) == set(pil_rows)
    assert dali_rows[str(corrupt)].status == "error" == pil_rows[str(corrupt)].status
    assert dali_rows[str(corrupt)].error_code == pil_rows[str(corrupt)].error_code
    good = [p for p in paths if p != str(corrupt)]
    assert all(dali_rows[p].status == "ok" == pil_rows[p].status for p in good)
    dp = np.array([dali_rows[p].p_fake for p in good])
    pp = np.array([pil_rows[p].p_fake for p in good])
    delta = np.abs(dp - pp)
    agree = np.mean([dali_rows[p].label == pil_rows[p].label for p in good])
    flips = [(round(float(pp[i]), 4), round(float(dp[i]), 4)) for i in range(len(good)) if (pp[i] >= 0.5) != (dp[i] >= 0.5)]
    figures = {"images": len(good), "flipped_p_fake_pillow_dali": flips, "max_abs_delta_p_fake": float(delta.max()), "mean_abs_delta_p_fake": float(delta.mean()),
               "verdict_agreement": float(agree), "p_fake_range": [float(pp.min()), float(pp.max())]}
    print("\nDALI-cpu vs Pillow parity:", json.dumps(figures))
    assert pp.min() < 0.2 and pp.max() > 0.8  # the model separates these images: the comparison means something
    assert 0.2 < np.mean(pp >= 0.5) < 0.8  # and both verdicts occur
    assert delta.max() <= 0.02
    assert agree >= 0.99
    # Verdicts differ only where p_fake sits within the decoders' difference of the threshold.
    assert all(abs(p - 0.5) <= delta.max() for pair in flips for p in pair)


# -- end to end ------------------------------------------------------------------------


def test_scan_with_dali_writes_verdicts_and_error_rows(tmp_path, sqlite_url, tiny_onnx_model):
    from dfscan.cli import main
    from tests.test_scan import rows_by_path

    root = tmp_path / "archive"
    good = [str(p) for p in write_jpegs(root / "photos", 70)] + [str(p) for p in write_mode_zoo(root / "modes").values()]
    bad = {str(p): code for p, code in write_bad_files(root / "bad").values()}
    corrupt = root / "photos" / "img_00035b.jpg"  # sorts into the middle of the first batch
    corrupt.write_bytes(corrupt_jpeg())
    bad[str(corrupt)] = decode_error_code(corrupt.read_bytes())
    result = CliRunner().invoke(
        main,
        ["scan", str(root), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--decoder", "dali",
         "--runtime", "onnxruntime", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "completed"
    assert summary["total"] == len(good) + len(bad) and summary["errors"] == len(bad)
    rows = rows_by_path(sqlite_url, summary["scan_id"])
    assert set(rows) == set(good) | set(bad)
    for path in good:
        assert rows[path]["status"] == "ok" and rows[path]["label"] in ("real", "fake"), path
    from dfscan import db
    from sqlalchemy import text

    engine = db.make_engine(sqlite_url)
    with engine.connect() as conn:
        codes = dict(conn.execute(text("SELECT path, error_code FROM results WHERE scan_id = :i AND status = 'error'"),
                                  {"i": summary["scan_id"]}).all())
        settings = conn.execute(text("SELECT settings FROM scans WHERE id = :i"), {"i": summary["scan_id"]}).scalar()
    engine.dispose()
    assert codes == bad
    for path in bad:
        assert rows[path]["status"] == "error" and rows[path]["p_fake"] is None and rows[path]["error"], path
    settings = json.loads(settings) if isinstance(settings, str) else settings
    assert settings["decoder"] == ("dali-cpu" if _gpu_reason() else "dali-gpu")


def decode_error_code(data: bytes) -> str:
    try:
        decode_one(data, PRE)
    except ImageError as exc:
        return exc.code
    raise AssertionError("expected Pillow to refuse the corrupt file")


# -- GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_mixed_decoding_matches_cpu(tmp_path):
    why = _gpu_reason()
    if why:
        pytest.skip(f"DALI mixed decoding needs a GPU: {why}")
    from dfscan.workers.images.dali import DaliDecoder

    files = [as_file(p) for p in write_jpegs(tmp_path, 64)]
    files.insert(32, raw("corrupt.jpg", corrupt_jpeg()))
    gpu, cpu = DaliDecoder(PRE, device="gpu"), DaliDecoder(PRE, device="cpu")
    try:
        g, c = gpu.decode_batch(files), cpu.decode_batch(files)
    finally:
        gpu.close()
        cpu.close()
    assert isinstance(g[32], ImageError) and isinstance(c[32], ImageError)
    diffs = [float(np.abs(a - b).max()) for i, (a, b) in enumerate(zip(g, c)) if i != 32]
    print(f"\nDALI mixed vs cpu: max |delta| {max(diffs):.4f} (normalised units)")
    assert max(diffs) < 0.1  # nvJPEG's IDCT and upsampling differ from libjpeg-turbo by a few levels
