"""The provenance stage: what each image and video says about its own origin, stamped on its row.

In the prepare phase, after the hash stage.  The image stage keeps no file bytes on its items (its read
budget drops them once decoded), so each image is read again here, whole, as the hash stage does where it
must (:func:`~dfscan.workers.reading.read_head`, under the scan's roots); a video's manifest is read from
a descriptor of the file (an ``s3://`` video: its bytes, up to the read limit), never the whole of it in
memory.  The watermark decoder needs the image's own pixels (the decoded tensor is resized to the model's
input), so the image is decoded again, at most :data:`~dfscan.workers.provenance.watermarks.MAX_WATERMARK_PIXELS`
of its top rows read.  A copy of an earlier file of the batch takes its original's row, provenance included;
a verdict reused from an earlier scan gets the provenance read here.  Nothing here changes a verdict: a
file whose provenance can't be read gets ``c2pa='error'`` and the reason, and keeps its row.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dfscan.db.records import ProvenanceRow, ResultRow
from dfscan.scanner.objects import is_object_url
from dfscan.scanner.paths import on_disk
from dfscan.workers.provenance import ProvenanceReader
from dfscan.workers.reading import MAX_FILE_BYTES, HEAD_BYTES, ImageError, read_file, read_head
from dfscan.workers.reading.reader import open_local
from dfscan.workers.scoring.stages import Batch, Item

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.stages import Job

__all__ = ["Declared", "ProvenanceStage", "provenance_stage"]


@dataclass(frozen=True)
class Declared:
    """One file's provenance; :meth:`stamp` puts it and ``synthetic_declared`` on its row."""

    provenance: ProvenanceRow

    def stamp(self, row: ResultRow) -> ResultRow:
        return replace(row, provenance=self.provenance, synthetic_declared=self.provenance.synthetic_declared)


class ProvenanceStage:
    """Gives each image and video of a batch that was read (a payload, or a row such as no-face), and is no copy
    of an earlier one, its :class:`Declared`."""

    name = "provenance"
    phase = "prepare"

    def __init__(self, reader: ProvenanceReader, store=None) -> None:
        self.reader = reader
        self.store = store

    def cost(self, path: str) -> int | None:
        return None

    def run(self, batch: Batch, job: "Job | None" = None) -> None:
        roots = job.roots if job is not None else None
        for item in batch.items:
            if (item.payload is not None or item.row is not None) and item.error is None and item.copy_of is None:
                item.provenance = Declared(self.read(item, roots))

    def read(self, item: Item, roots: tuple[str, ...] | None) -> ProvenanceRow:
        try:
            if item.kind == "video":
                return self._video(item.path, roots)
            data = read_head(item.path, MAX_FILE_BYTES, head_bytes=max(item.size or 0, 1), store=self.store,
                             roots=roots).data
        except ImageError as exc:
            return ProvenanceRow("error", error=f"not read again for provenance: {exc.message}"[:1000])
        return self.reader.image(data)

    def _video(self, path: str, roots: tuple[str, ...] | None) -> ProvenanceRow:
        disk = on_disk(path)
        if is_object_url(disk):
            data = read_file(path, MAX_FILE_BYTES, store=self.store).data
            return self.reader.video(data[:HEAD_BYTES], io.BytesIO(data))
        try:
            with os.fdopen(open_local(disk, roots), "rb") as f:
                head = f.read(64)
                f.seek(0)
                return self.reader.video(head, f)
        except OSError as exc:
            return ProvenanceRow("error", error=f"not read again for provenance: {exc.strerror or exc}")

    def record(self) -> dict | None:
        return {"provenance": True, "watermark": self.reader.watermark,
                "trust_anchors": self.reader.manifests.trust_anchors_pem is not None}

    def close(self) -> None:
        pass


def provenance_stage(res: "Resources") -> ProvenanceStage | None:
    s = res.settings
    if not s.provenance:
        return None
    anchors = s.c2pa_trust_anchors.read_text(encoding="ascii", errors="replace") if s.c2pa_trust_anchors else None
    return ProvenanceStage(ProvenanceReader(anchors, max_pixels=res.pre.max_pixels), store=res.store)
