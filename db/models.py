"""ORM tables. The schema is an analyst-facing contract: change it only through a migration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ._types import BigIntPK, JSONDoc, UTCDateTime, utcnow

__all__ = ["ApiKey", "Base", "Chunk", "Model", "Result", "ResultFace", "ResultFrame", "Scan", "ScanCallback",
           "ScanWorker", "scan_faces", "scan_frames", "scan_results",
           "BankHash", "HashBank", "MatchNotice", "ResultMatch", "scan_matches",
           "ResultProvenance", "scan_provenance", "Review", "scan_reviews"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_NOW = text("CURRENT_TIMESTAMP")
# PostgreSQL orders NaN above every number and SQLite stores NaN as NULL: both fail this check.
OK_HAS_P_FAKE = "status <> 'ok' OR (p_fake IS NOT NULL AND p_fake >= 0 AND p_fake <= 1)"
_ZERO = text("0")
VERDICT_SOURCE_CHECK = "verdict_source IN ('computed', 'copy', 'reused')"
API_KEY_ROLES = ("scanner", "reviewer", "admin")  # the first is the default
API_KEY_ROLE_CHECK = "role IN ('scanner', 'reviewer', 'admin')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONDoc, list[str]: JSONDoc}


class Model(Base):
    """A detector checkpoint, identified by the SHA-256 of its file."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)


class Scan(Base):
    """One run over a set of roots; counts are filled in by ``finish_scan``."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    roots: Mapped[list[str]]
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Double)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the audit record, written once
    # The walk: done once every chunk is recorded (then the scan can complete), how many chunks it made,
    # and how many files an incremental scan left out.
    walk_done: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    n_chunks: Mapped[int | None]
    skipped: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    total: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    ok: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    real: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    fake: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    errors: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)
    finished_at: Mapped[datetime | None]
    # The API key that started the scan through `dfscan serve` (migration 0013); NULL for a scan started from
    # the command line, the fleet producer or the schedule, which only admin keys see.
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)


class Chunk(Base):
    """A unit of work: the paths one worker task scores. ``attempts`` survives broker loss."""

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("scan_id", "seq"),
        Index("ix_chunks_scan_id_status", "scan_id", "status"),
        Index("ix_chunks_status_lease_until", "status", "lease_until"),  # the reaper's lookup
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    seq: Mapped[int]
    paths: Mapped[list[str]]
    n_paths: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    ok: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    real: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    fake: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    errors: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)
    finished_at: Mapped[datetime | None]
    # The lease of a chunk being scored (migration 0004): who holds it ("host:pid") and until when; the
    # holder renews it while it scores.  A reaper re-enqueues a queued chunk whose lease ran out (its worker
    # died with its host) and notes the expiry it acted on, when, and how many times.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None]
    lease_expired_at: Mapped[datetime | None]
    requeued_at: Mapped[datetime | None]
    requeues: Mapped[int] = mapped_column(default=0, server_default=_ZERO)


class ScanWorker(Base):
    """A process that scored chunks of a scan, and with what: the audit of the runtime side.

    The embedded mode has one (the scanning process); a distributed scan has
    one per worker process that took part.
    """

    __tablename__ = "scan_workers"
    __table_args__ = (UniqueConstraint("scan_id", "host", "pid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    runtime: Mapped[str] = mapped_column(String(64))
    runtime_version: Mapped[str | None] = mapped_column(String(64))
    precision: Mapped[str | None] = mapped_column(String(16))
    device: Mapped[str | None] = mapped_column(String(64))
    decoder: Mapped[str] = mapped_column(String(64))
    decoder_version: Mapped[str | None] = mapped_column(String(64))
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)


class Result(Base):
    """One verdict (or one failure) per path per scan, keyed by (scan_id, path_hash) (migration 0016).

    Made for writing (docs/sql.md, "Made for writing"): the key is fixed-size (``db.paths.path_hash``), so
    every path fits; no foreign keys (the chunk being written names its scan and that scan's model, and on
    PostgreSQL the scan's partition holds its rows: no partition, no row); on PostgreSQL the table is
    partitioned by list of scan_id, one partition per scan (``dfscan.db.scans.create_scan`` makes it).
    """

    __tablename__ = "results"
    __table_args__ = (
        CheckConstraint("status IN ('ok', 'error', 'no-face')", name="status"),
        CheckConstraint("label IS NULL OR label IN ('real', 'fake')", name="label"),
        # A verdict has a probability (migration 0004): a NaN or missing p_fake is never stored as "ok".
        CheckConstraint(OK_HAS_P_FAKE, name="ok_p_fake"),
        CheckConstraint("kind IN ('image', 'video')", name="kind"),
        CheckConstraint(VERDICT_SOURCE_CHECK, name="verdict_source"),
        # Which query uses which index: docs/sql.md, "Made for writing".  Each holds only the rows its
        # queries select, and none is on model_id (migration 0018): an index entry costs a write about as
        # much as the row.
        # errors and no-face: what its readers ask for (query 4, --status error)
        Index("ix_results_scan_id_status", "scan_id", "status",
              postgresql_where=text("status <> 'ok'"), sqlite_where=text("status <> 'ok'")),
        # the flagged files, ranked by p_fake (queries 2 and 18)
        Index("ix_results_scan_id_p_fake", "scan_id", "p_fake",
              postgresql_where=text("label = 'fake'"), sqlite_where=text("label = 'fake'")),
        # every reader looks a hash up, which no NULL matches
        Index("ix_results_content_hash", "content_hash",
              postgresql_where=text("content_hash IS NOT NULL"), sqlite_where=text("content_hash IS NOT NULL")),
        {"postgresql_partition_by": "LIST (scan_id)"},
    )

    scan_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    model_id: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(8))
    label: Mapped[str | None] = mapped_column(String(8))
    p_fake: Mapped[float | None] = mapped_column(Double)
    confidence: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    scanned_at: Mapped[datetime]
    # Faces on: faces scored and found (they differ where max_faces capped them); NULL when faces are off.
    faces: Mapped[int | None]
    faces_found: Mapped[int | None]
    # Videos (migration 0010): the kind of file, frames scored, its length, and what was odd about it
    # (two video streams, frames that did not decode, the weaker per-frame verdict).
    kind: Mapped[str] = mapped_column(String(8), default="image", server_default=text("'image'"))
    frames: Mapped[int | None]
    duration_s: Mapped[float | None] = mapped_column(Double)
    notes: Mapped[str | None] = mapped_column(Text)

    # SHA-256 (hex) of the file's bytes, and where the verdict came from (records.VERDICT_SOURCES).
    content_hash: Mapped[str | None] = mapped_column(String(64))
    verdict_source: Mapped[str] = mapped_column(String(8), default="computed", server_default=text("'computed'"))
    # An s3:// object's ETag, unquoted (migration 0012): --incremental compares it with the size; NULL for files.
    etag: Mapped[str | None] = mapped_column(String(128))
    # Migration 0014: the image's PDQ (64 hex digits, most significant bit first) and its quality (0-100; NULL
    # where nothing was hashed), and how many bank entries it matched (result_matches; NULL: not matched).
    pdq: Mapped[str | None] = mapped_column(String(64))
    pdq_quality: Mapped[int | None]
    matches: Mapped[int | None]
    # Migration 0015: what the file declares about its origin (result_provenance); NULL: not read.
    synthetic_declared: Mapped[bool | None]


class ResultFrame(Base):
    """One sampled frame of a video in one track (migration 0010): time, face box, p_fake."""

    __tablename__ = "result_frames"
    __table_args__ = (UniqueConstraint("scan_id", "path_hash", "track", "frame_index"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))  # dfscan.db.paths.path_hash(path)
    track: Mapped[int]
    frame_index: Mapped[int]
    timestamp_s: Mapped[float] = mapped_column(Double)
    x: Mapped[int | None]
    y: Mapped[int | None]
    w: Mapped[int | None]
    h: Mapped[int | None]
    p_fake: Mapped[float | None] = mapped_column(Double)
    track_p_fake: Mapped[float | None] = mapped_column(Double)
    pdq: Mapped[str | None] = mapped_column(String(64))  # the frame's PDQ (migration 0014; whole frames only)


class ResultFace(Base):
    """One scored face of an image (faces on): its box in original pixels, detector score and verdict."""

    __tablename__ = "result_faces"
    __table_args__ = (
        UniqueConstraint("scan_id", "path_hash", "face_index"),
        CheckConstraint("label IN ('real', 'fake')", name="label"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))  # dfscan.db.paths.path_hash(path)
    face_index: Mapped[int]
    x: Mapped[int]
    y: Mapped[int]
    w: Mapped[int]
    h: Mapped[int]
    detector_score: Mapped[float] = mapped_column(Double)
    p_fake: Mapped[float] = mapped_column(Double)
    label: Mapped[str] = mapped_column(String(8))


# The analysts' view, created by migration 0001. It lives in its own MetaData so
# that create_all() and autogenerate never mistake it for a table.
VIEW_COLUMNS = (
    "scan_id", "path", "status", "label", "p_fake", "confidence", "error", "model_sha256",
    "scanned_at", "faces", "faces_found", "kind", "frames", "duration_s", "notes", "content_hash", "verdict_source",
    "etag", "pdq", "pdq_quality", "matches", "synthetic_declared", "path_hash",
)  # fmt: skip
scan_results = Table(
    "scan_results",
    MetaData(),
    Column("scan_id", Integer),
    Column("path", Text),
    Column("status", String(8)),
    Column("label", String(8)),
    Column("p_fake", Double),
    Column("confidence", Double),
    Column("error", Text),
    Column("model_sha256", String(64)),
    Column("scanned_at", UTCDateTime()),
    Column("faces", Integer),
    Column("faces_found", Integer),
    Column("kind", String(8)),
    Column("frames", Integer),
    Column("duration_s", Double),
    Column("notes", Text),
    Column("content_hash", String(64)),
    Column("verdict_source", String(8)),
    Column("etag", String(128)),
    Column("pdq", String(64)),
    Column("pdq_quality", Integer),
    Column("matches", Integer),
    Column("synthetic_declared", Boolean),
    Column("path_hash", LargeBinary(16)),  # migration 0016: joins between views use (scan_id, path_hash)
)
assert tuple(scan_results.c.keys()) == VIEW_COLUMNS


class ApiKey(Base):
    """A bearer token of `dfscan serve`: only its SHA-256 is kept; ``requests`` counts its use.

    ``signing_secret`` signs the callbacks of the scans this key starts (HMAC-SHA256); it is
    shown once at creation, like the token, and must stay readable here to sign.
    """

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(API_KEY_ROLE_CHECK, name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    signing_secret: Mapped[str] = mapped_column(String(128))
    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default=_ZERO)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # What the key may see (migration 0013): "scanner" its own scans, "admin" every scan and the operations
    # endpoints (API_KEY_ROLES).
    role: Mapped[str] = mapped_column(String(16), default="scanner", server_default=text("'scanner'"))
    # Migration 0017: the key's team; a reviewer key sees the scans started by keys of its team (NULL: none).
    team: Mapped[str | None] = mapped_column(String(64))


class ScanCallback(Base):
    """Where to POST a scan's summary once it ends, signed with its key's secret; delivery is tracked."""

    __tablename__ = "scan_callbacks"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    url: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    given_up_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


# Which face was flagged (migration 0007): one row per scored face.
FACE_VIEW_COLUMNS = ("scan_id", "path", "face_index", "x", "y", "w", "h", "detector_score", "p_fake", "label",
                     "path_hash")
scan_faces = Table(
    "scan_faces",
    MetaData(),
    Column("scan_id", Integer),
    Column("path", Text),
    Column("face_index", Integer),
    Column("x", Integer),
    Column("y", Integer),
    Column("w", Integer),
    Column("h", Integer),
    Column("detector_score", Double),
    Column("p_fake", Double),
    Column("label", String(8)),
    Column("path_hash", LargeBinary(16)),
)
assert tuple(scan_faces.c.keys()) == FACE_VIEW_COLUMNS


# A video's sampled frames over time, per track (migration 0010).
FRAME_VIEW_COLUMNS = ("scan_id", "path", "track", "frame_index", "timestamp_s", "x", "y", "w", "h", "p_fake",
                      "track_p_fake", "pdq", "path_hash")
scan_frames = Table(
    "scan_frames",
    MetaData(),
    Column("scan_id", Integer),
    Column("path", Text),
    Column("track", Integer),
    Column("frame_index", Integer),
    Column("timestamp_s", Double),
    Column("x", Integer),
    Column("y", Integer),
    Column("w", Integer),
    Column("h", Integer),
    Column("p_fake", Double),
    Column("track_p_fake", Double),
    Column("pdq", String(64)),
    Column("path_hash", LargeBinary(16)),
)
assert tuple(scan_frames.c.keys()) == FRAME_VIEW_COLUMNS


# Hash banks (migration 0014): lists of known content shared as hashes (PDQ through ThreatExchange, StopNCII, the
# Tech Coalition; exact MD5 or SHA-256), matched against every file a scan hashes (dfscan.workers.scoring.hashes).
BANK_KIND_CHECK = "kind IN ('pdq', 'md5', 'sha256')"


class HashBank(Base):
    """A named bank: its kind, the distance it matches within, whether it is on, and its version (a change bumps it)."""

    __tablename__ = "hash_banks"
    __table_args__ = (CheckConstraint(BANK_KIND_CHECK, name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(8), default="pdq", server_default=text("'pdq'"))
    distance: Mapped[int] = mapped_column(default=31, server_default=text("31"))
    enabled: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    # Workers rebuild a bank's index when its version moves: every import, add, enable or disable bumps it.
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    size: Mapped[int] = mapped_column(BigInteger, default=0, server_default=_ZERO)
    # Where each matched file is POSTed (signed with ``webhook_secret``, as scan callbacks are); NULL: nowhere.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)


class BankHash(Base):
    """One hash of a bank, with the reference and label its source gave it."""

    __tablename__ = "bank_hashes"
    __table_args__ = (Index("ix_bank_hashes_bank_id_hash", "bank_id", "hash"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("hash_banks.id", ondelete="CASCADE"))
    hash: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(Text)


class ResultMatch(Base):
    """A file of a scan (a video's frame: ``frame``) within its bank's distance of a bank's hash."""

    __tablename__ = "result_matches"
    __table_args__ = (Index("ix_result_matches_scan_id_path_hash", "scan_id", "path_hash"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))  # dfscan.db.paths.path_hash(path)
    # The bank's name is kept with the match: a dropped bank's matches still say where they came from.
    bank_id: Mapped[int | None] = mapped_column(ForeignKey("hash_banks.id", ondelete="SET NULL"))
    bank: Mapped[str] = mapped_column(String(255))
    ref: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(Text)
    distance: Mapped[int]
    frame: Mapped[int | None]  # the video frame's index (0..T-1); NULL for images
    hash: Mapped[str] = mapped_column(String(64))  # the bank's hash that matched


class MatchNotice(Base):
    """One POST due for one matched file: to its scan's callback (``target`` 'scan') or a bank's webhook ('bank:ID').

    Made when the file's matches are written, once per file and target (a re-scored file is not announced
    again); delivered by `dfscan serve` like scan callbacks, signed, retried with back-off.
    """

    __tablename__ = "match_notices"
    __table_args__ = (UniqueConstraint("scan_id", "path_hash", "target"),
                      Index("ix_match_notices_delivered_at_given_up_at", "delivered_at", "given_up_at"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))  # dfscan.db.paths.path_hash(path)
    target: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(default=0, server_default=_ZERO)
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    given_up_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)


MATCH_VIEW_COLUMNS = ("scan_id", "path", "bank", "ref", "label", "distance", "frame", "path_hash")
scan_matches = Table(
    "scan_matches",
    MetaData(),
    Column("scan_id", Integer),
    Column("path", Text),
    Column("bank", String(255)),
    Column("ref", Text),
    Column("label", Text),
    Column("distance", Integer),
    Column("frame", Integer),
    Column("path_hash", LargeBinary(16)),
)
assert tuple(scan_matches.c.keys()) == MATCH_VIEW_COLUMNS


PROVENANCE_C2PA = ("none", "embedded", "remote", "error")
PROVENANCE_C2PA_STATES = ("valid", "invalid", "trusted")


class ResultProvenance(Base):
    """What one file of a scan says about its own origin (migration 0015; dfscan.workers.provenance).

    ``generator`` is the first of the claim generator, the generator named by settings left in the file,
    the XMP CreatorTool and the EXIF Software; ``error`` says why reading failed where ``c2pa`` is 'error'.
    """

    __tablename__ = "result_provenance"
    __table_args__ = (
        UniqueConstraint("scan_id", "path_hash"),
        CheckConstraint("c2pa IN ('none', 'embedded', 'remote', 'error')", name="c2pa"),
        CheckConstraint("c2pa_state IS NULL OR c2pa_state IN ('valid', 'invalid', 'trusted')", name="c2pa_state"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))  # dfscan.db.paths.path_hash(path)
    c2pa: Mapped[str] = mapped_column(String(8))
    c2pa_state: Mapped[str | None] = mapped_column(String(8))
    c2pa_codes: Mapped[str | None] = mapped_column(Text)  # the failure codes, comma-separated
    signer: Mapped[str | None] = mapped_column(Text)  # the signing certificate's common name
    issuer: Mapped[str | None] = mapped_column(Text)  # its issuer's common name
    generator: Mapped[str | None] = mapped_column(Text)
    claim_generator: Mapped[str | None] = mapped_column(Text)
    creator_tool: Mapped[str | None] = mapped_column(Text)  # XMP CreatorTool or EXIF Software
    settings_key: Mapped[str | None] = mapped_column(String(32))  # 'parameters', 'prompt', 'workflow', 'UserComment'
    source_type: Mapped[str | None] = mapped_column(String(64))  # the IPTC term's short name
    watermark: Mapped[str | None] = mapped_column(String(32))
    watermark_ber: Mapped[float | None] = mapped_column(Double)
    synthetic_declared: Mapped[bool]
    error: Mapped[str | None] = mapped_column(Text)


PROVENANCE_VIEW_COLUMNS = ("scan_id", "path", "c2pa", "c2pa_state", "c2pa_codes", "signer", "generator",
                           "source_type", "watermark", "watermark_ber", "synthetic_declared", "path_hash")
scan_provenance = Table(
    "scan_provenance",
    MetaData(),
    Column("scan_id", Integer),
    Column("path", Text),
    Column("c2pa", String(8)),
    Column("c2pa_state", String(8)),
    Column("c2pa_codes", Text),
    Column("signer", Text),
    Column("generator", Text),
    Column("source_type", String(64)),
    Column("watermark", String(32)),
    Column("watermark_ber", Double),
    Column("synthetic_declared", Boolean),
    Column("path_hash", LargeBinary(16)),
)
assert tuple(scan_provenance.c.keys()) == PROVENANCE_VIEW_COLUMNS


DECISION_CHECK = "decision IN ('fake', 'real', 'unsure', 'escalate')"


class Review(Base):
    """One analyst decision on one file of a scan (migration 0017); a changed decision is a new row.

    ``copy_of`` is the path the analyst decided when this row was written for a copy of it (the same
    content hash) decided together; NULL on the file decided directly.
    """

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(DECISION_CHECK, name="decision"),
        Index("ix_reviews_scan_id_path_hash_id", "scan_id", "path_hash", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))
    decision: Mapped[str] = mapped_column(String(8))
    reviewer: Mapped[str] = mapped_column(String(255))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=_NOW)
    copy_of: Mapped[str | None] = mapped_column(Text)


# The current decision per file of a scan: the latest row of ``reviews`` per (scan_id, path_hash).
REVIEW_VIEW_COLUMNS = ("scan_id", "path", "decision", "reviewer", "note", "decided_at")
scan_reviews = Table(
    "scan_reviews",
    MetaData(),
    Column("scan_id", Integer),
    Column("path", Text),
    Column("decision", String(8)),
    Column("reviewer", String(255)),
    Column("note", Text),
    Column("decided_at", UTCDateTime()),
)
assert tuple(scan_reviews.c.keys()) == REVIEW_VIEW_COLUMNS
