"""``dfscan bench --faces``: the face stage measured beside the classifier alone, on 1-face photos of ~1 megapixel.

Rows: ``faces detect (mtcnn)`` (decode, detect on the downscaled copy, crop:
what the face stage adds before inference; its details name the detector's
limits, :class:`~dfscan.workers.faces.FaceOptions`' ``detect_size`` and
``detect_min_face``, the defaults the scans use too), ``scan end-to-end,
faces on`` and ``scan end-to-end, faces off`` (the same images scored whole: the classifier
alone); the report prints their ratio.  The images are scikit-image's
astronaut face pasted on its coffee photograph at 1155x866 (no download:
both ship in scikit-image's wheel), or the images of ``--face-images DIR``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfscan.bench import stages
from dfscan.core.errors import first_line
from dfscan.bench.records import Row

__all__ = ["FACE_IMAGE_SIZE", "face_boxes", "face_rows", "write_face_images"]

FACE_IMAGE_SIZE = (1155, 866)  # about one megapixel
# The patch cut from scikit-image's astronaut, and her face in it (x1, y1, x2, y2; measured by eye and MTCNN).
PATCH = (150, 30, 300, 200)
FACE_IN_PATCH = (31.0, 32.0, 118.0, 142.0)


def _placements(n: int):
    """Per photo the patch's scale and top-left corner (the same every run: a seeded generator)."""
    import numpy as np

    rng = np.random.default_rng(0)
    width, height = PATCH[2] - PATCH[0], PATCH[3] - PATCH[1]
    for _ in range(n):
        s = float(rng.uniform(1.0, 2.0))
        w, h = round(width * s), round(height * s)
        yield s, (w, h), (int(rng.integers(0, FACE_IMAGE_SIZE[0] - w)), int(rng.integers(0, FACE_IMAGE_SIZE[1] - h)))


def face_boxes(n: int) -> list[tuple[float, float, float, float]]:
    """Where :func:`write_face_images` put each photo's face (x1, y1, x2, y2): what recall is checked against."""
    return [(x + FACE_IN_PATCH[0] * s, y + FACE_IN_PATCH[1] * s, x + FACE_IN_PATCH[2] * s, y + FACE_IN_PATCH[3] * s)
            for s, _, (x, y) in _placements(n)]


def write_face_images(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs of ~1 MP, each with one real face at a varying place and size (:func:`face_boxes`)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    face = Image.fromarray(data.astronaut()).crop(PATCH)
    background = Image.fromarray(data.coffee()).resize(FACE_IMAGE_SIZE)
    paths = []
    for i, (_, size, corner) in enumerate(_placements(n)):
        im = background.copy()
        im.paste(face.resize(size), corner)
        path = folder / f"face_{i:05d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def face_rows(options: Any, info: Any, work: Path, say: Callable[[str], None],
              scan_settings: Callable[..., Any]) -> tuple[list[Row], dict[str, Any]]:
    """The face rows and the ratio of the end-to-end rate with faces on to the classifier alone."""
    from dfscan.workers.images.decode import Preprocess
    from dfscan.workers.faces import FaceOptions, create_face_detector
    from dfscan.workers.scoring.face_stage import FaceDecoder

    folder = work / "faces"
    if options.face_images is not None:
        folder = Path(options.face_images)
        source = str(folder)
    else:
        try:
            write_face_images(folder, options.face_count)
        except ImportError:
            reason = "needs scikit-image for its photographs (pip install scikit-image) or --face-images DIR"
            return [Row("faces", "detect (mtcnn)", "skipped", reason=reason),
                    Row("scan", "end-to-end, faces on", "skipped", reason=reason)], {}
        source = f"{options.face_count} JPEGs of {FACE_IMAGE_SIZE[0]}x{FACE_IMAGE_SIZE[1]} with one face each"
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = [f for f in stages.read_all(paths, options.read_threads) if not isinstance(f, Exception)]
    pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
    rows: list[Row] = []
    say("face detection")
    stage = FaceDecoder(None, pre, FaceOptions(), create_face_detector("mtcnn"))
    try:
        found = [0]

        def detect() -> int:
            out = stage.decode_batch(files)
            found[0] = sum(len(getattr(o, "faces", ())) for o in out)
            return len(files)

        t = stages.timed(detect, options.min_seconds)
        rows.append(Row("faces", "detect (mtcnn)", "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib,
                        t.start_rss_mib, t.repeats, details={"faces_per_pass": found[0], "device": stage.detector.device,
                                                             "nets": getattr(stage.detector, "nets", None),
                                                             "detect_size": stage.options.detect_size,
                                                             "detect_min_face": stage.options.detect_min_face,
                                                             "images": source}))
    except Exception as exc:  # noqa: BLE001 - a row that failed, the run goes on
        rows.append(Row("faces", "detect (mtcnn)", "failed", reason=first_line(exc)))
    finally:
        stage.close()
    rates: dict[str, float] = {}
    for mode in ("on", "off"):
        variant = f"end-to-end, faces {mode}"
        say(f"scan, faces {mode}")
        try:
            run = stages.measure_scan(scan_settings(info, f"faces-{mode}.db", faces=mode), folder)
        except Exception as exc:  # noqa: BLE001
            rows.append(Row("scan", variant, "failed", reason=first_line(exc)))
            continue
        t, s = run.timing, run.summary
        rates[mode] = t.images_per_s
        rows.append(Row("scan", variant, "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib, t.start_rss_mib, 1,
                        details={"ok": s.ok, "no_face": s.no_face, "errors": s.errors, "images": source}))
    ratio = {}
    if rates.get("on") and rates.get("off"):
        ratio = {"faces_on_over_off": rates["on"] / rates["off"]}
    return rows, ratio
