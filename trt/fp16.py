"""The FP16 ONNX file a strongly typed TensorRT engine is built from.

TensorRT 11 has no weak typing: an engine runs in the types its network
declares, so FP16 has to be in the ONNX graph itself.  ``convert_fp16`` writes
``NAME_fp16.onnx`` beside ``NAME.onnx`` with ONNX Runtime's own converter
(``onnxruntime.transformers.float16``, shipped with the onnxruntime wheel, so no
new dependency): inputs and outputs stay float32 (the scanner feeds float32 and
reads float logits), the convolutions run in FP16, and the parts where FP16
costs accuracy for nothing stay FP32: reductions and normalisations
(``FP32_OPS``) and the BiLSTM with everything after it (the head is a few
thousand multiply-adds; its rounding would land directly on the logits).

The file gets its own sidecar (``NAME_fp16.model_info.json``): the source's
fields, ``"precision": "fp16"``, ``source_sha256`` (the FP32 file it came from,
so a stale conversion is noticed) and the largest logit difference from the
FP32 model on a seeded random batch, run by ONNX Runtime on the CPU (which
casts FP16 nodes without CPU kernels back to float: slow but faithful).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dfscan.core.errors import first_line
from dfscan.trt.errors import Fp16ConversionError
from dfscan.trt.model_info import FP16_SUFFIX, ModelFolder, ModelInfo, inspect_model, write_model_info

# Op types kept in FP32: normalisation, softmax, reductions and the recurrent part.
FP32_OPS: tuple[str, ...] = (
    "LSTM", "GRU", "RNN", "Softmax", "LogSoftmax", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool", "Exp", "Log",
    "Pow", "Sqrt", "Div",
)  # fmt: skip
PARITY_BATCH = 4
SUFFIX = FP16_SUFFIX

__all__ = ["FP32_OPS", "Fp16ConversionError", "convert_fp16", "fp16_path", "is_current", "max_logit_diff",
           "recurrent_and_after"]  # fmt: skip


def fp16_path(source: Path) -> Path:
    """``NAME_fp16.onnx`` beside ``NAME.onnx``: where TensorRT looks for the FP16 graph of a model."""
    return ModelFolder(Path(source)).fp16_graph


def recurrent_and_after(graph) -> list[str]:
    """Names of the first recurrent node and of every node downstream of it (ONNX nodes are topologically sorted)."""
    start = next((n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")), None)
    if start is None:
        return []
    tainted = {o for o in start.output if o}
    names = [start.name]
    for node in graph.node:
        if node is not start and any(i in tainted for i in node.input):
            tainted.update(o for o in node.output if o)
            names.append(node.name)
    return [n for n in names if n]


def convert_fp16(info: ModelInfo, out: Path | None = None, *, check: bool = True) -> ModelInfo:
    """Write the FP16 graph of the FP32 model ``info`` (default ``NAME_fp16.onnx``) with its sidecar; returns it."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    own = str(info.extra.get("precision", "fp32"))
    if own != "fp32":
        raise Fp16ConversionError(f"{info.path} is already {own}; convert the FP32 model (model.onnx)")
    out = Path(out) if out is not None else fp16_path(info.path)
    if out.resolve() == info.path.resolve():
        raise Fp16ConversionError(f"{out} is the model being converted; choose another file name")
    model = onnx.load(os.fspath(info.path))
    keep_nodes = recurrent_and_after(model.graph)
    try:
        half = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)),
            node_block_list=keep_nodes,
        )
        _sort_topologically(half.graph)  # the converter appends its input casts at the end
        onnx.checker.check_model(half)
    except Exception as exc:  # the converter and checker raise many kinds
        raise Fp16ConversionError(f"converting {info.path} to FP16 failed: {first_line(exc, 300)}") from None
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(half, os.fspath(tmp))
    ModelFolder(out).sidecar_to_write.unlink(missing_ok=True)  # it describes the file being replaced
    tmp.replace(out)
    counts = _node_types(half)
    fp16: dict[str, Any] = {
        "converter": "onnxruntime.transformers.float16",
        "keep_io_types": True,
        "fp32_ops": list(FP32_OPS),
        "fp32_nodes": len(keep_nodes),
        "fp32_from": "the first recurrent node onwards" if keep_nodes else None,
        "casts": counts.get("Cast", 0),
    }
    carried = {k: v for k, v in info.extra.items()
               if k not in {"file", "precision", "fp16", "quantization", "agreement", "onnx_version", "torch_program",
                            "torch_video_program", "source_sha256", "source_path"}}  # fmt: skip
    sidecar = lambda **more: write_model_info(  # noqa: E731 - written again once the parity figure is known
        out, architecture=info.architecture, classes=info.classes, input_size=info.input_size, mean=info.mean,
        std=info.std, threshold=info.threshold, temperature=info.temperature, precision="fp16",
        source_sha256=info.sha256, source_path=os.fspath(info.path), fp16=fp16, **carried, **more,
    )
    sidecar()
    half_info = inspect_model(out)
    if check:
        fp16["parity_max_abs_logit_diff"] = max_logit_diff(info, half_info)
        sidecar()
        half_info = inspect_model(out)
    return half_info


def max_logit_diff(a: ModelInfo, b: ModelInfo, *, batch: int = PARITY_BATCH, seed: int = 0) -> float:
    """Largest |logit| difference between two models on one seeded random batch, both on ONNX Runtime (CPU)."""
    from dfscan.trt.onnxruntime import OnnxRuntime

    h, w = a.input_size
    x = np.random.default_rng(seed).standard_normal((batch, 3, h, w), dtype=np.float32)
    outs = []
    for info in (a, b):
        runtime = OnnxRuntime(info)
        try:
            outs.append(runtime.infer(x).astype(np.float64))
        finally:
            runtime.close()
    return float(np.max(np.abs(outs[0] - outs[1])))


def is_current(candidate: ModelInfo, source: ModelInfo, precision: str) -> tuple[bool, str]:
    """Whether ``candidate`` is the ``precision`` graph of ``source`` as it is now, and if not, why."""
    own = str(candidate.extra.get("precision", "fp32"))
    if own != precision:
        return False, f"{candidate.path} is {own}, not {precision}"
    quantization = candidate.extra.get("quantization")
    made_from = candidate.extra.get("source_sha256") or (
        quantization.get("source_sha256") if isinstance(quantization, dict) else None
    )
    if made_from != source.sha256:
        return False, (f"{candidate.path} was made from another model (source sha256 "
                       f"{str(made_from)[:12]}..., {source.path.name} is {source.sha256[:12]}...)")
    return True, ""


def _sort_topologically(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the nodes producing its inputs (TensorRT's parser needs it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise Fp16ConversionError(f"the FP16 graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _node_types(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
