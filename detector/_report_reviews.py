"""The evaluation report's "Reviewed by analysts" section: the detector measured on the team's own decisions."""

from __future__ import annotations

from typing import Any

from dfscan.htmlkit import card, escape, heatmap

REVIEW_FIGURE = ("fig-reviews", "Reviewed by analysts")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _rate(r: dict[str, Any]) -> str:
    """``83.3% [62.6%, 93.9%] (10/12)``: the value, its 95% interval, and the counts it rests on."""
    if r["value"] is None:
        return "n/a (no items)"
    lo, hi = r["interval"]
    return f"{_pct(r['value'])} [{_pct(lo)}, {_pct(hi)}] ({r['successes']}/{r['n']})"


def reviews_section(reviews: dict[str, Any]) -> str:
    """The section's HTML (title, figure and caption) for the ``reviews`` record of ``metrics.json``."""
    fig_id, title = REVIEW_FIGURE
    n = reviews["n_decisions"]
    c = reviews["decisions"]
    cards = [
        ("decisions used", str(n)),
        ("precision of 'fake'", _pct(reviews["precision"]["value"])),
        ("recall among reviewed", _pct(reviews["recall"]["value"])),
        ("accuracy", _pct(reviews["accuracy"]["value"])),
    ]
    rows = [
        ("precision of the detector's 'fake' (decided fake / called fake)", _rate(reviews["precision"])),
        ("recall among reviewed items (called fake / decided fake)", _rate(reviews["recall"])),
        ("accuracy (label agrees with the decision)", _rate(reviews["accuracy"])),
        ("false-positive rate (called fake / decided real)", _rate(reviews["false_positive_rate"])),
    ]
    figures = ("<table><tr><th class='l'>figure</th><th>value [95% Wilson interval] (counts)</th></tr>"
               + "".join(f'<tr><td class="l">{escape(k)}</td><td>{escape(v)}</td></tr>' for k, v in rows)
               + "</table>")
    left_out = [("decided fake (all current decisions)", c.get("fake", 0)),
                ("decided real (all current decisions)", c.get("real", 0)),
                ("unsure (not used)", c.get("unsure", 0)), ("escalate (not used)", c.get("escalate", 0)),
                ("fake/real on unscored rows (errors, no face; not used)", c.get("not_scored", 0)),
                ("copies of the same bytes (counted once)", c.get("duplicates", 0)),
                ("same bytes decided both ways (not used)", c.get("conflicting", 0))]
    counts = ("<table><tr><th class='l'>decisions</th><th>items</th></tr>"
              + "".join(f'<tr><td class="l">{escape(k)}</td><td>{v}</td></tr>' for k, v in left_out) + "</table>")
    matrix = heatmap(reviews["confusion_matrix"]["matrix"], reviews["confusion_matrix"]["labels"],
                     "Decision by detector label")
    scans = ", ".join(str(s) for s in reviews.get("scans", []))
    note = ('<p class="note">Recall here is among reviewed items only: analysts decide what their queue shows, '
            "mostly what the detector flagged, so fakes it missed are rarely reviewed and this recall overstates "
            "the recall on all content. Precision is the figure these decisions measure best.</p>")
    body = (f'<div class="cards">{"".join(card(k, v) for k, v in cards)}</div>{note}'
            f'<div class="row">{matrix}<div>{figures}<br>{counts}</div></div>')
    caption = (f"On {n} decisions (fake or real, on scored items) from scan {escape(scans)}; "
               f"model {escape(str(reviews.get('model_sha256') or '?')[:12])}. Rows ('true'): the analysts' decision; "
               f"columns ('predicted'): the label the detector stored.")
    return (f'<h2>{escape(title)}</h2><figure id="{fig_id}">{body}<figcaption>{caption}</figcaption></figure>')
