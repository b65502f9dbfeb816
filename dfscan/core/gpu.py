"""What GPUs this process could use, asked of the NVIDIA driver in a child process.

The probe calls the CUDA driver API through ``ctypes`` (no torch, no CUDA
toolkit) in a short-lived child: initialising CUDA in this process would make
every process forked from it (Celery's prefork pool) unable to use the GPU.
The child inherits ``CUDA_VISIBLE_DEVICES``, so it sees what we would see.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from dataclasses import dataclass

PROBE_TIMEOUT_S = 60

# Runs in the child; prints one JSON object.
_PROBE = r"""
import ctypes, json
out = {"driver_version": None, "gpus": [], "error": None}
try:
    lib = ctypes.CDLL("libcuda.so.1")
except OSError:
    out["error"] = "no NVIDIA driver (libcuda.so.1 not found)"
else:
    rc = lib.cuInit(0)
    ver = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(ver)) == 0:
        out["driver_version"] = ver.value
    if rc == 100:
        out["error"] = "the NVIDIA driver sees no CUDA device (CUDA_ERROR_NO_DEVICE)"
    elif rc != 0:
        out["error"] = "cuInit failed with CUDA error %d" % rc
    else:
        n = ctypes.c_int(0)
        lib.cuDeviceGetCount(ctypes.byref(n))
        for i in range(n.value):
            dev = ctypes.c_int(0)
            lib.cuDeviceGet(ctypes.byref(dev), i)
            name = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(name, 256, dev)
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
            lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
            mem = ctypes.c_size_t(0)
            lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
            out["gpus"].append({"index": i, "name": name.value.decode(errors="replace"),
                                "capability": [major.value, minor.value], "memory": mem.value})
        if not out["gpus"]:
            out["error"] = "the NVIDIA driver sees no CUDA device"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    memory: int

    @property
    def sm(self) -> str:
        """``sm90`` for compute capability 9.0."""
        return f"sm{self.capability[0]}{self.capability[1]}"

    @property
    def slug(self) -> str:
        """The name as a file-name-safe token: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


@dataclass(frozen=True)
class GpuProbe:
    """What the driver said: the GPUs, the driver's CUDA version (12040 = 12.4), or why there are none."""

    gpus: tuple[GpuInfo, ...]
    driver_version: int | None
    error: str | None

    @property
    def present(self) -> bool:
        return bool(self.gpus)

    @property
    def why_not(self) -> str:
        return self.error or "no CUDA GPU"

    def driver_cuda(self) -> str | None:
        """``12.4`` for driver version 12040."""
        if self.driver_version is None:
            return None
        return f"{self.driver_version // 1000}.{self.driver_version % 1000 // 10}"


def parse_probe(text: str) -> GpuProbe:
    """The probe child's output as a :class:`GpuProbe`; anything unreadable is an error, never a GPU."""
    try:
        raw = json.loads(text.strip().splitlines()[-1])
        gpus = tuple(
            GpuInfo(int(g["index"]), str(g["name"]), (int(g["capability"][0]), int(g["capability"][1])), int(g["memory"]))
            for g in raw.get("gpus", [])
        )
        driver = raw.get("driver_version")
        return GpuProbe(gpus, int(driver) if driver else None, raw.get("error") or (None if gpus else "no CUDA GPU"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return GpuProbe((), None, f"the GPU probe gave unreadable output: {text.strip()[:200]!r}")


@functools.cache
def probe_gpus() -> GpuProbe:
    """Ask the driver once per process (cached); never raises."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GpuProbe((), None, f"the GPU probe failed: {exc}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return GpuProbe((), None, f"the GPU probe crashed (exit {done.returncode}): {last[:200]}")
    return parse_probe(done.stdout)


def first_gpu() -> GpuInfo | None:
    probe = probe_gpus()
    return probe.gpus[0] if probe.gpus else None
