"""A scan's near copies (``scan_near_copies``, migration 0019): the pairing against brute force, what
``finish_scan`` stores on both databases, the SQL guide's queries 17 and 18 on hand-written rows, and the
migration that makes the table and fills it for scans that had already ended."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import Engine, inspect, text

from dfscan import db
from dfscan.db._pairs import RADIUS, STAR, near_pairs, parse_pdq
from dfscan.db.near_copies import record_near_copies
from dfscan.db.paths import path_hash
from tests.test_sql_guide import QUERIES

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _flip(h: np.ndarray, bits: list[int]) -> np.ndarray:
    out = h.copy()
    for b in bits:
        out[b // 8] ^= np.uint8(0x80 >> (b % 8))
    return out


def _brute(h: np.ndarray) -> set[tuple[int, int, int]]:
    """Every pair i < j that shares an eighth (4 bytes at a multiple of 4) and is within RADIUS bits."""
    n = len(h)
    bits = np.unpackbits(h, axis=1).astype(np.int16)
    eighths = h.view(">u4").reshape(n, 8)
    out = set()
    for i in range(n - 1):
        d = np.abs(bits[i + 1:] - bits[i]).sum(axis=1)
        share = (eighths[i + 1:] == eighths[i]).any(axis=1)
        for k in np.flatnonzero(share & (d <= RADIUS)):
            out.add((i, i + 1 + int(k), int(d[k])))
    return out


def test_pairs_are_the_brute_force_pairs_with_a_star_for_large_groups() -> None:
    rng = np.random.default_rng(27)
    hashes = [rng.integers(0, 256, 32, dtype=np.uint8) for _ in range(3000)]
    planted = {}
    # Near copies that keep eighth 0 (bits 0-31) intact, at distances 0, 5, 20, 31 (kept) and 32 (not).
    for d in (0, 5, 20, 31, 32, 5, 20):
        base = rng.integers(0, 256, 32, dtype=np.uint8)
        hashes.append(base)
        hashes.append(_flip(base, sorted(rng.choice(np.arange(32, 256), d, replace=False).tolist())))
        planted[(len(hashes) - 2, len(hashes) - 1)] = d
    # 8 bits apart, one in each eighth: no eighth in common, so not a candidate (the guide's caveat).
    base = rng.integers(0, 256, 32, dtype=np.uint8)
    hashes += [base, _flip(base, [32 * k + 3 for k in range(8)])]
    missed = (len(hashes) - 2, len(hashes) - 1)
    # A group of 10 identical hashes (every pair) and one of STAR + 40 (a star around its smallest key).
    small = rng.integers(0, 256, 32, dtype=np.uint8)
    small_rows = list(range(len(hashes), len(hashes) + 10))
    hashes += [small] * 10
    blank = np.zeros(32, np.uint8)
    big_rows = list(range(len(hashes), len(hashes) + STAR + 40))
    hashes += [blank] * (STAR + 40)
    # Shuffle, so that neither group is contiguous or first in row order.
    perm = rng.permutation(len(hashes))
    h = np.stack(hashes)[perm]
    where = np.argsort(perm)  # old row -> new row
    keys = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in range(len(h))]

    i, j, d = near_pairs(h, keys=keys)
    got = set(zip(i.tolist(), j.tolist(), d.tolist()))
    assert len(got) == len(i) and (i < j).all()

    big = {int(where[r]) for r in big_rows}
    centre = min(big, key=lambda r: keys[r])
    expected = {(a, b, n) for a, b, n in _brute(h) if not (a in big and b in big and centre not in (a, b))}
    assert got == expected
    for (a, b), dist in planted.items():
        pair = tuple(sorted((int(where[a]), int(where[b]))))
        assert ((*pair, dist) in got) == (dist <= RADIUS), (dist, pair)
    assert tuple(sorted(int(where[r]) for r in missed)) not in {(a, b) for a, b, _ in got}
    small_new = sorted(int(where[r]) for r in small_rows)
    assert {(a, b) for a, b, _ in got if a in small_new} == {(a, b) for a in small_new for b in small_new if a < b}
    star = {(a, b) for a, b, _ in got if a in big or b in big}
    assert star == {tuple(sorted((centre, m))) for m in big if m != centre}, "the large group is not a star"


def test_parse_pdq_leaves_out_what_is_not_a_hash() -> None:
    good = "0123456789abcdef" * 4
    hashes, kept = parse_pdq([good, "zz" * 32, good.upper(), good[:62], good + "00", good])
    assert kept.tolist() == [0, 2, 5]
    assert all(bytes(r) == bytes.fromhex(good) for r in hashes)
    hashes, kept = parse_pdq([good, good])
    assert kept.tolist() == [0, 1] and hashes.shape == (2, 32)


# --- stored when the scan ends, and read by the guide's queries 17 and 18 ----------------------------------

A = "f" * 8 + "0123456789abcdef" * 3 + "01234567"
B = "f" * 8 + "0123456789abcdef" * 3 + "0123457f"  # A with two bits of its last eighth changed
C = "f" * 8 + "fedcba9876543210" * 3 + "76543210"  # shares eighth 0 with A, far from it
D = "0" * 8 + "0123456789abcdef" * 3 + "01234567"  # A with its first eighth zeroed: 32 bits, shares the rest


def _bits(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _row(path: str, p_fake: float, pdq: str | None, quality: int | None = 90) -> db.ResultRow:
    return db.ResultRow(path=path, size=1, mtime=1.0, status="ok", label="fake" if p_fake >= 0.5 else "real",
                        p_fake=p_fake, confidence=max(p_fake, 1 - p_fake), error=None, error_code=None,
                        scanned_at=T0, pdq=pdq, pdq_quality=None if pdq is None else quality)


def _scan6(engine: Engine, status: str = "completed") -> int:
    """Scan 6 (the guide's queries name it) of a fresh database, with hand-made hashes; ended unless 'running'."""
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        model_id = db.get_or_create_model(s, sha256="a" * 64, name="m", path="/m.onnx", info={})
        for k in range(6):
            scan_id = db.create_scan(s, name=f"s{k}", roots=["/d"], model_id=model_id, threshold=0.5, settings={})
        assert scan_id == 6
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[
            _row("/d/a.jpg", 0.95, A), _row("/d/b.jpg", 0.30, B), _row("/d/a_again.jpg", 0.60, A),
            _row("/d/c.jpg", 0.99, C), _row("/d/d.jpg", 0.20, D), _row("/d/low.jpg", 0.97, A, quality=40),
            _row("/d/video.mp4", 0.90, None), _row("/d/broken.jpg", 0.10, "not a hash")])  # fmt: skip
        if status != "running":
            db.finish_scan(s, scan_id=scan_id, status=status)
    return scan_id


def _stored(engine: Engine, scan_id: int) -> set[tuple[str, str, int]]:
    names = {path_hash(f"/d/{n}"): n for n in ("a.jpg", "b.jpg", "a_again.jpg", "c.jpg", "d.jpg", "low.jpg")}
    with engine.connect() as c:
        rows = c.execute(text("SELECT path_hash, other_hash, distance FROM scan_near_copies WHERE scan_id = :s"),
                         {"s": scan_id}).all()
    return {(names[bytes(a)], names[bytes(b)], d) for a, b, d in rows}


def test_finish_scan_stores_both_directions_and_the_guide_reads_them(db_engine: Engine) -> None:
    assert (_bits(A, B), _bits(A, C) > RADIUS, _bits(A, D)) == (2, True, 32)
    scan_id = _scan6(db_engine)
    ab = _bits(A, B)
    pairs = {("a.jpg", "b.jpg", ab), ("a.jpg", "a_again.jpg", 0), ("a_again.jpg", "b.jpg", ab)}
    assert _stored(db_engine, scan_id) == pairs | {(b, a, n) for a, b, n in pairs}

    with db_engine.connect() as c:
        near = [tuple(r) for r in c.exec_driver_sql(QUERIES["near-copies"])]
        flagged = [tuple(r) for r in c.exec_driver_sql(QUERIES["near-copies-of-flagged"])]
    assert near == [("/d/a.jpg", "/d/a_again.jpg", 0), ("/d/a.jpg", "/d/b.jpg", ab),
                    ("/d/a_again.jpg", "/d/b.jpg", ab)]
    # Flagged (label fake, hash of quality 50 or more), most likely first: c (no near copy), a, a_again.
    assert flagged == [("/d/a.jpg", 0.95, "/d/a_again.jpg", "fake", 0), ("/d/a.jpg", 0.95, "/d/b.jpg", "real", ab),
                       ("/d/a_again.jpg", 0.60, "/d/a.jpg", "fake", 0),
                       ("/d/a_again.jpg", 0.60, "/d/b.jpg", "real", ab)]

    # Ended again: replaced, not doubled.
    with db.session_factory(db_engine).begin() as s:
        assert record_near_copies(s, scan_id) == 3
    assert len(_stored(db_engine, scan_id)) == 6


def test_a_running_scan_has_no_near_copies_until_it_ends(db_engine: Engine) -> None:
    scan_id = _scan6(db_engine, status="running")
    assert _stored(db_engine, scan_id) == set()
    with db.session_factory(db_engine).begin() as s:
        db.cancel_scan(s, scan_id)
    assert len(_stored(db_engine, scan_id)) == 6


def test_migration_0019_fills_ended_scans_and_goes_down(db_engine: Engine) -> None:
    """Down to 0018 the table is gone; up again, the ended scan gets what finish_scan stores, a running one none."""
    scan_id = _scan6(db_engine)
    expected = _stored(db_engine, scan_id)
    sessions = db.session_factory(db_engine)
    with sessions.begin() as s:
        model_id = db.get_or_create_model(s, sha256="a" * 64, name="m", path="/m.onnx", info={})
        running = db.create_scan(s, name="running", roots=["/d"], model_id=model_id, threshold=0.5, settings={})
        db.write_batch(s, scan_id=running, model_id=model_id, rows=[_row("/d/a.jpg", 0.9, A), _row("/d/b.jpg", 0.9, B)])
    db.downgrade(db_engine, "0018")
    tables = set(inspect(db_engine).get_table_names())
    assert "scan_near_copies" not in tables and "scan_sources" not in tables
    db.upgrade(db_engine)
    assert _stored(db_engine, scan_id) == expected and len(expected) == 6
    assert _stored(db_engine, running) == set()


def test_a_large_group_of_equal_hashes_is_a_star_in_the_table(db_engine: Engine) -> None:
    """STAR + 5 copies of one hash: each is paired with the smallest path_hash only, both directions; the same
    after migration 0019 fills the table again."""
    sessions = db.session_factory(db_engine)
    paths = [f"/blank/{k}.png" for k in range(STAR + 5)]
    with sessions.begin() as s:
        model_id = db.get_or_create_model(s, sha256="a" * 64, name="m", path="/m.onnx", info={})
        scan_id = db.create_scan(s, name="blank", roots=["/blank"], model_id=model_id, threshold=0.5, settings={})
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[_row(p, 0.1, "0" * 64) for p in paths])
        db.finish_scan(s, scan_id=scan_id, status="completed")
    centre = min(path_hash(p) for p in paths)

    def stored() -> set[tuple[bytes, bytes, int]]:
        with db_engine.connect() as c:
            rows = c.execute(text("SELECT path_hash, other_hash, distance FROM scan_near_copies WHERE scan_id = :s"),
                             {"s": scan_id}).all()
        return {(bytes(a), bytes(b), d) for a, b, d in rows}

    star = stored()
    assert len(star) == 2 * (len(paths) - 1)
    assert all(centre in (a, b) and d == 0 for a, b, d in star)
    # Migration 0019's own copy of the rule fills a scan that ended before it the same way.
    db.downgrade(db_engine, "0018")
    db.upgrade(db_engine)
    assert stored() == star
