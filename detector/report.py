"""The evaluation report: one HTML file with every figure inline (SVG charts, base64 thumbnails).

It opens from disk or an e-mail attachment with nothing else beside it and
loads nothing from the network. Figures, as in the original project:
performance dashboard, training curves, confusion matrix, ROC curve,
precision-recall curve, calibration (reliability) plot, confidence
distribution, error analysis and sample predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfscan.detector._report_reviews import REVIEW_FIGURE, reviews_section
from dfscan.htmlkit import PALETTE, Chart, card, escape, heatmap, page, thumbnail_data_uri
from dfscan.workers.video.sample import is_video_path

# Figure ids, in page order; tests check that each is present.
FIGURES = (
    ("fig-dashboard", "Performance dashboard"),
    ("fig-training-curves", "Training curves"),
    ("fig-confusion-matrix", "Confusion matrix"),
    ("fig-roc", "ROC curve"),
    ("fig-pr", "Precision-recall curve"),
    ("fig-calibration", "Calibration (reliability) plot"),
    ("fig-confidence", "Confidence distribution"),
    ("fig-errors", "Error analysis"),
    ("fig-samples", "Sample predictions"),
)
THUMB = 112

# The evaluation report's own rules, on top of the kit's stylesheet.
CSS = """
h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
table{font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}.pass{color:#1a7f37;font-weight:bold}.fail{color:#b42318;font-weight:bold}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumb{width:130px;font-size:11px;text-align:center;overflow-wrap:anywhere}
.thumb img{width:112px;height:112px;border:3px solid #ccc}.ok img{border-color:#2ca02c}.bad img{border-color:#d62728}
.note{background:#fff8e1;border:1px solid #f0d78c;padding:8px 12px;font-size:13px}
"""


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _figure(fig_id: str, body: str, caption: str) -> str:
    title = dict(FIGURES)[fig_id]
    return f'<h2>{escape(title)}</h2><figure id="{fig_id}">{body}<figcaption>{escape(caption)}</figcaption></figure>'


def _video_thumbnail(path: str, px: int) -> str | None:
    """A data URI of the middle frame of the video at ``path``, sampled as a scan samples it; None if it can't be."""
    import base64
    import io

    from PIL import Image

    from dfscan.workers.reading.errors import ImageError
    from dfscan.workers.video.sample import sample_video

    try:
        sampled = sample_video(path, 1, time_limit_s=10.0)
    except ImageError:
        return None
    if not sampled.frames:
        return None
    im = Image.fromarray(sampled.frames[0])
    im.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb_cell(row: dict[str, Any]) -> str:
    if is_video_path(row["path"]):
        src = _video_thumbnail(row["path"], THUMB)
    else:
        src, _ = thumbnail_data_uri(row["path"], THUMB)
    ok = row["true"] == row["predicted"]
    img = f'<img src="{src}" alt="{escape(Path(row["path"]).name)}">' if src else "<div>(unreadable)</div>"
    return (
        f'<div class="thumb {"ok" if ok else "bad"}">{img}<br>{escape(Path(row["path"]).name)}<br>'
        f'true <b>{escape(row["true"])}</b>, said <b>{escape(row["predicted"])}</b><br>'
        f'p(fake) {row["p_fake"]:.3f}</div>'
    )


def _unit(m: dict[str, Any]) -> str:
    """What the record counts: "images", or "videos" for a data set of videos."""
    return f'{m.get("data", {}).get("media", "image")}s'


def _dashboard(m: dict[str, Any]) -> str:
    cards = [
        ("accuracy", _pct(m["accuracy"])),
        ("ROC AUC", _num(m.get("roc_auc"))),
        ("PR AUC", _num(m.get("pr_auc"))),
        ("average precision", _num(m.get("average_precision"))),
        ("ECE", _num(m["calibration"]["ece"])),
        ("mean confidence", _num(m["confidence"]["mean"])),
        (_unit(m), str(m["n"])),
        ("threshold / T", f'{m["threshold"]:.3f} / {m["temperature"]:.3f}'),
    ]
    html = '<div class="cards">' + "".join(card(k, v) for k, v in cards) + "</div>"
    names = list(m["targets"])
    chart = Chart("Metrics against the original project's targets (dashed)", "", "score", xlim=(0, len(names)),
                  ylim=(0, 1), width=520, height=260, xticks=False)
    for i, name in enumerate(names):
        rec = m["targets"][name]
        value = rec["value"] or 0.0
        chart.bars([i + 0.15, i + 0.85], [value], colour=PALETTE[2] if rec["passed"] else PALETTE[1])
        chart.line([i + 0.1, i + 0.9], [rec["target"]] * 2, colour="#000", dash="4 3", width=1.5)
        chart.text(i + 0.5, 0.04, name.replace("_", " "), anchor="middle", size=11)
    rows = "".join(
        f'<tr><td class="l">{escape(name.replace("_", " "))}</td><td>{_num(rec["value"])}</td><td>&ge; {rec["target"]}</td>'
        f'<td class="{"pass" if rec["passed"] else "fail"}">{"PASS" if rec["passed"] else "FAIL"}</td></tr>'
        for name, rec in m["targets"].items()
    )
    table = f'<table><tr><th class="l">metric</th><th>value</th><th>target</th><th>status</th></tr>{rows}</table>'
    prf = "".join(
        f'<tr><td class="l">{escape(c)}</td><td>{_pct(r["precision"])}</td><td>{_pct(r["recall"])}</td>'
        f'<td>{_pct(r["f1"])}</td><td>{r["support"]}</td></tr>'
        for c, r in m["per_class"].items()
    )
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        r = m[key]
        prf += (f'<tr><td class="l">{label}</td><td>{_pct(r["precision"])}</td><td>{_pct(r["recall"])}</td>'
                f'<td>{_pct(r["f1"])}</td><td>{m["n"]}</td></tr>')
    prf_table = (f'<table><tr><th class="l">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>'
                 f"{prf}</table>")
    return html + f'<div class="row">{chart.render()}<div>{table}<br>{prf_table}</div></div>'


def _training_curves(history: dict[str, Any] | None) -> tuple[str, str]:
    h = (history or {}).get("history") or {}
    epochs = h.get("epoch") or []
    if not epochs:
        return ('<p class="note">No training history: pass --training-results, or keep training_results.json '
                "beside the checkpoint the model was exported from.</p>"), "no training history available"
    x = [float(e) for e in epochs]
    xlim = (min(x) - 0.5 if len(x) == 1 else min(x), max(x) + 0.5 if len(x) == 1 else max(x))
    losses = [v for v in h["train_loss"] + h["val_loss"] if v == v]
    loss = Chart("Loss", "epoch", "cross-entropy", xlim=xlim, ylim=(0, max(losses + [0.1]) * 1.1))
    loss.line(x, h["train_loss"], colour=PALETTE[0], label="train", markers=True)
    loss.line(x, h["val_loss"], colour=PALETTE[1], label="validation", markers=True)
    acc = Chart("Accuracy", "epoch", "accuracy", xlim=xlim, ylim=(0, 1))
    acc.line(x, h["train_acc"], colour=PALETTE[0], label="train", markers=True)
    acc.line(x, h["val_acc"], colour=PALETTE[1], label="validation", markers=True)
    best = history.get("best_epoch") if history else None
    caption = (f"{len(epochs)} epochs; best validation accuracy {_pct(history.get('best_val_accuracy'))} "
               f"at epoch {best}; stop reason: {history.get('stop_reason')}")
    return f'<div class="row">{loss.render()}{acc.render()}</div>', caption


def _roc(m: dict[str, Any]) -> tuple[str, str]:
    if not m.get("curves"):
        return '<p class="note">ROC needs both classes in the split.</p>', "not available"
    c = Chart("ROC curve", "false positive rate (reals called fake)", "true positive rate (fakes caught)",
              xlim=(0, 1), ylim=(0, 1), width=440, height=400, legend_at="lower right")
    c.line([0, 1], [0, 1], colour="#999", dash="5 4", width=1)
    c.line(m["curves"]["roc"]["x"], m["curves"]["roc"]["y"], colour=PALETTE[0], label=f"AUC = {m['roc_auc']:.4f}")
    cm = m["confusion_matrix"]["matrix"]
    fpr = cm[0][1] / max(cm[0][0] + cm[0][1], 1)
    tpr = cm[1][1] / max(cm[1][0] + cm[1][1], 1)
    c.point(fpr, tpr, colour=PALETTE[1], label=f"operating point (t = {m['threshold']:.3f})")
    y = m["youden"]
    c.point(y["fpr"], y["tpr"], colour=PALETTE[2], label=f"Youden optimum (t = {y['threshold']:.3f})", r=4)
    return c.render(), (f"ROC AUC {m['roc_auc']:.4f}. Youden-optimal threshold {y['threshold']:.4f} "
                        f"(J = {y['j']:.3f}); the model's threshold gives FPR {fpr:.3f}, TPR {tpr:.3f}.")


def _pr(m: dict[str, Any]) -> tuple[str, str]:
    if not m.get("curves"):
        return '<p class="note">A precision-recall curve needs both classes in the split.</p>', "not available"
    c = Chart("Precision-recall curve", "recall (fakes caught)", "precision (of those called fake)",
              xlim=(0, 1), ylim=(0, 1.02), width=440, height=400, legend_at="lower left")
    prevalence = m["per_class"]["fake"]["support"] / max(m["n"], 1)
    c.line([0, 1], [prevalence, prevalence], colour="#999", dash="5 4", width=1, label="chance (prevalence)")
    c.line(m["curves"]["pr"]["x"], m["curves"]["pr"]["y"], colour=PALETTE[0], label=f"PR AUC = {m['pr_auc']:.4f}")
    return c.render(), f"PR AUC {m['pr_auc']:.4f}, average precision {m['average_precision']:.4f}."


def _calibration(m: dict[str, Any]) -> tuple[str, str]:
    cal = m["calibration"]
    b = cal["bins"]
    edges = b["edges"]
    c = Chart("Reliability diagram", "confidence (probability of the predicted class)", "accuracy",
              xlim=(0, 1), ylim=(0, 1), width=440, height=400, legend_at="upper left")
    c.line([0, 1], [0, 1], colour="#999", dash="5 4", width=1, label="perfect calibration")
    c.bars(edges, [a if a is not None else 0 for a in b["accuracy"]], colour=PALETTE[0], label="accuracy per bin")
    mids = [(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])]
    pts = [(x, v) for x, v, n in zip(mids, b["confidence"], b["count"]) if n]
    c.line([p[0] for p in pts], [p[1] for p in pts], colour=PALETTE[1], label="mean confidence per bin", markers=True)
    counts = "".join(
        f"<td>{int(n)}</td>" for n in b["count"]
    )
    heads = "".join(f"<th>{lo:.1f}-{hi:.1f}</th>" for lo, hi in zip(edges[:-1], edges[1:]))
    table = f"<table><tr><th class='l'>bin</th>{heads}</tr><tr><td class='l'>{_unit(m)}</td>{counts}</tr></table>"
    caption = (f"ECE {cal['ece']:.4f} at temperature {m['temperature']:.3f} (ECE {cal['ece_at_temperature_1']:.4f} "
               f"at T = 1); Brier score {cal['brier']:.4f}, log loss {cal['log_loss']:.4f}.")
    return c.render() + table, caption


def _confidence(m: dict[str, Any]) -> tuple[str, str]:
    conf = m["confidence"]
    h = conf["histogram"]
    peak = max(h["correct"] + h["incorrect"] + [1])
    c = Chart("Confidence of correct and incorrect predictions", "confidence", _unit(m),
              xlim=(h["edges"][0], 1.0), ylim=(0, peak * 1.1), width=520, height=340, legend_at="upper left")
    c.bars(h["edges"], h["correct"], colour=PALETTE[2], label="correct", share=0.5)
    c.bars(h["edges"], h["incorrect"], colour=PALETTE[1], label="incorrect", share=0.5, offset=0.5)
    u = m["uncertainty"]
    rows = [
        ("mean confidence", _num(conf["mean"])),
        ("mean confidence, correct", _num(conf["mean_correct"])),
        ("mean confidence, incorrect", _num(conf["mean_incorrect"])),
        ("mean normalised entropy", _num(u["mean_entropy"])),
        ("mean entropy, correct", _num(u["mean_entropy_correct"])),
        ("mean entropy, incorrect", _num(u["mean_entropy_incorrect"])),
        (f"share with entropy > {u['high_uncertainty_threshold']}", _pct(u["high_uncertainty_share"])),
        ("accuracy when certain", _pct(u["accuracy_when_certain"])),
        ("accuracy when uncertain", _pct(u["accuracy_when_uncertain"])),
    ]
    table = "<table>" + "".join(f'<tr><td class="l">{escape(k)}</td><td>{v}</td></tr>' for k, v in rows) + "</table>"
    return (f'<div class="row">{c.render()}{table}</div>',
            "Uncertainty is the entropy of the (real, fake) probabilities divided by log 2: 0 is certain, 1 a coin toss.")


def _errors(m: dict[str, Any]) -> tuple[str, str]:
    e = m["errors"]
    b = e["by_confidence"]
    peak = max(b["false_positives"] + b["false_negatives"] + [1])
    c = Chart("Errors by confidence", "confidence of the wrong answer", "errors",
              xlim=(b["edges"][0], 1.0), ylim=(0, peak * 1.15), width=520, height=340, legend_at="upper left")
    c.bars(b["edges"], b["false_positives"], colour=PALETTE[3], label=f"false positives ({m['false_positives']})",
           share=0.5)
    c.bars(b["edges"], b["false_negatives"], colour=PALETTE[4], label=f"false negatives ({m['false_negatives']})",
           share=0.5, offset=0.5)
    rows = "".join(
        f'<tr><td class="l">{escape(r["path"])}</td><td class="l">{escape(r["true"])}</td>'
        f'<td class="l">{escape(r["predicted"])}</td><td>{r["p_fake"]:.4f}</td><td>{r["confidence"]:.4f}</td></tr>'
        for r in e["highest_confidence"]
    )
    table = (f'<table><tr><th class="l">path</th><th class="l">true</th><th class="l">predicted</th><th>p(fake)</th>'
             f"<th>confidence</th></tr>{rows}</table>") if rows else "<p>No errors.</p>"
    thumbs = '<div class="thumbs">' + "".join(_thumb_cell(r) for r in e["highest_confidence"][:6]) + "</div>"
    caption = (f"{e['count']} errors ({_pct(e['rate'])}): {m['false_positives']} reals called fake, "
               f"{m['false_negatives']} fakes missed. The table lists the most confident mistakes.")
    return f'<div class="row">{c.render()}</div><h3>Highest-confidence errors</h3>{thumbs}{table}', caption


def _samples(m: dict[str, Any]) -> tuple[str, str]:
    cells = "".join(_thumb_cell(r) for r in m["samples"])
    return f'<div class="thumbs">{cells}</div>', "A fixed sample of each class; green border: correct, red: wrong."


def render(record: dict[str, Any], history: dict[str, Any] | None = None) -> str:
    """The report's HTML for a metrics record (as written to metrics.json)."""
    if "n" not in record:  # analysts' decisions alone (`dfscan evaluate --from-reviews` without a data set)
        header = (f"<h1>dfscan evaluation report</h1><p>The detector measured on analysts' decisions only. "
                  f"Written {escape(str(record.get('written_at', '')))}.</p>")
        return page("dfscan evaluation", header + reviews_section(record["reviews"]), css=CSS)
    parts = [_figure("fig-dashboard", _dashboard(record),
                     f"Accuracy {_pct(record['accuracy'])} on {record['n']} {_unit(record)} at threshold "
                     f"{record['threshold']:.3f}.")]
    for fig_id, build in (
        ("fig-training-curves", lambda: _training_curves(history)),
        ("fig-confusion-matrix", lambda: (heatmap(record["confusion_matrix"]["matrix"],
                                                  record["confusion_matrix"]["labels"], "Confusion matrix"),
                                          "Rows: true class; columns: predicted; percentages of each row.")),
        ("fig-roc", lambda: _roc(record)),
        ("fig-pr", lambda: _pr(record)),
        ("fig-calibration", lambda: _calibration(record)),
        ("fig-confidence", lambda: _confidence(record)),
        ("fig-errors", lambda: _errors(record)),
        ("fig-samples", lambda: _samples(record)),
    ):
        body, caption = build()
        parts.append(_figure(fig_id, body, caption))
    if record.get("reviews"):  # beside the data set's figures, right after its dashboard
        parts.insert(1, reviews_section(record["reviews"]))
    model = record.get("model", {})
    data = record.get("data", {})
    failed = len(data.get("failed", []))
    header = (
        f"<h1>dfscan evaluation report</h1><p>Model <code>{escape(str(model.get('path', '?')))}</code> "
        f"({escape(str(model.get('architecture', '?')))}); data <code>{escape(str(data.get('root', '?')))}</code>, "
        f"split <b>{escape(str(data.get('split', '?')))}</b>, {record['n']} {_unit(record)} scored"
        f"{f', {failed} could not be decoded' if failed else ''}. Written {escape(str(record.get('written_at', '')))}."
        f"</p>"
    )
    if data.get("media") == "video":
        weaker = (" The model has no video graph: each frame was scored alone and the logits averaged, a weaker "
                  "verdict than a sequence model's." if data.get("scoring") == "per-frame mean" else "")
        header += (f'<p class="note">One verdict per video: {escape(str(data.get("frames")))} frames sampled evenly '
                   f"in time, scored as one sequence ({escape(str(data.get('scoring')))}).{weaker}</p>")
    if data.get("synthetic"):
        header += (
            f'<p class="warning"><b>Synthetic data.</b> These {_unit(record)} were made by <code>dfscan synth</code>: '
            "procedural images and a simulator of generator up-sampling artefacts, not real deepfakes. The figures "
            "say how well the model learnt that simulator, nothing about real deepfake detection.</p>"
        )
    shown = FIGURES[:1] + ((REVIEW_FIGURE,) if record.get("reviews") else ()) + FIGURES[1:]
    toc = "<p>" + " · ".join(f'<a href="#{fid}">{escape(t)}</a>' for fid, t in shown) + "</p>"
    return page("dfscan evaluation", f"{header}{toc}{''.join(parts)}", css=CSS)


def write_report(path: Path, record: dict[str, Any], *, history: dict[str, Any] | None = None, source=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(record, history), encoding="utf-8")
    tmp.replace(path)
    return path
