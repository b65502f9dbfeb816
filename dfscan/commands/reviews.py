"""What analysts' decisions feed: export-reviews (a training set); evaluate and calibrate take --from-reviews."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfscan.commands._options import SCAN_ID, db_option, json_option, migrated_database, reports_errors


def scan_ids(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[int, ...]:
    """Scan ids from a repeatable option, each value one id or several separated by commas."""
    out: list[int] = []
    for value in values:
        for part in str(value).split(","):
            if part.strip():
                out.append(SCAN_ID.convert(part.strip(), param, ctx))
    return tuple(dict.fromkeys(out))


def from_reviews_option(func):
    return click.option(
        "--from-reviews", "from_reviews", multiple=True, callback=scan_ids, metavar="SCAN[,SCAN...]",
        help="Use analysts' current decisions on these scans (repeatable, or comma-separated ids); items decided "
             "fake or real on scored rows count, unsure and escalate are reported, not used.")(func)


def reviews_record(scans: tuple[int, ...], db_url: str) -> dict:
    """The report's "Reviewed by analysts" record for ``scans`` (read from ``db_url``)."""
    from dfscan.detector.reviews import evaluate_reviews

    with migrated_database(db_url) as sessions, sessions() as session:
        return evaluate_reviews(session, scans)


def evaluate_reviews_only(out_dir: Path, reviews: dict):
    from dfscan.detector.evaluate import evaluate_reviews_only as write

    return write(out_dir, reviews)


def _rate(r: dict) -> str:
    if r["value"] is None:
        return "n/a"
    lo, hi = r["interval"]
    return f"{r['value']:.2%} [{lo:.2%}, {hi:.2%}] ({r['successes']}/{r['n']})"


def echo_reviews(result) -> None:
    """The figures on analysts' decisions of an evaluation, for a terminal."""
    r = result.metrics["reviews"]
    c = r["decisions"]
    (tn, fp), (fn, tp) = r["confusion_matrix"]["matrix"]
    click.echo(f"reviewed by analysts (scan {', '.join(map(str, r['scans']))}): {r['n_decisions']} decisions used "
               f"({fn + tp} fake, {tn + fp} real); not used: {c['unsure']} unsure, {c['escalate']} escalate, "
               f"{c['not_scored']} on unscored rows, {c['conflicting']} conflicting, {c['duplicates']} copies "
               f"(counted once)")
    click.echo(f"  decided real: detector real {tn}, fake {fp};  decided fake: detector real {fn}, fake {tp}")
    click.echo(f"  precision of 'fake' {_rate(r['precision'])}, recall among reviewed {_rate(r['recall'])}, "
               f"accuracy {_rate(r['accuracy'])} (95% Wilson intervals)")
    click.echo(f"wrote {result.metrics_path} and {result.report_path}")


def calibrate_from_reviews(model: Path | None, data_dir: Path | None, scans: tuple[int, ...], *,
                           target_fpr: float | None, target_precision: float | None, min_decisions: int, db_url: str,
                           as_json: bool) -> None:
    """`dfscan calibrate --from-reviews`: fit on the decisions, write model_info.json, say what changed."""
    from dfscan.detector.reviews import calibrate_from_reviews as run_calibration

    if model is None:
        raise click.UsageError("--from-reviews needs the model the scans were made with: --model MODEL")
    if data_dir is not None:
        raise click.UsageError("--from-reviews fits on the decisions: give no DATA_DIR")
    if target_fpr is not None:
        raise click.UsageError("--from-reviews chooses the threshold by --target-precision, not --target-fpr")
    with migrated_database(db_url) as sessions, sessions() as session:
        result = run_calibration(model, session, scans, target_precision=target_precision,
                                 min_decisions=min_decisions)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    b, a = result.before, result.after
    click.echo(f"temperature {result.previous_temperature:.4g} -> {result.temperature:.4g} "
               f"(fitted on {result.n_decisions} decisions in scan {', '.join(map(str, result.scans))})")
    click.echo(f"  NLL {b['nll']:.4f} -> {a['nll']:.4f}   ECE {b['ece']:.4f} -> {a['ece']:.4f}")
    click.echo(f"threshold {result.previous_threshold:.4g} -> {result.threshold:.4g}: on the decisions, precision "
               f"{_rate(result.precision)}, recall {_rate(result.recall)}"
               + (f" (target precision {result.target_precision:.2%})" if result.target_precision is not None
                  else ""))
    click.echo(f"wrote {result.info_path}")


@click.command("export-reviews")
@click.argument("scans", nargs=-1, required=True, type=SCAN_ID)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A new (or empty) folder: real/ and fake/ (videos/real/ and videos/fake/), and manifest.csv.")
@click.option("--faces", is_flag=True,
              help="Export the crops of the faces the scan scored (for a face-crop model) instead of whole images.")
@db_option
@json_option("the summary")
@reports_errors
def export_reviews(scans: tuple[int, ...], out_dir: Path, faces: bool, db_url: str, as_json: bool) -> None:
    """Write the items analysts decided fake or real in SCANS to OUT, in the layout `dfscan train` reads.

    Images are copied unchanged into OUT/real/ and OUT/fake/ (train splits
    them 70/15/15); videos go to OUT/videos/real/ and OUT/videos/fake/, a
    video data set of their own. With --faces, each image's stored face boxes
    are cut as the scan cut them and written as PNG (every face of a real
    image, the most suspicious face of a fake one). Files are read confined
    to their scan's roots and checked against the bytes the scan scored.
    OUT/manifest.csv lists every decided item: exported where, or skipped why.
    Then: dfscan train OUT --out RUN (with --faces on for face crops).
    """
    from dfscan.detector.review_export import export_reviews as run_export

    with migrated_database(db_url) as sessions, sessions() as session:
        summary = run_export(session, scans, out_dir, faces=faces)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    what = "face crops" if faces else "images"
    click.echo(f"exported {summary.exported['real']} real and {summary.exported['fake']} fake {what} to {out_dir}"
               + (f"; {summary.videos['real']} real and {summary.videos['fake']} fake videos to "
                  f"{out_dir / 'videos'}" if any(summary.videos.values()) else ""))
    if summary.skipped:
        click.echo("skipped: " + ", ".join(f"{n} {code}" for code, n in summary.skipped.items()))
    click.echo(f"wrote {summary.manifest}")
    click.echo(f"next: dfscan train {out_dir} --out RUN" + (" --faces on" if faces else ""))


COMMANDS = [export_reviews]
