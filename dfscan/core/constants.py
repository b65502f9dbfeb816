"""Numbers and names that several layers share, defined once: the bottom layer, so every stage can import them."""

from __future__ import annotations

from dataclasses import dataclass

from dfscan.core.registry import Registry

# Frames sampled per video when neither the settings nor the model's sidecar say how many.
DEFAULT_FRAMES = 16
# The most frames per video anything asks for (settings, export, a sidecar's ``frames``).
MAX_FRAMES = 1024

# Pillow's own default limit (about 89 megapixels); past it an image (or a video's coded frame) is
# refused from its header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 89_478_485
# The most bytes one image may take while it is decoded and converted to 8-bit RGB (its pixels as Pillow
# holds them, and each conversion beside its source): under the pixel limit no image needs more than
# 716 MB (8 bytes a pixel), so the default refuses none; a lower budget refuses the largest
# (too-large-decoded).  The face stage holds no more than this of full-resolution images at once.
DEFAULT_MAX_DECODE_BYTES = 768 << 20

# The fewest fake/real decisions by analysts that a calibration on them (`calibrate --from-reviews`) accepts.
DEFAULT_MIN_REVIEW_DECISIONS = 50

# Scheduled scans go to their own queue beside the scoring one, so a worker started with
# ``-Q dfscan.producer`` walks storage while the others score.
PRODUCER_QUEUE_SUFFIX = ".producer"


def producer_queue(queue: str) -> str:
    """The producer queue beside the scoring queue ``queue``: ``dfscan`` -> ``dfscan.producer``."""
    return queue + PRODUCER_QUEUE_SUFFIX


# -- precisions -----------------------------------------------------------------------
# Every precision any runtime runs, in one table: the settings validate against it, TensorRT builds
# its engine precisions from it (dfscan.trt.precisions), the CLI offers its names.


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    graph: str | None  # TensorRT: the sidecar "precision" of the ONNX file the engine is built from
    min_capability: tuple[int, int]  # the oldest compute capability with fast kernels for it
    needs_calibration: bool  # its graph needs calibration images (dfscan quantize), so is never made automatically
    # The runtimes that run it (ONNX Runtime runs a model in the precision it was exported or converted to).
    runtimes: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch")


ALL_PRECISIONS: Registry[Precision] = Registry("precision", entries=(
    Precision("fp32", "FP32 as exported (TF32 where the GPU has it)", "fp32", (5, 0), False),
    Precision("fp16", "the FP16 conversion of the ONNX file (LSTM, reductions, head in FP32)", "fp16", (5, 3), False),
    Precision("bf16", "PyTorch autocast to BF16 (CUDA, or CPUs with fast BF16)", None, (8, 0), False,
              runtimes=("torch",)),
    Precision("int8", "the explicitly quantised Q/DQ file (signed INT8, symmetric)", "int8", (6, 1), True,
              runtimes=("onnxruntime", "tensorrt")),
))


def precisions_for(runtime: str) -> tuple[str, ...]:
    """The names of the precisions ``runtime`` runs, in the table's order."""
    return tuple(p.name for p in ALL_PRECISIONS.values() if runtime in p.runtimes)
