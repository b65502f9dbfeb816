"""The table ``dfscan bench`` prints for people; ``--json`` prints :meth:`BenchReport.to_dict` instead."""

from __future__ import annotations

from dfscan.bench.dedupe import format_dedupe
from dfscan.bench.hashes import format_hashes
from dfscan.bench.records import BenchReport

__all__ = ["format_report"]


def format_report(report: BenchReport) -> str:
    """The table for people: images/s per stage, the ratios, peak memory, and what was skipped and why."""
    m = report.machine
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    v = m.get("versions", {})
    lines = [
        f"dfscan bench: {report.images['count']} images ({report.images['source']}), batch {report.batch_size}",
        f"model: {report.model['architecture']} [{report.model['precision']}] {report.model['path']}",
        f"machine: {m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} CPUs, {m['memory_gib']} GiB, {gpus}",
        "         " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        f"{'stage':<7} {'variant':<48} {'images':>7} {'seconds':>8} {'images/s':>10} {'peak RSS MiB':>13} "
        f"{'(+stage)':>9}",
    ]
    skipped = []
    for r in report.rows:
        if r.status != "ok":
            skipped.append(f"  {r.stage} {r.variant}: {r.status}: {r.reason}")
            lines.append(f"{r.stage:<7} {r.variant:<48} {'-':>7} {'-':>8} {r.status:>10} {'-':>13} {'-':>9}")
            continue
        added = max(r.peak_rss_mib - r.start_rss_mib, 0.0)
        lines.append(f"{r.stage:<7} {r.variant:<48} {r.images:>7} {r.seconds:>8.2f} {r.images_per_s:>10.1f} "
                     f"{r.peak_rss_mib:>13.0f} {'+' + format(added, '.0f'):>9}")  # fmt: skip
    lines.append("")
    scan = report.row("scan", "end-to-end")
    if scan is not None and scan.status == "ok":
        d = scan.details
        lines.append(f"end-to-end scan: {scan.images_per_s:.1f} images/s ({d.get('runtime')} {d.get('precision')}, "
                     f"decoder {d.get('decoder')}, SQLite; {d.get('ok')} ok, {d.get('errors')} errors)")  # fmt: skip
    if report.end_to_end_over_slowest is not None:
        lines.append(f"end-to-end / slowest stage ({report.slowest_stage}) = {report.end_to_end_over_slowest:.3f}")
        infer = report.row("infer", f"{scan.details.get('runtime')} {scan.details.get('precision')}") if scan else None
        if infer is not None and "images_per_s_before_scan" in infer.details:
            lines.append(f"  ({infer.key} measured before and after the scan: "
                         f"{infer.details['images_per_s_before_scan']:.1f} and "
                         f"{infer.details['images_per_s_after_scan']:.1f} images/s; the row shows both together)")
    if report.large_jpeg_full_over_draft is not None:
        lines.append(f"large JPEG decode: full decode takes "
                     f"{report.large_jpeg_full_over_draft:.2f}x the time of draft mode (the cost of decoder agreement)")
    if report.dfscan_over_naive is not None:
        lines.append(f"dfscan scan / naive reference loop = {report.dfscan_over_naive:.2f}x")
    on, off = report.row("scan", "end-to-end, faces on"), report.row("scan", "end-to-end, faces off")
    detect = report.row("faces", "detect (mtcnn)")
    if on is not None and off is not None and on.status == off.status == "ok":
        lines.append(f"faces on: {on.images_per_s:.1f} images/s end to end vs {off.images_per_s:.1f} for the classifier "
                     f"alone = {on.images_per_s / off.images_per_s:.2f}x"
                     + (f"; face detection alone {detect.images_per_s:.1f} images/s" if detect and detect.status == "ok"
                        else ""))  # fmt: skip
    if report.videos:
        vd = report.videos
        sample, scan_v = report.row("video", "sample (16 frames, 1080p)"), report.row("scan", "end-to-end, videos")
        if sample is not None and sample.status == "ok":
            lines.append(f"videos ({vd.get('clips')}): sampling {vd['frames']} frames alone {sample.images_per_s:.2f} "
                         f"videos/s ({sample.details['frames_per_s']:.1f} frames/s)"
                         + (f"; scan end to end {scan_v.images_per_s:.2f} videos/s "
                            f"({scan_v.details['frames_per_s']:.1f} frames/s, {scan_v.details.get('scoring')} scoring)"
                            if scan_v is not None and scan_v.status == "ok" else ""))  # fmt: skip
        if vd.get("long_over_short") is not None:
            per = vd["seconds_per_video"]
            lines.append(f"sampling {vd['frames']} frames: 10-minute video {per['10-min'] * 1000:.0f} ms, 10-second "
                         f"video {per['10-s'] * 1000:.0f} ms = {vd['long_over_short']:.2f}x (goal: within 2x)")
    lines.extend(format_dedupe(report.dedupe or {}))
    lines.extend(format_hashes(report.rows))
    if report.int8 and report.int8.get("agreement"):
        a = report.int8["agreement"]
        lines.append(f"INT8 vs FP32 on {a['images']} images: {a['identical_share']:.2%} identical verdicts, "
                     f"largest |dp_fake| {a['max_abs_dp_fake']:.4f} (FP32 p_fake {a['fp32_p_fake_min']:.3f}.."
                     f"{a['fp32_p_fake_max']:.3f})")  # fmt: skip
        if a["fp32_p_fake_std"] < 0.01:
            lines.append("  (the FP32 model gives these images almost the same p_fake, so this agreement says little; "
                         "measure it with a trained model: dfscan quantize MODEL --calibrate DIR --check DIR)")
    elif report.int8 and report.int8.get("error"):
        lines.append(f"INT8 quantisation failed: {report.int8['error']}")
    lines.append(f"peak RSS of the whole run: {report.peak_rss_mib:.0f} MiB; run took {report.seconds:.0f} s "
                 "(peak RSS per row: the process during that stage; (+stage): above its RSS when the stage began)")
    if skipped:
        lines.append("not measured:")
        lines.extend(skipped)
    return "\n".join(lines)
