"""``dfscan bench``'s provenance row: the provenance stage's cost per image beside the classifier's, in one run.

``provenance c2pa+xmp+settings+watermark``: each bench image read again from its file and its provenance read
as the scan's provenance stage reads it (:class:`dfscan.workers.provenance.ProvenanceReader`: the C2PA
manifest, the metadata's declarations, the image decoded again for the watermark); its time per image as a
share of the classifier's (goal: under 10% on CPU with the watermark decoder on), and, for comparison, the same
without the watermark (its own decode of the pixels is most of the cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dfscan.bench import stages
from dfscan.bench.records import Row

__all__ = ["VARIANT", "format_provenance", "provenance_row"]

VARIANT = "c2pa+xmp+settings+watermark"


def provenance_row(paths: Sequence[str], min_seconds: float, infer: Row | None) -> Row:
    """The provenance of every image, read from its file; details: its share of the classifier's time per image."""
    from dfscan.workers.provenance import ProvenanceReader
    from dfscan.workers.reading.reader import read_file

    def run(reader: ProvenanceReader) -> int:
        for path in paths:
            reader.image(read_file(path).data)
        return len(paths)

    full, bare = ProvenanceReader(), ProvenanceReader(watermark=False)
    t = stages.timed(lambda: run(full), min_seconds, warmup=lambda: full.image(read_file(paths[0]).data))
    without = stages.timed(lambda: run(bare), min_seconds / 2)
    details: dict[str, Any] = {"images": f"{len(paths)} bench images, read again from their files",
                               "ms_without_watermark": 1000 / without.images_per_s}
    if infer is not None and infer.status == "ok" and infer.images_per_s > 0:
        details["classifier"] = infer.key
        details["share_of_classifier"] = infer.images_per_s / t.images_per_s
    return Row("provenance", VARIANT, "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib, t.start_rss_mib,
               t.repeats, details=details)


def format_provenance(rows: list[Row]) -> list[str]:
    return [f"provenance per image: {1000 / r.images_per_s:.2f} ms ({r.details['ms_without_watermark']:.2f} ms "
            f"without the watermark), {r.details['share_of_classifier']:.2%} of the classifier's time "
            f"({r.details['classifier']}; goal: under 10% on CPU)"
            for r in rows if r.stage == "provenance" and r.status == "ok" and "share_of_classifier" in r.details]
