"""Commands that make and measure models: synth, train, calibrate, evaluate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dfscan.commands._options import db_option, reports_errors
from dfscan.commands.reviews import (calibrate_from_reviews, echo_reviews, evaluate_reviews_only, from_reviews_option,
                                     reviews_record)
from dfscan.core.constants import DEFAULT_MIN_REVIEW_DECISIONS


def _progress_option(func):
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bars (default: when stderr is a terminal).")(func)


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=int, envvar="DFSCAN_SYNTH_N", show_envvar=True,
              help="Number of images (default 1000), or of clips with --video (default 40); half real and half fake "
                   "(even).")
@click.option("--layout", type=click.Choice(["140k", "flat"]), default="140k", show_default=True,
              help="140k: train/valid/test with real/ and fake/ inside; flat: real/ and fake/ only.")
@click.option("--source", type=click.Choice(["procedural", "packages"]), default="procedural", show_default=True,
              help="Where real images come from: drawn procedurally, or crops of photographs shipped in installed "
                   "packages (scikit-learn's sample images).")
@click.option("--size", type=int, help="Image or frame side in pixels (default 256, the 140k set's; 128 with --video).")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed writes the same files.")
@click.option("--quality", default="70-95", show_default=True, help="JPEG quality range, applied to both classes (images only).")
@click.option("--upsampler", "upsamplers", multiple=True, type=click.Choice(["transposed_conv", "nearest_smooth"]),
              help="Simulated up-sampling layer(s) for the fakes (repeatable; default: both, at random).")
@click.option("--video", is_flag=True, help="Write video clips instead of images (synthetic too; see below).")
@click.option("--clip-frames", type=int, default=24, show_default=True, help="With --video: frames per clip.")
@click.option("--fps", type=int, default=12, show_default=True, help="With --video: frame rate of the clips.")
@click.option("--video-format", type=click.Choice(["h264", "mjpeg"]), default="h264", show_default=True,
              help="With --video: H.264 in MP4, or MJPEG in AVI.")
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@reports_errors
def synth(out: Path, n: int | None, layout: str, source: str, size: int | None, seed: int, quality: str,
          upsamplers: tuple[str, ...], video: bool, clip_frames: int, fps: int, video_format: str,
          progress: bool | None, as_json: bool) -> None:
    """Write a labelled sample archive to OUT (synthetic: NOT a deepfake data set).

    Real images are procedural (or crops of packaged photographs); each fake is
    made from one of them by a simulator of generator up-sampling artefacts
    (down-sampling, then transposed-convolution or nearest-neighbour up-sampling
    with smoothing). Both classes are JPEG re-compressed at random qualities.

    With --video the archive holds clips: a camera panning over a procedural
    picture (real), and the same clip with the simulator applied to every frame
    plus a flickering gain (fake), both encoded alike. Also synthetic, also NOT
    deepfakes.
    """
    from dfscan.detector.synth import NOTICE, synthesize

    if video:
        _synth_videos(out, n, layout, source, size, seed, upsamplers, clip_frames, fps, video_format,
                      _show(progress), as_json)
        return
    n, size = n or 1000, size or 256
    try:
        lo, hi = (int(v) for v in quality.split("-", 1)) if "-" in quality else (int(quality),) * 2
    except ValueError:
        raise click.BadParameter("give LOW-HIGH, e.g. 70-95", param_hint="--quality") from None
    summary = synthesize(out, n, layout=layout, source=source, size=size, seed=seed, quality=(lo, hi),
                         upsamplers=upsamplers or None, progress=_show(progress))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    click.echo(f"wrote {summary.total} images to {out} ({layout} layout, {size}x{size}, JPEG quality {lo}-{hi})")
    for split, counts in summary.counts.items():
        click.echo(f"  {split:<6} real {counts['real']:>6}  fake {counts['fake']:>6}")
    click.echo(NOTICE)


def _synth_videos(out: Path, n: int | None, layout: str, source: str, size: int | None, seed: int,
                  upsamplers: tuple[str, ...], frames: int, fps: int, video_format: str, progress: bool,
                  as_json: bool) -> None:
    from dfscan.detector.synth_video import DEFAULT_SIZE, DEFAULT_VIDEOS, VIDEO_NOTICE, synthesize_videos

    if source != "procedural":
        raise click.BadParameter("--video draws procedural scenes only", param_hint="--source")
    summary = synthesize_videos(out, n or DEFAULT_VIDEOS, layout=layout, size=size or DEFAULT_SIZE, frames=frames,
                                fps=fps, seed=seed, video_format=video_format, upsamplers=upsamplers or None,
                                progress=progress)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    click.echo(f"wrote {summary.total} SYNTHETIC video clips to {out} ({layout} layout, {summary.size}x{summary.size}, "
               f"{frames} frames at {fps} fps, {video_format})")
    for split, counts in summary.counts.items():
        click.echo(f"  {split:<6} real {counts['real']:>6}  fake {counts['fake']:>6}")
    click.echo(VIDEO_NOTICE)


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for best.pt, last.pt, training_results.json and dataset_info.json.")
@click.option("--backbone", default="resnext50_32x4d", show_default=True, envvar="DFSCAN_BACKBONE", show_envvar=True,
              help="resnext50_32x4d | resnet18 | mobilenet_v3_small | tiny.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="DFSCAN_BACKBONE_WEIGHTS", show_envvar=True,
              help="Local torchvision checkpoint for the backbone (e.g. ImageNet weights); never downloaded.")
@click.option("--epochs", type=int, default=12, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--dropout", type=float, default=0.3, show_default=True)
@click.option("--lstm-hidden", type=int, default=512, show_default=True, help="Hidden units of each LSTM direction.")
@click.option("--patience", type=int, default=3, show_default=True, help="ReduceLROnPlateau patience (epochs).")
@click.option("--factor", type=float, default=0.5, show_default=True, help="ReduceLROnPlateau factor.")
@click.option("--target-accuracy", type=float, default=0.93, show_default=True,
              help="Stop once validation accuracy reaches this (0 disables).")
@click.option("--rotation", type=float, default=10.0, show_default=True,
              help="Random rotation range in degrees (0 disables; rotation resamples the pixel grid).")
@click.option("--no-augment", is_flag=True, help="No augmentation at all.")
@click.option("--device", default="auto", show_default=True, envvar="DFSCAN_DEVICE", show_envvar=True,
              help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", type=int, default=2, show_default=True, help="Data-loading processes (0: in-process).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=int, help="At most this many batches per epoch (quick runs).")
@click.option("--faces", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="on: train on the crop of each image's largest face, made as `dfscan scan --faces on` makes "
                   "it; the exported model_info.json says \"input\": \"face-crop\" and scans follow it.")
@click.option("--frames", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Video data sets: frames sampled per video, the LSTM's sequence length; a batch then holds "
                   "--batch-size frames (batch-size // frames videos).")
@click.option("--fresh", is_flag=True, help="Start over even if OUT holds an unfinished run.")
@_progress_option
@reports_errors
def train(data_dir: Path, out_dir: Path, backbone: str, backbone_weights: Path | None, epochs: int, batch_size: int,
          lr: float, weight_decay: float, dropout: float, lstm_hidden: int, patience: int, factor: float,
          target_accuracy: float, rotation: float, no_augment: bool, device: str, workers: int, seed: int,
          max_steps: int | None, faces: str, frames: int, fresh: bool, progress: bool | None) -> None:
    """Train a detector on DATA_DIR and keep the checkpoint with the best validation accuracy.

    DATA_DIR has the "140k Real and Fake Faces" layout (train/, valid/, test/,
    each with real/ and fake/) or plain real/ and fake/ folders, split 70/15/15
    with a fixed seed. Defaults are the original project's. Run the same
    command again after an interruption to resume from the last finished epoch.

    DATA_DIR may hold videos instead of images (.mp4 .mov .m4v .webm .mkv
    .avi, same layout): each video is --frames frames sampled evenly in time,
    one sequence through the LSTM, one label.
    """
    from dfscan.detector.backbones import get_backbone
    from dfscan.detector.train import TrainConfig
    from dfscan.detector.train import train as run_training

    get_backbone(backbone)  # an unknown name fails before any data is read
    config = TrainConfig(
        backbone=backbone, backbone_weights=str(backbone_weights) if backbone_weights else None, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, scheduler_patience=patience,
        scheduler_factor=factor, dropout=dropout, lstm_hidden=lstm_hidden,
        target_accuracy=target_accuracy or None, augment=not no_augment, rotation=rotation, device=device,
        workers=workers, seed=seed, max_steps_per_epoch=max_steps, faces=faces == "on", frames=frames,
    )
    try:
        result = run_training(data_dir, out_dir, config, resume=not fresh, progress=_show(progress), log=click.echo)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; run the same command again to resume from the last finished epoch in {out_dir}"
        ) from None
    click.echo(f"best validation accuracy {result.best_val_accuracy:.2%} at epoch {result.best_epoch} "
               f"({result.stop_reason}, {result.device})")
    click.echo(f"wrote {result.best_checkpoint}, {result.results_path} and {result.dataset_info_path}")
    click.echo(f"next: dfscan export {result.best_checkpoint} --out DIR")


@click.command()
@click.argument("model", required=False, type=click.Path(exists=True, path_type=Path))
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--target-fpr", type=float,
              help="Choose the threshold so that at most this share of real validation images is called fake.")
@click.option("--split", default="valid", show_default=True, help="Split to fit on.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@from_reviews_option
@click.option("--model", "model_option", type=click.Path(exists=True, path_type=Path),
              help="With --from-reviews: the exported model the scans were made with (or give it as MODEL).")
@click.option("--target-precision", type=float,
              help="With --from-reviews: choose the threshold so that this share of the items called fake were "
                   "decided fake.")
@click.option("--min-decisions", type=click.IntRange(1), default=DEFAULT_MIN_REVIEW_DECISIONS, show_default=True,
              help="With --from-reviews: refuse to fit on fewer fake/real decisions.")
@db_option
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def calibrate(model: Path | None, data_dir: Path | None, target_fpr: float | None, split: str, batch_size: int,
              from_reviews: tuple[int, ...], model_option: Path | None, target_precision: float | None,
              min_decisions: int, db_url: str, progress: bool | None, as_json: bool) -> None:
    """Fit the temperature of an exported MODEL on DATA_DIR's validation split; store it in model_info.json.

    With --target-fpr the decision threshold is also chosen, on the calibrated
    p_fake, for that false-positive rate. The scanner applies both.

    With --from-reviews SCAN the fit is on analysts' decisions in those scans
    instead (no DATA_DIR): the temperature, and with --target-precision the
    threshold, from the p_fake the scans stored; refused below
    --min-decisions decisions.
    """
    from dfscan.detector.calibrate import calibrate as run_calibration

    if from_reviews:
        calibrate_from_reviews(model_option or model, data_dir, from_reviews, target_fpr=target_fpr,
                               target_precision=target_precision, min_decisions=min_decisions, db_url=db_url,
                               as_json=as_json)
        return
    if target_precision is not None:
        raise click.UsageError("--target-precision goes with --from-reviews; on a data set use --target-fpr")
    model = model or model_option
    if model is None or data_dir is None:
        raise click.UsageError(f"Missing argument '{'MODEL' if model is None else 'DATA_DIR'}'.")
    result = run_calibration(model, data_dir, target_fpr=target_fpr, split=split, batch_size=batch_size,
                             progress=_show(progress))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    b, a = result.before, result.after
    click.echo(f"temperature {result.previous_temperature:.4g} -> {result.temperature:.4g} "
               f"(fitted on {result.n_images} {split} images)")
    click.echo(f"  NLL {b['nll']:.4f} -> {a['nll']:.4f}   ECE {b['ece']:.4f} -> {a['ece']:.4f}")
    click.echo(f"threshold {result.previous_threshold:.4g} -> {result.threshold:.4g}: on {split}, "
               f"FPR {result.fpr:.2%}, TPR {result.tpr:.2%}"
               + (f" (target FPR {result.target_fpr:.2%})" if result.target_fpr is not None else ""))
    click.echo(f"wrote {result.info_path}")


@click.command()
@click.argument("model", required=False, type=click.Path(exists=True, path_type=Path))
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for metrics.json and report.html.")
@from_reviews_option
@db_option
@click.option("--split", default="test", show_default=True, help="train | valid | test.")
@click.option("--threshold", type=float, help="Decision threshold on p_fake (default: the model's).")
@click.option("--training-results", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="training_results.json for the training curves (default: beside the model's checkpoint).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="For checkpoints: auto | cpu | cuda.")
@click.option("--frames", type=click.IntRange(1, 1024),
              help="Video data sets: frames sampled per video (default: the model's own, model_info.json frames).")
@_progress_option
@reports_errors
def evaluate(model: Path | None, data_dir: Path | None, out_dir: Path, from_reviews: tuple[int, ...], db_url: str,
             split: str, threshold: float | None, training_results: Path | None, batch_size: int, device: str,
             frames: int | None, progress: bool | None) -> None:
    """Measure MODEL (an exported .onnx or a .pt checkpoint) on a split of DATA_DIR.

    Writes metrics.json and report.html (one self-contained file with every
    figure). An exported model is run as a scan runs it, with its temperature
    and threshold. A DATA_DIR of videos is measured per video: each video is
    one sequence of sampled frames through the export's video graph
    (model.video.onnx) and one verdict.

    With --from-reviews SCAN the report also measures the detector on
    analysts' decisions in those scans ("Reviewed by analysts": precision,
    recall among reviewed items, the confusion table, 95% intervals); given
    alone (no MODEL and DATA_DIR), the report holds that section only.
    """
    from dfscan.detector.evaluate import evaluate as run_evaluation

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise click.BadParameter("must be between 0 and 1", param_hint="--threshold")
    if (model is None) != (data_dir is None) or (model is None and not from_reviews):
        raise click.UsageError(f"Missing argument '{'MODEL' if model is None else 'DATA_DIR'}'."
                               + (" Give MODEL and DATA_DIR, or --from-reviews alone." if from_reviews else ""))
    reviews = reviews_record(from_reviews, db_url) if from_reviews else None
    if model is None:
        echo_reviews(evaluate_reviews_only(out_dir, reviews))
        return
    result = run_evaluation(model, data_dir, out_dir, split=split, training_results=training_results,
                            threshold=threshold, batch_size=batch_size, device=device, progress=_show(progress),
                            frames=frames, reviews=reviews)
    m = result.metrics
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    unit = f"{m['data']['media']}s"
    if m["data"]["media"] == "video":
        click.echo(f"videos: {m['data']['frames']} frames each, scored as {m['data']['scoring']}"
                   + (" (no video graph in the export: a weaker verdict)" if m["data"]["scoring"] != "sequence" else ""))
    click.echo(f"{split}: {m['n']} {unit}, accuracy {m['accuracy']:.2%}, ROC AUC {auc}, "
               f"ECE {m['calibration']['ece']:.4f} (threshold {m['threshold']:.3g}, T {m['temperature']:.3g})")
    if m["data"]["failed"]:
        click.echo(f"  {len(m['data']['failed'])} {unit} could not be decoded (listed in metrics.json)")
    if reviews is not None:
        echo_reviews(result)
        return
    click.echo(f"wrote {result.metrics_path} and {result.report_path}")


COMMANDS = [synth, train, calibrate, evaluate]
