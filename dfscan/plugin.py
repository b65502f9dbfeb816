"""Build the browser extension: the sources in ``plugin/src``, the onnxruntime-web files it uses,
the model and its preprocessing, as an unpacked folder and a zip.

The extension reproduces the scanner's preprocessing in JavaScript (``plugin/src/preprocess.js``);
what differs between models (input size, mean, std, threshold, temperature, class order, tensor
names) is written here from ``model_info.json`` into ``model/model.json``, so one set of sources
serves every model.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dfscan.trt.model_info import inspect_model
from dfscan.workers.images.decode import Preprocess

# The repository's plugin/ folder (sources, package.json, node_modules after `npm ci`).
PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugin"
# The only onnxruntime-web files the extension loads: the WASM-only ES module bundle (its
# Emscripten glue inlined) and the one SIMD binary it fetches. Not the JSEP/WebGPU/JSPI builds.
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
SOURCE_SUFFIXES = (".js", ".html", ".css", ".json", ".png", ".svg")
# Chrome Web Store packages may be up to 2 GB, but a model loads into the page's memory in one piece.
MODEL_SIZE_WARNING = 200 * 1024 * 1024


class PluginBuildError(Exception):
    """The extension can't be built (no npm packages, bad model); the message says what to do."""


@dataclass(frozen=True)
class ExtensionBuild:
    out: Path
    zip_path: Path
    extension_bytes: int   # the unpacked folder
    zip_bytes: int
    model_bytes: int
    ort_bytes: int
    model_sha256: str
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def build_extension(model: Path, out: Path, plugin_dir: Path = PLUGIN_DIR, make_zip: bool = True) -> ExtensionBuild:
    """Write the unpacked extension to ``out`` (replacing it) and ``out`` + ``.zip``."""
    info = inspect_model(Path(model))  # validates the graph and reads the sidecar
    src = plugin_dir / "src"
    ort_dir = plugin_dir / "node_modules" / "onnxruntime-web" / "dist"
    if not (src / "manifest.json").is_file():
        raise PluginBuildError(f"{src}/manifest.json not found: pass the repository's plugin/ folder")
    missing = [f for f in ORT_FILES if not (ort_dir / f).is_file()]
    if missing:
        raise PluginBuildError(
            f"onnxruntime-web is not installed ({ort_dir}/{missing[0]} missing): run `npm ci` in {plugin_dir}"
        )
    out = Path(out)
    if out.exists():
        if not (out / "manifest.json").is_file():
            raise PluginBuildError(f"{out} exists and is not an extension folder; refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in SOURCE_SUFFIXES:
            shutil.copy2(path, out / path.name)
    (out / "ort").mkdir()
    for name in ORT_FILES:
        shutil.copy2(ort_dir / name, out / "ort" / name)
    (out / "model").mkdir()
    shutil.copy2(info.path, out / "model" / "model.onnx")
    pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
    # Face-crop models (the faces work adds ModelInfo.input; older builds keep the key in extra) need
    # face detection first, which the extension doesn't run: local mode says so, server mode works.
    model_input = getattr(info, "input", None) or info.extra.get("input", "whole-image")
    record = {
        "file": "model.onnx",
        "sha256": info.sha256,
        "architecture": info.architecture,
        "classes": list(info.classes),
        "input_size": list(pre.size),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "threshold": info.threshold,
        "temperature": info.temperature,
        "input_name": info.input_name,
        "output_name": info.output_name,
        "max_pixels": pre.max_pixels,
        "fixed_batch": info.fixed_batch,
        "input": model_input,
    }
    (out / "model" / "model.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    model_bytes = (out / "model" / "model.onnx").stat().st_size
    warnings = []
    if model_input != "whole-image":
        warnings.append(f"the model scores {model_input} inputs: face detection runs only on the server, "
                        "so this extension checks images in server mode only")
    if model_bytes > MODEL_SIZE_WARNING:
        warnings.append(f"the model is {model_bytes / 2**20:.0f} MB: local mode loads it whole into the browser; "
                        "consider server mode or a smaller export")
    if info.fixed_batch not in (None, 1):
        raise PluginBuildError(f"{info.path}: the graph's batch is fixed at {info.fixed_batch}; the extension feeds 1")
    zip_path = out.with_name(out.name + ".zip")
    if make_zip:
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(out).as_posix())
    return ExtensionBuild(
        out=out,
        zip_path=zip_path,
        extension_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        zip_bytes=zip_path.stat().st_size if make_zip else 0,
        model_bytes=model_bytes,
        ort_bytes=sum((out / "ort" / n).stat().st_size for n in ORT_FILES),
        model_sha256=info.sha256,
        warnings=tuple(warnings),
    )
