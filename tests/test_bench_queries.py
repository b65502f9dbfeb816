"""tests/bench/bench_queries.py at a small size: every statement the guide, `dfscan results`, `dfscan report`
and the API's paging send reads a bounded part of ``results`` (one scan's rows or an index range), never
the whole table.  Planned with sequential scans off, so a plan that *can* use an index or one partition
does, as it would at a scale where that matters; a statement that still reads the whole table has no
index or partition to serve it (sorts and bitmap scans are off too, so a LIMIT is served in index order
where an index can).  The guide's archive-wide and pairwise queries are left out (they read
every row by design: the benchmark lists them with the reason)."""

from __future__ import annotations

import pytest

from tests.bench.bench_queries import run

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def measured() -> dict:
    from tests.conftest import _pg_admin_user

    user, reason = _pg_admin_user()
    if user != "postgres":
        pytest.skip(reason or "the benchmark connects as postgres")
    # 2,000 rows per scan: more than a page of the API (1,000), so a page that reads its whole scan shows.
    return run(20_000, 10, timeout_s=60, seqscan=False, bounded_only=True, log=lambda _: None)


def test_no_statement_reads_the_whole_results_table(measured: dict) -> None:
    assert measured["load"]["rows"]["results"] == 20_000
    statements = measured["statements"]
    groups = {s["group"] for s in statements}
    assert groups == {"docs/sql.md", "dfscan results", "dfscan report", "/v1/scans/{id}/results"}
    assert {s["name"] for s in statements if s["group"] == "/v1/scans/{id}/results"} == {"first page",
                                                                                        "deep page (90 %)"}
    full = [(s["group"], s["name"], s["plan"], s["nodes"]) for s in statements if s["full"]]
    assert not full, f"statements that read the whole of results: {full}"
    per_scan = measured["load"]["per_scan"]
    for s in statements:
        assert s["ms"] is not None, s
        # A page of the API reads a page (and the row that says there is another), at any depth; a statement
        # about one scan reads that scan's rows at most (two scans' for the comparison of scans).
        if s["group"] == "/v1/scans/{id}/results":
            bound = 1001
        elif s["name"] == "changed-between-scans":
            bound = 2 * per_scan
        else:
            bound = per_scan
        assert s["results_rows"] <= bound + 5, s


def test_prune_of_a_loaded_scan(measured: dict) -> None:
    """The benchmark's last step, `dfscan prune --scan N` of its last scan: every row of the scan counted."""
    pruned = measured["prune"]
    assert pruned["rows"]["results"] == measured["load"]["per_scan"]
    assert pruned["rows"]["scans"] == 1
