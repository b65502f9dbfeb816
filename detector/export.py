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

Two graphs are written from the same weights: ``model.onnx`` takes (N, 3, H, W)
(single frames: every image runtime, serve and the browser extension use it) and
``model.video.onnx`` takes (N, T, 3, H, W) with N and T dynamic (a video's sampled
frames as the LSTM's sequence). The sidecar names the second (``video_model``)
and says how many frames the checkpoint was trained with (``frames``).

For the torch runtime both graphs are also saved as ``torch.export`` programs:
``model.pt2`` (batch dynamic) and ``model.video.pt2``.  A dynamic T does not
export (``nn.LSTM`` specialises the sequence length), so the video program is
exported at one fixed length, the sidecar's ``frames`` (what a scan samples),
and takes each sequence's real length beside the frames: shorter sequences are
zero-padded to it and masked (:mod:`detector.padded`), which is checked to give
the plain model's logits at export.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfscan.core.constants import DEFAULT_FRAMES, MAX_FRAMES
from dfscan.core.errors import first_line
from dfscan.core.registry import Registry
from dfscan.detector.errors import ExportError, ExportMismatch, UnknownExporter
from dfscan.trt.model_info import (
    DEFAULT_TEMPERATURE,
    PROGRAM_KEY,
    VIDEO_PROGRAM_KEY,
    VIDEO_MODEL_NAME,  # noqa: F401 - the video graph's file name, named from here by callers and tests
    ModelFolder,
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
MAX_BATCH = 4096
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExporterSpec:
    """One way of turning the model into an ONNX file."""

    name: str
    min_opset: int
    run: Callable[[DeepfakeDetector, torch.Tensor, Path, int, str, bool], None]


def _dynamic_axes(dummy: torch.Tensor, output_name: str) -> dict[str, dict[int, str]]:
    """Batch dynamic, and for a 5-D input the frames axis too."""
    inp = {0: "batch", 1: "frames"} if dummy.dim() == 5 else {0: "batch"}
    return {INPUT_NAME: inp, output_name: {0: "batch"}}


def _dynamic_shapes(dummy: torch.Tensor) -> tuple[dict[int, torch.export.Dim]]:
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if dummy.dim() == 5:
        dims[1] = torch.export.Dim("frames", min=1, max=MAX_FRAMES)
    return (dims,)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote; ``max_abs_diff`` is None when the parity check was skipped."""

    onnx_path: Path
    info_path: Path
    opset: int
    exporter: str
    max_abs_diff: float | None
    info: ModelInfo
    video_path: Path | None = None
    video_max_abs_diff: float | None = None
    frames: int | None = None


def _run_torchscript(
    model: DeepfakeDetector, dummy: torch.Tensor, path: Path, opset: int, output_name: str, dynamic: bool
) -> None:
    axes = _dynamic_axes(dummy, output_name) if dynamic else None
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
    shapes = _dynamic_shapes(dummy) if dynamic else None
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


EXPORTERS: Registry[ExporterSpec] = Registry("exporter", UnknownExporter, entries=(
    ExporterSpec("torchscript", 11, _run_torchscript),
    ExporterSpec("dynamo", 18, _run_dynamo),
))


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
    video: bool = True,
    frames: int | None = None,
) -> ExportResult:
    """Write ``out_dir/model.onnx`` (dynamic batch) and ``out_dir/model_info.json`` from ``checkpoint``.

    With ``check`` the file is run by ONNX Runtime at batch 1 and 3 against PyTorch;
    a difference over 1e-3 raises :class:`ExportMismatch`. The dynamo exporter
    emits opset 18 at least, so a lower ``opset`` is raised to 18 for it. With
    ``torch_program`` the same model is also saved as ``out_dir/model.pt2`` (the
    torch runtime's file), recorded in the sidecar with both files' sha256.

    With ``video`` the sequence graph ``out_dir/model.video.onnx`` ((N, T, 3, H, W),
    N and T dynamic) is written too, always by the legacy exporter (torch.export fixes
    T: it unrolls the LSTM over time), checked at two sequence lengths; the sidecar
    gets ``video_model`` (its file name), ``video_model_sha256`` and ``frames``:
    ``frames`` if given, else the T the checkpoint was trained with (16 for a
    checkpoint trained on images).
    """
    spec = _exporter_for(exporter, opset, threshold, temperature, frames)
    opset = max(opset, spec.min_opset)
    checkpoint = Path(checkpoint)
    model, _ = load_checkpoint(checkpoint)
    cfg = model.config
    frames = frames or (cfg.frames if cfg.trained_on == "videos" else DEFAULT_FRAMES)
    folder = ModelFolder.export_to(out_dir)
    folder.directory.mkdir(parents=True, exist_ok=True)
    onnx_path = folder.model
    video_path = folder.video_graph
    # Checked under temporary names: a file that fails the check never becomes model.onnx.
    tmp, diff = _export_checked(model, onnx_path, spec, opset, None, check, f"exporting {checkpoint} with {exporter}")
    video_tmp, video_diff = None, None
    if video:
        video_tmp, video_diff = _export_video_checked(model, video_path, opset, frames, check, checkpoint, tmp)
    folder.sidecar_to_write.unlink(missing_ok=True)  # the old sidecar describes the old file
    folder.program.unlink(missing_ok=True)  # and the old program the old model
    folder.video_program.unlink(missing_ok=True)
    video_path.unlink(missing_ok=True)  # and the old video graph the old weights
    tmp.replace(onnx_path)
    if video_tmp is not None:
        video_tmp.replace(video_path)
    program = save_torch_program(model, folder.program, onnx_path) if torch_program else None
    video_program = (save_torch_video_program(model, folder.video_program, video_path, frames)
                     if torch_program and video_tmp is not None else None)
    video_fields = (
        {"video_model": video_path.name, "video_model_sha256": sha256_file(video_path),
         "video_exporter": "torchscript", "video_parity_max_abs_diff": video_diff}
        if video_tmp is not None else {}
    )
    info_path = _write_sidecar(
        onnx_path, model, checkpoint, threshold=threshold, temperature=temperature, exporter=exporter, diff=diff,
        frames=frames, **video_fields, **({PROGRAM_KEY: program} if program else {}),
        **({VIDEO_PROGRAM_KEY: video_program} if video_program else {}),
    )
    info = inspect_model(onnx_path)
    if info.fixed_batch is not None:
        raise ExportError(f"{onnx_path}: the exporter fixed the batch at {info.fixed_batch}; expected a dynamic batch")
    return ExportResult(
        onnx_path, info_path, info.opset, exporter, diff, info,
        video_path=video_path if video_tmp is not None else None, video_max_abs_diff=video_diff, frames=frames,
    )


def _exporter_for(exporter: str, opset: int, threshold: float, temperature: float, frames: int | None) -> ExporterSpec:
    """The exporter named ``exporter``, once the export's options are known to be valid; else ExportError."""
    spec = EXPORTERS.get(exporter)
    if opset < 17:
        raise ExportError(f"opset {opset} is too old for dfscan models; use 17 or newer")
    if not 0.0 <= threshold <= 1.0 or temperature <= 0:
        raise ExportError(f"threshold must be in [0, 1] and temperature > 0, got {threshold} and {temperature}")
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise ExportError(f"frames must be between 1 and {MAX_FRAMES}, got {frames}")
    return spec


def _export_video_checked(model: DeepfakeDetector, video_path: Path, opset: int, frames: int, check: bool,
                          checkpoint: Path, image_tmp: Path) -> tuple[Path, float | None]:
    """The video graph, exported and checked like the image graph; a failure removes ``image_tmp`` too."""
    # torch.export unrolls the LSTM over time, fixing T; the legacy exporter keeps an ONNX LSTM with T dynamic.
    video_spec = EXPORTERS["torchscript"]
    try:
        return _export_checked(
            model, video_path, video_spec, opset, frames, check,
            f"exporting {checkpoint}'s video graph with {video_spec.name}",
        )
    except BaseException:
        image_tmp.unlink(missing_ok=True)
        raise


def _write_sidecar(onnx_path: Path, model: DeepfakeDetector, checkpoint: Path, *, threshold: float,
                   temperature: float, exporter: str, diff: float | None, frames: int, **more) -> Path:
    """``onnx_path``'s sidecar: the model's config, where it came from, and the export's parity figures."""
    cfg = model.config
    return write_model_info(
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
        frames=frames,
        trained_on=cfg.trained_on,
        **more,
    )


def _export_checked(
    model: DeepfakeDetector, path: Path, spec: ExporterSpec, opset: int, frames: int | None, check: bool, what: str
) -> tuple[Path, float | None]:
    """Export to ``path``'s temporary name and check it; returns (temporary path, parity difference).

    ``frames`` None: the image graph (N, 3, H, W), checked at batch 1 and 3. Otherwise the
    video graph (N, T, 3, H, W), checked at (1, frames) and (2, another T): proves both axes dynamic.
    """
    tmp = path.with_name(path.name + ".tmp")
    _export(model, tmp, spec, opset, OUTPUT_NAME, batch=2, dynamic=True, frames=frames and min(frames, 3))
    try:
        if frames is not None:
            _require_dynamic_frames(tmp)
        if not check:
            return tmp, None
        if frames is None:
            return tmp, check_parity(model, tmp, batch_sizes=PARITY_BATCHES)
        return tmp, check_parity(model, tmp, batch_sizes=(1, 2), frames=parity_frames(frames))
    except ExportMismatch as exc:
        tmp.unlink(missing_ok=True)
        raise ExportMismatch(
            f"{what}: ONNX Runtime and PyTorch logits differ by "
            f"{exc.max_abs_diff:.3g} (tolerance {exc.atol:g}); nothing was written",
            max_abs_diff=exc.max_abs_diff,
            atol=exc.atol,
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _require_dynamic_frames(path: Path) -> None:
    import onnx

    dims = onnx.load(os.fspath(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 5 or not dims[1].dim_param:
        shape = [d.dim_param or d.dim_value for d in dims]
        raise ExportError(f"{path.name}: the exporter fixed the video graph's input at {shape}; expected T dynamic")


def parity_frames(frames: int) -> tuple[int, int]:
    """Two different sequence lengths to check a video graph at: the trained T and another one."""
    return (frames, frames // 2 if frames > 2 else frames + 1)


def save_torch_program(model: DeepfakeDetector, path: Path, onnx_path: Path) -> dict:
    """``torch.export`` the model (dynamic batch) to ``path``; returns its sidecar entry, tied to ``onnx_path``."""
    h, w = model.config.input_size
    dummy = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    model.eval()
    _export_program(model, (dummy,), ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},), path,
                    model.architecture)
    return _program_entry(path, onnx_path, "torch.export ExportedProgram (.pt2)")


VIDEO_PROGRAM_PARITY_ATOL = 1e-4


def save_torch_video_program(model: DeepfakeDetector, path: Path, video_onnx_path: Path, frames: int) -> dict:
    """``torch.export`` the video graph at T = ``frames`` (padded and masked) to ``path``; returns its sidecar entry.

    The program takes ``(x, lengths)``: x (N, frames, 3, H, W) with the first ``lengths[n]`` frames of
    each sequence real. Before it is kept it must give the plain model's logits (within 1e-4) on a
    full sequence and on a shorter one padded with noise, else :class:`ExportMismatch`.
    """
    from dfscan.detector.padded import PaddedSequenceModel

    h, w = model.config.input_size
    model.eval()
    gen = torch.Generator().manual_seed(0)
    dummy = torch.randn(2, frames, 3, h, w, generator=gen)
    lengths = torch.tensor([frames, max(1, frames - 1)], dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    diff = _export_program(PaddedSequenceModel(model), (dummy, lengths), ({0: batch}, {0: batch}), path,
                           f"{model.architecture}'s video graph",
                           check=lambda program: check_padded_parity(model, program.module(), frames, gen))
    return {
        **_program_entry(path, video_onnx_path, "torch.export ExportedProgram (.pt2), inputs (x, lengths)"),
        # T is fixed: nn.LSTM does not export with a dynamic length. Shorter sequences are zero-padded to
        # it and masked (the backward direction reads each sequence from its own last frame).
        "frames": frames,
        "padding": "zero frames after the real ones, masked by lengths",
        "parity_max_abs_diff": diff,
    }


def _export_program(module: torch.nn.Module, args: tuple, dynamic_shapes: tuple, path: Path, what: str,
                    check: Callable | None = None) -> float | None:
    """``torch.export`` ``module`` on ``args`` and save it to ``path`` (via a temporary name); ``check``'s figure.

    ``check(program)`` runs before the file is written and raises :class:`ExportMismatch` to keep it from being.
    """
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # torch.save wants a name ending in .pt2
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", message=".*_check_is_size.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*were assigned during export.*", category=UserWarning)
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
        figure = check(program) if check is not None else None
        torch.export.save(program, os.fspath(tmp))
    except ExportMismatch:
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"torch.export of {what} failed: {first_line(exc, None)}") from exc
    tmp.replace(path)
    return figure


def _program_entry(path: Path, onnx_path: Path, fmt: str) -> dict:
    """The sidecar entry of a saved program: its file and sha256, tied to the ONNX file it was exported beside."""
    return {
        "file": path.name,
        "format": fmt,
        "sha256": sha256_file(path),
        "onnx_sha256": sha256_file(onnx_path),
        "torch_version": torch.__version__,
        "dynamic_batch": [1, MAX_BATCH],
    }


def check_padded_parity(model: DeepfakeDetector, program, frames: int, gen: torch.Generator,
                        atol: float = VIDEO_PROGRAM_PARITY_ATOL) -> float:
    """Max logit difference between the padded program and ``model`` on unpadded sequences; ExportMismatch above atol."""
    from dfscan.trt.pytorch import pad_frames

    h, w = model.config.input_size
    worst = 0.0
    for n, t in {(1, frames), (2, max(1, frames // 2))}:
        x = torch.randn(n, t, 3, h, w, generator=gen)
        x_pad, lengths = pad_frames(x, frames)
        if t < frames:  # the pad must not matter, whatever it holds
            x_pad[:, t:] = torch.randn(n, frames - t, 3, h, w, generator=gen)
        with torch.no_grad():
            worst = max(worst, float((program(x_pad, lengths) - model(x)).abs().max()))
    if not worst <= atol:
        raise ExportMismatch(f"the padded video program and the model differ by {worst:.3g} (tolerance {atol:g})",
                             max_abs_diff=worst, atol=atol)
    return worst


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
    frames: tuple[int, ...] | None = None,
) -> float:
    """Max absolute logit difference between ONNX Runtime (CPU) and ``model`` on random batches.

    Raises :class:`ExportMismatch` above ``atol``. A model with a fixed batch is run at that batch only.
    With ``frames`` the batches are sequences (N, T, 3, H, W): the i-th batch size with the i-th T.
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
        sizes = (fixed,) if fixed else batch_sizes
        shapes = [(n, 3, h, w) for n in sizes] if frames is None else [(n, t, 3, h, w) for n, t in zip(sizes, frames)]
        for shape in shapes:
            n = shape[0]
            x = torch.randn(*shape, generator=gen)
            with torch.no_grad():
                expected = model(x).numpy()
            (got,) = session.run(None, {inp.name: x.numpy()})
            if got.shape != expected.shape:
                raise ExportMismatch(
                    f"{onnx_path}: ONNX Runtime gave shape {got.shape} for a batch of {shape}, PyTorch {expected.shape}",
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
    model: DeepfakeDetector, path: Path, spec: ExporterSpec, opset: int, output_name: str, *, batch: int, dynamic: bool,
    frames: int | None = None,
) -> None:
    """Export ``model`` in eval mode to ``path``; a failed export leaves no file behind.

    ``frames`` given: the input is a sequence batch (batch, frames, 3, H, W).
    """
    h, w = model.config.input_size
    shape = (batch, 3, h, w) if frames is None else (batch, frames, 3, h, w)
    dummy = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            spec.run(model, dummy, path, opset, output_name, dynamic)
    except Exception as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, ExportError):
            raise
        raise ExportError(
            f"exporting {model.architecture} with {spec.name} (opset {opset}) failed: {first_line(exc, None)}"
        ) from exc



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
