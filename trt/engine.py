"""Build TensorRT engines from the detector's ONNX file (offline; the runtime only deserialises).

One optimisation profile covers batches 1..max (optimised for max, the batch
the workers send), a timing cache per GPU type makes rebuilds fast, and INT8
uses entropy calibration over a folder of sample images decoded exactly as a
scan decodes them (the Pillow reference path), its cache kept beside the engine.

``tensorrt`` is imported inside the functions that need it: everything else
here (profiles, keys, calibration batches) works and is tested without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfscan.trt.model_info import ModelInfo
from dfscan.gpu import GpuInfo, first_gpu, probe_gpus
from dfscan.trt.cache import EngineCache, EngineKey, EnginePaths, default_engine_dir
from dfscan.trt.errors import Int8CalibrationError, EngineBuildFailed, RuntimeUnavailable
from dfscan.trt.precisions import Precision, check_supported, get_precision

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
MAX_BATCH_LIMIT = 4096
DEFAULT_WORKSPACE = 4 << 30
INSTALL_HINT = "pip install 'tensorrt>=10' (or pip install -e '.[tensorrt]')"


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`RuntimeUnavailable` saying how to install it."""
    ok, why = tensorrt_status()
    if not ok:
        raise RuntimeUnavailable(why)
    import tensorrt

    return tensorrt


def tensorrt_status() -> tuple[bool, str]:
    """Whether TensorRT 10.x imports here, and if not, one line on why and how to fix it."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False, f"the tensorrt package is not installed; {INSTALL_HINT}"
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - the PyPI stub and broken installs raise anything
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return False, f"the tensorrt package does not import ({first}); reinstall it: {INSTALL_HINT}"
    version = getattr(tensorrt, "__version__", "0")
    if _major(version) < 10:
        return False, f"TensorRT {version} is too old, dfscan needs 10.x; {INSTALL_HINT}"
    return True, version


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


@dataclass(frozen=True)
class Profile:
    """Batch sizes of the engine's one optimisation profile."""

    min: int
    opt: int
    max: int

    def shapes(self, input_size: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        h, w = input_size
        return (self.min, 3, h, w), (self.opt, 3, h, w), (self.max, 3, h, w)


def profile_for(info: ModelInfo, max_batch: int = DEFAULT_MAX_BATCH) -> Profile:
    """(1, max, max) for a dynamic batch; the model's own batch for a fixed one."""
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise EngineBuildFailed(f"max batch must be between 1 and {MAX_BATCH_LIMIT}, got {max_batch}")
    if info.fixed_batch is not None:
        return Profile(info.fixed_batch, info.fixed_batch, info.fixed_batch)
    return Profile(1, max_batch, max_batch)


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    max_batch: int = DEFAULT_MAX_BATCH
    calibrate_dir: Path | None = None
    calibration_images: int = 512
    calibration_batch: int = 32
    engine_dir: Path | None = None
    workspace: int = DEFAULT_WORKSPACE


@dataclass(frozen=True)
class BuiltEngine:
    key: EngineKey
    paths: EnginePaths
    reused: bool  # True when a valid engine was already cached
    seconds: float
    record: dict


def current_gpu() -> GpuInfo:
    gpu = first_gpu()
    if gpu is None:
        raise RuntimeUnavailable(f"TensorRT needs an NVIDIA GPU: {probe_gpus().why_not}")
    return gpu


def engine_key(info: ModelInfo, gpu: GpuInfo, tensorrt_version: str, precision: str) -> EngineKey:
    return EngineKey(info.sha256, gpu.name, gpu.capability, tensorrt_version, precision)


def plan_build(info: ModelInfo, options: BuildOptions, gpu: GpuInfo, tensorrt_version: str) -> tuple[EngineKey, EngineCache, Profile, Precision]:
    """Everything decided before TensorRT is touched; raises on a bad request."""
    precision = get_precision(options.precision)
    check_supported(precision, gpu.capability, gpu.name)
    profile = profile_for(info, options.max_batch)
    cache = EngineCache(options.engine_dir or default_engine_dir(info.path))
    key = engine_key(info, gpu, tensorrt_version, precision.name)
    if precision.needs_calibration and options.calibrate_dir is None and not cache.paths(key).calibration.is_file():
        raise Int8CalibrationError(
            f"{precision.name} needs calibration images: pass --calibrate DIR (a few hundred images like the ones "
            f"you scan); no calibration cache at {cache.paths(key).calibration}"
        )
    if options.calibrate_dir is not None and not Path(options.calibrate_dir).is_dir():
        raise Int8CalibrationError(f"calibration folder {options.calibrate_dir} does not exist")
    return key, cache, profile, precision


def build_engine(info: ModelInfo, options: BuildOptions = BuildOptions(), *, force: bool = False,
                 calibration: np.ndarray | None = None) -> BuiltEngine:
    """Build (or reuse) the engine for ``info`` on this machine's first GPU.

    ``calibration`` holds the decoded INT8 calibration images (the caller reads
    ``options.calibrate_dir`` with :func:`dfscan.workers.calibration.calibration_images`):
    this package takes tensors, never files.
    """
    trt = import_tensorrt()
    gpu = current_gpu()
    key, cache, profile, precision = plan_build(info, options, gpu, trt.__version__)
    start = time.perf_counter()
    with cache.lock(key):  # another worker may be building the same engine right now
        if not force:
            record = cache.read_record(key)
            if record is not None:
                return BuiltEngine(key, cache.paths(key), True, time.perf_counter() - start, record)
        data = _build(trt, info, options, key, cache, profile, precision, calibration)
        paths = cache.store(
            key,
            data,
            profile=[profile.min, profile.opt, profile.max],
            input_name=info.input_name,
            output_name=info.output_name,
            input_size=list(info.input_size),
            onnx_path=str(info.path),
            calibrated_from=str(options.calibrate_dir) if options.calibrate_dir else None,
        )
    seconds = time.perf_counter() - start
    return BuiltEngine(key, paths, False, seconds, cache.read_record(key) or {})


def _build(trt, info: ModelInfo, options: BuildOptions, key: EngineKey, cache: EngineCache, profile: Profile,
           precision: Precision, calibration: np.ndarray | None) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(info.path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors)) or "no details"
        raise EngineBuildFailed(f"TensorRT can't parse {info.path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
    for flag in precision.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(info.input_name, *profile.shapes(info.input_size))
    config.add_optimization_profile(opt_profile)

    timing_path = cache.timing_cache(key)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)

    calibrator = None
    if precision.needs_calibration:
        batch = min(options.calibration_batch, profile.max) if info.fixed_batch is None else info.fixed_batch
        batches = calibration_batches(calibration, batch) if calibration is not None else None
        calibrator = make_calibrator(trt, batches, cache.paths(key).calibration, batch, info)
        calib_profile = builder.create_optimization_profile()
        shape = (batch, 3, *info.input_size)
        calib_profile.set_shape(info.input_name, shape, shape, shape)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(calib_profile)

    log.info("building %s engine for %s (profile %s); this takes minutes", precision.name, info.path.name, profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed(f"TensorRT failed to build a {precision.name} engine for {info.path} (see its log above)")
    cache.directory.mkdir(parents=True, exist_ok=True)
    timing_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def calibration_batches(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Whole batches of decoded calibration images; too few for one batch is an error, not an uncalibrated engine."""
    usable = len(images) - len(images) % batch_size
    if usable == 0:
        raise Int8CalibrationError(
            f"{len(images)} decodable calibration images, at least {batch_size} needed for one calibration batch"
        )
    images = np.ascontiguousarray(images[:usable], dtype=np.float32)
    return [images[i : i + batch_size] for i in range(0, usable, batch_size)]


def make_calibrator(trt, batches: list[np.ndarray] | None, cache_path: Path, batch_size: int, info: ModelInfo):
    """An ``IInt8EntropyCalibrator2`` feeding ``images`` from one GPU buffer; reads/writes ``cache_path``."""
    import torch

    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise EngineBuildFailed(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration; export a QDQ-quantised ONNX instead"
        )

    class EntropyCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._batches = iter(batches or ())
            self._device = torch.empty((batch_size, 3, *info.input_size), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):  # noqa: ARG002 - one input
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(memoryview(cache)))

    return EntropyCalibrator()
