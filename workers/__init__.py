"""The batch pipeline: read, decode, infer, write."""

from workers.batches import BatchMaker, PreparedBatch, Verdict, prefetch, score
from workers.context import ScanContext
from workers.decode import PillowDecoder, Preprocess, decode_one, load_rgb
from workers.decoders import DECODERS, create_decoder, resolve_decoder
from workers.errors import REASONS, ImageError
from workers.pipeline import ChunkResult, run_local_scan, score_chunk

__all__ = [
    "DECODERS",
    "REASONS",
    "BatchMaker",
    "ChunkResult",
    "ImageError",
    "PillowDecoder",
    "PreparedBatch",
    "Preprocess",
    "ScanContext",
    "Verdict",
    "create_decoder",
    "decode_one",
    "load_rgb",
    "prefetch",
    "resolve_decoder",
    "run_local_scan",
    "score",
    "score_chunk",
]
