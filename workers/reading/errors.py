"""Per-image failure reasons and pipeline errors.

A per-image failure is data, not an exception: it becomes an ``error`` row
whose ``error_code`` is one of :data:`REASONS` and whose ``error`` is a short
human sentence.  :class:`ImageError` carries it from the stage that found it
to the row.
"""

from __future__ import annotations

from dfscan.core.errors import UnknownName

# error_code -> what it means; the codes are part of the SQL contract.
REASONS: dict[str, str] = {
    "missing": "the file vanished between listing and reading",
    "unreadable": "the file exists but can't be read (permissions, I/O error)",
    "not-regular": "not a regular file (FIFO, socket, device, directory)",
    "empty": "the file is empty",
    "too-large": "the file is larger than the size limit",
    "not-image": "the bytes are not an image of an allowed format",
    "too-many-pixels": "the header declares more pixels than the limit (decompression bomb)",
    "too-large-decoded": "decoding the image would take more memory than the byte budget (DFSCAN_MAX_DECODE_BYTES)",
    "outside-root": "a scan that follows no symbolic link met one on the file's path (swapped in after the walk)",
    "truncated": "the image or video data ends early (a video: its index, e.g. the MP4 moov atom, is missing)",
    "decode-failed": "the decoder rejected the image",
    "inference-failed": "the runtime failed on the batch holding this image",
    "bad-probability": "the model gave no valid probability (NaN or out of [0, 1]) for this image",
    "worker-lost": "the chunk killed its worker on every attempt",
    "face-detect-failed": "the face detector failed on this image (faces on)",
    # Videos (dfscan.workers.video.sample); "empty", "missing", "unreadable", "truncated", "too-many-pixels" and
    # "decode-failed" also apply to them.
    "not-video": "the bytes are not a video in a container we read (or are a still image named like a video)",
    "no-video-stream": "the container holds no video stream (audio only, or cover art only)",
    "no-frames": "no sampled frame of the video could be decoded",
    "timeout": "decoding the video took longer than the per-file time limit",
}


class ImageError(Exception):
    """One image can't be scored; ``code`` is a key of :data:`REASONS`."""

    def __init__(self, code: str, message: str) -> None:
        assert code in REASONS, code
        super().__init__(message)
        self.code = code
        self.message = message


class VideoError(ImageError):
    """One video can't be scored; the same contract as :class:`ImageError` (``code`` in :data:`REASONS`)."""


class UnknownDecoder(UnknownName):
    """No decoder of that name is registered (a ``ValueError``, as :class:`UnknownName` is)."""


class UnknownFaceDetector(UnknownName):
    """No face detector of that name is registered."""


class DecoderUnavailable(RuntimeError):
    """The decoder exists but can't run on this machine."""
