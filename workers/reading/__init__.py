"""Reading: a file's bytes (local or ``s3://``), what its header claims, and why an item can't be scored.

The base of the media packages (images, video, faces): per-item failures
(:class:`ImageError`, a code of :data:`REASONS` and a sentence), bounded reads,
header sniffing, and the one way DALI pipelines are built and run.
"""

from dfscan.workers.reading.errors import REASONS, DecoderUnavailable, ImageError, UnknownDecoder, VideoError
from dfscan.workers.reading.reader import (
    HEAD_BYTES,
    MAX_FILE_BYTES,
    FileData,
    Header,
    file_digests,
    read_file,
    read_head,
    sniff,
    stat_quietly,
)

__all__ = [
    "HEAD_BYTES", "MAX_FILE_BYTES", "REASONS", "DecoderUnavailable", "FileData", "Header", "ImageError",
    "UnknownDecoder", "VideoError", "file_digests", "read_file", "read_head", "sniff", "stat_quietly",
]
