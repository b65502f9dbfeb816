"""One scan as a self-contained HTML page: summary, audit record, figures, suspects.

The page opens from disk with no server and fetches nothing: CSS is inline,
figures are inline SVG, thumbnails are JPEG ``data:`` URIs made with Pillow
from the scanned files (read again now; a file that has gone or changed shows
a placeholder with the reason).  Reading from the database is bounded:
scores are streamed into the histogram, and only the ``top`` most suspicious
rows are fetched.
"""

from __future__ import annotations

import base64
import io
import json
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from dfscan import db
from dfscan.db.models import Model, Result, Scan, scan_provenance
from dfscan.db.banks import iter_matches
from dfscan.db.records import ScanSummary
from dfscan.htmlkit import (ERROR_COLOUR, FAKE_COLOUR, REAL_COLOUR, card, escape, flagged_track, page,
                            provenance_badge, thumbnail)
from dfscan.core.redact import mask_text
from dfscan.scanner.objects import store_of_scan

__all__ = ["ScanReport", "Suspect", "collect", "render", "write_report"]

STREAM_BATCH = 10_000
MATCHES_SHOWN = 200  # hash bank matches listed on the page; the rest are in the scan_matches view
PROVENANCE_SHOWN = 200  # files with a provenance finding listed on the page; the rest are in scan_provenance


@dataclass(frozen=True)
class Suspect:
    path: str
    p_fake: float
    confidence: float
    label: str
    # Faces on: (x, y, w, h, p_fake, label) of each scored face, in the original image's pixels.
    faces: tuple[tuple[int, int, int, int, float, str], ...] = ()
    # Videos: the flagged (most suspicious) track, and its frames: (frame_index, timestamp_s, box or None,
    # the frame's own p_fake or None), the box in the video's upright pixels.
    kind: str = "image"
    track: int | None = None
    strip: tuple[tuple[int, float, tuple[int, int, int, int] | None, float | None], ...] = ()
    provenance: dict[str, Any] | None = None  # the file's scan_provenance row; None where it was not read


@dataclass(frozen=True)
class ScanReport:
    """Everything the page shows, as plain values (nothing here touches the database)."""

    summary: ScanSummary
    roots: list[str]
    threshold: float
    model_name: str
    model_path: str
    audit: dict[str, Any]
    bin_edges: list[float]
    bin_counts: dict[str, list[int]]  # per label ("real", "fake"): images per p_fake bin
    suspects: list[Suspect]
    reason_descriptions: dict[str, str] = field(default_factory=dict)
    explanations: dict[str, list[db.ExplanationRow]] = field(default_factory=dict)  # by path, of the suspects
    matches: list[dict[str, Any]] = field(default_factory=list)  # scan_matches rows (the first MATCHES_SHOWN)
    # Files that say something about their origin, with their verdict (the first PROVENANCE_SHOWN).
    provenance: list[dict[str, Any]] = field(default_factory=list)


def collect(session: Session, scan_id: int, *, top: int = 24, bins: int = 20) -> ScanReport:
    """Read what the report of ``scan_id`` shows; raises :class:`db.ScanNotFound`."""
    from dfscan.workers.reading.errors import REASONS

    summary = db.scan_summary(session, scan_id)
    head = session.execute(
        select(Scan.roots, Scan.threshold, Scan.settings, Model.name, Model.path)
        .join(Model, Model.id == Scan.model_id)
        .where(Scan.id == scan_id)
    ).one()
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = {label: np.zeros(bins, dtype=np.int64) for label in ("real", "fake")}
    scores = session.execute(
        select(Result.p_fake, Result.label).where(Result.scan_id == scan_id, Result.status == "ok"),
        execution_options={"yield_per": STREAM_BATCH},
    )
    try:
        for part in scores.partitions():
            for label, hist in counts.items():
                values = np.asarray([p for p, lab in part if lab == label], dtype=np.float64)
                hist += np.histogram(values, bins=edges)[0]
    finally:
        scores.close()
    rows = session.execute(
        select(Result.path, Result.p_fake, Result.confidence, Result.label, Result.kind)
        .where(Result.scan_id == scan_id, Result.status == "ok")
        .order_by(Result.p_fake.desc(), Result.path)
        .limit(top)
    ).all()
    strips: dict[str, list[dict]] = {}
    for f in db.iter_frames(session, scan_id=scan_id, paths=[r.path for r in rows if r.kind == "video"]):
        strips.setdefault(f["path"], []).append(f)
    origin = {p["path"]: p for p in db.iter_provenance(session, scan_id=scan_id, paths=[r.path for r in rows])}
    faces: dict[str, list] = {}
    for f in db.iter_faces(session, scan_id=scan_id, paths=[r.path for r in rows]):
        faces.setdefault(f["path"], []).append((f["x"], f["y"], f["w"], f["h"], f["p_fake"], f["label"]))
    return ScanReport(
        summary=summary,
        roots=list(head.roots),
        threshold=head.threshold,
        model_name=head.name,
        model_path=head.path,
        audit=dict(head.settings or {}),
        bin_edges=[float(e) for e in edges],
        bin_counts={label: [int(c) for c in hist] for label, hist in counts.items()},
        suspects=[Suspect(r.path, r.p_fake, r.confidence, r.label, tuple(faces.get(r.path, ())), r.kind,
                          *flagged_track(strips.get(r.path, [])), provenance=origin.get(r.path)) for r in rows],
        reason_descriptions=dict(REASONS),
        explanations=_explanations(session, scan_id, [r.path for r in rows]),
        matches=iter_matches(session, scan_id=scan_id, limit=MATCHES_SHOWN),
        provenance=_provenance_rows(session, scan_id),
    )


def _provenance_rows(session: Session, scan_id: int) -> list[dict[str, Any]]:
    """Files with a manifest, a source type, generator settings or a watermark, declared synthetic first."""
    p = scan_provenance.c
    found = or_(p.c2pa != "none", p.synthetic_declared.is_(True), p.source_type.isnot(None),
                p.generator.isnot(None), p.watermark.isnot(None))
    stmt = (db.view_select(scan_provenance).add_columns(Result.status, Result.label, Result.p_fake)
            .join(Result, and_(Result.scan_id == p.scan_id, Result.path_hash == p.path_hash))
            .where(p.scan_id == scan_id, found)
            .order_by(p.synthetic_declared.desc(), p.path)
            .limit(PROVENANCE_SHOWN))
    return [dict(r) for r in session.execute(stmt).mappings()]


def write_report(db_url: str, scan_id: int, out: Path, *, top: int = 24, bins: int = 20, thumb_px: int = 160) -> ScanReport:
    """Write the report of ``scan_id`` to ``out`` (HTML, UTF-8) and return what it shows."""
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine)
        with db.session_factory(engine)() as session:
            report = collect(session, scan_id, top=top, bins=bins)
    finally:
        engine.dispose()
    page = render(report, thumb_px=thumb_px)
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return report


# --- rendering ------------------------------------------------------------------------

_CSS = """
svg text { font: 11px system-ui, sans-serif; fill: #3b4252; }
main table { width: 100%%; }
main th { width: 200px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
figure.suspect { margin: 0; border: 1px solid #e4e7ed; border-radius: 6px; padding: 8px; background: #fff; }
figure.suspect img, figure.suspect svg { display: block; margin: 0 auto 6px; max-width: 100%%; }
figure.suspect figcaption { font-size: 12px; }
.score { font-weight: 600; color: %(fake)s; }
figure.suspect.video { grid-column: 1 / -1; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 6px; }
.strip svg { margin: 0; }
""" % {"fake": FAKE_COLOUR}


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _audit_value(key: str, value: Any) -> str:
    # Masked again here: records written before dfscan.core.redact may hold a password.
    if key == "command" and isinstance(value, list):
        return f"<code>{escape(shlex.join(mask_text(str(v)) for v in value))}</code>"
    if isinstance(value, (dict, list)):
        return f"<code>{escape(mask_text(json.dumps(value, sort_keys=True, default=str)))}</code>"
    return escape(mask_text(str(value)) if isinstance(value, str) else value)


def histogram_svg(edges: list[float], counts: dict[str, list[int]], threshold: float, width: int = 680,
                  height: int = 240) -> str:
    """The p_fake histogram, real and fake stacked in their colours, with the threshold marked."""
    left, right, top, bottom = 48, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    real, fake = counts["real"], counts["fake"]
    totals = [r + f for r, f in zip(real, fake)]
    peak = max(totals) if totals and max(totals) > 0 else 1
    x = lambda v: left + v * plot_w  # noqa: E731 - p_fake in [0, 1] to pixels
    parts = [
        f'<svg id="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Histogram of p_fake over {sum(totals)} scored images">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9aa3b2"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#9aa3b2"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for lo, hi, n_real, n_fake in zip(edges, edges[1:], real, fake):
        base = top + plot_h
        for n, label, colour in ((n_real, "real", REAL_COLOUR), (n_fake, "fake", FAKE_COLOUR)):
            if n == 0:
                continue
            h = max(1.0, n / peak * plot_h)
            parts.append(
                f'<rect class="bar" x="{x(lo) + 1:.1f}" y="{base - h:.1f}" width="{max(1.0, x(hi) - x(lo) - 2):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{lo:.2f}–{hi:.2f}: {n} {label}</title></rect>'
            )
            base -= h
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{x(tick):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">p_fake</text>')
    tx = x(min(max(threshold, 0.0), 1.0))
    parts.append(
        f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + plot_h}" stroke="#1d2330" stroke-dasharray="4 3"/>'
        f'<text x="{tx + 4:.1f}" y="{top + 10}">threshold {threshold:.4g}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def errors_svg(by_reason: dict[str, int], width: int = 680) -> str:
    """Horizontal bars, one per error reason, largest first."""
    items = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    row, label_w, right = 24, 150, 60
    height = row * len(items) + 8
    peak = max(n for _, n in items)
    parts = [f'<svg id="errors" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Errors by reason">']
    for i, (reason, n) in enumerate(items):
        y = 4 + i * row
        w = max(2.0, n / peak * (width - label_w - right))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(reason)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{ERROR_COLOUR}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _placeholder(px: int, reason: str) -> str:
    return (
        f'<svg class="placeholder" width="{px}" height="{px}" viewBox="0 0 {px} {px}" role="img" aria-label="{escape(reason)}">'
        f'<title>{escape(reason)}</title><rect width="{px}" height="{px}" fill="#eceff3"/>'
        f'<text x="{px / 2}" y="{px / 2}" text-anchor="middle">no preview</text></svg>'
    )


def _faces_svg(s: Suspect, uri: str, full: tuple[int, int], px: int) -> str:
    """The thumbnail with each scored face's box drawn over it, in the original image's coordinates."""
    w, h = full
    scale = px / max(w, h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    stroke = max(w, h) / px * 2
    boxes = "".join(
        f'<rect class="face" data-box="{x},{y},{fw},{fh}" data-p-fake="{p:.6f}" x="{x}" y="{y}" width="{fw}" '
        f'height="{fh}" fill="none" stroke="{FAKE_COLOUR if label == "fake" else REAL_COLOUR}" '
        f'stroke-width="{stroke:.1f}"><title>face {i}: p_fake {p:.4f} ({escape(label)})</title></rect>'
        for i, (x, y, fw, fh, p, label) in enumerate(s.faces)
    )
    return (
        f'<svg class="faces" width="{tw}" height="{th}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{escape(s.path)}: {len(s.faces)} faces"><image href="{uri}" width="{w}" height="{h}" '
        f'preserveAspectRatio="none"/>{boxes}</svg>'
    )


def _video_strip(s: Suspect, px: int, store=None) -> str:
    """The flagged track's sampled frames, read again from the video at their times, its face box drawn on each.

    An ``s3://`` video is read through ``store``, the scan's endpoint (streamed, as the scan read it).
    """
    from PIL import Image

    from dfscan.workers.reading.errors import ImageError
    from dfscan.workers.video.sample import frames_at

    if not s.strip:
        return _placeholder(px, "no frames recorded")
    try:
        video = frames_at(s.path, [t for _i, t, _b, _p in s.strip], max_side=px * 2, time_limit_s=30.0, store=store)
    except ImageError as exc:
        return _placeholder(px, exc.message)
    except Exception as exc:  # noqa: BLE001 - one bad strip must not lose the report
        return _placeholder(px, f"no preview: {type(exc).__name__}")
    by_slot = dict(zip(video.indices, video.frames))
    w, h = video.width, video.height
    cells = []
    for slot, (index, t, box, p) in enumerate(s.strip):
        frame = by_slot.get(slot)
        if frame is None:
            cells.append(_placeholder(px // 2, f"frame {index} at {t:.2f} s did not decode"))
            continue
        im = Image.fromarray(frame)
        im.thumbnail((px, px), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        scale = px / max(w, h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        what = f"frame {index} at {t:.2f} s" + ("" if p is None else f": p_fake {p:.4f}")
        mark = ""
        if box is not None:
            x, y, bw, bh = box
            mark = (f'<rect class="face" data-box="{x},{y},{bw},{bh}" x="{x}" y="{y}" width="{bw}" height="{bh}" '
                    f'fill="none" stroke="{FAKE_COLOUR}" stroke-width="{max(w, h) / px * 2:.1f}"/>')
        cells.append(
            f'<svg class="frame" data-frame="{index}" data-t="{t:.3f}" width="{tw}" height="{th}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="{escape(what)}"><title>{escape(what)}</title>'
            f'<image href="{uri}" width="{w}" height="{h}" preserveAspectRatio="none"/>{mark}</svg>'
        )
    return f'<div class="strip">{"".join(cells)}</div>'


def _suspect(s: Suspect, px: int, explained: list[db.ExplanationRow] | None = None, store=None) -> str:
    if s.kind == "video":
        track = "" if s.track is None else f", track {s.track}"
        return (
            f'<figure class="suspect video" data-path="{escape(s.path)}">{_video_strip(s, px // 2 + 24, store)}'
            f'<figcaption><span class="score">p_fake {s.p_fake:.4f}</span> <span class="muted">(video, '
            f'{escape(s.label)}, confidence {s.confidence:.3f}, {len(s.strip)} frames{track})</span>'
            f'{provenance_badge(s.provenance)}<br><span class="path">{escape(s.path)}</span></figcaption></figure>'
        )
    uri, reason, full = thumbnail(s.path, px, store)
    if uri is None:
        image = _placeholder(px, reason)
    elif s.faces and full is not None:
        image = _faces_svg(s, uri, full, px)
    else:
        image = f'<img src="{uri}" alt="{escape(s.path)}" title="{escape(s.path)}">'
    image += _explanation_html(explained or [], px)
    faces = f", {len(s.faces)} faces" if s.faces else ""
    return (
        f'<figure class="suspect" data-path="{escape(s.path)}">{image}<figcaption>'
        f'<span class="score">p_fake {s.p_fake:.4f}</span> <span class="muted">({escape(s.label)}, '
        f"confidence {s.confidence:.3f}{faces})</span>{provenance_badge(s.provenance)}<br>"
        f"<span class=\"path\">{escape(s.path)}</span></figcaption></figure>"
    )


def render(report: ScanReport, *, thumb_px: int = 160) -> str:
    """The page as one string; reads the suspects' files for their thumbnails."""
    s = report.summary
    title = f"dfscan report: scan {s.scan_id} ({s.name})"
    cards = "".join([
        card("images", s.total), card("real", s.real, "real"), card("fake", s.fake, "fake"),
        card("errors", s.errors, "err"), *([card("no face", s.no_face)] if s.no_face else []),
        *([card("C2PA manifests", s.manifests), card("invalid manifests", s.invalid_manifests, "err")]
          if s.manifests else []),
        *([card("declared synthetic", s.declared_synthetic, "fake")] if s.declared_synthetic else []),
        card("seconds", f"{s.elapsed_s:.1f}"),
        card("images/s", f"{s.images_per_s:.1f}"),
    ])
    facts = [
        ("status", escape(s.status)),
        ("roots", "<br>".join(f'<span class="path">{escape(r)}</span>' for r in report.roots) or "—"),
        ("model", f"{escape(report.model_name)} <code>{escape(s.model_sha256)}</code>"),
        ("model file", f'<span class="path">{escape(report.model_path)}</span>'),
        ("threshold", escape(f"{report.threshold:.6g}")),
        ("verdicts", escape(f"{s.computed} scored, {s.copied} copies (same bytes earlier in this scan), "
                            f"{s.reused} reused (earlier scans, same model)")),
        ("started", escape(_when(s.started_at))),
        ("finished", escape(_when(s.finished_at))),
    ]
    audit_rows = "".join(f"<tr><th>{escape(k)}</th><td>{_audit_value(k, v)}</td></tr>" for k, v in report.audit.items())
    if s.errors:
        reasons = "".join(
            f'<tr><td><code>{escape(code)}</code></td><td class="num">{n}</td>'
            f'<td class="muted">{escape(report.reason_descriptions.get(code, ""))}</td></tr>'
            for code, n in sorted(s.errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        errors = f"{errors_svg(s.errors_by_reason)}<table>{reasons}</table>"
    else:
        errors = '<p class="muted">No errors: every file got a verdict.</p>'
    store = store_of_scan(report.audit)  # s3:// suspects are read from the endpoint the scan listed
    suspects = "".join(_suspect(x, thumb_px, report.explanations.get(x.path), store) for x in report.suspects) or '<p class="muted">No scored images.</p>'
    body = f"""<h1>{escape(title)}</h1>
<p class="sub">{escape(s.total)} files, {escape(s.fake)} labelled fake at threshold {report.threshold:.4g}. Generated by dfscan from the results database.</p>
<section id="summary"><div class="cards">{cards}</div>
<table>{''.join(f'<tr><th>{k}</th><td>{v}</td></tr>' for k, v in facts)}</table></section>
<h2>Distribution of p_fake</h2>
<section id="distribution">{histogram_svg(report.bin_edges, report.bin_counts, report.threshold)}</section>
<h2>Errors by reason</h2>
<section id="error-breakdown">{errors}</section>
{_matches_html(report.matches, s.matches)}
{_provenance_html(report.provenance, s)}
<h2>The {len(report.suspects)} most suspicious files</h2>
<section id="suspects">{_explanations_note(report.explanations)}<div class="grid">{suspects}</div></section>
<h2>Audit record</h2>
<section id="audit"><p class="muted">What produced these verdicts, as stored with the scan.</p>
<table>{audit_rows or '<tr><td class="muted">none recorded</td></tr>'}</table></section>"""
    return page(title, body, css=_CSS)


def _matches_html(matches: list[dict[str, Any]], total: int) -> str:
    """The files that matched a hash bank: bank, reference, label, distance (and a video's frame)."""
    if not matches:
        return ""
    rows = "".join(
        f'<tr><td class="path">{escape(m["path"])}</td><td>{escape(m["bank"])}</td><td>{escape(m["ref"] or "")}</td>'
        f'<td>{escape(m["label"] or "")}</td><td class="num">{m["distance"]}</td>'
        f'<td class="num">{"" if m["frame"] is None else m["frame"]}</td></tr>' for m in matches)
    more = f'<p class="muted">{total - len(matches)} more in the scan_matches view.</p>' if total > len(matches) else ""
    return (f'<h2>Hash bank matches</h2>\n<section id="matches"><p class="muted">{total} matches against known '
            f'content (PDQ within each bank\'s distance, or exact hashes).</p><table><tr><th>file</th><th>bank</th>'
            f'<th>reference</th><th>label</th><th>distance</th><th>frame</th></tr>{rows}</table>{more}</section>')


def _provenance_html(rows: list[dict[str, Any]], s: ScanSummary) -> str:
    """Files that say where they come from, each with the detector's verdict beside what it declares."""
    if not rows:
        return ""
    body = "".join(
        f'<tr data-path="{escape(r["path"])}"><td class="path">{escape(r["path"])}</td>'
        f'<td>{escape(r["label"] or r["status"])}</td><td class="num">{_score(r["p_fake"])}</td>'
        f"<td>{provenance_badge(r)}</td></tr>" for r in rows)
    more = (f'<p class="muted">The first {len(rows)}; the rest are in the scan_provenance view.</p>'
            if len(rows) >= PROVENANCE_SHOWN else "")
    return (f'<h2>Provenance</h2>\n<section id="provenance"><p class="muted">What files say about their own origin: '
            f"{s.manifests} with a C2PA manifest ({s.invalid_manifests} failing validation), "
            f"{s.declared_synthetic} declared synthetic (IPTC source type, generator settings or a known watermark)."
            f"</p><table><tr><th>file</th><th>verdict</th><th>p_fake</th><th>provenance</th></tr>{body}</table>"
            f"{more}</section>")


def _score(p_fake: float | None) -> str:
    return "" if p_fake is None else f"{p_fake:.4f}"


# --- explanations (dfscan explain) ---------------------------------------------------------------------------------

def _explanations(session: Session, scan_id: int, paths: list[str]) -> dict[str, list[db.ExplanationRow]]:
    out: dict[str, list[db.ExplanationRow]] = {}
    for row in db.explanations_for(session, scan_id, paths):
        out.setdefault(row.path, []).append(row)
    return out


def _explanation_html(rows: list[db.ExplanationRow], px: int) -> str:
    """The heatmap overlays of one suspect (one per face or frame), or why it has none."""
    parts = []
    for r in rows:
        where = "".join(f" {k} {v}" for k, v in (("face", r.face_index), ("frame", r.frame_index)) if v is not None)
        if r.status == "ok" and r.overlay is not None:
            uri = "data:image/png;base64," + base64.b64encode(r.overlay).decode("ascii")
            text = f"heatmap{where}: peak at ({r.peak_x}, {r.peak_y}) of {r.width}x{r.height}"
            parts.append(f'<img class="overlay" src="{uri}" alt="{escape(text)}" title="{escape(text)}">')
        else:
            parts.append(f'<p class="muted overlay-missing">no heatmap{escape(where)}: {escape(r.reason)}'
                         f"{': ' + escape(r.detail) if r.detail else ''}</p>")
    return "".join(parts)


def _explanations_note(explanations: dict[str, list[db.ExplanationRow]]) -> str:
    """How the overlays were computed, once above the grid (nothing when the scan has none)."""
    rows = [r for rs in explanations.values() for r in rs]
    if not rows:
        return ""
    methods = sorted({(r.method, r.target_layer, r.checkpoint_sha256) for r in rows})
    how = "; ".join(f"{escape(m)} on <code>{escape(layer)}</code> of checkpoint <code>{escape(sha[:16])}</code>"
                    for m, layer, sha in methods)
    return (f'<p class="muted" id="explanations-note">Heatmaps beside the thumbnails: Grad-CAM of the fake class '
            f"({how}), by <code>dfscan explain</code>; red is where the model's evidence for fake is strongest, "
            f"the ring marks the peak. {sum(r.status == 'ok' for r in rows)} of {len(rows)} explained.</p>")
