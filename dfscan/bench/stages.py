"""How ``dfscan bench`` measures each stage: timing, peak memory, and one function per stage.

Every measurement runs the product's own code on inputs prepared beforehand,
so a row shows that stage alone: reading takes paths, decoding takes bytes
already read, inference takes tensors already decoded, writing takes rows
already scored.  Cheap stages are repeated until ``min_seconds`` have passed;
images/s is total images over total time.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


# --- memory -------------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        text = Path(_STATUS).read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


# Resetting the high-water mark also resets what getrusage reports, so the
# whole run's peak is kept here: the largest mark read before any reset.
_run_peak_kib = 0


def _hwm_kib() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the process's peak, which never resets
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False if it can't."""
    global _run_peak_kib
    _run_peak_kib = max(_run_peak_kib, _hwm_kib())
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """The RSS high-water mark since the last reset (or since start), in MiB."""
    return _hwm_kib() / 1024.0


def rss_mib() -> float:
    """The RSS now, in MiB (0 where /proc is missing)."""
    return (_status_kib("VmRSS") or 0) / 1024.0


def process_peak_rss_mib() -> float:
    """The largest RSS this process has had, across resets, in MiB."""
    return max(_run_peak_kib, _hwm_kib()) / 1024.0


@dataclass(frozen=True)
class Timing:
    images: int
    seconds: float
    repeats: int
    peak_rss_mib: float
    start_rss_mib: float = 0.0  # RSS when the stage began: peak - start is what the stage itself added

    def __post_init__(self) -> None:
        # The kernel updates the high-water mark lazily; RSS read a moment later can exceed it.
        if self.peak_rss_mib < self.start_rss_mib:
            object.__setattr__(self, "peak_rss_mib", self.start_rss_mib)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def timed(run: Callable[[], int], min_seconds: float, *, warmup: Callable[[], Any] | None = None) -> Timing:
    """Call ``run`` (which returns the images it handled) until ``min_seconds`` have passed, at least once.

    Peak RSS is measured from just before the warm-up to the end.
    """
    reset_peak_rss()
    start_rss = rss_mib()
    if warmup is not None:
        warmup()
    images = repeats = 0
    start = time.perf_counter()
    while True:
        images += run()
        repeats += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return Timing(images, elapsed, repeats, peak_rss_mib(), start_rss)


# --- the machine --------------------------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, GPU, and the versions of what runs."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = None
    try:
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        mem_kib = int(found.group(1)) if found else None
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "gpus": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(("onnxruntime", "torch", "torchvision", "numpy", "PIL", "sqlalchemy", "tensorrt",
                               "nvidia.dali")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _versions(modules: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    dists = {"PIL": "pillow", "nvidia.dali": None, "tensorrt": "tensorrt"}
    out: dict[str, str] = {}
    for name in modules:
        dist = dists.get(name, name)
        candidates = [dist] if dist else ["nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"]
        for candidate in candidates:
            try:
                out[name] = metadata.version(candidate)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


# --- inputs -------------------------------------------------------------------------------------------------------


def write_synthetic(folder: Path, n: int, size: tuple[int, int] = (256, 256)) -> list[Path]:
    """``n`` JPEGs of ``size`` (W, H) with structure (gradients, waves, noise): the data set's 256x256 faces' cost.

    Deterministic: image ``i`` is the same on every machine.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        a, b, c, d = rng.uniform(0.2, 1.0, 4)
        img = np.stack(
            [
                (x * a + y * b * 0.5) % 256,
                (y * c + 40 * np.sin(x / (5 + 25 * d))) % 256,
                ((x + y) * (0.1 + 0.6 * d) + 60 * np.cos(y / (4 + 20 * a))) % 256,
            ],
            axis=-1,
        )
        img += rng.normal(0, 8, img.shape)
        path = folder / f"synthetic_{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
        paths.append(path)
    return paths


# --- stages -------------------------------------------------------------------------------------------------------


def read_all(paths: Sequence[str], threads: int) -> list:
    """Read every path with the scanner's reader in a thread pool, as the image stage (:mod:`dfscan.workers.scoring.images`) does."""
    from dfscan.workers.reading.errors import ImageError
    from dfscan.workers.reading.reader import read_file

    def one(path: str):
        try:
            return read_file(path)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-read") as pool:
        return list(pool.map(one, paths))


def drop_page_cache(paths: Sequence[str]) -> bool:
    """Ask the kernel to forget the files' cached pages (no root needed); False where it can't."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            return False
        finally:
            os.close(fd)
    return True


def measure_read(paths: Sequence[str], threads: int, min_seconds: float, *, uncached: bool) -> Timing:
    def run() -> int:
        if uncached:
            drop_page_cache(paths)
        read_all(paths, threads)
        return len(paths)

    if not uncached:
        return timed(run, min_seconds, warmup=lambda: read_all(paths, threads))
    # Dropping the cache is part of each repetition but not of the time: time reads only.
    reset_peak_rss()
    start_rss = rss_mib()
    images, seconds, repeats = 0, 0.0, 0
    while True:
        drop_page_cache(paths)
        start = time.perf_counter()
        read_all(paths, threads)
        seconds += time.perf_counter() - start
        images += len(paths)
        repeats += 1
        if seconds >= min_seconds:
            break
    return Timing(images, seconds, repeats, peak_rss_mib(), start_rss)


def measure_decode(decoder, files: Sequence, batch: int, min_seconds: float) -> Timing:
    batches = [files[i : i + batch] for i in range(0, len(files), batch)]

    def run() -> int:
        for part in batches:
            decoder.decode_batch(part)
        return len(files)

    return timed(run, min_seconds, warmup=lambda: decoder.decode_batch(batches[0]))


LARGE_JPEG_SIZE = (2048, 1536)


def measure_large_decode(datas: Sequence[bytes], pre, *, draft: bool, min_seconds: float) -> Timing:
    """Pillow decoding large JPEG bytes to the model's input, in full or in draft mode."""
    from dfscan.workers.images.decode import decode_one

    def run() -> int:
        for data in datas:
            decode_one(data, pre, draft=draft)
        return len(datas)

    return timed(run, min_seconds, warmup=lambda: decode_one(datas[0], pre, draft=draft))


def measure_infer(runtime, tensors: np.ndarray, batch: int, min_seconds: float) -> Timing:
    from dfscan.trt.base import run_batched

    batches = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]

    def run() -> int:
        for part in batches:
            run_batched(runtime, part)
        return len(tensors)

    return timed(run, min_seconds, warmup=lambda: run_batched(runtime, batches[0]))


@dataclass
class BenchDatabase:
    """A migrated database with a model and a scan to write rows under; ``close`` removes the scan."""

    url: str
    engine: Any
    sessions: Any
    model_id: int
    scan_id: int

    @classmethod
    def open(cls, url: str, *, model_sha256: str, model_name: str, model_path: str, name: str) -> "BenchDatabase":
        from dfscan import db

        engine = db.make_engine(url)
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with sessions.begin() as session:
            model_id = db.get_or_create_model(session, sha256=model_sha256, name=model_name, path=model_path,
                                              info={"registered_by": "dfscan bench"})  # fmt: skip
            scan_id = db.create_scan(session, name=name, roots=[], model_id=model_id, threshold=0.5,
                                     settings={"purpose": "dfscan bench"})  # fmt: skip
        return cls(url, engine, sessions, model_id, scan_id)

    def close(self, *, drop_scan: bool) -> None:
        """``drop_scan``: remove the bench's scan as ``dfscan prune`` does (on PostgreSQL its partition too)."""
        from dfscan.db.retention import prune

        try:
            if drop_scan:
                prune(self.engine, scan_ids=[self.scan_id], include_running=True)
        finally:
            self.engine.dispose()


def fake_rows(paths: Sequence[str]) -> list:
    """One verdict row per path, shaped like the scanner's."""
    from dfscan.db.records import ResultRow

    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(0)
    rows = []
    for path, p in zip(paths, rng.uniform(0, 1, len(paths))):
        label = "fake" if p >= 0.5 else "real"
        rows.append(ResultRow(path, 30_000, 1.7e9, "ok", label, float(p), float(max(p, 1 - p)), None, None, now))
    return rows


def measure_write(database: BenchDatabase, rows: Sequence, batch: int, min_seconds: float) -> Timing:
    """One transaction per batch, one multi-row upsert each: what the pipeline does."""
    from dfscan import db

    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]

    def run() -> int:
        for part in batches:
            with database.sessions.begin() as session:
                db.write_batch(session, scan_id=database.scan_id, model_id=database.model_id, rows=part)
        return len(rows)

    return timed(run, min_seconds, warmup=run)


@dataclass(frozen=True)
class ScanRun:
    timing: Timing
    summary: Any
    audit: dict[str, Any]


def measure_scan(settings, folder: Path, instrument=None) -> ScanRun:
    """The real in-process scan of ``folder``; its own clock (scan start to finish, after the model loads).

    ``instrument`` (optional) sees the scan's context once open (:meth:`workers.scoring.local.LocalScan.run`).
    """
    from sqlalchemy import select

    from dfscan import db
    from dfscan.db.models import Scan
    from dfscan.scanner import ScanSource, WalkOptions
    from dfscan.workers.scoring.local import LocalScan

    reset_peak_rss()
    start_rss = rss_mib()
    job = LocalScan(settings, ScanSource((str(folder),), (), WalkOptions(settings.scan_extensions)),
                    name="dfscan bench")
    summary = job.run(instrument=instrument)
    peak = peak_rss_mib()
    engine = db.make_engine(settings.db_url)
    try:
        with db.session_factory(engine)() as session:
            audit = session.execute(select(Scan.settings).where(Scan.id == job.scan_id)).scalar_one()
    finally:
        engine.dispose()
    return ScanRun(Timing(summary.total, summary.elapsed_s, 1, peak, start_rss), summary, dict(audit or {}))


def measure_naive(checkpoint: Path, paths: Sequence[str], db_url: str, model_sha256: str, batch: int,
                  mean: Sequence[float], std: Sequence[float], size: tuple[int, int]) -> Timing:  # fmt: skip
    """The original project's usage example, scaled to a folder.

    Each image is opened with Pillow and transformed with torchvision one at a
    time; the eager PyTorch model scores batches of ``batch``; every verdict is
    written and committed on its own.  This is how the detector is used without
    dfscan, on the same images, model and database.
    """
    import torch
    from PIL import Image
    from torchvision import transforms

    from dfscan import db
    from dfscan.db.records import ResultRow
    from dfscan.detector.model import load_checkpoint

    reset_peak_rss()
    start_rss = rss_mib()
    model, _ = load_checkpoint(Path(checkpoint))
    model.eval()
    transform_val = transforms.Compose(
        [transforms.Resize(tuple(size)), transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    )
    database = BenchDatabase.open(db_url, model_sha256=model_sha256, model_name="naive", model_path=str(checkpoint),
                                  name="naive reference loop")  # fmt: skip
    # The clock starts after the model loads, as the scan's does.
    start = time.perf_counter()
    done = 0
    try:
        for i in range(0, len(paths), batch):
            part = paths[i : i + batch]
            images = [transform_val(Image.open(p).convert("RGB")) for p in part]
            with torch.no_grad():
                probs = torch.softmax(model(torch.stack(images)), dim=1)
            for path, p_fake in zip(part, probs[:, 1].tolist()):
                label = "fake" if p_fake >= 0.5 else "real"
                row = ResultRow(path, os.path.getsize(path), os.path.getmtime(path), "ok", label, p_fake,
                                max(p_fake, 1 - p_fake), None, None, datetime.now(timezone.utc))  # fmt: skip
                with database.sessions() as session:
                    db.write_batch(session, scan_id=database.scan_id, model_id=database.model_id, rows=[row])
                    session.commit()
                done += 1
    finally:
        database.close(drop_scan=False)
    return Timing(done, time.perf_counter() - start, 1, peak_rss_mib(), start_rss)
