"""`dfscan explain`: Grad-CAM heatmaps of a scan's most suspicious images, stored with the scan."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from dfscan.commands._options import db_option, reports_errors


@click.command()
@click.argument("scan_id", metavar="SCAN", type=int)
@db_option
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PyTorch checkpoint the scan's ONNX model was exported from (ONNX has no gradients).")
@click.option("--top", type=click.IntRange(1, 100_000), default=24, show_default=True,
              help="Explain this many of the most suspicious scored images.")
@click.option("--min-p", type=click.FloatRange(0.0, 1.0), default=None,
              help="Only images with p_fake at least this (with --top).")
@click.option("--paths", "paths", multiple=True,
              help="Explain exactly these files of the scan, as stored (repeatable; replaces --top/--min-p).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Images per Grad-CAM batch.")
@click.option("--device", default=None, help="torch device (default: cuda when there is one, else cpu).")
@click.option("--score-tolerance", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="An image whose p_fake under the checkpoint differs from the scan's by more is not explained.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@reports_errors
def explain(scan_id: int, db_url: str, checkpoint: Path, top: int, min_p: float | None, paths: tuple[str, ...],
            batch_size: int, device: str | None, score_tolerance: float, as_json: bool) -> None:
    """Compute a class-activation heatmap (Grad-CAM, fake class) for images of scan SCAN.

    The checkpoint must be the one the scan's model was exported from: its
    sha256 recorded at export, or its logits against the ONNX model, and each
    image's p_fake against the stored score are checked. Each image gets one
    row in the explanations table (peak in original pixels, a PNG overlay), or
    a reason it can't be explained; `dfscan report` shows the overlays.
    """
    from dfscan.detector.explain import explain_scan

    summary = explain_scan(db_url, scan_id, checkpoint, top=top, min_p=min_p, paths=list(paths) or None,
                           batch_size=batch_size, device=device, score_tolerance=score_tolerance)
    if as_json:
        record = {k: v for k, v in asdict(summary).items() if k != "rows"}
        click.echo(json.dumps(record, indent=2))
    else:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(summary.unexplainable.items())) or "none"
        click.echo(f"scan {scan_id}: explained {summary.explained} of {summary.selected} images in "
                   f"{summary.seconds:.1f} s on {summary.device} ({summary.method} at {summary.target_layer}); "
                   f"unexplainable: {skipped}; checkpoint verified by {summary.verified_by}")
    if summary.refused is not None:
        raise click.ClickException(f"refused: {summary.refused}")


COMMANDS = [explain]
