"""Image decoding: bytes to the model's normalised CHW tensors (Pillow, the reference; DALI on CPU or GPU).

Decoders are named variants (:data:`DECODERS`); each takes a batch of
:class:`~dfscan.workers.reading.FileData` and gives, per file, a tensor or
an :class:`~dfscan.workers.reading.ImageError`.
"""

from dfscan.workers.images.decode import (
    ALLOWED_FORMATS,
    PillowDecoder,
    Preprocess,
    decode_one,
    load_rgb,
    open_image,
    refuse_from_header,
    to_rgb,
    to_tensor,
)
from dfscan.workers.images.decoders import DECODERS, DecoderSpec, create_decoder, dali_device, resolve_decoder
from dfscan.workers.images.tensors import DeviceDecoder

__all__ = [
    "ALLOWED_FORMATS", "DECODERS", "DecoderSpec", "DeviceDecoder", "PillowDecoder", "Preprocess", "create_decoder", "dali_device",
    "decode_one", "load_rgb", "open_image", "refuse_from_header", "resolve_decoder", "to_rgb", "to_tensor",
]
