"""Faces: MTCNN on real photographs and composed images, the crops, the rows, scan_faces and the report agree.

Real parts only: scikit-image's photographs (``astronaut`` has one face,
``chelsea`` and ``coffee`` none; they ship in its wheel), the MTCNN weights
from facenet-pytorch's wheel on the pinned torch, a real ONNX model through
ONNX Runtime, real SQLite and PostgreSQL, the real CLI and report.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.workers.faces.geometry import crop_square, detection_scale
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

skimage_data = pytest.importorskip("skimage.data")

# The astronaut's face in skimage.data.astronaut() (x1, y1, x2, y2), measured once by eye and MTCNN.
ASTRONAUT_FACE = (181.0, 62.0, 268.0, 172.0)
# The patch pasted into composed images, and the face inside it.
PATCH_BOX = (150, 30, 300, 200)
PATCH_FACE = tuple(v - o for v, o in zip(ASTRONAUT_FACE, (150, 30, 150, 30)))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def patch() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut()).crop(PATCH_BOX)


def paste_faces(background: Image.Image, placements: list[tuple[int, int, float]]) -> tuple[Image.Image, list]:
    """``background`` with the astronaut's face pasted at (x, y) scaled by s; the expected face boxes."""
    im = background.copy()
    src = patch()
    boxes = []
    for x, y, s in placements:
        scaled = src.resize((round(src.width * s), round(src.height * s)), Image.Resampling.BILINEAR)
        im.paste(scaled, (x, y))
        fx1, fy1, fx2, fy2 = PATCH_FACE
        boxes.append((x + fx1 * s, y + fy1 * s, x + fx2 * s, y + fy2 * s))
    return im, boxes


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def stage():
    from dfscan.workers.images.decode import Preprocess
    from dfscan.workers.faces import FaceOptions, create_face_detector
    from dfscan.workers.scoring.face_stage import FaceDecoder

    return FaceDecoder(None, Preprocess(), FaceOptions(), create_face_detector("mtcnn", "cpu"))


# -- the detector on the pinned torch -------------------------------------------------------------


def test_mtcnn_from_the_wheel_runs_on_the_pinned_torch() -> None:
    import torch
    from facenet_pytorch import MTCNN

    assert torch.__version__.split("+")[0] == "2.14.1"
    mtcnn = MTCNN(keep_all=True, device="cpu")
    boxes, probs = mtcnn.detect(Image.fromarray(skimage_data.astronaut()))
    assert boxes is not None and len(boxes) == 1 and probs[0] > 0.99
    assert iou(boxes[0], ASTRONAUT_FACE) >= 0.5
    for name in ("chelsea", "coffee"):
        boxes, _ = mtcnn.detect(Image.fromarray(getattr(skimage_data, name)()))
        assert boxes is None, name


def test_stage_finds_pasted_faces_at_their_positions(stage) -> None:
    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    im, expected = paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])
    (found,) = stage.finder.detect([np.asarray(im)])
    assert len(found) == 3
    for box in expected:
        assert max(iou(f[:4], box) for f in found) >= 0.5, (box, found)


def test_detection_is_batched_across_images_of_different_sizes(stage) -> None:
    images = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()]
    found = stage.finder.detect(images)
    assert [len(f) for f in found] == [1, 0, 0]
    assert iou(found[0][0, :4], ASTRONAUT_FACE) >= 0.5


def test_aligned_face_crop_is_one_face(stage) -> None:
    """A 140k-style aligned crop (the face fills the image) comes through as one face."""
    aligned = np.asarray(Image.fromarray(skimage_data.astronaut()).crop((165, 55, 285, 175)).resize((256, 256)))
    (found,) = stage.finder.detect([aligned])
    crops = stage._crops(aligned, found)
    assert len(crops.faces) == 1 and crops.found == 1
    assert crops.tensors.shape == (1, 3, 224, 224)


# -- crop geometry ---------------------------------------------------------------------------------


def test_crop_square_margin_border_and_oversize() -> None:
    # 1.3 x the longer side, centred.
    assert crop_square((100, 100, 200, 180), 1000, 1000, 1.3) == (85, 75, 130)
    # A face on the left/top border: the square slides inside the image.
    x0, y0, side = crop_square((0, 0, 50, 60), 400, 300, 1.3)
    assert (x0, y0, side) == (0, 0, 78)
    # On the right/bottom border.
    x0, y0, side = crop_square((350, 250, 400, 300), 400, 300, 1.3)
    assert x0 + side == 400 and y0 + side == 300 and side == 65
    # Larger than the shorter side after the margin: the shorter side.
    assert crop_square((10, 0, 150, 140), 160, 140, 1.3) == (10, 0, 140)
    # A 1x1 image.
    assert crop_square((0, 0, 1, 1), 1, 1, 1.3) == (0, 0, 1)
    assert detection_scale(20000, 300, 640) == pytest.approx(0.032)
    assert detection_scale(1, 1, 640) == 1.0


def test_face_on_the_border_and_face_larger_than_the_image(stage) -> None:
    src = patch()
    # The face's left edge on the image's left edge.
    border = Image.new("RGB", (400, 300), (90, 110, 90))
    border.paste(src, (-int(PATCH_FACE[0]), 60))
    im = np.asarray(border)
    crops = stage._crops(im, stage.finder.detect([im])[0])
    assert len(crops.faces) == 1
    x0, y0, side = crops.crops[0]
    assert x0 == 0 and 0 <= y0 and y0 + side <= 300
    assert crops.faces[0][0] <= 3  # the box starts at the border
    # An image hardly larger than the face: the 1.3x square can't fit and becomes the shorter side.
    tight = np.asarray(Image.fromarray(skimage_data.astronaut()).crop((170, 50, 280, 185)))
    crops = stage._crops(tight, stage.finder.detect([tight])[0])
    assert len(crops.faces) == 1
    assert crops.crops[0][2] == min(tight.shape[:2])


def test_cap_on_faces_per_image(stage) -> None:
    """A grey image with 200 small faces: all found, the largest ``max_faces`` scored, the row says both."""
    from dfscan.workers.faces import FaceOptions
    from dfscan.workers.scoring.face_stage import FaceDecoder

    grey = Image.new("RGB", (960, 480), (128, 128, 128))
    small = patch().resize((36, 41))
    for i in range(20):
        for j in range(10):
            grey.paste(small, (i * 48 + 4, j * 48 + 2))
    # Faces of 21 pixels on a 960-pixel image: under the default detect_min_face, so looked for with MTCNN's own 20.
    capped = FaceDecoder(None, stage.pre, FaceOptions(max_faces=5, min_size=8, detect_min_face=20), stage.detector)
    im = np.asarray(grey)
    crops = capped._crops(im, capped.finder.detect([im])[0])
    assert crops.found >= 190
    assert len(crops.faces) == 5 and crops.tensors.shape[0] == 5


# -- a scan with faces on: rows, scan_faces and the report agree ----------------------------------


def _write_inputs(folder: Path) -> dict[str, tuple[str, int | None]]:
    """The scan's inputs and what each must end as: (status, faces scored)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg", quality=92)
    Image.fromarray(skimage_data.coffee()).save(folder / "coffee.jpg", quality=92)
    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    group, _ = paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])
    group.save(folder / "group.jpg", quality=95)
    Image.new("RGB", (1, 1), (128, 128, 128)).save(folder / "one-pixel.png")
    # A 20000-pixel-wide panorama with a face too small at the detection scale: no face, not an error.
    pano = Image.new("RGB", (20000, 300), (100, 120, 140))
    pano.paste(patch(), (9000, 60))
    pano.save(folder / "panorama.jpg", quality=80)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return {
        "astronaut.png": ("ok", 1),
        "chelsea.jpg": ("no-face", 0),
        "coffee.jpg": ("no-face", 0),
        "group.jpg": ("ok", 3),
        "one-pixel.png": ("no-face", 0),
        "panorama.jpg": ("no-face", 0),
        "broken.jpg": ("error", None),
    }


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_scan_with_faces_rows_views_and_report_agree(tmp_path: Path, tiny_onnx_model: Path, backend: str,  # noqa: F811
                                                    request: pytest.FixtureRequest) -> None:
    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    expected = _write_inputs(tmp_path / "in")
    out = cli("scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model), "--db", db_url, "--faces", "on",
              "--decoder", "pillow", "--batch-size", "4", "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("{"):])
    assert summary["no_face"] == 4 and summary["errors"] == 1 and summary["ok"] == 2

    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = {Path(r.path).name: r for r in conn.execute(text("SELECT * FROM scan_results"))}
            faces = conn.execute(text("SELECT * FROM scan_faces ORDER BY path, face_index")).all()
    finally:
        engine.dispose()
    assert set(rows) == set(expected)
    for name, (status, n) in expected.items():
        row = rows[name]
        assert (row.status, row.faces) == (status, n), name
        if status == "no-face":
            assert row.label is None and row.p_fake is None and row.error is None
    by_path: dict[str, list] = {}
    for f in faces:
        by_path.setdefault(Path(f.path).name, []).append(f)
    assert {k: len(v) for k, v in by_path.items()} == {"astronaut.png": 1, "group.jpg": 3}
    for name, fs in by_path.items():
        row = rows[name]
        assert row.faces == row.faces_found == len(fs)
        assert [f.face_index for f in fs] == list(range(len(fs)))
        # The image's verdict is its most suspicious face.
        assert row.p_fake == pytest.approx(max(f.p_fake for f in fs))
        for f in fs:
            assert 0 <= f.detector_score <= 1 and f.label in ("real", "fake")
    (astro,) = by_path["astronaut.png"]
    assert iou((astro.x, astro.y, astro.x + astro.w, astro.y + astro.h), ASTRONAUT_FACE) >= 0.5
    _, pasted = paste_faces(Image.new("RGB", (1200, 800)), [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])
    for box in pasted:
        assert max(iou((f.x, f.y, f.x + f.w, f.y + f.h), box) for f in by_path["group.jpg"]) >= 0.5

    # The report draws the same boxes on the suspects' thumbnails.
    report = tmp_path / "report.html"
    out = cli("report", str(summary["scan_id"]), "--db", db_url, "--out", str(report))
    assert out.exit_code == 0, out.output
    html = report.read_text(encoding="utf-8")
    drawn: dict[str, list[tuple[int, ...]]] = {}
    for figure in re.finditer(r'<figure class="suspect" data-path="([^"]+)">(.*?)</figure>', html, re.S):
        boxes = [tuple(int(v) for v in m.split(",")) for m in re.findall(r'data-box="([^"]+)"', figure.group(2))]
        drawn[Path(figure.group(1)).name] = boxes
    assert set(drawn) == {"astronaut.png", "group.jpg"}  # no-face and error rows are not suspects
    for name, fs in by_path.items():
        assert sorted(drawn[name]) == sorted((f.x, f.y, f.w, f.h) for f in fs)
    assert "no face" in html


def test_text_summary_counts_no_face(tmp_path: Path, tiny_onnx_model: Path, sqlite_url: str) -> None:  # noqa: F811
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg")
    out = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--faces", "on")
    assert out.exit_code == 0, out.output
    assert re.search(r"no-face 1\b", out.output)
    out = cli("results", "--db", sqlite_url, "--status", "no-face", "--format", "csv")
    assert out.exit_code == 0 and "chelsea.jpg" in out.output and "faces_found" in out.output.splitlines()[0]


# -- modes -----------------------------------------------------------------------------------------


def test_auto_follows_model_info_and_missing_field_is_whole_image(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                                  sqlite_url: str) -> None:
    from dfscan.detector.calibrate import update_model_info
    from dfscan.core.settings import Settings
    from dfscan.trt.model_info import inspect_model
    from dfscan.workers.scoring.context import ScanContext
    from dfscan.workers.scoring.face_stage import FaceDecoder

    face_model = tmp_path / "face" / "model.onnx"
    face_model.parent.mkdir()
    shutil.copy(tiny_onnx_model, face_model)
    shutil.copy(tiny_onnx_model.parent / "model_info.json", face_model.parent / "model_info.json")
    update_model_info(face_model, input="face-crop")
    assert inspect_model(face_model).input == "face-crop"
    bare = tmp_path / "bare" / "model.onnx"
    bare.parent.mkdir()
    shutil.copy(tiny_onnx_model, bare)  # no sidecar: a whole-image model, as every model before faces
    assert inspect_model(bare).input == "whole-image"

    def stage_of(model: Path, faces: str) -> bool:
        ctx = ScanContext.open(Settings(db_url=sqlite_url, model=model, faces=faces, decoder="pillow"))
        try:
            return isinstance(ctx.decoder, FaceDecoder)
        finally:
            ctx.close()

    assert stage_of(face_model, "auto") is True
    assert stage_of(bare, "auto") is False
    assert stage_of(tiny_onnx_model, "auto") is False
    assert stage_of(bare, "on") is True
    assert stage_of(face_model, "off") is False


def test_face_settings_are_validated() -> None:
    from dfscan.core.settings import Settings, SettingsError, from_env

    for bad in ({"faces": "maybe"}, {"max_faces": 0}, {"face_margin": 0.5}, {"face_aggregation": "median"},
                {"min_face_size": 0}):
        with pytest.raises(SettingsError):
            Settings(**bad)
    s = from_env({"DFSCAN_FACES": "on", "DFSCAN_MAX_FACES": "3", "DFSCAN_FACE_MARGIN": "1.5"})
    assert (s.faces, s.max_faces, s.face_margin) == ("on", 3, 1.5)


# -- a detector failure on one image ---------------------------------------------------------------


def test_detector_failure_is_that_images_error_row(tmp_path: Path, tiny_onnx_model: Path, stage) -> None:  # noqa: F811
    """The detector raises on one image (a magenta corner marks it): that image is an error row, the batch goes on."""
    from dfscan.trt import load_runtime
    from dfscan.trt.model_info import inspect_model
    from tests._stages import stages as make_stages
    from dfscan.workers.faces import FaceDetector
    from dfscan.workers.scoring.face_stage import FaceDecoder

    class FailsOnMagenta(FaceDetector):
        name = "mtcnn-failing"

        def __init__(self, inner) -> None:
            self.inner = inner

        def detect(self, canvas, min_size=None):
            if any((im[0, 0] == (255, 0, 255)).all() for im in canvas):
                raise RuntimeError("detector crashed on this image")
            return self.inner.detect(canvas, min_size)

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "a.png")
    poisoned = Image.fromarray(skimage_data.astronaut())
    poisoned.putpixel((0, 0), (255, 0, 255))
    poisoned.save(folder / "b.png")
    Image.fromarray(skimage_data.coffee()).save(folder / "c.png")
    info = inspect_model(tiny_onnx_model)
    runtime = load_runtime("onnxruntime", info)
    stages = make_stages(FaceDecoder(None, stage.pre, stage.options, FailsOnMagenta(stage.detector)), runtime)
    try:
        rows = stages.run([str(folder / n) for n in ("a.png", "b.png", "c.png")]).result
    finally:
        stages.close()
        runtime.close()
    assert [r.status for r in rows] == ["ok", "error", "no-face"]
    assert rows[1].error_code == "face-detect-failed" and "detector crashed" in rows[1].error
    assert rows[0].faces == 1 and len(rows[0].face_rows) == 1


# -- the whole image's hash, from the detector's copy ----------------------------------------------


def test_face_stage_hashes_the_detectors_copy_and_the_hash_stage_reads_no_file(tmp_path: Path, stage) -> None:
    """With a hasher the face stage gives each image its PDQ from the canvas; the hash stage takes it as it is.

    The file is removed before the hash stage runs: a stage that decoded it again would find nothing to hash.
    """
    from dfscan.workers.faces.detectors import _downscale
    from dfscan.workers.hashing import hamming, pdq
    from dfscan.workers.reading.reader import read_file
    from dfscan.workers.scoring.face_stage import FaceDecoder
    from dfscan.workers.scoring.hashes import HashStage, pdq_of_bytes
    from dfscan.workers.scoring.stages import Batch

    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    group, _ = paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])
    group.save(tmp_path / "group.jpg", quality=95)
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "chelsea.png")
    paths = [tmp_path / "group.jpg", tmp_path / "chelsea.png"]
    hashing = FaceDecoder(None, stage.pre, stage.options, stage.detector, hasher=pdq)
    try:
        crops = hashing.decode_batch([read_file(str(p)) for p in paths])
    finally:
        hashing.close()
    assert len(crops[0].faces) == 3 and crops[1].faces == []
    full = [pdq_of_bytes(p.read_bytes(), 10**8) for p in paths]
    # The 1200-pixel photo is hashed on the detector's copy: that copy's hash, a few bits from the full size's.
    size = stage.options.detect_size
    canvas = _downscale(Image.open(paths[0]).convert("RGB"), detection_scale(1200, 800, size))
    assert canvas.shape == (round(800 * size / 1200), size, 3) and crops[0].pdq == pdq(canvas)
    assert hamming(crops[0].pdq.hex, full[0].hex) <= 12
    assert crops[1].pdq == full[1]  # an image no larger than the canvas is hashed as it is
    without = FaceDecoder(None, stage.pre, stage.options, stage.detector)  # the hash stage off: nothing hashed
    try:
        assert without.decode_batch([read_file(str(paths[1]))])[0].pdq is None
    finally:
        without.close()

    batch = Batch.of([str(p) for p in paths])
    for item, payload in zip(batch.items, crops):
        item.payload = payload
    for p in paths:
        p.unlink()
    HashStage(stage.pre).run(batch)
    assert [item.hashes.image for item in batch.items] == [c.pdq for c in crops]


def test_scan_with_faces_on_stores_the_whole_images_hash(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                         sqlite_url: str) -> None:
    """The row's PDQ with faces on is the whole image's, made from the detector's copy (within a few bits of the
    full-size hash), as with faces off."""
    from dfscan.workers.faces import FaceOptions
    from dfscan.workers.faces.detectors import _downscale
    from dfscan.workers.hashing import hamming, pdq
    from dfscan.workers.scoring.hashes import pdq_of_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    group, _ = paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])
    group.save(folder / "group.jpg", quality=95)
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    out = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--faces", "on",
              "--decoder", "pillow", "--json")
    assert out.exit_code == 0, out.output
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            rows = {Path(r.path).name: r for r in conn.execute(text("SELECT path, faces, pdq FROM scan_results"))}
    finally:
        engine.dispose()
    assert {name: r.faces for name, r in rows.items()} == {"group.jpg": 3, "astronaut.png": 1}
    assert rows["astronaut.png"].pdq == pdq_of_bytes((folder / "astronaut.png").read_bytes(), 10**8).hex
    canvas = _downscale(Image.open(folder / "group.jpg").convert("RGB"),
                        detection_scale(1200, 800, FaceOptions().detect_size))
    assert rows["group.jpg"].pdq == pdq(canvas).hex
    assert hamming(rows["group.jpg"].pdq, pdq_of_bytes((folder / "group.jpg").read_bytes(), 10**8).hex) <= 12


def test_the_classifiers_threads_sleep_rather_than_spin(tiny_onnx_model: Path) -> None:  # noqa: F811
    """With faces on the face stage's lanes share the cores with the classifier: its waiting threads must not
    spin on them (docs/faces.md)."""
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.onnxruntime import OnnxRuntime

    runtime = OnnxRuntime(inspect_model(tiny_onnx_model))
    try:
        options = runtime._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        runtime.close()


# -- dfscan bench --faces --------------------------------------------------------------------------


def test_bench_prints_face_rows_beside_the_classifier_alone(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                           monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out_json = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--synthetic", "4", "--model", str(tiny_onnx_model), "--min-time", "0",
                                       "--no-naive", "--faces", "--face-count", "3", "--output", str(out_json)])
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    rows = {(r["stage"], r["variant"]): r for r in data["rows"]}
    detect = rows[("faces", "detect (mtcnn)")]
    on, off = rows[("scan", "end-to-end, faces on")], rows[("scan", "end-to-end, faces off")]
    assert detect["status"] == on["status"] == off["status"] == "ok"
    assert detect["details"]["faces_per_pass"] == 3  # one face in each generated photo
    assert on["details"]["ok"] == 3 and on["details"]["no_face"] == 0
    assert data["faces"]["faces_on_over_off"] == pytest.approx(on["images_per_s"] / off["images_per_s"], rel=1e-3)
    assert "faces on:" in result.output and "for the classifier alone" in result.output


# -- DALI: faces on the decoded tensor ------------------------------------------------------------


def test_dali_gives_the_face_stage_its_decoded_image(tmp_path: Path, stage) -> None:
    """DALI decodes once; the face stage detects and crops on that image, as with Pillow."""
    from dfscan.workers.images.dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(why)
    from dfscan.workers.images.dali import DaliDecoder
    from dfscan.workers.scoring.face_stage import FaceDecoder
    from dfscan.workers.reading.reader import read_file

    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    group, expected = paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])
    group.save(tmp_path / "group.jpg", quality=95)
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "chelsea.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    files = [read_file(str(tmp_path / n)) for n in ("group.jpg", "chelsea.jpg", "broken.jpg")]
    dali = DaliDecoder(stage.pre, device="cpu", batch_size=4)
    faces = FaceDecoder(dali, stage.pre, stage.options, stage.detector)
    try:
        rgb = dali.decode_rgb_batch(files)
        assert rgb[0].shape == (800, 1200, 3) and rgb[1].shape == (300, 451, 3)
        pillow = np.asarray(Image.open(tmp_path / "group.jpg").convert("RGB"), dtype=np.int16)
        assert np.abs(rgb[0].astype(np.int16) - pillow).mean() < 2.0
        group_out, cat_out, broken_out = faces.decode_batch(files)
    finally:
        faces.close()
    assert len(group_out.faces) == 3 and cat_out.faces == [] and cat_out.found == 0
    assert getattr(broken_out, "code", None) in ("decode-failed", "not-image", "truncated")
    for box in expected:
        assert max(iou((x, y, x + w, y + h), box) for x, y, w, h, _ in group_out.faces) >= 0.5


# -- the fleet: a Celery worker with faces on ------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_fleet_worker_scores_faces(tmp_path: Path, tiny_onnx_model: Path, redis_server, pg_url: str) -> None:  # noqa: F811
    """A real ``dfscan worker`` (DFSCAN_FACES=on from its environment) writes the same face rows as the embedded scan."""
    from tests._cluster import Worker, wait_for

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg")
    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])[0].save(folder / "group.jpg")
    (tmp_path / "logs").mkdir()
    broker = redis_server.url()
    worker = Worker(broker, pg_url, tmp_path / "logs", env={"DFSCAN_FACES": "on"})
    try:
        worker.wait_ready()
        out = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", pg_url, "--broker", broker, "--json")
        assert out.exit_code == 0, out.output
        scan_id = json.loads(out.stdout)["scan_id"]
        engine = db.make_engine(pg_url)

        def status() -> str | None:
            with engine.connect() as conn:
                s = conn.execute(text("SELECT status FROM scans WHERE id = :s"), {"s": scan_id}).scalar_one()
            return None if s == "running" else s

        try:
            assert wait_for(status, 180, "the scan to complete", interval=0.5) == "completed", worker.log()[-3000:]
            with engine.connect() as conn:
                rows = {Path(r.path).name: (r.status, r.faces)
                        for r in conn.execute(text("SELECT * FROM scan_results WHERE scan_id = :s"), {"s": scan_id})}
                n_faces = conn.execute(text("SELECT COUNT(*) FROM scan_faces WHERE scan_id = :s"),
                                       {"s": scan_id}).scalar_one()
                audit = conn.execute(text("SELECT info FROM scan_workers WHERE scan_id = :s"),
                                     {"s": scan_id}).scalar_one()
        finally:
            engine.dispose()
    finally:
        worker.stop()
    assert rows == {"astronaut.png": ("ok", 1), "chelsea.jpg": ("no-face", 0), "group.jpg": ("ok", 3)}
    assert n_faces == 4
    assert audit["faces"]["detector"] == "mtcnn" and audit["faces"]["margin"] == 1.3


def test_incremental_scan_skips_unchanged_no_face_images(tmp_path: Path, tiny_onnx_model: Path,  # noqa: F811
                                                         sqlite_url: str) -> None:
    """no-face is a finished outcome: an incremental rescan leaves the unchanged image alone, as it does 'ok'."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    args = ["scan", str(folder), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--faces", "on", "--json"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    again = cli(*args, "--incremental")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output[again.output.index("{"):])
    assert summary["skipped"] == 2 and summary["total"] == 0


def test_crops_of_many_images_share_runtime_batches(tmp_path: Path, tiny_onnx_model: Path, stage) -> None:  # noqa: F811
    """Five faces from three images go to the runtime as batches of batch_size (2, 2, 1), not one call per image."""
    from dfscan.trt import load_runtime
    from dfscan.trt.model_info import inspect_model
    from tests._stages import stages as make_stages
    from dfscan.workers.scoring.face_stage import FaceDecoder

    class Recording:
        """The real runtime, with the batch sizes it was given written down."""

        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def infer(self, batch):
            self.calls.append(batch.shape[0])
            return self.inner.infer(batch)

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "a.png")
    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    paste_faces(background, [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)])[0].save(tmp_path / "group.jpg")
    Image.fromarray(skimage_data.astronaut()).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "b.png")
    runtime = Recording(load_runtime("onnxruntime", inspect_model(tiny_onnx_model)))
    stages = make_stages(FaceDecoder(None, stage.pre, stage.options, stage.detector), runtime, batch_size=2)
    try:
        rows = stages.run([str(tmp_path / n) for n in ("a.png", "group.jpg", "b.png")]).result
    finally:
        stages.close()
        runtime.inner.close()
    assert [r.faces for r in rows] == [1, 3, 1]
    assert runtime.calls == [2, 2, 1]
    # Each face's verdict is its own: the same as scoring that crop alone.
    alone = Recording(load_runtime("onnxruntime", inspect_model(tiny_onnx_model)))
    stages = make_stages(FaceDecoder(None, stage.pre, stage.options, stage.detector), alone, batch_size=64)
    try:
        (single,) = stages.run([str(tmp_path / "a.png")]).result
    finally:
        stages.close()
        alone.inner.close()
    assert single.p_fake == pytest.approx(rows[0].p_fake, abs=1e-5)
