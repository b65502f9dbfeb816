"""Plain values that cross the database boundary (no ORM objects leave db/)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace
from datetime import datetime
from typing import Any, TypeVar

__all__ = ["CHUNK_STATUSES", "FINISHED", "RESULT_KINDS", "RESULT_LABELS", "RESULT_STATUSES", "SCAN_END_STATUSES",
           "VERDICT_SOURCES", "FaceRow", "FrameRow", "MatchRow", "ProvenanceRow", "ResultRow", "ScanSummary"]  # fmt: skip

# ``no-face``: faces were on and the image has none worth scoring; neither a verdict nor an error.
RESULT_STATUSES = ("ok", "error", "no-face")
RESULT_LABELS = ("real", "fake")
RESULT_KINDS = ("image", "video")
SCAN_END_STATUSES = ("completed", "failed", "cancelled")
CHUNK_STATUSES = ("queued", "done", "failed")
# The statuses of a chunk that is over: nothing more to score in it.
FINISHED = ("done", "failed")
# Where a row's verdict (or error) came from (migration 0011; docs/sql.md): ``computed`` from this
# file's own bytes in this scan; ``copy`` from an earlier file of this scan with the same bytes
# (the same content hash); ``reused`` from an ``ok`` row of an earlier scan with the same model and
# content hash (``--reuse-verdicts``).  Rows written before 0011 were all computed.
VERDICT_SOURCES = ("computed", "copy", "reused")


@dataclass(frozen=True, slots=True)
class FaceRow:
    """One scored face of an image: its box in the original image's pixels, the detector's score, its verdict."""

    index: int
    x: int
    y: int
    w: int
    h: int
    detector_score: float
    p_fake: float
    label: str


@dataclass(frozen=True, slots=True)
class FrameRow:
    """One sampled frame of a video in one track: where and when it is, and what the model made of it.

    ``track`` 0 is the whole frame when faces are off; with faces on, each
    face followed through the frames is a track and ``x, y, w, h`` its box in
    the frame's upright pixels.  ``track_p_fake`` is the track's verdict (the
    sequence through the video model, or the mean of its frames' p_fake);
    ``p_fake`` is the frame's own, None where only the sequence was scored.
    """

    track: int
    frame_index: int  # which of the T evenly spaced times (0..T-1)
    timestamp_s: float
    x: int | None
    y: int | None
    w: int | None
    h: int | None
    p_fake: float | None
    track_p_fake: float | None
    pdq: str | None = None  # the whole frame's PDQ (faces off; dfscan.workers.scoring.hashes)


@dataclass(frozen=True, slots=True)
class MatchRow:
    """A file (a video: one of its frames) within ``distance`` of a bank's hash (``result_matches``)."""

    bank_id: int | None
    bank: str
    ref: str | None
    label: str | None
    distance: int
    hash: str
    frame: int | None = None  # the video frame's index; None for an image


PROVENANCE_C2PA = ("none", "embedded", "remote", "error")
PROVENANCE_C2PA_STATES = ("valid", "invalid", "trusted")


@dataclass(frozen=True, slots=True)
class ProvenanceRow:
    """What a file says about its own origin (``result_provenance``; dfscan.workers.provenance).

    ``c2pa``: 'none', 'embedded', 'remote' (pointed to, never fetched) or 'error' (``error`` says why: any
    reader that failed, the others' findings kept).  ``codes``: the C2PA failure codes, comma-separated.
    """

    c2pa: str = "none"
    c2pa_state: str | None = None
    codes: str | None = None
    signer: str | None = None
    issuer: str | None = None
    generator: str | None = None
    claim_generator: str | None = None
    creator_tool: str | None = None
    settings_key: str | None = None
    source_type: str | None = None
    watermark: str | None = None
    watermark_ber: float | None = None
    synthetic_declared: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        if self.c2pa not in PROVENANCE_C2PA:
            raise ValueError(f"c2pa {self.c2pa!r} not in {PROVENANCE_C2PA}")
        if self.c2pa_state is not None and self.c2pa_state not in PROVENANCE_C2PA_STATES:
            raise ValueError(f"c2pa_state {self.c2pa_state!r} not in {PROVENANCE_C2PA_STATES}")


_Frozen = TypeVar("_Frozen")


def _init_through_slots(cls: type[_Frozen]) -> type[_Frozen]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot through its own descriptor.

    Why: the ``__init__`` that dataclasses generate for a frozen class looks up
    ``object.__setattr__`` anew for each field; ResultRow has 27, and one row is
    made per image: 4.3 µs a row, against 2.4 with this one (timeit).  It takes
    the same arguments with the same defaults and ends with the class's
    ``__post_init__``; it is made from the fields as dataclasses make theirs,
    from source text.
    """
    params: list[str] = []
    sets: list[str] = []
    closure: dict[str, Any] = {}
    for field in fields(cls):  # type: ignore[arg-type]
        assert field.init and field.default_factory is MISSING, f"{cls.__name__}.{field.name}: not supported"
        name = field.name
        closure[f"_set_{name}"] = cls.__dict__[name].__set__
        if field.default is not MISSING:
            closure[f"_default_{name}"] = field.default
        params.append(name if field.default is MISSING else f"{name}=_default_{name}")
        sets.append(f"  _set_{name}(self, {name})\n")
    source = (f"def make({', '.join(closure)}):\n def __init__(self, {', '.join(params)}):\n{''.join(sets)}"
              "  self.__post_init__()\n return __init__\n")
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    init = namespace["make"](**closure)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@_init_through_slots
@dataclass(frozen=True, slots=True)
class ResultRow:
    """The verdict for one image, or the reason it has none (``status="error"``)."""

    path: str
    size: int | None
    mtime: float | None
    status: str
    label: str | None
    p_fake: float | None
    confidence: float | None
    error: str | None
    error_code: str | None
    scanned_at: datetime
    # Faces on: faces scored (the cap applies) and found; both None when faces are off.
    faces: int | None = None
    faces_found: int | None = None
    face_rows: tuple[FaceRow, ...] = ()
    # Videos: kind 'video', frames scored, duration, what was odd about the file (notes), the frames.
    kind: str = "image"
    frames: int | None = None
    duration_s: float | None = None
    notes: str | None = None
    frame_rows: tuple[FrameRow, ...] = ()
    # SHA-256 of the file's bytes (hex); None where they were never all read (the row is an error).
    content_hash: str | None = None
    verdict_source: str = "computed"
    # An s3:// object's ETag (unquoted); None for local files.
    etag: str | None = None
    # The image's PDQ (64 hex digits) and quality; bank entries it matched (matches: their count, None where it was
    # not matched at all), dfscan.workers.scoring.hashes.
    pdq: str | None = None
    pdq_quality: int | None = None
    matches: int | None = None
    match_rows: tuple[MatchRow, ...] = ()
    # What the file declares about its origin (dfscan.workers.scoring.provenance); None: not read.
    synthetic_declared: bool | None = None
    provenance: ProvenanceRow | None = None

    def __post_init__(self) -> None:
        # Checked here so that a bad row fails in the worker that made it, with
        # its path, rather than as a constraint violation that loses the batch.
        if self.status not in RESULT_STATUSES:
            raise ValueError(f"{self.path!r}: status {self.status!r} not in {RESULT_STATUSES}")
        if self.label is not None and self.label not in RESULT_LABELS:
            raise ValueError(f"{self.path!r}: label {self.label!r} not in {RESULT_LABELS}")
        if self.kind not in RESULT_KINDS:
            raise ValueError(f"{self.path!r}: kind {self.kind!r} not in {RESULT_KINDS}")
        if self.scanned_at.tzinfo is None or self.scanned_at.utcoffset() is None:
            raise ValueError(f"{self.path!r}: scanned_at must be timezone-aware (UTC)")
        if self.verdict_source not in VERDICT_SOURCES:
            raise ValueError(f"{self.path!r}: verdict_source {self.verdict_source!r} not in {VERDICT_SOURCES}")

    @classmethod
    def error_row(cls, path: str, size: int | None, mtime: float | None, code: str, message: str | None,
                  scanned_at: datetime, **extra: Any) -> "ResultRow":
        """The row of a file that has no verdict: ``status='error'`` with its reason (``code``, ``message``)."""
        return cls(path, size, mtime, "error", None, None, None, message, code, scanned_at, **extra)

    def copied_to(self, path: str, size: int | None, mtime: float | None, *, source: str,
                  scanned_at: datetime | None = None, etag: str | None = None) -> "ResultRow":
        """This row's verdict, error and faces for another file with the same bytes (and that file's own etag)."""
        return replace(self, path=path, size=size, mtime=mtime, verdict_source=source,
                       scanned_at=scanned_at or self.scanned_at, etag=etag)


@dataclass(frozen=True, slots=True)
class ScanSummary:
    """Where a scan stands and what it found: the one summary of a scan, embedded or distributed.

    Counts of images come from the results table (the truth), chunk counts
    from the chunks table; ``images_per_s`` and ``eta_s`` from the rows so far.
    """

    scan_id: int
    name: str
    status: str
    model_sha256: str
    total: int  # result rows written: images done, verdicts and errors
    ok: int
    real: int
    fake: int
    errors: int
    errors_by_reason: dict[str, int]  # by error_code; rows without one count as "unknown"
    skipped: int  # files an incremental scan left out (unchanged since an earlier scan)
    walk_done: bool  # every chunk of the scan is recorded: it can complete once they are finished
    chunks_total: int
    chunks_queued: int
    chunks_done: int
    chunks_failed: int
    images_total: int  # paths recorded in chunks so far
    started_at: datetime
    finished_at: datetime | None
    elapsed_s: float  # to finished_at, or to now while the scan runs
    images_per_s: float  # total / elapsed_s; 0.0 before any time has passed
    eta_s: float | None  # while running with the walk done and a rate known
    no_face: int = 0  # rows with status no-face (faces on, none found)
    # Rows by verdict_source (VERDICT_SOURCES): scored here, copied from the same bytes earlier in
    # this scan, reused from an earlier scan with the same model (--reuse-verdicts).
    computed: int = 0
    copied: int = 0
    reused: int = 0
    # Hash banks: files that matched a bank entry, and their matches in all (scan_matches).
    matched: int = 0
    matches: int = 0
    # Provenance (scan_provenance): files with a C2PA manifest (embedded, or pointed to remotely), manifests
    # whose validation failed, and files that declare themselves synthetic (results.synthetic_declared).
    manifests: int = 0
    invalid_manifests: int = 0
    declared_synthetic: int = 0

    @property
    def images_done(self) -> int:
        """The name ``dfscan status`` prints for ``total``."""
        return self.total

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["images_done"] = self.total
        data["errors_by_reason"] = dict(self.errors_by_reason)
        return data
