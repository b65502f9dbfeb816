"""What ``dfscan bench`` measures and reports: options, one row per stage and variant, the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CALIBRATION_IMAGES", "DEFAULT_LIMIT", "INFER_VARIANTS", "BenchError", "BenchOptions", "BenchReport",
           "InferVariant", "Row"]  # fmt: skip

DEFAULT_LIMIT = 1024
CALIBRATION_IMAGES = 128


class BenchError(Exception):
    """The benchmark can't start (no images, no model); raised before anything is measured."""


@dataclass(frozen=True)
class InferVariant:
    """One inference row: a runtime, the precision it runs at, and which ONNX file it loads.

    ``options`` are keyword arguments for the runtime spec's ``load``; a
    runtime whose ``load`` doesn't take them can't run this variant (the row
    says so).
    """

    runtime: str
    precision: str
    model: str  # "fp32" or "int8": the ONNX file given to the runtime (TensorRT finds its FP16/Q-DQ graphs beside it)
    options: tuple[tuple[str, Any], ...] = ()


INFER_VARIANTS: tuple[InferVariant, ...] = (
    InferVariant("onnxruntime", "fp32", "fp32"),
    InferVariant("onnxruntime", "int8", "int8"),
    InferVariant("tensorrt", "fp16", "fp32", (("precision", "fp16"),)),
    InferVariant("tensorrt", "int8", "fp32", (("precision", "int8"),)),
    # The torch.export program beside the FP32 model (model.pt2): FP32 on the CPU, FP16 on CUDA only.
    InferVariant("torch", "fp32", "fp32", (("precision", "fp32"),)),
    InferVariant("torch", "fp16", "fp32", (("precision", "fp16"),)),
)


@dataclass(frozen=True)
class BenchOptions:
    images: Path | None = None
    synthetic: int | None = None
    model: Path | None = None
    int8_model: Path | None = None
    checkpoint: Path | None = None
    backbone: str = "resnext50_32x4d"
    pg_url: str | None = None
    batch_size: int = 64
    min_seconds: float = 2.0
    limit: int = DEFAULT_LIMIT
    read_threads: int = 8
    decode_threads: int = 2
    naive: bool = True
    workdir: Path | None = None
    # The face stage's rows (dfscan.bench.faces): detection, and the scan with faces on and off.
    faces: bool = False
    face_images: Path | None = None
    face_count: int = 32
    # The video rows (dfscan.bench.video): sampling 1080p clips alone and in a scan, 10 min vs 10 s.
    videos: bool = False
    video_count: int = 4
    # The dedupe rows (dfscan.bench.dedupe): this many files scanned all distinct, and half byte-copies.
    dedupe: int | None = None
    # The hash rows (dfscan.bench.hashes): PDQ per image always; with a size, matching against a bank that large.
    bank: int | None = None


@dataclass(frozen=True)
class Row:
    stage: str
    variant: str
    status: str  # "ok", "skipped" (can't run here) or "failed" (could, but broke)
    images: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    peak_rss_mib: float = 0.0
    start_rss_mib: float = 0.0
    repeats: int = 0
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.stage} {self.variant}"


@dataclass
class BenchReport:
    machine: dict[str, Any]
    command: str
    images: dict[str, Any]
    model: dict[str, Any]
    batch_size: int
    rows: list[Row] = field(default_factory=list)
    slowest_stage: str | None = None
    end_to_end_over_slowest: float | None = None
    dfscan_over_naive: float | None = None
    # Large JPEGs: Pillow's full decode (what both decoders feed the model) over its draft mode (the old rule).
    large_jpeg_full_over_draft: float | None = None
    peak_rss_mib: float = 0.0
    int8: dict[str, Any] | None = None
    faces: dict[str, Any] | None = None  # --faces: the end-to-end rate with faces on over faces off
    videos: dict[str, Any] | None = None  # --videos: videos/s, and sampling a 10-min video over a 10-s one
    dedupe: dict[str, Any] | None = None  # --dedupe: inference seconds with half copies over all distinct
    seconds: float = 0.0

    def row(self, stage: str, variant: str) -> Row | None:
        return next((r for r in self.rows if r.stage == stage and r.variant == variant), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row in data["rows"]:
            row["seconds"] = round(row["seconds"], 6)
            for key in ("images_per_s", "peak_rss_mib", "start_rss_mib"):
                row[key] = round(row[key], 3)
        data["peak_rss_mib"] = round(data["peak_rss_mib"], 3)
        return data
