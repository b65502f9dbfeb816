"""What ``db_engine`` costs per test: every migration run on a new database, against a copy of the template.

    python tests/bench/bench_db_fixture.py [--rounds 10]

For SQLite (a file in a temporary folder) and PostgreSQL (the shared server at 127.0.0.1:5432), in one run and
interleaved so that the machine's load falls on both alike: (a) the fixture as it was, a new database then
``upgrade`` from base, then dispose and drop; (b) as it is (tests/_dbtemplate.py), a copy of the migrated
template then ``upgrade`` (a no-op at head), and the drop left to the background thread. Prints the median
seconds of each and their ratio. Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psycopg  # noqa: E402

from dfscan.db import make_engine, upgrade  # noqa: E402
from tests import _dbtemplate  # noqa: E402

HOST, PORT, ADMIN_DB, USER = "127.0.0.1", 5432, "test", "postgres"


def _admin() -> psycopg.Connection:
    return psycopg.connect(host=HOST, port=PORT, user=USER, dbname=ADMIN_DB, autocommit=True)


def _engine_up(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()


def sqlite_old(folder: Path) -> float:
    started = time.perf_counter()
    _engine_up(f"sqlite:///{folder / f'{uuid.uuid4().hex}.db'}")
    return time.perf_counter() - started


def sqlite_new(folder: Path) -> float:
    started = time.perf_counter()
    path = folder / f"{uuid.uuid4().hex}.db"
    _dbtemplate.copy_sqlite_template(path)
    _engine_up(f"sqlite:///{path}")
    return time.perf_counter() - started


def pg_old() -> float:
    name = f"dfscan_bench_{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _engine_up(f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}")
    with _admin() as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return time.perf_counter() - started


def pg_new() -> float:
    name = f"dfscan_bench_{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    template = _dbtemplate.pg_template(USER, HOST, PORT, ADMIN_DB)
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    _engine_up(f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}")
    _dbtemplate.drop_later(USER, HOST, PORT, ADMIN_DB, name)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-db-fixture-"))
    _dbtemplate.copy_sqlite_template(folder / "warm.db")  # the once-per-session template builds, not timed
    _dbtemplate.pg_template(USER, HOST, PORT, ADMIN_DB)
    times: dict[str, list[float]] = {k: [] for k in ("sqlite_old", "sqlite_new", "pg_old", "pg_new")}
    try:
        for _ in range(args.rounds):
            times["sqlite_old"].append(sqlite_old(folder))
            times["sqlite_new"].append(sqlite_new(folder))
            times["pg_old"].append(pg_old())
            times["pg_new"].append(pg_new())
            _dbtemplate.finish_drops()  # the background drop is not on a test's clock, but not free either
    finally:
        _dbtemplate.finish_drops()
        _dbtemplate.drop_pg_templates(HOST, PORT, ADMIN_DB)
        shutil.rmtree(folder, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind in ("sqlite", "pg"):
        old, new = med[f"{kind}_old"], med[f"{kind}_new"]
        print(f"{kind:<7} migrate per test {old * 1000:7.1f} ms   template copy {new * 1000:7.1f} ms   "
              f"ratio {old / new:5.1f}x   ({args.rounds} rounds, medians)")


if __name__ == "__main__":
    main()
