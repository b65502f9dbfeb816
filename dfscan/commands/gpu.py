"""GPU commands: build TensorRT engines, and report what this machine can run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfscan.commands._options import reports_errors
from dfscan.core.constants import precisions_for

PRECISION_NAMES = precisions_for("tensorrt")  # trt.precisions.PRECISIONS, without importing TensorRT code for --help


@click.command("build-engine")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp16", show_default=True,
              envvar="DFSCAN_PRECISION", show_envvar=True,
              help="Engine precision, carried by the ONNX graph: fp16 builds from NAME_fp16.onnx (made if missing), "
                   "int8 from the Q/DQ file NAME_int8.onnx (`dfscan quantize --target tensorrt`, or --calibrate).")
@click.option("--max-batch", type=int, default=64, show_default=True, envvar="DFSCAN_MAX_BATCH", show_envvar=True,
              help="Largest batch of the optimisation profile (1, MAX, MAX).")
@click.option("--calibrate", "calibrate_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="DFSCAN_CALIBRATE", show_envvar=True,
              help="int8 only: folder of sample images; runs `dfscan quantize --target tensorrt` first when "
                   "NAME_int8.onnx is missing, stale or made for the CPU.")
@click.option("--calibration-images", type=int, default=512, show_default=True,
              envvar="DFSCAN_CALIBRATION_IMAGES", show_envvar=True, help="At most this many calibration images.")
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=Path), envvar="DFSCAN_ENGINE_DIR",
              show_envvar=True, help="Where to cache engines [engines/ beside the model, where scans look].")
@click.option("--force", is_flag=True, help="Rebuild even if a valid engine is cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def build_engine(model: Path, precision: str, max_batch: int, calibrate_dir: Path | None, calibration_images: int,
                 engine_dir: Path | None, force: bool, as_json: bool) -> None:
    """Build a strongly typed TensorRT engine for MODEL (an ONNX file) on this machine's GPU.

    Works with TensorRT 10.x and 11.x: the precision comes from the ONNX graph,
    never from builder flags. Engines are cached by the ONNX file's sha256, the
    GPU's name and compute capability, the TensorRT version and the precision:
    a worker on another GPU type builds its own and never loads one that isn't for it.
    """
    from dfscan.trt.engine import BuildOptions, build_engine as build, graph_for, int8_path, tensorrt_status
    from dfscan.trt.errors import Int8CalibrationError, RuntimeUnavailable
    from dfscan.trt.model_info import inspect_model

    info = inspect_model(model)
    if calibrate_dir is not None and precision != "int8":
        raise click.BadParameter("only int8 engines are built from calibrated (quantised) graphs",
                                 param_hint="--calibrate")
    ok, why = tensorrt_status()
    if not ok:  # before minutes of quantisation that could not be used
        raise RuntimeUnavailable(why)
    if calibrate_dir is not None:
        try:
            graph_for(info, "int8")
        except Int8CalibrationError:
            from dfscan.detector.quantize import quantize_model

            result = quantize_model(info.path, calibrate_dir, int8_path(info.path), max_images=calibration_images,
                                    target="tensorrt")
            click.echo(f"quantised {result.onnx_path} for TensorRT on {result.calibration_images} images", err=True)
    options = BuildOptions(precision=precision, max_batch=max_batch, engine_dir=engine_dir)
    built = build(info, options, force=force)
    if as_json:
        click.echo(json.dumps({"engine": str(built.paths.engine), "reused": built.reused,
                               "seconds": round(built.seconds, 3), **built.record}, indent=2))
        return
    verb = "reused cached" if built.reused else f"built in {built.seconds:.1f} s:"
    click.echo(f"{verb} {built.paths.engine}")
    click.echo(f"  gpu {built.key.gpu_name} (sm{built.key.capability[0]}{built.key.capability[1]}), "
               f"TensorRT {built.key.tensorrt_version}, {built.key.precision} from {built.record.get('source_onnx')}, "
               f"profile {built.record.get('profile')}")


@click.command("fp16")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write it [NAME_fp16.onnx].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def fp16(model: Path, out: Path | None, as_json: bool) -> None:
    """Write the FP16 graph of MODEL (LSTM, reductions and head kept in FP32), the source of FP16 engines.

    Needs no GPU: `dfscan build-engine --precision fp16` makes it on its own when
    missing; run this to prepare (and check) it elsewhere.
    """
    from dfscan.trt.fp16 import convert_fp16
    from dfscan.trt.model_info import inspect_model, sidecar_for_reading

    half = convert_fp16(inspect_model(model), out)
    details = half.extra.get("fp16", {})
    if as_json:
        click.echo(json.dumps({"model": str(half.path), "info": str(sidecar_for_reading(half.path)),
                               "sha256": half.sha256, **details}, indent=2))
        return
    click.echo(f"wrote {half.path} and {sidecar_for_reading(half.path)}")
    click.echo(f"max |logit difference| FP16 vs FP32 on ONNX Runtime (CPU): "
               f"{details.get('parity_max_abs_logit_diff', float('nan')):.2e}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@reports_errors
def doctor(as_json: bool) -> None:
    """Show which decoders and runtimes this machine can use, why not, and library versions."""
    from dfscan.doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if report.gpus:
        for g in report.gpus:
            click.echo(f"gpu {g.index}: {g.name}  compute {g.capability[0]}.{g.capability[1]}  "
                       f"{g.memory / 2**30:.0f} GiB")
    else:
        click.echo(f"gpu: none ({report.gpu_error})")
    for kind in ("decoder", "runtime"):
        click.echo(f"{kind}s:")
        for c in (c for c in report.checks if c.kind == kind):
            mark = "yes" if c.ok else "no "
            click.echo(f"  {mark} {c.name:<12} {c.detail}".rstrip())
    click.echo(f"auto: decoder {report.auto.get('decoder')}, runtime {report.auto.get('runtime') or 'none'}")
    click.echo("versions:")
    for name, version in report.versions.items():
        click.echo(f"  {name:<22} {version or '-'}")


COMMANDS = [build_engine, fp16, doctor]
