"""Build TensorRT engines from the detector's ONNX files (offline; the runtime only deserialises).

Every engine comes from a strongly typed network: TensorRT 11 removed weak
typing (``BuilderFlag.FP16``/``INT8``, ``IBuilderConfig.int8_calibrator``, the
``IInt8*Calibrator`` classes), and 10.x has had ``STRONGLY_TYPED`` since 10.0.
The precision is carried by the ONNX graph (:mod:`dfscan.trt.precisions`): FP32
as exported, FP16 from ``NAME_fp16.onnx`` (:mod:`dfscan.trt.fp16`, made on the
first build if missing), INT8 from the Q/DQ file ``NAME_int8.onnx`` that
``dfscan quantize --target tensorrt`` writes (it needs calibration images, so it
is never made here).  One optimisation profile covers batches 1..max
(optimised for max, the batch the workers send) and a timing cache per GPU type
makes rebuilds fast.

The video graph (``model.video.onnx``, (N, T, 3, H, W), its BiLSTM an ONNX
``LSTM`` node with T dynamic) builds a 5-D sequence engine the same way: a
strongly typed network, one profile over N (1 .. max_batch // T sequences,
the frames of one worker batch) and T (1 .. the sidecar's ``frames``,
optimised for it), keyed like an image engine plus that longest T.  Sequence
engines are FP32 (the video graph's own types; no FP16 video graph is made).

``tensorrt`` is imported inside the functions that need it: everything else
here (API surfaces, profiles, keys, which ONNX file a precision needs) works and
is tested without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dfscan.core.constants import DEFAULT_FRAMES, MAX_FRAMES
from dfscan.core.errors import first_line
from dfscan.core.gpu import GpuInfo, first_gpu, probe_gpus
from dfscan.trt.cache import EngineCache, EngineKey, EnginePaths
from dfscan.trt.errors import EngineBuildFailed, Int8CalibrationError, RuntimeUnavailable
from dfscan.trt.model_info import IMAGE_GRAPH_NAME, ModelFolder, ModelInfo, inspect_model
from dfscan.trt.precisions import PRECISIONS, Precision, check_supported, get_precision

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
    """Whether TensorRT 10.x or newer imports here, and if not, one line on why and how to fix it."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False, f"the tensorrt package is not installed; {INSTALL_HINT}"
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - the PyPI stub and broken installs raise anything
        return False, f"the tensorrt package does not import ({first_line(exc)}); reinstall it: {INSTALL_HINT}"
    version = getattr(tensorrt, "__version__", "0")
    if _major(version) < 10:
        return False, f"TensorRT {version} is too old, dfscan needs 10.x or newer; {INSTALL_HINT}"
    return True, version


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


# -- what the installed TensorRT offers ------------------------------------------------


@dataclass(frozen=True)
class TrtSurface:
    """The API surfaces of one TensorRT build that decide what dfscan can build with it."""

    version: str
    strongly_typed_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.x; accepted and ignored by 11.x)
    weak_typing: bool  # BuilderFlag.FP16 / INT8 (10.x only; dfscan never sets them)
    int8_calibrator: bool  # IInt8EntropyCalibrator2 (10.x only; dfscan quantises with Q/DQ instead)
    onnx_parser: bool

    @property
    def major(self) -> int:
        return _major(self.version)

    @property
    def strongly_typed(self) -> bool:
        """Strongly typed networks can be built: opt-in flag on 10.x, always on from 11.x."""
        return self.strongly_typed_flag or self.major >= 11


def surface_of(trt) -> TrtSurface:
    """Read the surfaces of an imported ``tensorrt`` module (looked up, never called)."""
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    builder_flags = getattr(trt, "BuilderFlag", None)
    return TrtSurface(
        version=str(getattr(trt, "__version__", "0")),
        strongly_typed_flag=flags is not None and hasattr(flags, "STRONGLY_TYPED"),
        weak_typing=builder_flags is not None and hasattr(builder_flags, "FP16"),
        int8_calibrator=hasattr(trt, "IInt8EntropyCalibrator2"),
        onnx_parser=hasattr(trt, "OnnxParser"),
    )


def what_it_builds(surface: TrtSurface) -> dict[str, str]:
    """For each precision, ``""`` if this TensorRT can build it, else why not."""
    if surface.major < 10:
        why = f"TensorRT {surface.version} is too old, dfscan needs 10.x or newer"
    elif not surface.onnx_parser:
        why = f"TensorRT {surface.version} has no ONNX parser (OnnxParser); install the full tensorrt package"
    elif not surface.strongly_typed:
        why = (f"TensorRT {surface.version} has no strongly typed networks "
               f"(NetworkDefinitionCreationFlag.STRONGLY_TYPED)")
    else:
        why = ""
    return {name: why for name in PRECISIONS}


def describe_surface(surface: TrtSurface) -> str:
    """One line for ``dfscan doctor``: what this TensorRT builds, and how."""
    builds = what_it_builds(surface)
    ok = [name for name, why in builds.items() if not why]
    if not ok:
        return next(iter(builds.values()))
    typing = ("strongly typed (always on)" if surface.major >= 11 and not surface.weak_typing
              else "strongly typed (opt-in flag; weak typing present but unused)")  # fmt: skip
    return f"TensorRT {surface.version} builds {', '.join(ok)} engines, {typing}, precision from the ONNX graph"


def network_flags(trt, surface: TrtSurface) -> int:
    """``create_network`` flags for a strongly typed network on this TensorRT."""
    why = what_it_builds(surface)["fp32"]
    if why:
        raise EngineBuildFailed(why)
    if surface.strongly_typed_flag:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # 11.x without the flag: every network is strongly typed


@dataclass(frozen=True)
class Profile:
    """Batch sizes of the engine's one optimisation profile; for a sequence engine also its T (min, opt, max)."""

    min: int
    opt: int
    max: int
    frames: tuple[int, int, int] | None = None

    def shapes(self, input_size: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        h, w = input_size
        if self.frames is None:
            return (self.min, 3, h, w), (self.opt, 3, h, w), (self.max, 3, h, w)
        t_min, t_opt, t_max = self.frames
        return (self.min, t_min, 3, h, w), (self.opt, t_opt, 3, h, w), (self.max, t_max, 3, h, w)


def sequence_frames(info: ModelInfo, frames: int | None = None) -> int | None:
    """The longest T a sequence engine of ``info`` takes: ``frames`` if given, else the sidecar's; None for images."""
    if info.rank != 5:
        return None
    t = frames or info.frames or DEFAULT_FRAMES
    if not 1 <= t <= MAX_FRAMES:
        raise EngineBuildFailed(f"frames must be between 1 and {MAX_FRAMES}, got {t}")
    return t


def profile_for(info: ModelInfo, max_batch: int = DEFAULT_MAX_BATCH, frames: int | None = None) -> Profile:
    """(1, max, max) for a dynamic batch; the model's own batch for a fixed one.

    For the video graph ``max_batch`` counts frames, as the workers' batches do: sequences 1 ..
    max(1, max_batch // T), T 1 .. T (:func:`sequence_frames`), optimised for the longest.
    """
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise EngineBuildFailed(f"max batch must be between 1 and {MAX_BATCH_LIMIT}, got {max_batch}")
    t = sequence_frames(info, frames)
    n_max = max_batch if t is None else max(1, max_batch // t)
    if info.fixed_batch is not None:
        n_max = info.fixed_batch
        return Profile(n_max, n_max, n_max, None if t is None else (1, t, t))
    return Profile(1, n_max, n_max, None if t is None else (1, t, t))


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    max_batch: int = DEFAULT_MAX_BATCH
    engine_dir: Path | None = None
    frames: int | None = None  # sequence engines: the longest T (None: the sidecar's frames)
    workspace: int = DEFAULT_WORKSPACE
    convert: bool = True  # make NAME_fp16.onnx if an FP16 build needs it and it is missing or stale


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


def engine_key(info: ModelInfo, gpu: GpuInfo, tensorrt_version: str, precision: str,
               frames: int | None = None) -> EngineKey:
    """Keyed by the model the scan is given (its sha256), whichever ONNX file the precision is built from.

    A sequence engine (the video graph: its own sha256) is keyed by its longest T too.
    """
    return EngineKey(info.sha256, gpu.name, gpu.capability, tensorrt_version, precision,
                     sequence_frames(info, frames))


def int8_path(model: Path) -> Path:
    """``NAME_int8.onnx`` beside ``NAME.onnx``: where TensorRT looks for the model's Q/DQ file."""
    return ModelFolder(Path(model)).int8_graph


def quantize_command(info: ModelInfo) -> str:
    return f"dfscan quantize {info.path} --calibrate DIR --target tensorrt --out {int8_path(info.path)}"


def graph_for(info: ModelInfo, precision: str, *, convert: bool = True, spare_dir: Path | None = None) -> ModelInfo:
    """The ONNX file an engine of ``precision`` is built from, for the model ``info``.

    The model itself if it already is that precision; else its FP16 conversion
    (made now when ``convert`` and missing or stale: beside the model, or in
    ``spare_dir`` where the model's folder is read-only) or its Q/DQ INT8 file. Raises
    :class:`EngineBuildFailed` / :class:`Int8CalibrationError` naming the command that makes the file.
    """
    from dfscan.trt.fp16 import convert_fp16, is_current

    wanted = get_precision(precision)
    if info.rank == 5 and wanted.graph != "fp32":
        raise EngineBuildFailed(f"sequence engines are built in FP32 from {info.path.name} (no {wanted.name} video "
                                f"graph is made); build it with --precision fp32")
    own = str(info.extra.get("precision", "fp32"))
    if own == wanted.graph:
        if wanted.name == "int8":
            _check_qdq_for_tensorrt(info, info)
        return info
    if own != "fp32":
        raise EngineBuildFailed(
            f"{info.path} is a {own} model; a {wanted.name} engine is built from the FP32 model it came from "
            f"(give that one, e.g. {info.extra.get('source_path') or IMAGE_GRAPH_NAME})"
        )
    home = info.folder.fp16_graph if wanted.name == "fp16" else info.folder.int8_graph
    # Beside the model, or (for an FP16 graph made where the model's folder is read-only) in the engine cache.
    candidates = [home] + ([Path(spare_dir) / home.name] if spare_dir is not None else [])
    why = f"{home} does not exist"
    for candidate in (c for c in candidates if c.is_file()):
        found = inspect_model(candidate)
        ok, why = is_current(found, info, wanted.graph)
        if ok:
            if wanted.name == "int8":
                _check_qdq_for_tensorrt(found, info)
            return found
    if wanted.name == "fp16":
        if not convert:
            raise EngineBuildFailed(f"no FP16 graph for {info.path.name}: {why}; `dfscan fp16 {info.path}` makes it")
        log.info("converting %s to FP16 (%s)", info.path.name, why)
        try:
            return convert_fp16(info, home)
        except OSError:  # the model's folder is read-only (a shared mount, an image layer)
            if spare_dir is None:
                raise
        Path(spare_dir).mkdir(parents=True, exist_ok=True)
        return convert_fp16(info, candidates[-1])
    raise Int8CalibrationError(
        f"an INT8 engine is built from the model's Q/DQ file and {why}; make it with `{quantize_command(info)}` "
        f"(or pass --calibrate DIR to build-engine)"
    )


def _check_qdq_for_tensorrt(qdq: ModelInfo, source: ModelInfo) -> None:
    """TensorRT's explicit quantisation takes signed INT8 with zero points of 0, not ONNX Runtime's CPU layout."""
    quantization = qdq.extra.get("quantization")
    target = quantization.get("target", "cpu") if isinstance(quantization, dict) else None
    if target != "tensorrt":
        raise Int8CalibrationError(
            f"{qdq.path} is quantised for ONNX Runtime on the CPU (unsigned activations with zero points), which "
            f"TensorRT can't build; re-quantise with `{quantize_command(source)}`"
        )


def plan_build(info: ModelInfo, options: BuildOptions, gpu: GpuInfo, tensorrt_version: str) -> tuple[EngineKey, EngineCache, Profile, Precision]:
    """Everything decided before TensorRT is touched; raises on a bad request."""
    precision = get_precision(options.precision)
    check_supported(precision, gpu.capability, gpu.name)
    profile = profile_for(info, options.max_batch, options.frames)
    cache = EngineCache(options.engine_dir or info.folder.engines)
    key = engine_key(info, gpu, tensorrt_version, precision.name, options.frames)
    return key, cache, profile, precision


def record_is_current(record: dict, source: ModelInfo) -> bool:
    """A cached engine stays valid while the ONNX file it was built from is unchanged (a re-quantised file is new).

    Engines from before strong typing (no ``strongly_typed`` in their record) are rebuilt.
    """
    return bool(record.get("strongly_typed")) and record.get("source_sha256") == source.sha256


def build_engine(info: ModelInfo, options: BuildOptions = BuildOptions(), *, force: bool = False) -> BuiltEngine:
    """Build (or reuse) the ``options.precision`` engine for the model ``info`` on this machine's first GPU."""
    trt = import_tensorrt()
    surface = surface_of(trt)
    gpu = current_gpu()
    key, cache, profile, precision = plan_build(info, options, gpu, trt.__version__)
    start = time.perf_counter()
    with cache.lock(key):  # another worker may be building the same engine (and converting its graph) right now
        source = graph_for(info, precision.name, convert=options.convert, spare_dir=cache.directory)
        if not force:
            record = cache.read_record(key)
            if record is not None and record_is_current(record, source):
                return BuiltEngine(key, cache.paths(key), True, time.perf_counter() - start, record)
        data = _build(trt, surface, source, options, key, cache, profile, precision)
        paths = cache.store(
            key,
            data,
            profile=[profile.min, profile.opt, profile.max],
            profile_frames=None if profile.frames is None else list(profile.frames),
            input_name=info.input_name,
            output_name=info.output_name,
            input_size=list(info.input_size),
            onnx_path=str(info.path),
            source_onnx=str(source.path),
            source_sha256=source.sha256,
            strongly_typed=True,
        )
    seconds = time.perf_counter() - start
    return BuiltEngine(key, paths, False, seconds, cache.read_record(key) or {})


def _build(trt, surface: TrtSurface, source: ModelInfo, options: BuildOptions, key: EngineKey, cache: EngineCache,
           profile: Profile, precision: Precision) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, surface))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source.path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors)) or "no details"
        raise EngineBuildFailed(f"TensorRT can't parse {source.path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
    # No precision flags: a strongly typed network runs in the types of its graph.

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(source.input_name, *profile.shapes(source.input_size))
    config.add_optimization_profile(opt_profile)

    timing_path = cache.timing_cache(key)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)

    log.info("building %s engine from %s (profile %s); this takes minutes", precision.name, source.path.name, profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed(
            f"TensorRT failed to build a {precision.name} engine from {source.path} (see its log above)"
        )
    cache.directory.mkdir(parents=True, exist_ok=True)
    timing_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))
