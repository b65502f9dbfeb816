"""Explain a scan's verdicts: Grad-CAM heatmaps of its most suspicious images, stored beside the results.

ONNX files carry no gradients, so the heatmaps come from the PyTorch checkpoint
the scan's model was exported from. That it *is* that checkpoint is checked
first, in the strongest way available: the checkpoint's sha256 recorded in the
model's ``model_info.json`` at export; else PyTorch vs ONNX Runtime logits on a
probe batch; and always, per image, the checkpoint's p_fake against the score
the scan stored. Images are read and decoded by the scanner's own code. Every
selected image ends as one row: ``ok`` or ``unexplainable`` with a reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfscan import db
from dfscan.detector.errors import DetectorError
from dfscan.trt.model_info import sha256_file

__all__ = ["ExplainSummary", "explain_scan", "REASONS"]

DEFAULT_TOP = 24
DEFAULT_BATCH = 16
# A checkpoint that scores an image this far from the scan's stored p_fake is not the scan's model
# (or not seeing the same pixels): fp16/int8 engines and DALI decoding stay well inside it.
DEFAULT_SCORE_TOLERANCE = 0.05
OVERLAY_PX = 160

REASONS = {
    "checkpoint-mismatch": "the checkpoint is not the one the scan's model was exported from",
    "checkpoint-unverified": "the scan's ONNX file is gone or changed, so the checkpoint can't be checked against it",
    "score-mismatch": "the checkpoint's p_fake for this image differs from the scan's stored score",
    "not-scored": "the scan has no verdict for this file (it failed to scan)",
    "flat-heatmap": "no region raises p(fake): the heatmap is zero everywhere",
}


class CheckpointMismatch(DetectorError):
    """The checkpoint given to explain a scan is not (or can't be shown to be) the scan's model."""

    def __init__(self, message: str, reason: str = "checkpoint-mismatch") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ExplainSummary:
    scan_id: int
    selected: int
    explained: int
    unexplainable: dict[str, int]
    verified_by: str
    checkpoint_sha256: str
    method: str
    target_layer: str
    device: str
    seconds: float
    refused: str | None = None
    rows: list[db.ExplanationRow] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class _Selected:
    path: str
    status: str
    p_fake: float | None


def select_rows(session, scan_id: int, *, top: int, min_p: float | None, paths: Sequence[str] | None) -> list[_Selected]:
    """The rows to explain, most suspicious first: ``paths`` if given, else the ``top`` scored ones over ``min_p``."""
    from sqlalchemy import select

    from dfscan.db.models import Result

    db.scan_head(session, scan_id)  # raises ScanNotFound
    query = select(Result.path, Result.status, Result.p_fake).where(Result.scan_id == scan_id)
    if paths:
        wanted = list(dict.fromkeys(paths))
        found = {r.path: r for r in session.execute(query.where(Result.path.in_(wanted)))}
        unknown = [p for p in wanted if p not in found]
        if unknown:
            raise DetectorError(f"scan {scan_id} has no row for {unknown[0]!r}" +
                                (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        rows = [found[p] for p in wanted]
        rows.sort(key=lambda r: (-(r.p_fake if r.p_fake is not None else -1.0), r.path))
    else:
        query = query.where(Result.status == "ok")
        if min_p is not None:
            query = query.where(Result.p_fake >= min_p)
        rows = session.execute(query.order_by(Result.p_fake.desc(), Result.path).limit(top)).all()
    return [_Selected(r.path, r.status, r.p_fake) for r in rows]


def _verify(model, scan_model, checkpoint_sha: str) -> str:
    """How the checkpoint was shown to be the scan's model; raises :class:`CheckpointMismatch`."""
    from dfscan.detector.export import check_parity
    from dfscan.detector.errors import ExportMismatch
    from dfscan.trt.model_info import inspect_model

    onnx_path = Path(scan_model.path)
    if not onnx_path.is_file() or sha256_file(onnx_path) != scan_model.sha256:
        # Stored p_fake alone prove little (a confident model saturates them): refuse rather than guess.
        raise CheckpointMismatch(
            f"can't check the checkpoint: the scan's model {onnx_path} is gone or no longer has sha256 "
            f"{scan_model.sha256[:12]}…; put the exported file back there",
            reason="checkpoint-unverified",
        )
    recorded = inspect_model(onnx_path).extra.get("checkpoint_sha256")
    if recorded:
        if recorded != checkpoint_sha:
            raise CheckpointMismatch(
                f"the scan's model {onnx_path.name} was exported from a checkpoint with sha256 {recorded[:12]}…, "
                f"this one is {checkpoint_sha[:12]}…"
            )
        return "checkpoint sha256 recorded at export"
    try:
        diff = check_parity(model, onnx_path, batch_sizes=(2,))
    except ExportMismatch as exc:
        raise CheckpointMismatch(
            f"the checkpoint's logits differ from the scan's model {onnx_path.name} by {exc.max_abs_diff:.3g} "
            f"on a probe batch (tolerance {exc.atol:g})"
        ) from None
    return f"logits vs ONNX Runtime on a probe batch (max diff {diff:.2g})"


def explain_scan(
    db_url: str,
    scan_id: int,
    checkpoint: Path,
    *,
    top: int = DEFAULT_TOP,
    min_p: float | None = None,
    paths: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
    device: str | None = None,
    score_tolerance: float = DEFAULT_SCORE_TOLERANCE,
) -> ExplainSummary:
    """Explain the selected rows of ``scan_id`` with ``checkpoint`` and store one explanation row each.

    A checkpoint that is not the scan's model stores ``checkpoint-mismatch`` rows and
    returns with ``refused`` set; the caller turns that into an error.
    """
    import torch

    from dfscan.detector._cam import METHOD, CAM_TARGETS, GradCam
    from dfscan.detector.model import load_checkpoint
    from dfscan.scanner.objects import store_of_scan

    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetectorError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
    checkpoint = Path(checkpoint)
    model, _ = load_checkpoint(checkpoint)
    checkpoint_sha = sha256_file(checkpoint)
    target = CAM_TARGETS.get(model.config.backbone)  # or UnknownCamTarget (a DetectorError)
    common = dict(method=METHOD, target_layer=target.hooked, checkpoint_sha256=checkpoint_sha)
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine)
        with db.session_factory(engine)() as session:
            selected = select_rows(session, scan_id, top=top, min_p=min_p, paths=paths)
            scan_model = _scan_model(session, scan_id)
            temperature = _temperature(session, scan_id)
            refused = None
            try:
                verified_by = _verify(model, scan_model, checkpoint_sha)
            except CheckpointMismatch as exc:
                verified_by, refused = "refused", str(exc)
                rows = [db.ExplanationRow(s.path, "unexplainable", reason=exc.reason, detail=refused, **common)
                        for s in selected]
            if refused is None:
                cam = GradCam(model, device=device)
                rows = _explain_rows(cam, selected, common, batch_size=batch_size, temperature=temperature,
                                     score_tolerance=score_tolerance,
                                     store=store_of_scan(db.scan_audit(session, scan_id)))
            db.write_explanations(session, scan_id, rows)
            session.commit()
    finally:
        engine.dispose()
    counts: dict[str, int] = {}
    for r in rows:
        if r.status != "ok":
            counts[r.reason or "?"] = counts.get(r.reason or "?", 0) + 1
    return ExplainSummary(
        scan_id=scan_id, selected=len(selected), explained=sum(r.status == "ok" for r in rows), unexplainable=counts,
        verified_by=verified_by, checkpoint_sha256=checkpoint_sha, method=METHOD, target_layer=target.hooked,
        device=device, seconds=time.perf_counter() - started, refused=refused, rows=rows,
    )


def _scan_model(session, scan_id: int):
    from sqlalchemy import select

    from dfscan.db.models import Model, Scan

    return session.execute(
        select(Model.path, Model.sha256).join(Scan, Scan.model_id == Model.id).where(Scan.id == scan_id)
    ).one()


def _temperature(session, scan_id: int) -> float:
    from sqlalchemy import select

    from dfscan.db.models import Model, Scan

    info = session.execute(select(Model.info).join(Scan, Scan.model_id == Model.id).where(Scan.id == scan_id)).scalar()
    return float((info or {}).get("temperature") or 1.0)


def _explain_rows(cam, selected: list[_Selected], common: dict, *, batch_size: int, temperature: float,
                  score_tolerance: float, store=None) -> list[db.ExplanationRow]:
    """Read, decode and explain ``selected`` in batches; every one ends as one row (``store``: s3:// paths)."""
    import torch

    from dfscan.detector._cam import overlay_png, peak_in_original
    from dfscan.trt.base import softmax
    from dfscan.workers.images.decode import Preprocess, load_rgb, to_tensor
    from dfscan.workers.reading.errors import ImageError
    from dfscan.workers.reading.reader import read_file

    cfg = cam.model.config
    pre = Preprocess(size=tuple(cfg.input_size), mean=tuple(cfg.mean), std=tuple(cfg.std))
    out: dict[str, db.ExplanationRow] = {}
    ready: list[tuple[_Selected, object, np.ndarray, tuple[int, int]]] = []

    def fail(s: _Selected, reason: str, detail: str) -> None:
        out[s.path] = db.ExplanationRow(s.path, "unexplainable", reason=reason, detail=detail, **common)

    def flush() -> None:
        if not ready:
            return
        x = torch.from_numpy(np.stack([t for _, _, t, _ in ready]))
        cams, logits = cam(x)
        p_fake = softmax(logits, temperature)[:, cam.fake_index]
        for (s, image, _, (w, h)), heat, p in zip(ready, cams, p_fake):
            p = float(p)
            if s.p_fake is not None and abs(p - s.p_fake) > score_tolerance:
                fail(s, "score-mismatch", f"the checkpoint gives p_fake {p:.4f}, the scan stored {s.p_fake:.4f}")
                continue
            if not heat.max() > 0:
                fail(s, "flat-heatmap", f"p_fake {p:.4f}, but no region raises it")
                continue
            peak = peak_in_original(heat, w, h)
            shown = (peak[0] * image.size[0] / w, peak[1] * image.size[1] / h)  # in the decoded image's pixels
            out[s.path] = db.ExplanationRow(
                s.path, "ok", p_fake=p, peak_x=peak[0], peak_y=peak[1], width=w, height=h,
                overlay=overlay_png(image, heat, shown, px=OVERLAY_PX, max_bytes=db.explanations.MAX_OVERLAY_BYTES),
                **common,
            )
        ready.clear()

    for s in selected:
        if s.status != "ok":
            fail(s, "not-scored", "the scan recorded an error for this file, not a verdict")
            continue
        try:
            data = read_file(s.path, store=store).data
            # Exactly the scanner's pixels (a full decode, orientation applied); the size is the original's, upright.
            image = load_rgb(data, None, pre.max_pixels)
            tensor = to_tensor(image, pre)
            size = _upright_size(data, pre.max_pixels)
        except ImageError as exc:
            fail(s, exc.code, exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file is its own row, never the batch's end
            fail(s, "decode-failed", f"decode failed: {type(exc).__name__}")
            continue
        ready.append((s, image, tensor, size))
        if len(ready) >= batch_size:
            flush()
    flush()
    return [out[s.path] for s in selected]


def _upright_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the original image as shown, EXIF rotation applied, read from its header."""
    from dfscan.workers.images.decode import open_image

    im = open_image(data, max_pixels)
    w, h = im.size
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the decoder ignores it too
        orientation = None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
