"""tests/bench/bench_queries.py at a small size: every statement the guide, `dfscan results`, `dfscan report`
and the API's paging send reads a bounded part of ``results`` (one scan's rows or an index range), never
the whole table.  Planned with sequential scans off, so a plan that *can* use an index or one partition
does, as it would at a scale where that matters; a statement that still reads the whole table has no
index or partition to serve it (sorts and bitmap scans are off too, so a LIMIT is served in index order
where an index can).  Every guide query is checked: each answers a question about one scan or the few
it names, or reads the scans table's counters."""

from __future__ import annotations

import pytest

from tests.bench.bench_queries import run

pytestmark = pytest.mark.postgres

# The guide's queries that name several scans (docs/sql.md), and how many: every other statement reads one
# scan's rows at most.
SCANS_READ = {"changed-between-models": 3, "never-scored-by-current-model": 2,
              "latest-verdict-per-file": 3}
# The guide's queries that read a bounded number of rows whatever the size of their scans: at most this many
# rows of results (a page of 1,000 files reads up to its 1,000th scored row: 2 % of the rows are errors).
# latest-verdict-per-file: a page from each of three scans; changed-between-models: a page of scan 2 and key
# lookups in scans 1 and 3 per file of it (a row each where found); changed-between-scans: a page of scan 2 (all
# statuses) and a key lookup in scan 1 per file; verdict-sources and fake-rate-by-folder: none (scan_sources,
# scan_folders).
ROWS_READ = {"latest-verdict-per-file": 3 * 1030, "changed-between-models": 1030 + 4 * 1000,
             "changed-between-scans": 2 * 1000, "verdict-sources": 0, "fake-rate-by-folder": 0}


def near_copy_bounds(load: dict) -> dict[str, int]:
    """Rows of results the near-copy queries may read: bounded by scan 6's pairs (scan_near_copies holds both
    directions of each), not by its size.  near-copies: the two paths of each pair, by key; near-copies-of-flagged:
    the 100 most likely fakes from the top of the p_fake index (and the few it skips: hashes under quality 50),
    then the path and label of each of their near copies, by key."""
    rows = int(load["near_copy_rows"].get(6, load["near_copy_rows"].get("6", 0)))
    return {"near-copies": rows, "near-copies-of-flagged": 110 + rows}


@pytest.fixture(scope="module")
def measured() -> dict:
    from tests.conftest import _pg_admin_user

    user, reason = _pg_admin_user()
    if user != "postgres":
        pytest.skip(reason or "the benchmark connects as postgres")
    # 4,000 rows per scan: more than a page of the API and of the guide's paged queries (1,000), so a page that
    # reads its whole scan (or three pages that read their three scans) shows.
    return run(40_000, 10, timeout_s=60, seqscan=False, log=lambda _: None)


def test_no_statement_reads_the_whole_results_table(measured: dict) -> None:
    assert measured["load"]["rows"]["results"] == 40_000
    statements = measured["statements"]
    groups = {s["group"] for s in statements}
    assert groups == {"docs/sql.md", "dfscan results", "dfscan report", "/v1/scans/{id}/results"}
    assert {s["name"] for s in statements if s["group"] == "/v1/scans/{id}/results"} == {"first page",
                                                                                        "deep page (90 %)"}
    full = [(s["group"], s["name"], s["plan"], s["nodes"]) for s in statements if s["full"]]
    assert not full, f"statements that read the whole of results: {full}"
    per_scan = measured["load"]["per_scan"]
    near = near_copy_bounds(measured["load"])
    # The archive plants 2 % near copies and 0.1 % blank images: pairs to read, yet far fewer than a scan's rows.
    assert 0 < near["near-copies"] < per_scan // 10, near
    for s in statements:
        assert s["ms"] is not None, s
        # A page of the API reads a page (and the row that says there is another), at any depth; a statement
        # about one scan reads that scan's rows at most; a guide query that names a few scans, theirs.
        if s["group"] == "/v1/scans/{id}/results":
            bound = 1001
        elif s["group"] == "dfscan results" and s["name"] == "--limit 100":
            bound = 101
        elif s["group"] == "docs/sql.md" and s["name"] in ROWS_READ:
            bound = ROWS_READ[s["name"]]
        elif s["group"] == "docs/sql.md" and s["name"] in near:
            bound = near[s["name"]]
        elif s["name"] == "same-bytes-as-flagged":
            # Scan 1's most suspicious row (its scan at most), then the rows with its bytes: one in every scan
            # here (the content_hash index of every partition: every scan took in the same archive).
            bound = per_scan + measured["load"]["scans"]
        else:
            bound = SCANS_READ.get(s["name"], 1) * per_scan
        assert s["results_rows"] <= bound + 5, s
        # Partitions read from end to end: only the named scans' (an index range may touch every partition).
        seq = {n.split()[1] for n in s["nodes"] if n.startswith("seq ") and n.split()[1].startswith("results")}
        assert len(seq) <= SCANS_READ.get(s["name"], 1), s


def test_prune_of_a_loaded_scan(measured: dict) -> None:
    """The benchmark's last step, `dfscan prune --scan N` of its last scan: every row of the scan counted."""
    pruned = measured["prune"]
    assert pruned["rows"]["results"] == measured["load"]["per_scan"]
    assert pruned["rows"]["scans"] == 1
