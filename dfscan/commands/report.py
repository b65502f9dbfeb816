"""`dfscan report`: one scan as a self-contained HTML page for analysts."""

from __future__ import annotations

from pathlib import Path

import click

from dfscan.commands._options import SCAN_ID, db_option, reports_errors


@click.command()
@click.argument("scan_id", metavar="SCAN", type=SCAN_ID)
@db_option
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write.")
@click.option("--top", type=click.IntRange(0, 1000), default=24, show_default=True,
              help="How many of the most suspicious images to show with thumbnails.")
@click.option("--bins", type=click.IntRange(2, 200), default=20, show_default=True,
              help="Bars of the p_fake histogram.")
@click.option("--thumb-px", type=click.IntRange(32, 512), default=160, show_default=True,
              help="Longest side of a thumbnail, in pixels.")
@reports_errors
def report(scan_id: int, db_url: str, out: Path, top: int, bins: int, thumb_px: int) -> None:
    """Write an HTML report of scan SCAN (its id) to --out.

    The page needs no server and fetches nothing: summary, audit record, the
    p_fake histogram, errors by reason, and thumbnails of the most suspicious
    images (read from the scanned files now) are all inside it.
    """
    from dfscan.report import write_report

    try:
        summary = write_report(db_url, scan_id, out, top=top, bins=bins, thumb_px=thumb_px).summary
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out}: scan {summary.scan_id} ({summary.total} images, {summary.fake} fake, {summary.errors} errors)")


COMMANDS = [report]
