"""Decoders are data: a table of specs looked up by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dfscan.core.registry import Registry
from dfscan.workers.images.decode import PillowDecoder, Preprocess
from dfscan.workers.reading.errors import DecoderUnavailable, UnknownDecoder


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    description: str
    available: Callable[[], tuple[bool, str]]
    create: Callable[..., object]


def _always() -> tuple[bool, str]:
    return True, ""


def _pillow(pre: Preprocess, *, threads: int = 2, batch_size: int = 64) -> PillowDecoder:
    return PillowDecoder(pre, threads=threads)


def _dali_available() -> tuple[bool, str]:
    from dfscan.workers.images.dali import dali_status

    ok, why = dali_status()
    return ok, "" if ok else why


def _dali_gpu_available() -> tuple[bool, str]:
    from dfscan.workers.images.dali import dali_gpu_status

    return dali_gpu_status()


def dali_device() -> str:
    """The device plain ``dali`` decodes on here: the GPU when DALI can use one, else the CPU."""
    return "gpu" if _dali_gpu_available()[0] else "cpu"


def _dali(device: str | None):
    def create(pre: Preprocess, *, threads: int = 2, batch_size: int = 64):
        from dfscan.workers.images.dali import DaliDecoder

        return DaliDecoder(pre, device=device or dali_device(), batch_size=batch_size, threads=threads)

    return create


DECODERS: Registry[DecoderSpec] = Registry(
    "decoder",
    UnknownDecoder,
    extra_names=("auto",),
    entries=(
        DecoderSpec("pillow", "Pillow on the CPU (the reference decoder)", _always, _pillow),
        DecoderSpec("dali", "NVIDIA DALI: nvJPEG on the GPU when there is one, else DALI's CPU decoders",
                    _dali_available, _dali(None)),
        DecoderSpec("dali-gpu", "NVIDIA DALI with nvJPEG on the GPU (mixed)", _dali_gpu_available, _dali("gpu")),
        DecoderSpec("dali-cpu", "NVIDIA DALI's CPU decoders", _dali_available, _dali("cpu")),
    ),
)

# `auto` takes the first that can run here.
AUTO_ORDER: tuple[str, ...] = ("dali-gpu", "pillow")


def resolve_decoder(name: str) -> DecoderSpec:
    if name != "auto":
        spec = DECODERS.get(name)
        ok, why = spec.available()
        if not ok:
            raise DecoderUnavailable(f"decoder {name!r} can't run here: {why}")
        return spec
    for candidate in (c for c in AUTO_ORDER if c in DECODERS):
        spec = DECODERS[candidate]
        if spec.available()[0]:
            return spec
    return DECODERS["pillow"]


def create_decoder(name: str, pre: Preprocess, *, threads: int = 2, batch_size: int = 64):
    return resolve_decoder(name).create(pre, threads=threads, batch_size=batch_size)
