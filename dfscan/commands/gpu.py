"""GPU commands: build TensorRT engines, and report what this machine can run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfscan.commands._options import reports_errors

PRECISION_NAMES = ("fp32", "fp16", "int8")  # trt.precisions.PRECISIONS, without importing it for --help


@click.command("build-engine")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp16", show_default=True,
              envvar="DFSCAN_PRECISION", show_envvar=True, help="Engine precision; int8 needs --calibrate.")
@click.option("--max-batch", type=int, default=64, show_default=True, envvar="DFSCAN_MAX_BATCH", show_envvar=True,
              help="Largest batch of the optimisation profile (1, MAX, MAX).")
@click.option("--calibrate", "calibrate_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="DFSCAN_CALIBRATE", show_envvar=True,
              help="Folder of sample images for INT8 calibration (the cache is kept beside the engine).")
@click.option("--calibration-images", type=int, default=512, show_default=True,
              envvar="DFSCAN_CALIBRATION_IMAGES", show_envvar=True, help="At most this many calibration images.")
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=Path), envvar="DFSCAN_ENGINE_DIR",
              show_envvar=True, help="Where to cache engines [engines/ beside the model, where scans look].")
@click.option("--force", is_flag=True, help="Rebuild even if a valid engine is cached.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def build_engine(model: Path, precision: str, max_batch: int, calibrate_dir: Path | None, calibration_images: int,
                 engine_dir: Path | None, force: bool, as_json: bool) -> None:
    """Build a TensorRT engine for MODEL (an ONNX file) on this machine's GPU.

    Engines are cached by the ONNX file's sha256, the GPU's name and compute
    capability, the TensorRT version and the precision: a worker on another
    GPU type builds its own and never loads one that isn't for it.
    """
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.engine import BuildOptions, build_engine as build

    info = inspect_model(model)
    options = BuildOptions(precision=precision, max_batch=max_batch, calibrate_dir=calibrate_dir,
                           calibration_images=calibration_images, engine_dir=engine_dir)
    calibration = None
    if calibrate_dir is not None and options.precision == "int8":
        from dfscan.workers.calibration import calibration_images

        calibration = calibration_images(calibrate_dir, info, limit=calibration_images).tensors
    built = build(info, options, force=force, calibration=calibration)
    if as_json:
        click.echo(json.dumps({"engine": str(built.paths.engine), "reused": built.reused,
                               "seconds": round(built.seconds, 3), **built.record}, indent=2))
        return
    verb = "reused cached" if built.reused else f"built in {built.seconds:.1f} s:"
    click.echo(f"{verb} {built.paths.engine}")
    click.echo(f"  gpu {built.key.gpu_name} (sm{built.key.capability[0]}{built.key.capability[1]}), "
               f"TensorRT {built.key.tensorrt_version}, {built.key.precision}, profile {built.record.get('profile')}")


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


COMMANDS = [build_engine, doctor]
