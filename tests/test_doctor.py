"""`dfscan doctor` against this machine's real packages and driver."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dfscan.cli import main
from dfscan.core.gpu import probe_gpus
from dfscan.trt.engine import tensorrt_status
from dfscan.workers.images.dali import dali_gpu_status, dali_status


from dfscan.trt.pytorch import cuda_status


def doctor_json() -> dict:
    result = CliRunner().invoke(main, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_doctor_reports_every_decoder_and_runtime_with_reasons():
    report = doctor_json()
    checks = {(c["kind"], c["name"]): c for c in report["checks"]}
    assert set(checks) == {("decoder", n) for n in ("pillow", "dali", "dali-gpu", "dali-cpu")} | {
        ("runtime", n) for n in ("onnxruntime", "tensorrt", "torch")
    }
    assert checks[("decoder", "pillow")]["ok"] and checks[("runtime", "onnxruntime")]["ok"]
    for check in checks.values():
        assert check["ok"] or check["detail"], check  # every "no" says why
    gpu_ok, gpu_why = dali_gpu_status()
    assert checks[("decoder", "dali-gpu")]["ok"] == gpu_ok
    if dali_status()[0] and not gpu_ok:
        assert checks[("decoder", "dali-gpu")]["detail"] == gpu_why
        assert "CPU" in checks[("decoder", "dali")]["detail"]
        assert report["auto"]["decoder"] == "pillow"
    torch_check = checks[("runtime", "torch")]
    assert torch_check["ok"]  # torch runs everywhere: on CUDA, or on the CPU in FP32
    cuda_ok, _ = cuda_status()
    assert ("CUDA" if cuda_ok else "CPU only, fp32") in torch_check["detail"]
    if not cuda_ok:
        assert "auto skips it: not on the CPU" in torch_check["detail"]
    trt_ok, trt_why = tensorrt_status()
    if not trt_ok:
        assert not checks[("runtime", "tensorrt")]["ok"]
        assert "pip install" in checks[("runtime", "tensorrt")]["detail"]
        assert report["auto"]["runtime"] == "onnxruntime"
    probe = probe_gpus()
    assert len(report["gpus"]) == len(probe.gpus)
    assert (report["gpu_error"] is None) == probe.present


def test_doctor_reports_the_installed_versions():
    import nvidia.dali
    import onnxruntime
    import torch

    versions = doctor_json()["versions"]
    assert versions["dali"] == nvidia.dali.__version__
    assert versions["onnxruntime"] == onnxruntime.__version__
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["cuda_torch"] == torch.version.cuda
    assert "CPUExecutionProvider" in versions["onnxruntime_providers"]
    if not tensorrt_status()[0]:
        assert versions["tensorrt"] is None
    assert versions["cuda_driver"] == probe_gpus().driver_cuda()


def test_doctor_text_output_is_for_people():
    result = CliRunner().invoke(main, ["doctor"], catch_exceptions=False)
    assert result.exit_code == 0
    text = result.output
    for heading in ("decoders:", "runtimes:", "auto:", "versions:"):
        assert heading in text
    assert "onnxruntime" in text and "dali" in text and "tensorrt" in text
