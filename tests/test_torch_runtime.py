"""The PyTorch runtime: the .pt2 program ``dfscan export`` writes, its ties to the ONNX file, CPU parity, scans.

CUDA (FP16/BF16, static shapes, DLPack batches from DALI's GPU decoder) is
tested at the bottom where torch sees a GPU, and skipped elsewhere with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.trt.errors import InferenceFailed, ModelRejected, RuntimeUnavailable
from dfscan.trt.model_info import inspect_model, sha256_file
from dfscan.trt.onnxruntime import OnnxRuntime
from dfscan.trt.pytorch import TorchRuntime, cuda_status
from dfscan.trt.registry import RUNTIMES, resolve_runtime
from dfscan.workers.images.decode import Preprocess, decode_one
from tests._images import write_jpegs
from tests._models import tiny_legacy_onnx_model, tiny_onnx_model  # noqa: F401 - fixtures

CUDA_OK, CUDA_WHY = cuda_status()
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"needs torch on a CUDA GPU: {CUDA_WHY}")


@pytest.fixture
def model_copy(tmp_path, tiny_onnx_model) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx_model.parent, folder)
    return folder / "model.onnx"


def _images(folder: Path, n: int) -> np.ndarray:
    return np.stack([decode_one(p.read_bytes(), Preprocess()) for p in write_jpegs(folder, n)])


def test_export_writes_the_program_tied_to_its_onnx_file(tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    entry = info.extra["torch_program"]
    program = tiny_onnx_model.parent / entry["file"]
    assert entry["file"] == "model.pt2" and program.is_file()
    assert entry["sha256"] == sha256_file(program) and entry["onnx_sha256"] == info.sha256 == sha256_file(info.path)
    assert not list(tiny_onnx_model.parent.glob("*.tmp*"))


def test_cpu_logits_match_onnxruntime(tmp_path, tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    batch = _images(tmp_path / "imgs", 7)
    torch_rt, ort = TorchRuntime(info, device="cpu"), OnnxRuntime(info)
    try:
        assert (torch_rt.name, torch_rt.device, torch_rt.precision, torch_rt.fixed_batch) == ("torch", "cpu", "fp32", None)
        ours, ref = torch_rt.infer(batch), ort.infer(batch)
        one = torch_rt.infer(batch[:1])
    finally:
        torch_rt.close()
        ort.close()
    assert ours.shape == (7, 2) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(one, ref[:1], rtol=0, atol=1e-4)  # the batch axis is really dynamic


def test_batches_arrive_as_arrays_or_dlpack_tensors(tmp_path, tiny_onnx_model):
    import torch

    info = inspect_model(tiny_onnx_model)
    batch = _images(tmp_path / "imgs", 3)
    runtime = TorchRuntime(info, device="cpu", max_batch=2)  # 3 images: split into 2 + 1 inside
    try:
        from_numpy = runtime.infer(batch)
        tensor = torch.from_numpy(batch)
        from_dlpack = runtime.infer(_Capsule(tensor))
        on_device = runtime.infer_device(tensor)
        with pytest.raises(InferenceFailed, match=r"expected \(N, 3, 224, 224\)"):
            runtime.infer(batch[:, :, :100])
        with pytest.raises(InferenceFailed, match="DLPack"):
            runtime.infer([1, 2, 3])
    finally:
        runtime.close()
    np.testing.assert_allclose(from_dlpack, from_numpy, rtol=0, atol=1e-6)
    assert isinstance(on_device, torch.Tensor) and on_device.device.type == "cpu"


class _Capsule:
    """Any object with ``__dlpack__`` (a DALI TensorListGPU's tensor, a CuPy array): not a torch tensor itself."""

    def __init__(self, tensor) -> None:
        self._tensor = tensor

    def __dlpack__(self, **kwargs):
        return self._tensor.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def test_bf16_on_the_cpu_and_refused_precisions(tmp_path, tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    batch = _images(tmp_path / "imgs", 4)
    fp32, bf16 = TorchRuntime(info, device="cpu"), TorchRuntime(info, device="cpu", precision="bf16")
    try:
        diff = float(np.abs(fp32.infer(batch) - bf16.infer(batch)).max())
    finally:
        fp32.close()
        bf16.close()
    assert bf16.precision == "bf16" and 0 < diff < 0.05  # really ran in bf16, and still close
    with pytest.raises(RuntimeUnavailable, match="fp32, bf16.*not fp16"):
        TorchRuntime(info, device="cpu", precision="fp16")
    with pytest.raises(RuntimeUnavailable, match="not int8; INT8 runs with"):
        TorchRuntime(info, device="cpu", precision="int8")
    if not CUDA_OK:
        with pytest.raises(RuntimeUnavailable, match="can't use CUDA here"):
            TorchRuntime(info, device="cuda")


def test_a_program_that_is_not_the_recorded_one_is_refused(model_copy, tmp_path):
    info = inspect_model(model_copy)
    program = model_copy.with_name("model.pt2")
    good = program.read_bytes()
    program.write_bytes(good[:-10] + b"0123456789")
    with pytest.raises(ModelRejected, match="not the file model_info.json records.*dfscan export"):
        TorchRuntime(info, device="cpu")
    program.unlink()
    with pytest.raises(RuntimeUnavailable, match="model.pt2 .*is missing"):
        TorchRuntime(info, device="cpu")
    program.write_bytes(good)
    side = model_copy.with_name("model_info.json")
    record = json.loads(side.read_text())
    record["torch_program"]["onnx_sha256"] = "0" * 64  # the program of another export beside this ONNX file
    side.write_text(json.dumps(record))
    with pytest.raises(ModelRejected, match="exported with another ONNX file"):
        TorchRuntime(inspect_model(model_copy), device="cpu")
    del record["torch_program"]
    side.write_text(json.dumps(record))
    with pytest.raises(RuntimeUnavailable, match="no PyTorch export recorded"):
        TorchRuntime(inspect_model(model_copy), device="cpu")


def test_auto_takes_torch_only_on_cuda(tiny_onnx_model, tiny_legacy_onnx_model):
    info = inspect_model(tiny_onnx_model)
    assert RUNTIMES["torch"].available()[0]  # torch runs everywhere ...
    ok, why = RUNTIMES["torch"].usable_by_auto(info)
    assert ok == CUDA_OK  # ... but auto only takes it on a GPU
    if not CUDA_OK:
        assert "not on the CPU" in why
    no_program = inspect_model(tiny_legacy_onnx_model)  # the original project's file: no .pt2
    assert not RUNTIMES["torch"].usable_by_auto(no_program)[0]
    if not RUNTIMES["tensorrt"].available()[0]:
        assert resolve_runtime("auto", info).name == ("torch" if CUDA_OK else "onnxruntime")
    assert resolve_runtime("torch").name == "torch"


def test_scan_with_the_torch_runtime(tmp_path, model_copy, sqlite_url):
    from tests.test_scan import rows_by_path

    root = tmp_path / "imgs"
    good = [str(p) for p in write_jpegs(root, 5)]
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    result = CliRunner().invoke(main, ["scan", str(root), "--model", str(model_copy), "--db", sqlite_url,
                                       "--runtime", "torch", "--decoder", "pillow", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["total"] == 6 and summary["errors"] == 1
    rows = rows_by_path(sqlite_url, summary["scan_id"])
    assert all(rows[p]["status"] == "ok" for p in good)
    # The same verdicts as ONNX Runtime's scan.
    again = CliRunner().invoke(main, ["scan", str(root), "--model", str(model_copy), "--db", sqlite_url,
                                      "--runtime", "onnxruntime", "--decoder", "pillow", "--json"])
    ort_rows = rows_by_path(sqlite_url, json.loads(again.output)["scan_id"])
    for p in good:
        assert abs(rows[p]["p_fake"] - ort_rows[p]["p_fake"]) < 1e-5


# -- on a CUDA GPU ---------------------------------------------------------------------


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_p_fake_matches_onnxruntime(tmp_path, tiny_onnx_model, precision):
    import torch

    info = inspect_model(tiny_onnx_model)
    batch = _images(tmp_path / "imgs", 70)
    runtime, ort = TorchRuntime(info, device="cuda", precision=precision, max_batch=64), OnnxRuntime(info)
    try:
        ours = runtime.infer(batch)  # split 64 + 6, the 6 padded to the static shape of 64
        on_gpu = runtime.infer_device(torch.from_numpy(batch).cuda())
        ref = ort.infer(batch)
    finally:
        runtime.close()
        ort.close()
    assert runtime.device == "gpu" and on_gpu.device.type == "cuda"
    print(f"\ntorch CUDA {precision} vs ONNX Runtime (CPU): max |logit delta| {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=0.05)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), ours, rtol=0, atol=1e-3)


def test_a_dali_batch_reaches_the_runtime_through_dlpack(tmp_path, tiny_onnx_model):
    """DALI's output tensor goes to the torch runtime as is (on a GPU it would never leave the device)."""
    from dfscan.workers.images.dali import DaliDecoder, dali_status
    from dfscan.workers.reading.reader import read_file

    if not dali_status()[0]:
        pytest.skip(f"needs DALI: {dali_status()[1]}")
    info = inspect_model(tiny_onnx_model)
    files = [read_file(str(p)) for p in write_jpegs(tmp_path / "imgs", 6)]
    pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
    decoder = DaliDecoder(pre, device="cpu", batch_size=8)
    runtime = TorchRuntime(info, device="cpu")
    try:
        dense = decoder.decode_dense(files)
        assert hasattr(dense, "__dlpack__") and tuple(dense.shape()) == (6, 3, 224, 224)
        through_dlpack = runtime.infer(dense)
        per_image = np.stack(decoder.decode_batch(files))  # the careful path, copied to the host
        assert decoder.decode_dense(files + [read_file(str(_not_an_image(tmp_path)))]) is None
    finally:
        decoder.close()
        runtime.close()
    np.testing.assert_allclose(through_dlpack, runtime_logits(info, per_image), rtol=0, atol=1e-5)


def _not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "text.jpg"
    path.write_bytes(b"not an image at all")
    return path


def runtime_logits(info, tensors: np.ndarray) -> np.ndarray:
    runtime = TorchRuntime(info, device="cpu")
    try:
        return runtime.infer(tensors)
    finally:
        runtime.close()


def test_the_program_moves_to_a_device_with_the_tensors_its_graph_creates(tiny_onnx_model):
    """Exported on the CPU, the LSTM's zero state is made with device='cpu'; on CUDA it must be made there."""
    import torch

    from dfscan.trt.pytorch import on_device

    program = torch.export.load(str(tiny_onnx_model.with_name("model.pt2")))
    assert "device(type='cpu')" in program.module().code  # what a plain .to("cuda") would leave behind
    moved = on_device(program, "meta")  # any device other than the CPU: the same rewrite as for "cuda"
    code = moved.module().code
    assert "device(type='cpu')" not in code and "'meta'" in code
    assert all(p.device.type == "meta" for p in moved.module().parameters())
    assert on_device(program, "cpu") is program
