"""ResultRow's own ``__init__`` (db.records._init_through_slots) behaves as the one dataclasses would generate."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dfscan.db.records import FaceRow, ResultRow

T0 = datetime(2025, 11, 25, 8, 0, tzinfo=UTC)


def test_the_signature_is_the_fields_with_their_defaults() -> None:
    params = list(inspect.signature(ResultRow).parameters.values())
    fields = dataclasses.fields(ResultRow)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        assert p.default is (inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default), f.name
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_every_field_is_set_positionally_or_by_keyword() -> None:
    values = {f.name: f"v{i}" for i, f in enumerate(dataclasses.fields(ResultRow))}
    values.update(status="ok", label="fake", kind="video", verdict_source="copy", scanned_at=T0,
                  face_rows=(FaceRow(0, 1, 2, 3, 4, 0.9, 0.8, "fake"),))
    by_keyword = ResultRow(**values)
    by_position = ResultRow(*values.values())
    assert {name: getattr(by_keyword, name) for name in values} == values
    assert by_position == by_keyword and hash(by_position) == hash(by_keyword)
    assert pickle.loads(pickle.dumps(by_keyword)) == by_keyword
    assert dataclasses.replace(by_keyword, path="/other").path == "/other"


def test_defaults_and_checks_are_the_dataclass_ones() -> None:
    row = ResultRow("/a.jpg", None, None, "ok", "real", 0.1, 0.9, None, None, T0)
    assert (row.kind, row.verdict_source, row.face_rows, row.faces, row.provenance) == ("image", "computed", (), None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.path = "/b.jpg"  # type: ignore[misc]
    with pytest.raises(ValueError, match="status 'maybe'"):
        ResultRow("/a.jpg", None, None, "maybe", None, None, None, None, None, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ResultRow("/a.jpg", None, None, "ok", "real", 0.1, 0.9, None, None, datetime(2025, 1, 1))
    with pytest.raises(TypeError, match="scanned_at"):
        ResultRow("/a.jpg", None, None, "ok", "real", 0.1, 0.9, None, None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="colour"):
        ResultRow("/a.jpg", None, None, "ok", "real", 0.1, 0.9, None, None, T0, colour=1)  # type: ignore[call-arg]
    # Any aware datetime is accepted as it is (the database layer converts it to UTC).
    east = datetime(2025, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    assert ResultRow("/a.jpg", None, None, "ok", "real", 0.1, 0.9, None, None, east).scanned_at is east
