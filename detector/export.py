"""Export a detector checkpoint to ONNX, with its sidecar, and prove ONNX Runtime agrees with PyTorch.

How torch 2.14 behaves (measured on this project's model):

* ``dynamo=False`` (the legacy TorchScript exporter, deprecated since 2.9 but still
  shipped) writes exactly the requested opset (11 and 17 both work for the LSTM),
  takes ~0.1 s for the ``tiny`` model, and gives a truly dynamic batch when the
  LSTM gets no initial state (its batch-size warning is then moot; we check anyway).
* ``dynamo=True`` (the default) builds opset 18 graphs; asked for 17 it tries the
  ONNX version converter, which fails on this graph, logs a traceback and keeps
  18. It takes ~5 s even for ``tiny``, and by default writes the weights to a
  separate ``model.onnx.data`` file, so we pass ``external_data=False``.

Both produce ONNX ``LSTM`` nodes and identical logits, so the legacy exporter is
the default (exact opset, fast); ``exporter="dynamo"`` is there for when it goes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfscan.detector.errors import ExportError, ExportMismatch
from dfscan.trt.model_info import (
    DEFAULT_TEMPERATURE,
    SIDECAR_NAME,
    ModelInfo,
    inspect_model,
    sha256_file,
    write_model_info,
)
from dfscan.detector.model import DeepfakeDetector, load_checkpoint

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-3
PARITY_BATCHES = (1, 3)  # batch 1 and a larger one: proves the batch axis is really dynamic
INPUT_NAME = "input"
PROGRAM_NAME = "model.pt2"
MAX_BATCH = 4096
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExporterSpec:
    """One way of turning the model into an ONNX file."""

    name: str
    min_opset: int
    run: Callable[[DeepfakeDetector, torch.Tensor, Path, int, str, bool], None]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote; ``max_abs_diff`` is None when the parity check was skipped."""

    onnx_path: Path
    info_path: Path
    opset: int
    exporter: str
    max_abs_diff: float | None
    info: ModelInfo


def _run_torchscript(
    model: DeepfakeDetector, dummy: torch.Tensor, path: Path, opset: int, output_name: str, dynamic: bool
) -> None:
    axes = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        # Known and handled: the deprecation notice, and the LSTM batch warning (no h0 is passed).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*", category=DeprecationWarning)
        # nn.LSTM's own shape checks, traced as constants: they hold for every batch size.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
        torch.onnx.export(
            model,
            (dummy,),
            os.fspath(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _run_dynamo(
    model: DeepfakeDetector, dummy: torch.Tensor, path: Path, opset: int, output_name: str, dynamic: bool
) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    with warnings.catch_warnings():
        # torch.export's own internals (LSTM flat weights, _check_is_size); nothing we can act on.
        warnings.filterwarnings("ignore", message=".*_check_is_size.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*were assigned during export.*", category=UserWarning)
        program = torch.onnx.export(
            model,
            (dummy,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_shapes=shapes,
            verbose=False,
        )
    program.save(os.fspath(path), external_data=False)


EXPORTERS: dict[str, ExporterSpec] = {
    spec.name: spec
    for spec in (
        ExporterSpec("torchscript", 11, _run_torchscript),
        ExporterSpec("dynamo", 18, _run_dynamo),
    )
}


def export_onnx(
    checkpoint: Path,
    out_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
    threshold: float = 0.5,
    temperature: float = DEFAULT_TEMPERATURE,
    check: bool = True,
    exporter: str = "torchscript",
    torch_program: bool = True,
) -> ExportResult:
    """Write ``out_dir/model.onnx`` (dynamic batch) and ``out_dir/model_info.json`` from ``checkpoint``.

    With ``check`` the file is run by ONNX Runtime at batch 1 and 3 against PyTorch;
    a difference over 1e-3 raises :class:`ExportMismatch`. The dynamo exporter
    emits opset 18 at least, so a lower ``opset`` is raised to 18 for it. With
    ``torch_program`` the same model is also saved as ``out_dir/model.pt2`` (the
    torch runtime's file), recorded in the sidecar with both files' sha256.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; known exporters: {', '.join(EXPORTERS)}")
    spec = EXPORTERS[exporter]
    if opset < 17:
        raise ExportError(f"opset {opset} is too old for dfscan models; use 17 or newer")
    if not 0.0 <= threshold <= 1.0 or temperature <= 0:
        raise ExportError(f"threshold must be in [0, 1] and temperature > 0, got {threshold} and {temperature}")
    opset = max(opset, spec.min_opset)
    checkpoint = Path(checkpoint)
    model, _ = load_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    # Checked under a temporary name: a file that fails the check never becomes model.onnx.
    _export(model, tmp, spec, opset, OUTPUT_NAME, batch=2, dynamic=True)
    try:
        diff = check_parity(model, tmp, batch_sizes=PARITY_BATCHES) if check else None
    except ExportMismatch as exc:
        tmp.unlink(missing_ok=True)
        raise ExportMismatch(
            f"exporting {checkpoint} with {exporter}: ONNX Runtime and PyTorch logits differ by "
            f"{exc.max_abs_diff:.3g} (tolerance {exc.atol:g}); nothing was written",
            max_abs_diff=exc.max_abs_diff,
            atol=exc.atol,
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    (out_dir / SIDECAR_NAME).unlink(missing_ok=True)  # the old sidecar describes the old file
    (out_dir / PROGRAM_NAME).unlink(missing_ok=True)  # and the old program the old model
    tmp.replace(onnx_path)
    program = save_torch_program(model, out_dir / PROGRAM_NAME, onnx_path) if torch_program else None
    cfg = model.config
    info_path = write_model_info(
        onnx_path,
        architecture=model.architecture,
        classes=cfg.classes,
        input_size=cfg.input_size,
        mean=cfg.mean,
        std=cfg.std,
        threshold=threshold,
        temperature=temperature,
        input=cfg.input,
        backbone=cfg.backbone,
        checkpoint=str(checkpoint.resolve()),
        checkpoint_sha256=sha256_file(checkpoint),  # lets `dfscan explain` prove a checkpoint is this model's
        exporter=exporter,
        torch_version=torch.__version__,
        parity_max_abs_diff=diff,
        **({"torch_program": program} if program else {}),
    )
    info = inspect_model(onnx_path)
    if info.fixed_batch is not None:
        raise ExportError(f"{onnx_path}: the exporter fixed the batch at {info.fixed_batch}; expected a dynamic batch")
    return ExportResult(onnx_path, info_path, info.opset, exporter, diff, info)


def save_torch_program(model: DeepfakeDetector, path: Path, onnx_path: Path) -> dict:
    """``torch.export`` the model (dynamic batch) to ``path``; returns its sidecar entry, tied to ``onnx_path``."""
    from dfscan.trt.model_info import sha256_file

    h, w = model.config.input_size
    dummy = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    model.eval()
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # torch.save wants a name ending in .pt2
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", message=".*_check_is_size.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*were assigned during export.*", category=UserWarning)
            program = torch.export.export(
                model, (dummy,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
            )
        torch.export.save(program, os.fspath(tmp))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"torch.export of {model.architecture} failed: {first}") from exc
    tmp.replace(path)
    return {
        "file": path.name,
        "format": "torch.export ExportedProgram (.pt2)",
        "sha256": sha256_file(path),
        "onnx_sha256": sha256_file(onnx_path),
        "torch_version": torch.__version__,
        "dynamic_batch": [1, MAX_BATCH],
    }


def export_legacy_fixed_batch(checkpoint: Path, path: Path) -> Path:
    """Export the way the original project did: opset 11, batch fixed at 1, output ``output``, no sidecar.

    Only for tests of how dfscan handles such files; opset 11 still exports the LSTM with torch 2.14.
    """
    model, _ = load_checkpoint(Path(checkpoint))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _export(model, tmp, EXPORTERS["torchscript"], 11, "output", batch=1, dynamic=False)
    tmp.replace(path)
    return path


def check_parity(
    model: DeepfakeDetector,
    onnx_path: Path,
    *,
    batch_sizes: tuple[int, ...] = (3,),
    atol: float = PARITY_ATOL,
    seed: int = 0,
) -> float:
    """Max absolute logit difference between ONNX Runtime (CPU) and ``model`` on random batches.

    Raises :class:`ExportMismatch` above ``atol``. A model with a fixed batch is run at that batch only.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    h, w = model.config.input_size
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for n in (fixed,) if fixed else batch_sizes:
            x = torch.randn(n, 3, h, w, generator=gen)
            with torch.no_grad():
                expected = model(x).numpy()
            (got,) = session.run(None, {inp.name: x.numpy()})
            if got.shape != expected.shape:
                raise ExportMismatch(
                    f"{onnx_path}: ONNX Runtime gave shape {got.shape} for a batch of {n}, PyTorch {expected.shape}",
                    max_abs_diff=float("inf"),
                    atol=atol,
                )
            worst = max(worst, float(np.max(np.abs(got - expected))))
    finally:
        model.train(was_training)
    if not worst <= atol:  # also catches NaN
        raise ExportMismatch(
            f"{onnx_path}: ONNX Runtime and PyTorch logits differ by {worst:.3g} (tolerance {atol:g}); "
            f"the export is wrong, do not deploy it",
            max_abs_diff=worst,
            atol=atol,
        )
    return worst


def _export(
    model: DeepfakeDetector, path: Path, spec: ExporterSpec, opset: int, output_name: str, *, batch: int, dynamic: bool
) -> None:
    """Export ``model`` in eval mode to ``path``; a failed export leaves no file behind."""
    h, w = model.config.input_size
    dummy = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            spec.run(model, dummy, path, opset, output_name, dynamic)
    except Exception as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, ExportError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"exporting {model.architecture} with {spec.name} (opset {opset}) failed: {first}") from exc



def export_untrained(backbone: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Export the detector with seeded random weights; returns ``out_dir/model.onnx``.

    For speed measurements only: a model's speed doesn't depend on its
    weights, and no trained weights can be downloaded.  The checkpoint is kept
    in ``out_dir/checkpoint`` (the naive PyTorch loop of ``dfscan bench`` loads it).
    """
    import torch

    from dfscan.detector.model import DeepfakeDetector, save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepfakeDetector(backbone).eval()
    ckpt = save_checkpoint(Path(out_dir) / "checkpoint" / "bench.pt", model, {"purpose": "benchmark, random weights"})
    return export_onnx(ckpt, out_dir).onnx_path
