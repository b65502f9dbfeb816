"""TensorRT: engine cache keys, profiles, precision choice and fallbacks on every machine; engines on a GPU.

The tests at the bottom need the ``tensorrt`` package and an NVIDIA GPU and
are skipped elsewhere with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfscan.trt.model_info import inspect_model
from dfscan.cli import main
from tests._images import write_bad_files, write_jpegs
from tests._models import tiny_legacy_onnx_model, tiny_onnx_model  # noqa: F401 - fixtures
from tests.test_fp16 import trained  # noqa: F401 - fixture: a tiny detector trained to separate images
from dfscan.core.gpu import GpuInfo, parse_probe, probe_gpus
from dfscan.trt.cache import EngineCache, EngineKey, default_engine_dir
from dfscan.trt.engine import (
    BuildOptions,
    Profile,
    TrtSurface,
    describe_surface,
    graph_for,
    int8_path,
    network_flags,
    plan_build,
    profile_for,
    record_is_current,
    surface_of,
    tensorrt_status,
    what_it_builds,
)
from dfscan.trt.errors import (
    Int8CalibrationError,
    EngineBuildFailed,
    EngineIncompatible,
    PrecisionUnsupported,
    RuntimeUnavailable,
    UnknownPrecision,
)
from dfscan.trt.precisions import PRECISIONS, choose_precision, get_precision
from dfscan.trt.registry import resolve_runtime
from dfscan.workers.images.decode import Preprocess, decode_one
from types import SimpleNamespace

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30)
L4 = GpuInfo(0, "NVIDIA L4", (8, 9), 24 << 30)
MAXWELL = GpuInfo(0, "Tesla M60", (5, 2), 8 << 30)
TRT_VERSION = "10.13.0.35"


def _trt_gpu_reason() -> str | None:
    from dfscan.trt.tensorrt import available

    ok, why = available()
    return None if ok else why


needs_trt = pytest.mark.skipif(_trt_gpu_reason() is not None, reason=f"needs TensorRT and a GPU: {_trt_gpu_reason()}")


# -- precision choice ------------------------------------------------------------------


def test_precision_table_is_data():
    assert set(PRECISIONS) == {"fp32", "fp16", "int8"}
    assert {p.name: p.graph for p in PRECISIONS.values()} == {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}
    assert PRECISIONS["int8"].needs_calibration and not PRECISIONS["fp16"].needs_calibration
    with pytest.raises(UnknownPrecision, match="fp32, fp16, int8"):
        get_precision("bf8")
    with pytest.raises(UnknownPrecision, match="--runtime torch"):
        get_precision("bf16")


@pytest.mark.parametrize(
    ("requested", "capability", "cached", "expected", "build"),
    [
        (None, (9, 0), [], "fp16", True),  # nothing cached: the fastest that needs no calibration
        (None, (9, 0), ["fp32"], "fp32", False),  # something cached: use it rather than build
        (None, (9, 0), ["fp32", "fp16", "int8"], "int8", False),  # an INT8 engine exists only on purpose
        (None, (5, 2), [], "fp32", True),  # no fast FP16 on Maxwell
        (None, (5, 2), ["int8"], "fp32", True),  # a cached engine the GPU can't run is ignored
        ("fp32", (9, 0), ["fp16"], "fp32", True),  # asked for: built even though another is cached
        ("int8", (8, 9), ["int8"], "int8", False),
    ],
)
def test_choose_precision(requested, capability, cached, expected, build):
    precision, must_build = choose_precision(requested, capability, cached)
    assert (precision.name, must_build) == (expected, build)


def test_precision_the_gpu_lacks_is_refused():
    with pytest.raises(PrecisionUnsupported, match="6.1 or newer"):
        choose_precision("int8", (5, 2))


# -- profiles --------------------------------------------------------------------------


def test_profile_is_1_64_64_for_a_dynamic_batch(tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    assert info.fixed_batch is None
    profile = profile_for(info)
    assert profile == Profile(1, 64, 64)
    assert profile.shapes(info.input_size) == ((1, 3, 224, 224), (64, 3, 224, 224), (64, 3, 224, 224))
    assert profile_for(info, 128) == Profile(1, 128, 128)
    with pytest.raises(EngineBuildFailed, match="between 1 and"):
        profile_for(info, 0)


def test_profile_follows_a_fixed_batch(tiny_legacy_onnx_model):
    info = inspect_model(tiny_legacy_onnx_model)
    assert info.fixed_batch == 1
    assert profile_for(info, 64) == Profile(1, 1, 1)


# -- the engine cache ------------------------------------------------------------------


def _key(**changes) -> EngineKey:
    base = dict(onnx_sha256="ab" * 32, gpu_name=H100.name, capability=H100.capability,
                tensorrt_version=TRT_VERSION, precision="fp16")
    base.update(changes)
    return EngineKey(**base)


def test_every_part_of_the_key_changes_the_file():
    base = _key()
    others = [_key(onnx_sha256="cd" * 32), _key(gpu_name=L4.name), _key(capability=(8, 0)),
              _key(tensorrt_version="10.14.1.48"), _key(precision="int8")]
    stems = {base.stem} | {k.stem for k in others}
    assert len(stems) == 1 + len(others)
    assert base.stem == "abababababababab-nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35-fp16"
    assert base.hardware == _key(precision="fp32", onnx_sha256="ef" * 32).hardware  # timing cache shared


def test_cache_round_trip_and_rejections(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    assert cache.load(key) is None
    paths = cache.store(key, b"serialized-engine", profile=[1, 64, 64])
    assert paths.engine.read_bytes() == b"serialized-engine"
    blob, record = cache.load(key)
    assert blob == b"serialized-engine" and record["profile"] == [1, 64, 64] and record["capability"] == [9, 0]
    assert cache.cached_precisions(key.onnx_sha256, H100.name, (9, 0), TRT_VERSION) == ["fp16"]
    assert cache.cached_precisions(key.onnx_sha256, L4.name, L4.capability, TRT_VERSION) == []
    assert cache.cached_precisions(key.onnx_sha256, H100.name, (9, 0), "10.14.1.48") == []
    # An engine copied in under another key's name is refused, never loaded.
    other = _key(gpu_name=L4.name, capability=L4.capability)
    shutil.copy(paths.engine, cache.paths(other).engine)
    shutil.copy(paths.record, cache.paths(other).record)
    with pytest.raises(EngineIncompatible, match="gpu_name"):
        cache.load(other)
    # A truncated engine file is a miss (rebuilt), not a crash at deserialisation.
    paths.engine.write_bytes(b"serial")
    assert cache.load(key) is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_engines_live_beside_the_model(tiny_onnx_model):
    assert default_engine_dir(tiny_onnx_model) == tiny_onnx_model.parent / "engines"


def test_lock_is_reentrant_across_sequential_uses(tmp_path):
    cache = EngineCache(tmp_path / "new")
    with cache.lock(_key()):
        pass
    with cache.lock(_key()):
        assert cache.paths(_key()).lock.exists()


# -- build planning (everything decided before TensorRT runs) --------------------------


def test_plan_build_decides_key_profile_and_precision(tmp_path, tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    key, cache, profile, precision = plan_build(info, BuildOptions(engine_dir=tmp_path), H100, TRT_VERSION)
    assert key == EngineKey(info.sha256, H100.name, (9, 0), TRT_VERSION, "fp16")
    assert (profile, precision.name, cache.directory) == (Profile(1, 64, 64), "fp16", tmp_path)
    with pytest.raises(PrecisionUnsupported):
        plan_build(info, BuildOptions(precision="fp16", engine_dir=tmp_path), MAXWELL, TRT_VERSION)


# -- strongly typed builds: which TensorRT builds what, from which ONNX file ---------------

# The API surfaces of the two TensorRT generations, as their modules expose them (names only).
TRT10 = SimpleNamespace(
    __version__="10.13.0.35",
    NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
    BuilderFlag=SimpleNamespace(FP16=0, INT8=1, TF32=7),
    IInt8EntropyCalibrator2=object,
    OnnxParser=object,
)
TRT11 = SimpleNamespace(
    __version__="11.4.0.11",
    NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),  # accepted, ignored
    BuilderFlag=SimpleNamespace(TF32=7),
    OnnxParser=object,
)


def test_api_surfaces_of_tensorrt_10_and_11():
    ten, eleven = surface_of(TRT10), surface_of(TRT11)
    assert ten == TrtSurface("10.13.0.35", True, True, True, True)
    assert eleven == TrtSurface("11.4.0.11", True, False, False, True)
    for surface in (ten, eleven):
        assert what_it_builds(surface) == {"fp32": "", "fp16": "", "int8": ""}
    assert network_flags(TRT10, ten) == 1 << 1 and network_flags(TRT11, eleven) == 1 << 1
    # An 11.x that drops the (ignored) flag still builds: every network is strongly typed there.
    bare = TrtSurface("11.9.0", False, False, False, True)
    assert bare.strongly_typed and network_flags(SimpleNamespace(), bare) == 0
    assert "strongly typed (always on)" in describe_surface(eleven)
    assert "weak typing present but unused" in describe_surface(ten)


@pytest.mark.parametrize(
    ("surface", "reason"),
    [
        (TrtSurface("8.6.1", True, True, True, True), "too old"),
        (TrtSurface("10.0.1", True, True, True, False), "no ONNX parser"),
        (TrtSurface("10.0.1", False, True, True, True), "no strongly typed networks"),
    ],
)
def test_what_a_tensorrt_cannot_build_says_why(surface, reason):
    builds = what_it_builds(surface)
    assert set(builds) == set(PRECISIONS) and all(reason in why for why in builds.values())
    assert reason in describe_surface(surface)
    with pytest.raises(EngineBuildFailed, match=reason):
        network_flags(SimpleNamespace(), surface)


@pytest.fixture
def model_dir(tmp_path, tiny_onnx_model) -> Path:
    """The tiny model in a folder of its own (graphs and engines are written beside it)."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_onnx_model.parent, folder)
    return folder / "model.onnx"


def test_each_precision_builds_from_its_own_onnx_file(model_dir):
    info = inspect_model(model_dir)
    assert graph_for(info, "fp32") is info
    with pytest.raises(EngineBuildFailed, match="dfscan fp16"):
        graph_for(info, "fp16", convert=False)
    half = graph_for(info, "fp16")  # made on first use, beside the model
    assert half.path == model_dir.with_name("model_fp16.onnx") and half.extra["precision"] == "fp16"
    assert half.extra["source_sha256"] == info.sha256 and half.input_name == info.input_name
    assert graph_for(info, "fp16").sha256 == half.sha256  # reused, not converted again
    assert graph_for(half, "fp16") is half  # the FP16 file given directly builds as is
    with pytest.raises(EngineBuildFailed, match="built from the FP32 model"):
        graph_for(half, "int8")
    with pytest.raises(Int8CalibrationError, match="--target tensorrt --out .*model_int8.onnx"):
        graph_for(info, "int8")


def test_a_read_only_model_folder_gets_its_fp16_graph_in_the_engine_cache(model_dir, tmp_path):
    import os
    import subprocess

    info = inspect_model(model_dir)
    folder = model_dir.parent
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):  # root ignores modes; an immutable folder stops root too
            immutable = shutil.which("chattr") is not None and subprocess.run(
                ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("can't make a folder read-only here (root, and no chattr +i)")
        half = graph_for(info, "fp16", spare_dir=tmp_path / "engines")
        assert half.path == tmp_path / "engines" / "model_fp16.onnx"
        assert graph_for(info, "fp16", spare_dir=tmp_path / "engines").sha256 == half.sha256  # found there again
        assert not model_dir.with_name("model_fp16.onnx").exists()
        assert not list(folder.glob("*.tmp"))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_stale_fp16_graph_is_made_again(model_dir, tmp_path):
    info = inspect_model(model_dir)
    half = graph_for(info, "fp16")
    other = json.loads(half.path.with_name("model_fp16.model_info.json").read_text())
    other["source_sha256"] = "0" * 64
    half.path.with_name("model_fp16.model_info.json").write_text(json.dumps(other))
    again = graph_for(info, "fp16")
    assert again.extra["source_sha256"] == info.sha256


def test_int8_builds_only_from_a_qdq_file_quantised_for_tensorrt(model_dir, tmp_path):
    from dfscan.detector.quantize import quantize_model

    info = inspect_model(model_dir)
    calib = write_jpegs(tmp_path / "calib", 8)
    quantize_model(model_dir, calib, int8_path(model_dir), target="cpu")
    with pytest.raises(Int8CalibrationError, match="quantised for ONNX Runtime on the CPU.*--target tensorrt"):
        graph_for(info, "int8")
    quantize_model(model_dir, calib, int8_path(model_dir), target="tensorrt")
    qdq = graph_for(info, "int8")
    assert qdq.path == int8_path(model_dir) and qdq.extra["quantization"]["activations"] == "int8 per-tensor symmetric"
    _assert_symmetric_int8(qdq.path)


def _assert_symmetric_int8(path: Path) -> None:
    """What TensorRT's explicit quantisation accepts: every Q/DQ pair signed INT8 with zero points of 0 (no INT32 biases)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [n.input[2] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z in inits for z in zero_points)
    assert all(inits[z].dtype == np.int8 and not inits[z].any() for z in zero_points)


def test_cached_engines_from_old_or_changed_graphs_are_rebuilt(model_dir):
    info = inspect_model(model_dir)
    assert record_is_current({"strongly_typed": True, "source_sha256": info.sha256}, info)
    assert not record_is_current({"strongly_typed": True, "source_sha256": "0" * 64}, info)
    assert not record_is_current({"source_sha256": info.sha256}, info)  # a weakly typed engine from before


def test_build_engine_refuses_calibrate_for_other_precisions(model_dir, tmp_path):
    result = CliRunner().invoke(main, ["build-engine", str(model_dir), "--precision", "fp16", "--calibrate",
                                       str(tmp_path)])
    assert result.exit_code == 2 and "only int8" in result.output


def test_fp16_command_writes_and_checks_the_graph(model_dir):
    result = CliRunner().invoke(main, ["fp16", str(model_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == str(model_dir.with_name("model_fp16.onnx"))
    assert 0 <= data["parity_max_abs_logit_diff"] < 1e-3 and data["fp32_nodes"] > 0
    result = CliRunner().invoke(main, ["fp16", data["model"]])
    assert result.exit_code == 1 and "already fp16" in result.output


def test_calibration_set_decodes_like_a_scan_and_skips_bad_files(tmp_path, tiny_onnx_model):
    from dfscan.detector.calibration import calibration_images

    info = inspect_model(tiny_onnx_model)
    paths = write_jpegs(tmp_path / "calib", 21)
    write_bad_files(tmp_path / "calib" / "bad")
    images = calibration_images(tmp_path / "calib", info, limit=512)
    assert images.tensors.shape == (21, 3, 224, 224) and images.skipped == 4  # empty, truncated, not-image, bomb
    np.testing.assert_array_equal(images.tensors[0], decode_one(paths[0].read_bytes(), Preprocess()))


# -- GPU probe and fallbacks -----------------------------------------------------------


def test_probe_output_parsing():
    probe = parse_probe(json.dumps({"driver_version": 12040, "error": None, "gpus": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "memory": 85 << 30}]}))
    assert probe.present and probe.gpus[0].sm == "sm90" and probe.gpus[0].slug == "nvidia-h100-80gb-hbm3"
    assert probe.driver_cuda() == "12.4"
    none = parse_probe(json.dumps({"driver_version": None, "gpus": [], "error": "no NVIDIA driver"}))
    assert not none.present and none.why_not == "no NVIDIA driver"
    assert not parse_probe("Segmentation fault").present


def test_probe_runs_on_this_machine():
    probe = probe_gpus()
    assert probe.present or probe.error  # either GPUs or a reason, never neither


def test_runtime_choice_without_tensorrt():
    if _trt_gpu_reason() is None:
        pytest.skip("TensorRT and a GPU are present here")
    assert resolve_runtime("auto").name == "onnxruntime"
    with pytest.raises(RuntimeUnavailable, match="can't run here"):
        resolve_runtime("tensorrt")


def test_asking_for_missing_tensorrt_fails_with_one_line(tmp_path, tiny_onnx_model):
    ok, why = tensorrt_status()
    if ok:
        pytest.skip(f"TensorRT {why} is installed here")
    write_jpegs(tmp_path / "imgs", 2)
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model),
                                       "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runtime", "tensorrt"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "tensorrt" in lines[0], result.output
    result = CliRunner().invoke(main, ["build-engine", str(tiny_onnx_model)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "pip install" in result.output
    # INT8 with --calibrate says so before minutes of quantisation it could not use.
    result = CliRunner().invoke(main, ["build-engine", str(tiny_onnx_model), "--precision", "int8", "--calibrate",
                                       str(tmp_path / "imgs")])
    assert result.exit_code == 1 and "pip install" in result.output
    assert not int8_path(tiny_onnx_model).exists()


# -- on a GPU with TensorRT ------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path, tiny_onnx_model) -> Path:
    """The tiny model in a folder of its own, so its engines/ doesn't leak into other tests."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx_model.parent, folder)
    return folder / "model.onnx"


@needs_trt
@pytest.mark.tensorrt
def test_build_engine_caches_and_reuses(model_copy):
    from dfscan.trt.engine import build_engine

    info = inspect_model(model_copy)
    built = build_engine(info, BuildOptions(precision="fp32"))
    assert not built.reused and built.paths.engine.is_file() and built.record["profile"] == [1, 64, 64]
    assert built.record["strongly_typed"] and built.record["source_sha256"] == info.sha256
    assert built.paths.engine.parent == model_copy.parent / "engines"
    assert list(built.paths.engine.parent.glob("timing-*.cache"))
    again = build_engine(info, BuildOptions(precision="fp32"))
    assert again.reused and again.paths == built.paths


@needs_trt
@pytest.mark.tensorrt
def test_fp16_engine_matches_onnxruntime(tmp_path, trained):
    """FP16 parity: p_fake within 0.01 of ONNX Runtime on real images, with a trained model that separates them.

    (Not the affine-amplified model of the DALI tests: it scales the tiny model's 1e-5 logit differences by
    ~2e5, and FP16 rounding with them.)
    """
    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.trt.tensorrt import TensorRTRuntime
    from dfscan.workers.scoring import Verdict

    source, images = trained
    shutil.copytree(source.parent, tmp_path / "trained")
    info = inspect_model(tmp_path / "trained" / source.name)
    paths = [str(p) for p in (images * 2)[:128]]
    tensors = np.stack([decode_one(Path(p).read_bytes(), Preprocess()) for p in paths])
    ort = OnnxRuntime(info)
    trt_rt = TensorRTRuntime(info, precision="fp16")
    try:
        assert trt_rt.precision == "fp16" and trt_rt.max_batch == 64 and trt_rt.fixed_batch is None
        ref = np.concatenate([ort.infer(tensors[i : i + 64]) for i in range(0, 128, 64)])
        ours = np.concatenate(list(trt_rt.infer_many(tensors[i : i + 64] for i in range(0, 128, 64))))
        one_call = trt_rt.infer(tensors)  # 128 > max batch: split inside
        odd = trt_rt.infer(tensors[:5])
    finally:
        ort.close()
        trt_rt.close()
    verdict = Verdict()
    p_ref = np.array([d.p_fake for d in verdict.decide(ref)])
    p_ours = np.array([d.p_fake for d in verdict.decide(ours)])
    print(f"\nTensorRT fp16 vs ONNX Runtime: max |delta p_fake| {np.abs(p_ref - p_ours).max():.4f}")
    assert np.abs(p_ref - p_ours).max() <= 0.01
    np.testing.assert_allclose(one_call, ours, rtol=0, atol=1e-3)
    np.testing.assert_allclose(odd, ours[:5], rtol=0, atol=1e-2)


@needs_trt
@pytest.mark.tensorrt
def test_int8_engine_builds_from_the_qdq_file(tmp_path, model_copy):
    from dfscan.detector.quantize import quantize_model
    from dfscan.trt.engine import build_engine

    calib = write_jpegs(tmp_path / "calib", 64)
    quantize_model(model_copy, calib, int8_path(model_copy), target="tensorrt")
    built = build_engine(inspect_model(model_copy), BuildOptions(precision="int8"))
    assert built.record["source_onnx"] == str(int8_path(model_copy)) and built.record["strongly_typed"]


@needs_trt
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_gpu_scan_end_to_end(tmp_path, model_copy, sqlite_url):
    from tests.test_dali import corrupt_jpeg
    from tests.test_scan import rows_by_path

    root = tmp_path / "imgs"
    good = [str(p) for p in write_jpegs(root, 130)]
    (root / "img_00064b.jpg").write_bytes(corrupt_jpeg())
    result = CliRunner().invoke(main, ["scan", str(root), "--model", str(model_copy), "--db", sqlite_url,
                                       "--decoder", "dali-gpu", "--runtime", "tensorrt", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["total"] == 131 and summary["errors"] == 1
    rows = rows_by_path(sqlite_url, summary["scan_id"])
    assert all(rows[p]["status"] == "ok" for p in good)


# -- sequence engines (the video graph, 5-D) -------------------------------------------


def test_sequence_engine_profile_covers_n_and_t_and_is_keyed_by_t(tmp_path, tiny_onnx_model):
    from dfscan.trt.engine import engine_key, sequence_frames
    from dfscan.trt.model_info import inspect_video_model

    info = inspect_model(tiny_onnx_model)
    video = inspect_video_model(info)
    assert (video.rank, video.frames, sequence_frames(info)) == (5, 16, None)
    # max_batch counts frames, as a worker's batch does: 64 frames are 4 sequences of 16.
    profile = profile_for(video)
    assert profile == Profile(1, 4, 4, (1, 16, 16))
    assert profile.shapes(video.input_size) == ((1, 1, 3, 224, 224), (4, 16, 3, 224, 224), (4, 16, 3, 224, 224))
    assert profile_for(video, 64, frames=8) == Profile(1, 8, 8, (1, 8, 8))
    assert profile_for(video, 8) == Profile(1, 1, 1, (1, 16, 16))  # at least one sequence
    # Keyed like an image engine plus its longest T; the image engine's key (and file name) is as before.
    image_key, seq_key = engine_key(info, H100, TRT_VERSION, "fp16"), engine_key(video, H100, TRT_VERSION, "fp32")
    assert image_key.frames is None and "-t" not in image_key.stem.split("trt")[-1]
    assert seq_key.frames == 16 and seq_key.stem.endswith("-fp32-t16") and seq_key.onnx_sha256 == video.sha256
    assert engine_key(video, H100, TRT_VERSION, "fp32", frames=8).stem != seq_key.stem
    key, cache, planned, precision = plan_build(video, BuildOptions(precision="fp32", engine_dir=tmp_path), H100,
                                                TRT_VERSION)
    assert key == seq_key and planned == profile and precision.name == "fp32"
    cache.store(key, b"engine", profile=[1, 4, 4])
    assert cache.cached_precisions(video.sha256, H100.name, H100.capability, TRT_VERSION, 16) == ["fp32"]
    assert cache.cached_precisions(video.sha256, H100.name, H100.capability, TRT_VERSION) == []
    # Sequence engines are FP32: no FP16 video graph is made.
    with pytest.raises(EngineBuildFailed, match="sequence engines are built in FP32"):
        graph_for(video, "fp16")


class _Recorder:
    """Stands in for the ``tensorrt`` module (not installable here) to check what _build asks of it, call by call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        rec = self

        class Obj:
            def __init__(self, name: str) -> None:
                self._name = name

            def __getattr__(self, attr: str):
                def call(*args, **kwargs):
                    rec.calls.append((f"{self._name}.{attr}", args))
                    if attr == "parse_from_file":
                        return True
                    if attr == "build_serialized_network":
                        return b"plan"
                    if attr == "get_timing_cache":
                        return Obj("timing")
                    if attr == "serialize":
                        return b"timing"
                    return Obj(attr)
                return call

        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, *a: None})
        self.Builder = lambda logger: Obj("builder")
        self.OnnxParser = lambda network, logger: Obj("parser")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)


def test_sequence_engine_build_asks_tensorrt_for_a_5d_strongly_typed_profile(tmp_path, tiny_onnx_model):
    from dfscan.trt.engine import _build
    from dfscan.trt.model_info import inspect_video_model

    video = inspect_video_model(inspect_model(tiny_onnx_model))
    trt = _Recorder()
    key, cache, profile, precision = plan_build(video, BuildOptions(precision="fp32", engine_dir=tmp_path), H100,
                                                TRT_VERSION)
    assert _build(trt, surface_of(TRT10), video, BuildOptions(), key, cache, profile, precision) == b"plan"
    calls = dict(trt.calls)
    assert calls["builder.create_network"] == (1 << 1,)  # STRONGLY_TYPED
    assert calls["parser.parse_from_file"] == (str(video.path),)
    assert calls["create_optimization_profile.set_shape"] == (
        "input", (1, 1, 3, 224, 224), (4, 16, 3, 224, 224), (4, 16, 3, 224, 224))
    assert not any("set_flag" in name for name, _ in trt.calls)  # no precision flags: the graph's own types


@needs_trt
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_sequence_engine_matches_onnxruntime(model_copy):
    """The 5-D engine on sequences of the profile's longest T and a shorter one: p_fake within 1e-3 of ONNX Runtime
    (TensorRT's FP32 may use TF32 matrix products)."""
    from dfscan.trt.model_info import inspect_video_model
    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.trt.tensorrt import TensorRTRuntime
    from dfscan.workers.scoring import Verdict

    video = inspect_video_model(inspect_model(model_copy))
    rng = np.random.default_rng(0)
    ort, trt_rt = OnnxRuntime(video), TensorRTRuntime(video)
    try:
        assert (trt_rt.precision, trt_rt.max_frames, trt_rt.max_batch) == ("fp32", 16, 4)
        assert trt_rt.engine_path.name.endswith("-fp32-t16.engine")
        verdict = Verdict()
        for shape in ((4, 16, 3, 224, 224), (3, 5, 3, 224, 224), (1, 1, 3, 224, 224)):
            x = rng.standard_normal(shape, dtype=np.float32)
            p_ref = np.array([d.p_fake for d in verdict.decide(ort.infer(x))])
            p_trt = np.array([d.p_fake for d in verdict.decide(trt_rt.infer(x))])
            assert np.abs(p_ref - p_trt).max() <= 1e-3, shape
    finally:
        ort.close()
        trt_rt.close()


@needs_trt
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_gpu_scan_of_videos_scores_sequences_on_tensorrt(tmp_path, model_copy, sqlite_url):
    from dfscan.core.settings import from_env
    from dfscan.workers.scoring.context import ScanContext
    from tests._videos import write_video

    ctx = ScanContext.open(from_env(model=str(model_copy), db_url=sqlite_url, runtime="tensorrt"))
    try:
        assert {g: r.name for g, r in ctx.resources.runtimes.items()} == {"image": "tensorrt", "sequence": "tensorrt"}
    finally:
        ctx.close()
    root = tmp_path / "videos"
    root.mkdir()
    for k in range(3):
        write_video(root / f"v{k}.mp4", 20 + k)
    result = CliRunner().invoke(main, ["scan", str(root), "--model", str(model_copy), "--db", sqlite_url,
                                       "--runtime", "tensorrt", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["total"] == 3 and summary["errors"] == 0
