"""The kit every dfscan HTML page is made with: one page shell and stylesheet, cards, thumbnails, SVG charts.

The scan report (``dfscan report``) and the evaluation report (``dfscan
evaluate``) are single self-contained files: styles and charts inline,
thumbnails as base64 data URIs, nothing fetched from the network. Thumbnails
are read and decoded by the scanner's own reader and decoder, so a report
applies the same limits (regular files, size, pixels, formats) as a scan.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["BASE_CSS", "ERROR_COLOUR", "FAKE_COLOUR", "FONT", "PALETTE", "REAL_COLOUR", "Chart", "card", "escape",
           "flagged_track", "heatmap", "nice_ticks", "page", "provenance_badge", "thumbnail", "thumbnail_data_uri"]  # fmt: skip

FAKE_COLOUR = "#c0392b"
REAL_COLOUR = "#2c7be5"
ERROR_COLOUR = "#7f8c8d"

BASE_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: #5b6475; margin: 0 0 16px; }
section { background: #fff; border: 1px solid #dfe3ea; border-radius: 8px; padding: 16px 20px; margin-bottom: 16px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px; }
.card { border: 1px solid #e4e7ed; border-radius: 6px; padding: 10px 12px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: #5b6475; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.fake .v { color: %(fake)s; } .real .v { color: %(real)s; } .err .v { color: %(err)s; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eef0f4; vertical-align: top; }
th { color: #5b6475; font-weight: 500; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .path { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px; word-break: break-all; }
figure { margin: 12px 0 24px; } figcaption { color: #5b6475; font-size: 13px; margin-top: 4px; }
.muted { color: #5b6475; }
.warning { background: #fff4e5; border-left: 4px solid #d9822b; padding: 8px 12px; }
.prov { display: inline-flex; flex-wrap: wrap; gap: 3px; margin-top: 3px; }
.prov span { font-size: 11px; border-radius: 3px; padding: 0 5px; background: #eef0f4; color: #3b4252; }
.prov .c2pa-valid, .prov .c2pa-trusted { background: #e3f1e6; color: #1b5e20; }
.prov .c2pa-invalid, .prov .c2pa-error { background: #fdecea; color: #b00020; }
.prov .declared { background: #fff4e5; color: #8a4b08; font-weight: 600; }
""" % {"fake": FAKE_COLOUR, "real": REAL_COLOUR, "err": ERROR_COLOUR}


def escape(value: Any) -> str:
    """Text for HTML: ``None`` is empty, everything else ``str()`` and escaped (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, *, css: str = "") -> str:
    """A whole self-contained page: the shared stylesheet, then the page's own rules."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{BASE_CSS}{css}</style></head>\n"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def card(key: str, value: Any, cls: str = "") -> str:
    """One figure in a row of cards: the value large, its name small under it."""
    return f'<div class="card {cls}"><div class="v">{escape(value)}</div><div class="k">{escape(key)}</div></div>'


def provenance_badge(p: dict[str, Any] | None) -> str:
    """What a file says about its own origin (a ``scan_provenance`` row), as small labelled chips; "" if nothing.

    Every string here comes from the file itself (a signer's name, a generator, failure codes): escaped.
    """
    if not p:
        return ""
    chips = []
    c2pa = p.get("c2pa")
    if c2pa and c2pa != "none":
        state = p.get("c2pa_state") or {"remote": "remote, not fetched"}.get(c2pa, c2pa)
        text = f"C2PA {state}" + (f" ({p['signer']})" if p.get("signer") else "")
        codes = f": {p['c2pa_codes']}" if p.get("c2pa_codes") else ""
        chips.append(f'<span class="c2pa c2pa-{escape(p.get("c2pa_state") or c2pa)}" title="C2PA manifest '
                     f'{escape(c2pa)}">{escape(text + codes)}</span>')
    if p.get("synthetic_declared"):
        chips.append('<span class="declared">declared synthetic</span>')
    for key, label in (("source_type", "source"), ("generator", "generator")):
        if p.get(key):
            chips.append(f'<span class="{key}">{label}: {escape(p[key])}</span>')
    if p.get("watermark"):
        ber = p.get("watermark_ber")
        chips.append(f'<span class="watermark">watermark {escape(p["watermark"])}'
                     f'{"" if ber is None else f" (BER {float(ber):.3f})"}</span>')
    return f'<span class="prov">{"".join(chips)}</span>' if chips else ""


def thumbnail_data_uri(path: str, px: int = 160) -> tuple[str | None, str]:
    """``(data URI, "")`` of a JPEG thumbnail of ``path``, or ``(None, reason)``.

    The file is read and decoded by the scanner's own reader and decoder
    (orientation applied), so the same limits apply as in a scan.
    """
    uri, reason, _ = thumbnail(path, px)
    return uri, reason


def thumbnail(path: str, px: int = 160, store=None, roots: Sequence[str] | None = None,
              ) -> tuple[str | None, str, tuple[int, int] | None]:
    """Like :func:`thumbnail_data_uri`, plus the oriented image's full size (W, H): face boxes are in its pixels.

    ``store`` reads an ``s3://`` path (:func:`dfscan.scanner.objects.store_of_scan`); ``roots`` confine the read
    as a scan's reads are (no symbolic link followed under them: ``scanner.confine``).
    """
    from PIL import Image

    from dfscan.workers.images.decode import load_rgb, open_image
    from dfscan.workers.reading.errors import ImageError
    from dfscan.workers.reading.reader import read_file

    try:
        data = read_file(path, store=store, roots=roots).data
        head = open_image(data, 1 << 62)
        full = head.size
        if head.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap width and height
            full = (full[1], full[0])
        im = load_rgb(data, size=(px, px))
        im.thumbnail((px, px), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    except ImageError as exc:
        return None, exc.message, None
    except Exception as exc:  # noqa: BLE001 - one bad thumbnail must not lose the report
        return None, f"no preview: {type(exc).__name__}", None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), "", full


def flagged_track(frames: list[dict]) -> tuple[int | None, tuple]:
    """The track whose p_fake is the video's (the most suspicious) and its frames in time order:
    ``(track, ((frame_index, timestamp_s, box or None, p_fake), ...))`` from ``scan_frames`` rows."""
    if not frames:
        return None, ()
    track = max(frames, key=lambda f: (f["track_p_fake"] if f["track_p_fake"] is not None else -1.0, -f["track"]))
    mine = sorted((f for f in frames if f["track"] == track["track"]), key=lambda f: f["frame_index"])
    return track["track"], tuple(
        (f["frame_index"], f["timestamp_s"], None if f["x"] is None else (f["x"], f["y"], f["w"], f["h"]), f["p_fake"])
        for f in mine
    )


# --- SVG charts -----------------------------------------------------------------------------------------------------

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f")
FONT = "font-family:system-ui,sans-serif"


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if v == int(v) and abs(v) >= 1:
        return str(int(v))
    return f"{v:.3g}"


class Chart:
    """One set of axes: add series, then :meth:`render` to an ``<svg>`` string."""

    def __init__(self, title: str, xlabel: str, ylabel: str, *, xlim: tuple[float, float], ylim: tuple[float, float],
                 width: int = 460, height: int = 340, legend_at: str = "upper right", xticks: bool = True) -> None:
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.legend_at, self.xticks = legend_at, xticks
        self.xlim, self.ylim = xlim, ylim
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 58, 16, 34, 46
        self.items: list[str] = []
        self.legend: list[tuple[str, str, str]] = []  # (label, colour, kind)

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.left + (v - lo) / (hi - lo or 1) * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.height - self.bottom - (v - lo) / (hi - lo or 1) * (self.height - self.top - self.bottom)

    def line(self, xs: Sequence[float], ys: Sequence[float], *, colour: str = PALETTE[0], label: str | None = None,
             dash: str | None = None, width: float = 2.0, markers: bool = False) -> Chart:
        pts = [(self.x(a), self.y(b)) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
        if pts:
            d = " ".join(f"{_fmt(px)},{_fmt(py)}" for px, py in pts)
            style = f' stroke-dasharray="{dash}"' if dash else ""
            self.items.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="{width}"{style}/>')
            if markers:
                self.items += [f'<circle cx="{_fmt(px)}" cy="{_fmt(py)}" r="3" fill="{colour}"/>' for px, py in pts]
        if label:
            self.legend.append((label, colour, "line"))
        return self

    def point(self, xv: float, yv: float, *, colour: str = "#000", label: str | None = None, r: float = 5) -> Chart:
        self.items.append(f'<circle cx="{_fmt(self.x(xv))}" cy="{_fmt(self.y(yv))}" r="{r}" fill="{colour}"/>')
        if label:
            self.legend.append((label, colour, "point"))
        return self

    def bars(self, edges: Sequence[float], heights: Sequence[float], *, colour: str = PALETTE[0],
             label: str | None = None, opacity: float = 0.75, offset: float = 0.0, share: float = 1.0) -> Chart:
        """Bars over [edges[i], edges[i+1]]; ``offset``/``share`` place several series side by side."""
        for a, b, h in zip(edges[:-1], edges[1:], heights):
            if not math.isfinite(h) or h <= 0:
                continue
            w = (b - a) * share
            x0, x1 = self.x(a + offset * (b - a)), self.x(a + offset * (b - a) + w)
            y0, y1 = self.y(h), self.y(self.ylim[0])
            self.items.append(
                f'<rect x="{_fmt(x0)}" y="{_fmt(y0)}" width="{_fmt(max(x1 - x0 - 1, 0.5))}" '
                f'height="{_fmt(max(y1 - y0, 0))}" fill="{colour}" fill-opacity="{opacity}"/>'
            )
        if label:
            self.legend.append((label, colour, "bar"))
        return self

    def text(self, xv: float, yv: float, s: str, *, anchor: str = "start", size: int = 12, colour: str = "#222") -> Chart:
        self.items.append(
            f'<text x="{_fmt(self.x(xv))}" y="{_fmt(self.y(yv))}" font-size="{size}" text-anchor="{anchor}" '
            f'style="{FONT};fill:{colour}">{escape(s)}</text>'
        )
        return self

    def render(self) -> str:
        w, h = self.width, self.height
        x0, x1, y0, y1 = self.left, w - self.right, self.top, h - self.bottom
        out = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(self.title)}">',
               f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>']
        for t in nice_ticks(*self.xlim) if self.xticks else ():
            px = self.x(t)
            out.append(f'<line x1="{_fmt(px)}" y1="{y0}" x2="{_fmt(px)}" y2="{y1}" stroke="#eee"/>')
            out.append(f'<text x="{_fmt(px)}" y="{y1 + 15}" font-size="11" text-anchor="middle" style="{FONT}">'
                       f"{_tick_label(t)}</text>")
        for t in nice_ticks(*self.ylim):
            py = self.y(t)
            out.append(f'<line x1="{x0}" y1="{_fmt(py)}" x2="{x1}" y2="{_fmt(py)}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 5}" y="{_fmt(py + 4)}" font-size="11" text-anchor="end" style="{FONT}">'
                       f"{_tick_label(t)}</text>")
        out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#888"/>')
        out.extend(self.items)
        out.append(f'<text x="{w / 2}" y="20" font-size="14" font-weight="bold" text-anchor="middle" '
                   f'style="{FONT}">{escape(self.title)}</text>')
        out.append(f'<text x="{(x0 + x1) / 2}" y="{h - 8}" font-size="12" text-anchor="middle" '
                   f'style="{FONT}">{escape(self.xlabel)}</text>')
        out.append(f'<text transform="translate(14,{(y0 + y1) / 2}) rotate(-90)" font-size="12" '
                   f'text-anchor="middle" style="{FONT}">{escape(self.ylabel)}</text>')
        top = self.legend_at.startswith("upper")
        for i, (label, colour, kind) in enumerate(self.legend):
            ly = y0 + 14 + 16 * i if top else y1 - 8 - 16 * (len(self.legend) - 1 - i)
            lx = x1 - 215 if self.legend_at.endswith("right") else x0 + 8
            if kind == "line":
                out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
            elif kind == "point":
                out.append(f'<circle cx="{lx + 9}" cy="{ly - 4}" r="4" fill="{colour}"/>')
            else:
                out.append(f'<rect x="{lx}" y="{ly - 10}" width="18" height="10" fill="{colour}" fill-opacity="0.75"/>')
            out.append(f'<text x="{lx + 24}" y="{ly}" font-size="11" style="{FONT}">{escape(label)}</text>')
        out.append("</svg>")
        return "".join(out)


def heatmap(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, *, size: int = 340) -> str:
    """A confusion matrix: true class in rows, predicted in columns, counts and row percentages in cells."""
    n = len(labels)
    left, top, cell = 90, 50, (size - 110) / max(n, 1)
    total_rows = [max(sum(row), 1) for row in matrix]
    peak = max((v for row in matrix for v in row), default=1) or 1
    out = [f'<svg viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" aria-label="{escape(title)}">',
           f'<rect width="{size}" height="{size}" fill="#fff"/>',
           f'<text x="{size / 2}" y="20" font-size="14" font-weight="bold" text-anchor="middle" style="{FONT}">'
           f"{escape(title)}</text>",
           f'<text x="{left + n * cell / 2}" y="40" font-size="12" text-anchor="middle" style="{FONT}">predicted</text>',
           f'<text transform="translate(16,{top + n * cell / 2}) rotate(-90)" font-size="12" text-anchor="middle" '
           f'style="{FONT}">true</text>']
    for i in range(n):
        out.append(f'<text x="{left - 8}" y="{top + (i + 0.5) * cell + 4}" font-size="12" text-anchor="end" '
                   f'style="{FONT}">{escape(labels[i])}</text>')
        out.append(f'<text x="{left + (i + 0.5) * cell}" y="{top + n * cell + 18}" font-size="12" '
                   f'text-anchor="middle" style="{FONT}">{escape(labels[i])}</text>')
        for j in range(n):
            v = matrix[i][j]
            shade = v / peak
            fill = f"rgb({int(255 - 200 * shade)},{int(255 - 150 * shade)},{int(255 - 60 * shade)})"
            colour = "#fff" if shade > 0.55 else "#111"
            cx, cy = left + j * cell, top + i * cell
            out.append(f'<rect x="{_fmt(cx)}" y="{_fmt(cy)}" width="{_fmt(cell)}" height="{_fmt(cell)}" '
                       f'fill="{fill}" stroke="#fff"/>')
            out.append(f'<text x="{_fmt(cx + cell / 2)}" y="{_fmt(cy + cell / 2)}" font-size="18" '
                       f'text-anchor="middle" style="{FONT};fill:{colour}">{v}</text>')
            out.append(f'<text x="{_fmt(cx + cell / 2)}" y="{_fmt(cy + cell / 2 + 18)}" font-size="12" '
                       f'text-anchor="middle" style="{FONT};fill:{colour}">{100 * v / total_rows[i]:.1f}%</text>')
    out.append("</svg>")
    return "".join(out)
