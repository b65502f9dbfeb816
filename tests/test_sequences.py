"""Video sequences on every runtime: the video graph's torch.export program, padded and masked, and one runtime
for both graphs (issue #28 part A).

On the CPU: the torch runtime scores the same sampled frames of real videos as ONNX Runtime (p_fake within
1e-4), a ``dfscan scan --runtime torch`` of videos writes ONNX Runtime's verdicts, and a context built with
``--runtime torch`` holds no ONNX Runtime session.  The TensorRT sequence engine is tested in test_tensorrt.py
(its profile and key here-and-everywhere, the engine itself on a GPU with TensorRT).
"""

from __future__ import annotations

import gc
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.core.settings import from_env
from dfscan.trt.errors import InferenceFailed
from dfscan.trt.model_info import VIDEO_PROGRAM_KEY, inspect_model, inspect_video_model, sha256_file
from dfscan.trt.onnxruntime import OnnxRuntime
from dfscan.trt.pytorch import TorchRuntime, cuda_status
from dfscan.trt.registry import RUNTIMES, resolve_runtime
from dfscan.workers.images import Preprocess
from dfscan.workers.scoring.verdict import Verdict
from dfscan.workers.scoring.video_stage import VideoOptions, VideoStage
from tests._models import tiny_onnx_model  # noqa: F401 - fixture: exported with both graphs and both programs
from tests._videos import write_video

T_PAD = 16  # the tiny model's sidecar frames (trained on images: DEFAULT_FRAMES), the program's fixed T
# A scan with --runtime torch runs on CUDA where there is one (fp16 by default, TF32 convolutions even in fp32):
# there the scan's p_fake is held to FP16's bound; on the CPU (FP32) to 1e-4.
CUDA_OK = cuda_status()[0]
SCAN_TOL = 1e-2 if CUDA_OK else 1e-4


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Real videos in three containers and codecs; two have fewer frames than T_PAD, so their sequences are padded."""
    root = tmp_path_factory.mktemp("seq_videos")
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(40)]
    write_video(root / "long.mp4", 40, draw=lambda i: noise[i])
    write_video(root / "plain.webm", 24, codec="vp9-webm")
    write_video(root / "short.avi", 9, codec="mjpeg-avi", draw=lambda i: noise[i][::-1])  # 9 frames: T 9
    write_video(root / "tiny.mp4", 3, draw=lambda i: noise[i + 5])  # T 3
    return root


@pytest.fixture(scope="module")
def graphs(tiny_onnx_model):  # noqa: F811 - the fixture imported above
    info = inspect_model(tiny_onnx_model)
    return info, inspect_video_model(info)


def _sequences(videos: Path, frames: int = T_PAD) -> dict[str, np.ndarray]:
    """Each video's sequence (T, 3, H, W) exactly as the scan's video stage makes it (sampling, resize, normalise)."""
    stage = VideoStage(Preprocess(), VideoOptions(frames=frames), sequence_model="model.video.onnx")
    try:
        out = {}
        for path in sorted(videos.iterdir()):
            item = stage._prepare_one(str(path))[0]
            (inp,) = item.inputs()
            assert inp.graph == "sequence"
            out[path.name] = inp.array
        return out
    finally:
        stage.close()


def test_export_writes_the_video_program_at_a_fixed_length(graphs):
    info, video = graphs
    entry = info.extra[VIDEO_PROGRAM_KEY]
    program = info.folder.video_program
    assert entry["file"] == program.name == "model.video.pt2" and entry["sha256"] == sha256_file(program)
    # Tied to the video graph it was exported with, and T fixed (nn.LSTM does not export with a dynamic T).
    assert entry["onnx_sha256"] == video.sha256 and entry["frames"] == T_PAD == info.frames
    assert entry["parity_max_abs_diff"] <= 1e-4 and "masked" in entry["padding"]


def test_torch_sequences_match_onnxruntime_on_sampled_video_frames(graphs, videos):
    """The same sampled frames of real videos through both runtimes: p_fake within 1e-4, shorter ones padded."""
    _, video = graphs
    sequences = _sequences(videos)
    assert sorted(s.shape[0] for s in sequences.values()) == [3, 9, T_PAD, T_PAD]
    torch_rt, ort = TorchRuntime(video, device="cpu"), OnnxRuntime(video)
    verdict = Verdict()
    try:
        assert (torch_rt.name, torch_rt.max_frames, torch_rt.fixed_batch) == ("torch", T_PAD, None)
        worst_p = worst_logit = 0.0
        for name, seq in sequences.items():
            batch = np.stack([seq, seq[::-1].copy()])  # two sequences of the same T, as the infer stage groups them
            ours, ref = torch_rt.infer(batch), ort.infer(batch)
            p_ours = [d.p_fake for d in verdict.decide(ours)]
            p_ref = [d.p_fake for d in verdict.decide(ref)]
            worst_p = max(worst_p, float(np.max(np.abs(np.subtract(p_ours, p_ref)))))
            worst_logit = max(worst_logit, float(np.max(np.abs(ours - ref))))
        device_logits = torch_rt.infer_device(batch)
        assert tuple(device_logits.shape) == (2, 2) and str(device_logits.device) == "cpu"
        # The control: the same short sequence zero-padded to T_PAD, unmasked, is another answer: masking matters.
        short = sequences["tiny.mp4"][None]
        padded = np.concatenate([short, np.zeros((1, T_PAD - short.shape[1], *short.shape[2:]), np.float32)], 1)
        unmasked_gap = float(np.max(np.abs(ort.infer(padded) - ort.infer(short))))
        with pytest.raises(InferenceFailed, match="T from 1 to 16"):
            torch_rt.infer(np.zeros((1, T_PAD + 1, 3, 224, 224), np.float32))
    finally:
        torch_rt.close()
        ort.close()
    print(f"\ntorch vs ONNX Runtime on sampled video frames: max |dp_fake| {worst_p:.2e}, max |dlogit| "
          f"{worst_logit:.2e}; an unmasked zero pad moves the logits by {unmasked_gap:.2e}")
    assert worst_p <= 1e-4 and worst_logit <= 1e-4
    assert unmasked_gap > 1e-4


def _ort_sessions() -> int:
    import onnxruntime

    gc.collect()
    with warnings.catch_warnings():  # isinstance on every live object touches deprecated torch module attributes
        warnings.simplefilter("ignore", FutureWarning)
        return sum(isinstance(o, onnxruntime.InferenceSession) for o in gc.get_objects())


@pytest.mark.parametrize("runtime, sessions", [("torch", 0), ("onnxruntime", 2)])
def test_one_runtime_holds_both_graphs(tmp_path, tiny_onnx_model, runtime, sessions):  # noqa: F811
    """--runtime torch: the image and the video graph are both torch programs, and no ONNX Runtime session exists
    (counted among the process's live objects; ONNX Runtime's own context counts its two, so the count works)."""
    from dfscan.workers.scoring.context import ScanContext

    before = _ort_sessions()
    ctx = ScanContext.open(from_env(model=str(tiny_onnx_model), db_url=f"sqlite:///{tmp_path / 'r.db'}",
                                    runtime=runtime))
    try:
        runtimes = ctx.resources.runtimes
        assert sorted(runtimes) == ["image", "sequence"]
        assert {r.name for r in runtimes.values()} == {runtime}
        assert _ort_sessions() - before == sessions
        assert ctx.runtime_record()["video"]["scoring"] == "sequence"
    finally:
        ctx.close()


def test_auto_resolves_one_runtime_for_both_graphs(tmp_path, graphs):
    info, _ = graphs
    from dfscan.workers.scoring.context import ScanContext

    spec = resolve_runtime("auto", info)
    ctx = ScanContext.open(from_env(model=str(info.path), db_url=f"sqlite:///{tmp_path / 'a.db'}", runtime="auto"))
    try:
        assert {r.name for r in ctx.resources.runtimes.values()} == {spec.name}
    finally:
        ctx.close()
    # A model whose video graph has no program is not the torch runtime's under auto (it would split the graphs).
    folder = tmp_path / "no_video_program"
    shutil.copytree(info.folder.directory, folder, ignore=shutil.ignore_patterns("engines"))
    sidecar = json.loads((folder / "model_info.json").read_text())
    del sidecar[VIDEO_PROGRAM_KEY]
    (folder / "model_info.json").write_text(json.dumps(sidecar))
    ok, why = RUNTIMES["torch"].usable_by_auto(inspect_model(folder / "model.onnx"))
    assert not ok and "model.video.pt2" in why


def _scan(root: Path, model: Path, url: str, runtime: str, *more: str):
    return CliRunner().invoke(main, ["scan", str(root), "--model", str(model), "--db", url, "--runtime", runtime,
                                     "--decoder", "pillow", "--json", *more])


def test_scan_of_videos_with_torch_writes_onnxruntime_verdicts(tmp_path, tiny_onnx_model, videos):  # noqa: F811
    from tests.test_scan import rows_by_path

    root = tmp_path / "media"
    shutil.copytree(videos, root)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    url = f"sqlite:///{tmp_path / 'scan.db'}"
    scans = {}
    for runtime in ("torch", "onnxruntime"):
        result = _scan(root, tiny_onnx_model, url, runtime)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["total"] == 5 and summary["errors"] == 1
        scans[runtime] = rows_by_path(url, summary["scan_id"])
    ours, ref = scans["torch"], scans["onnxruntime"]
    assert ours.keys() == ref.keys()
    for path, row in ref.items():
        mine = ours[path]
        assert (mine["status"], mine["label"], mine["kind"], mine["frames"]) == (
            row["status"], row["label"], row["kind"], row["frames"]), path
        if row["status"] == "ok":
            assert abs(mine["p_fake"] - row["p_fake"]) <= SCAN_TOL, path
    assert {ours[str(root / n)]["frames"] for n in ("short.avi", "tiny.mp4")} == {9, 3}  # padded sequences


def test_more_frames_than_the_program_takes_is_refused_before_the_scan(tmp_path, tiny_onnx_model, videos):  # noqa: F811
    result = _scan(videos, tiny_onnx_model, f"sqlite:///{tmp_path / 'f.db'}", "torch", "--frames", str(T_PAD + 4))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"more than the torch runtime's video graph takes ({T_PAD}" in result.output
    assert f"dfscan export --frames {T_PAD + 4}" in result.output
