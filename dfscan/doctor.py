"""What this machine can run, and why not: decoders, runtimes, GPUs and library versions.

Everything is asked of the real thing (the driver, the installed packages);
nothing raises, every failure becomes a line of the report.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import asdict, dataclass, field

from dfscan.core.gpu import GpuInfo, probe_gpus


@dataclass(frozen=True)
class Check:
    kind: str  # "decoder" | "runtime"
    name: str
    ok: bool
    detail: str  # why not, or a note on what it will use


@dataclass(frozen=True)
class Report:
    checks: list[Check]
    gpus: list[GpuInfo]
    gpu_error: str | None
    versions: dict[str, str | None]
    auto: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "checks": [asdict(c) for c in self.checks],
            "gpus": [{**asdict(g), "capability": list(g.capability)} for g in self.gpus],
            "gpu_error": self.gpu_error,
            "versions": self.versions,
            "auto": self.auto,
        }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    from dfscan import __version__

    probe = probe_gpus()
    out: dict[str, str | None] = {
        "dfscan": __version__,
        "python": platform.python_version(),
        "cuda_driver": probe.driver_cuda(),
        "cuda_torch": None,
        "torch": _dist_version("torch"),
        "dali": None,
        "dali_cuda": None,
        "tensorrt": None,
        "onnxruntime": _dist_version("onnxruntime") or _dist_version("onnxruntime-gpu"),
        "onnxruntime_providers": None,
        "pillow": _dist_version("pillow"),
    }
    try:
        import torch

        out["cuda_torch"] = torch.version.cuda
    except ImportError:
        pass
    from dfscan.workers.images.dali import dali_status

    ok, version = dali_status()
    if ok:
        import nvidia.dali

        out["dali"] = version
        cuda = int(getattr(nvidia.dali, "__cuda_version__", 0) or 0)
        out["dali_cuda"] = f"{cuda // 1000}.x (built with {cuda})" if cuda else None
    from dfscan.trt.engine import tensorrt_status

    ok, version = tensorrt_status()
    out["tensorrt"] = version if ok else _dist_version("tensorrt")
    try:
        import onnxruntime

        out["onnxruntime_providers"] = ",".join(onnxruntime.get_available_providers())
    except ImportError:
        pass
    return out


def diagnose() -> Report:
    from dfscan.trt.registry import RUNTIMES, resolve_runtime
    from dfscan.trt.errors import RuntimeErrorBase
    from dfscan.workers.images.decoders import DECODERS, dali_device, resolve_decoder

    checks = []
    for spec in DECODERS.values():
        ok, why = _safely(spec.available)
        detail = why
        if ok and spec.name == "dali":
            detail = f"decodes on the {'GPU (mixed)' if dali_device() == 'gpu' else 'CPU (no usable GPU)'}"
        checks.append(Check("decoder", spec.name, ok, detail))
    for spec in RUNTIMES.values():
        ok, why = _safely(spec.available)
        if ok and spec.auto_available is not None:
            auto_ok, auto_why = _safely(lambda spec=spec: spec.usable_by_auto(None))
            if not auto_ok:
                why = f"{why}; auto skips it: {auto_why}"
        checks.append(Check("runtime", spec.name, ok, why))
    auto: dict[str, str | None] = {"decoder": resolve_decoder("auto").name}
    try:
        auto["runtime"] = resolve_runtime("auto").name
    except RuntimeErrorBase:
        auto["runtime"] = None
    probe = probe_gpus()
    return Report(checks, list(probe.gpus), None if probe.present else probe.why_not, versions(), auto)


def _safely(available) -> tuple[bool, str]:
    try:
        return available()
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it never crashes
        return False, f"check failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
