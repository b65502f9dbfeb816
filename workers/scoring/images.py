"""The image stage: read each image in a thread pool, hash its bytes, find copies, decode within a byte budget.

Each file's header is read first (:data:`~dfscan.workers.reading.HEAD_BYTES`);
a file whose header is no image, or declares more pixels than the limit, is
refused on it.  The rest of larger files is read in rounds whose bytes fit
``budget_bytes``; each round is decoded (and its bytes dropped) before the
next is read, so a batch of 64 sparse 255 MB "photos" never holds more than
the budget.  A file larger than the whole budget is an error row.

Files read whole are hashed (SHA-256, :func:`~dfscan.workers.scoring.dedupe.content_hash`)
as they are read; a file whose bytes an earlier one of the batch had is a
copy (``Item.copy_of``), never decoded.  The decoder gives a tensor per
image (:class:`~dfscan.workers.scoring.stages.TensorPayload`) or, with faces
on, the image's face crops (:class:`~dfscan.workers.scoring.face_stage.FaceCrops`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from dfscan.workers.images import refuse_from_header
from dfscan.workers.reading import MAX_FILE_BYTES, FileData, ImageError, read_head, stat_quietly
from dfscan.workers.scoring.dedupe import content_hash
from dfscan.workers.scoring.stages import Batch, Item, TensorPayload

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.stages import Job

__all__ = ["READ_BUDGET_BYTES", "ImageStage", "image_stage"]

# Bytes of file content a worker holds at once beyond each file's first HEAD_BYTES: see the module's docstring.
# Batches waiting in the prefetch queue hold decoded tensors only, never file bytes.
READ_BUDGET_BYTES = 2 * MAX_FILE_BYTES


class ImageStage:
    """Claims every item no earlier stage took; reads, hashes and decodes it with ``decoder``."""

    name = "images"
    phase = "prepare"

    def __init__(self, decoder, read_threads: int = 8, max_file_bytes: int = MAX_FILE_BYTES,
                 budget_bytes: int = READ_BUDGET_BYTES, store=None) -> None:
        self.decoder = decoder
        self.store = store  # reads s3:// paths (scanner.objects.ObjectStore; None: the default endpoint)
        self.max_file_bytes = max_file_bytes
        self.budget_bytes = budget_bytes
        pre = getattr(decoder, "pre", None)
        self.max_pixels: int | None = getattr(pre, "max_pixels", None)
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="read")
        # One batch is read and decoded at a time, so the budget holds per worker even if two scans share it.
        self._one_at_a_time = threading.Lock()

    def cost(self, path: str) -> int | None:
        return None  # every path no other stage weighs weighs 1

    def run(self, batch: Batch, job: "Job | None" = None) -> None:
        items = [item for item in batch.items if item.stage is None]
        for item in items:
            item.stage = self.name
        if items:
            with self._one_at_a_time:
                _Reading(self, items, job.roots if job is not None else None).run()

    def record(self) -> dict | None:
        return None  # the decoder is the worker record's own field

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()

    def head(self, path: str, roots: tuple[str, ...] | None = None) -> FileData | ImageError:
        try:
            return read_head(path, self.max_file_bytes, store=self.store, roots=roots)
        except ImageError as exc:
            return exc

    def whole(self, path: str, head: FileData, roots: tuple[str, ...] | None = None) -> FileData | ImageError:
        """The whole file, no more than the size its head saw (the budget was reserved for that)."""
        try:
            f = read_head(path, self.max_file_bytes, head_bytes=head.size, store=self.store, roots=roots)
        except ImageError as exc:
            return exc
        if f.size != head.size or len(f.data) != head.size:
            return ImageError("unreadable", f"file changed size while being read ({head.size} -> {f.size} bytes)")
        return f


class _Reading:
    """One batch's items through reading and decoding (the state of :meth:`ImageStage.run`)."""

    def __init__(self, stage: ImageStage, items: list[Item], roots: tuple[str, ...] | None = None) -> None:
        self.stage = stage
        self.items = items
        self.roots = roots  # the scan's reads stay under them (scanner.confine); None: not confined
        self.first: dict[str, int] = {}  # content hash -> the position that has those bytes first

    def run(self) -> None:
        stage, items = self.stage, self.items
        heads = list(stage._pool.map(lambda path: stage.head(path, self.roots), [it.path for it in items]))
        self._identity(heads)
        whole = [i for i, h in enumerate(heads) if isinstance(h, FileData) and len(h.data) >= h.size]
        copies = self._hashed(whole, (heads[i].data for i in whole))  # type: ignore[union-attr]
        complete, rest = [], []
        for i, head in enumerate(heads):
            if isinstance(head, ImageError) or i in copies:
                continue
            if (refusal := refuse_from_header(head.header, stage.max_pixels)) is not None:
                items[i].fail(refusal)
            elif len(head.data) >= head.size:
                complete.append(i)
            elif head.size > stage.budget_bytes:
                items[i].fail(ImageError(
                    "too-large", f"file is {head.size} bytes, over the worker's read budget of {stage.budget_bytes} bytes"))
            else:
                rest.append(i)
        self._rounds(heads, complete, rest)

    def _identity(self, heads: list[FileData | ImageError]) -> None:
        for item, head in zip(self.items, heads):
            if isinstance(head, ImageError):
                item.size, item.mtime = stat_quietly(item.path, self.roots)
                item.fail(head)
            else:
                item.size, item.mtime, item.etag = head.size, head.mtime, head.etag

    def _hashed(self, positions: list[int], datas: Iterable[bytes]) -> set[int]:
        """Hash the bytes of ``positions``; those whose bytes an earlier position had become its copies."""
        copies = set()
        for i, digest in zip(positions, self.stage._pool.map(content_hash, datas)):
            self.items[i].content_hash = digest
            if self.first.setdefault(digest, i) != i:
                self.items[i].copy_of = self.first[digest]
                copies.add(i)
        return copies

    def _rounds(self, heads: list, complete: list[int], rest: list[int]) -> None:
        """Round 1 decodes the small files with the first big ones; every round's bytes fit the budget."""
        stage, items = self.stage, self.items
        round_ = complete
        while True:
            spent, take = 0, []
            while rest and spent + heads[rest[0]].size <= stage.budget_bytes:
                i = rest.pop(0)
                spent += heads[i].size
                take.append(i)
            full = dict(zip(take, stage._pool.map(lambda i: stage.whole(items[i].path, heads[i], self.roots), take)))
            files = [i for i in take if not isinstance(full[i], ImageError)]
            copies = self._hashed(files, (full[i].data for i in files))
            for i in take:
                if isinstance(full[i], ImageError):
                    items[i].fail(full[i])
            todo = round_ + [i for i in files if i not in copies]
            self._decode(todo, [heads[i] if i in round_ else full[i] for i in todo])
            del full
            if not rest:
                return
            round_ = []

    def _decode(self, todo: Sequence[int], sources: Sequence[FileData]) -> None:
        if not todo:
            return
        for i, out in zip(todo, self.stage.decoder.decode_batch(sources)):
            if isinstance(out, ImageError):
                self.items[i].fail(out)
            elif hasattr(out, "inputs"):  # a payload of its own: the face decoder's crops (face_stage.FaceCrops)
                self.items[i].payload = out
            else:  # the image's tensor (NumPy; a torch tensor on the runtime's device with --batches device)
                self.items[i].payload = TensorPayload(out)


def image_stage(res: "Resources") -> ImageStage:
    from dfscan.workers.scoring.tensors import device_image_decoder

    # --batches device: tensors on the runtime's device from decode on (workers.scoring.tensors).
    decoder = device_image_decoder(res) or res.decoder()
    return ImageStage(decoder, read_threads=res.settings.read_threads, store=res.store)
