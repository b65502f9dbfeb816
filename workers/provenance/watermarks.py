"""Invisible watermarks: the DWT-DCT watermark the Stable Diffusion reference scripts embed, matched against
a table of known messages with its bit error rate.

The decoding is invisible-watermark's ``WatermarkDecoder(...).decode(bgr, "dwtDct")`` (its ``EmbedMaxDct``):
the image in YUV, a Haar DWT of the U plane, and in each 4 x 4 block of the approximation the largest
coefficient but the first, whose remainder modulo the scale (36) above half of it is a 1; block ``n``
votes for bit ``n % length``.  The package does this block by block in Python (20 ms for 512 x 512,
140 ms for 1024 x 1024 on this machine); here the same arithmetic runs on all blocks at once, and the blocks' votes serve
every message length, so one pass reads them all (tests/test_provenance.py checks the bits are the
package's).  At most :data:`MAX_WATERMARK_PIXELS` are read: the image's top rows, full width (the block
grid and the bit each block carries stay those of the whole image).

A message matches where its bit error rate is at most :data:`MAX_BER`: chosen from the rates measured on
unwatermarked images (see the constant).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pywt

__all__ = ["KNOWN_WATERMARKS", "MAX_BER", "MAX_WATERMARK_PIXELS", "KnownWatermark", "WatermarkMatch",
           "block_bits", "match_watermark", "votes_of"]

_SCALE = 36.0  # EmbedMaxDct's default scales (0, 36, 36): the U plane at 36
_BLOCK = 4
MAX_WATERMARK_PIXELS = 512 * 512  # Stable Diffusion v1's own size
# Measured on unwatermarked images (tests/test_provenance.py::test_unwatermarked_images_match_no_known_message):
# 22 scikit-image photographs, 8 of the tests' synthetic patterns and a flat grey image, each as is and after
# JPEG at quality 90 (62 in all): none matched, the lowest bit error rate any known message reached was 0.354
# (natural images mostly decode as all zeros: 0.5 from SD v1's message, 0.5625 from SDXL's).  Watermarked
# lossless images read at 0 to 0.15 (the embedding saturates in bright regions).  At 0.15 a random 48-bit
# reading matches SDXL's message with probability 3.1e-7 (7 of 48 bits or fewer wrong), SD v1's 136 bits 6e-18.
MAX_BER = 0.15


@dataclass(frozen=True)
class KnownWatermark:
    name: str
    bits: tuple[int, ...]


def _bytes_bits(message: bytes) -> tuple[int, ...]:
    return tuple(int(b) for b in np.unpackbits(np.frombuffer(message, dtype=np.uint8)))


KNOWN_WATERMARKS: tuple[KnownWatermark, ...] = (
    # scripts/txt2img.py of CompVis/stable-diffusion: WatermarkEncoder().set_watermark("bytes", b"StableDiffusionV1")
    KnownWatermark("StableDiffusionV1", _bytes_bits(b"StableDiffusionV1")),
    # sgm/inference/helpers.py of Stability-AI/generative-models (SDXL)
    KnownWatermark("SDXL", tuple(int(c) for c in bin(0b101100111110110010010000011110111011000110011110)[2:])),
)


@dataclass(frozen=True)
class WatermarkMatch:
    name: str | None  # the known message matched (None: none under MAX_BER)
    ber: float  # the lowest bit error rate of any known message


def votes_of(rgb: np.ndarray) -> np.ndarray | None:
    """Each block's vote (0/1), in the decoder's order; None where the image is under 256 x 256 pixels' worth."""
    rows, cols = rgb.shape[:2]
    if rows * cols < 256 * 256:
        return None
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb[:, :, ::-1]), cv2.COLOR_BGR2YUV)
    ca, _ = pywt.dwt2(yuv[:rows // 4 * 4, :cols // 4 * 4, 1], "haar")
    bh, bw = ca.shape[0] // _BLOCK, ca.shape[1] // _BLOCK
    blocks = ca[:bh * _BLOCK, :bw * _BLOCK].reshape(bh, _BLOCK, bw, _BLOCK).swapaxes(1, 2).reshape(bh * bw, -1)
    value = np.abs(blocks[:, 1:]).max(axis=1)  # the largest coefficient but the first, as a magnitude
    return (value % _SCALE > 0.5 * _SCALE).astype(np.float64)


def block_bits(votes: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` bits the blocks' votes spell (the decoder's mean vote per bit, times 255, over 127)."""
    sums = np.bincount(np.arange(len(votes)) % length, weights=votes, minlength=length)
    counts = np.bincount(np.arange(len(votes)) % length, minlength=length)
    return (sums / np.maximum(counts, 1) * 255 > 127).astype(np.uint8)


def match_watermark(rgb: np.ndarray) -> WatermarkMatch | None:
    """The known message closest to what ``rgb`` (H, W, 3 uint8) carries; None where it is too small to carry one."""
    rows, cols = rgb.shape[:2]
    keep = min(rows, max(MAX_WATERMARK_PIXELS // max(cols, 1), 8) // 8 * 8 or rows)
    votes = votes_of(rgb[:keep])
    if votes is None:
        return None
    best: tuple[float, str] | None = None
    for known in KNOWN_WATERMARKS:
        bits = block_bits(votes, len(known.bits))
        ber = float(np.mean(bits != np.asarray(known.bits, dtype=np.uint8)))
        if best is None or ber < best[0]:
            best = (ber, known.name)
    assert best is not None
    return WatermarkMatch(best[1] if best[0] <= MAX_BER else None, round(best[0], 4))
