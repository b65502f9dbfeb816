"""``dfscan bench`` (every stage measured on this machine) and ``dfscan quantize`` (INT8 for ONNX Runtime)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from dfscan.commands._options import batch_size_option, model_option, reports_errors


def _bench_errors(func):
    """BenchError and QuantizeError are user errors too: one line, no traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from dfscan.bench import BenchError

        try:
            return func(*args, **kwargs)
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.command()
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), envvar="DFSCAN_BENCH_IMAGES",
              show_envvar=True, help="A folder of images to measure on (at most --limit of them).")
@click.option("--synthetic", type=int, envvar="DFSCAN_BENCH_SYNTHETIC", show_envvar=True,
              help="Measure on N generated 256x256 JPEGs instead.")
@model_option
@click.option("--int8-model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="DFSCAN_BENCH_INT8_MODEL", show_envvar=True,
              help="An INT8 model from `dfscan quantize` (default: quantise --model on these images).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="DFSCAN_BENCH_CHECKPOINT", show_envvar=True,
              help="PyTorch checkpoint for the naive loop (default: the one the model's sidecar names).")
@click.option("--backbone", default="resnext50_32x4d", show_default=True, envvar="DFSCAN_BENCH_BACKBONE",
              show_envvar=True, help="Without --model: export this detector with random weights and measure it.")
@click.option("--pg", "pg_url", envvar="DFSCAN_BENCH_PG", show_envvar=True,
              help="Also measure writing to this PostgreSQL URL (a bench scan is written there, then deleted).")
@batch_size_option
@click.option("--min-time", "min_seconds", type=float, default=2.0, show_default=True, envvar="DFSCAN_BENCH_MIN_TIME",
              show_envvar=True, help="Repeat each stage measurement for at least this many seconds.")
@click.option("--limit", type=int, default=1024, show_default=True, envvar="DFSCAN_BENCH_LIMIT", show_envvar=True,
              help="At most this many images from --images.")
@click.option("--naive/--no-naive", default=True, show_default=True, help="Run the naive reference loop.")
@click.option("--faces", is_flag=True, envvar="DFSCAN_BENCH_FACES", show_envvar=True,
              help="Add the face stage: detection alone, and the scan with faces on beside faces off (the "
                   "classifier alone), on 1-face photos of ~1 megapixel.")
@click.option("--face-images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --faces: measure on these images instead of the generated 1-face photos.")
@click.option("--face-count", type=int, default=32, show_default=True, help="With --faces: photos to generate.")
@click.option("--videos", is_flag=True, envvar="DFSCAN_BENCH_VIDEOS", show_envvar=True,
              help="Add the video rows: sampling 16 frames of 1080p clips alone and in a scan (videos/s, frames/s), "
                   "and sampling a 10-minute video against a 10-second one.")
@click.option("--video-count", type=click.IntRange(1, 256), default=4, show_default=True,
              envvar="DFSCAN_BENCH_VIDEO_COUNT", show_envvar=True, help="With --videos: 1080p clips to generate.")
@click.option("--dedupe", type=click.IntRange(min=2), envvar="DFSCAN_BENCH_DEDUPE", show_envvar=True,
              help="Add two scans of N files: all distinct, and half of them byte copies of the other half (each "
                   "distinct image is scored once: about half the inference time).")
@click.option("--bank", type=click.IntRange(min=1), envvar="DFSCAN_BENCH_BANK", show_envvar=True,
              help="Also match against a bank of this many random PDQ hashes with planted near copies "
                   "(lookups/s and recall; 1000000 is the issue's figure).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), envvar="DFSCAN_BENCH_OUTPUT",
              show_envvar=True, help="Also write the report as JSON to this file.")
@reports_errors
@_bench_errors
def bench(images: Path | None, synthetic: int | None, model: Path | None, int8_model: Path | None,
          checkpoint: Path | None, backbone: str, pg_url: str | None, batch_size: int | None, min_seconds: float, limit: int,
          naive: bool, faces: bool, face_images: Path | None, face_count: int, videos: bool, video_count: int,
          dedupe: int | None, bank: int | None, as_json: bool, output: Path | None) -> None:  # fmt: skip
    """Measure every stage of a scan, and the whole scan, on this machine.

    Reading, decoding (each decoder), inference (each runtime and precision),
    writing (SQLite, and PostgreSQL with --pg), the end-to-end scan and a naive
    reference loop, all on the same images. Prints images/s per stage, the
    end-to-end rate over the slowest stage, the scan over the naive loop, and
    peak memory. Without --model a ResNeXt-50 detector with random weights is
    exported (a model's speed does not depend on its weights).
    """
    from dfscan.bench import BenchOptions, format_report, run_bench
    from dfscan.core.settings import from_env

    batch_size = from_env(batch_size=batch_size).batch_size
    options = BenchOptions(images=images, synthetic=synthetic, model=model, int8_model=int8_model,
                           checkpoint=checkpoint, backbone=backbone, pg_url=pg_url, batch_size=batch_size,
                           min_seconds=min_seconds, limit=limit, naive=naive, faces=faces,
                           face_images=face_images, face_count=face_count, videos=videos,
                           video_count=video_count, dedupe=dedupe, bank=bank)  # fmt: skip
    report = run_bench(options, progress=None if as_json else lambda msg: click.echo(f"... {msg}", err=True))
    data = report.to_dict()
    if output is not None:
        output.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        from dfscan.bench.provenance import format_provenance

        click.echo("\n".join([format_report(report), *format_provenance(report.rows)]))


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--calibrate", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              envvar="DFSCAN_QUANTIZE_CALIBRATE", show_envvar=True,
              help="Folder of images (like the ones to scan) to calibrate activation ranges on.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              envvar="DFSCAN_QUANTIZE_OUT", show_envvar=True, help="The INT8 .onnx file to write.")
@click.option("--max-images", type=int, default=256, show_default=True, envvar="DFSCAN_QUANTIZE_MAX_IMAGES",
              show_envvar=True, help="Calibrate on at most this many images.")
@click.option("--check", type=click.Path(exists=True, file_okay=False, path_type=Path),
              envvar="DFSCAN_QUANTIZE_CHECK", show_envvar=True,
              help="Measure agreement on these images instead of the calibration images.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, envvar="DFSCAN_QUANTIZE_METHOD", show_envvar=True,
              help="Calibration method (entropy and percentile keep whole tensors: much more memory).")
@click.option("--float-head/--quantize-head", default=True, show_default=True, envvar="DFSCAN_QUANTIZE_FLOAT_HEAD",
              show_envvar=True, help="Keep the BiLSTM and classifier in float (they cost little; better agreement).")
@click.option("--target", type=click.Choice(["cpu", "tensorrt"]), default="cpu", show_default=True,
              envvar="DFSCAN_QUANTIZE_TARGET", show_envvar=True,
              help="cpu: unsigned activations (ONNX Runtime on x86); tensorrt: signed symmetric INT8, the Q/DQ file "
                   "`dfscan build-engine --precision int8` builds from (write it to NAME_int8.onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def quantize(model: Path, calibrate: Path, out: Path, max_images: int, check: Path | None, method: str,
             float_head: bool, target: str, as_json: bool) -> None:  # fmt: skip
    """Quantise MODEL to INT8 (static Q/DQ, per-channel weights) for ONNX Runtime on the CPU or for TensorRT.

    Reports how often the INT8 model's verdicts equal the FP32 model's on the
    calibration images (or --check) and the largest change in p_fake. The
    result has its own sidecar and is scanned like any model: `dfscan scan
    --model OUT`.
    """
    from dfscan.detector.quantize import quantize_model

    if max_images < 1:
        raise click.BadParameter("must be at least 1", param_hint="--max-images")
    result = quantize_model(model, calibrate, out, max_images=max_images, check=check, method=method,
                            float_head=float_head, target=target)
    a = result.agreement
    if as_json:
        data = {"model": str(result.onnx_path), "info": str(result.info_path), "source": str(result.source),
                "calibration_images": result.calibration_images, "skipped_images": result.skipped_images,
                "seconds": round(result.seconds, 2), "quantized_nodes": result.quantized_nodes,
                "agreement": asdict(a)}  # fmt: skip
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"wrote {result.onnx_path} and {result.info_path} in {result.seconds:.1f} s")
    click.echo(f"calibrated on {result.calibration_images} images"
               + (f" ({result.skipped_images} could not be decoded)" if result.skipped_images else ""))
    click.echo("quantised: " + ", ".join(f"{n} {op}" for op, n in result.quantized_nodes.items()))
    click.echo(f"agreement with FP32 on {a.images} images: {a.identical_verdicts}/{a.images} identical verdicts "
               f"({a.identical_share:.2%}); largest |p_fake difference| {a.max_abs_dp_fake:.4f}, "
               f"mean {a.mean_abs_dp_fake:.4f}")  # fmt: skip
    click.echo(f"FP32 p_fake ranges {a.fp32_p_fake_min:.4f}..{a.fp32_p_fake_max:.4f} (std {a.fp32_p_fake_std:.4f}); "
               f"{a.fp32_fake_share:.1%} judged fake at threshold {a.threshold}")  # fmt: skip
    if a.fp32_p_fake_std < 0.01:
        click.echo("warning: the FP32 model's p_fake barely varies on these images, so agreement says little",
                   err=True)


COMMANDS = [bench, quantize]
