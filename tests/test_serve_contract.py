"""The OpenAPI document is what `dfscan serve` does: schemathesis, driven by /openapi.json, against the real
server with a scanner key, every check on, zero failures.

schemathesis generates arbitrary callback URLs, so the server and the tester run in a network namespace of
their own (``unshare -rn``: a new user and network namespace, only a loopback interface): nothing either is
handed can leave this machine. The document comes from the operations bind (``--ops-bind``), the requests go
to the API's bind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfscan import db
from dfscan.cli import main
from dfscan.db.api_keys import set_scan_owner
from tests._cluster import DFSCAN
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

ST = str(Path(sys.executable).with_name("st"))
EXAMPLES = 40  # per operation and phase: ~1,000 requests, well under a minute on two cores
API_PORT, OPS_PORT = 8000, 8001  # inside the namespace, where nothing else listens

# A callback's host is resolved and checked against the addresses the server may reach when the scan is asked
# for (422, like a root outside the allowed prefixes is a 403): schema-valid, and still refused.
CONFIG = """
[[operations]]
include-path = "/v1/scans"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

# The cursor is an opaque token of the server's (next_cursor): one it did not issue is refused (400).
[[operations]]
include-path = "/v1/scans/{{scan_id}}/results"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

# The review API (#26): a decision on a path the scan does not hold is refused (422), a foreign cursor too (400).
[[operations]]
include-path = "/v1/scans/{{scan_id}}/reviews"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422", "429"]

[[operations]]
include-path = "/v1/scans/{{scan_id}}/queue"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "429"]

[parameters]
"path.scan_id" = {scan_id}
"""

SCRIPT = """
set -u
ip link set lo up
"$DFSCAN" serve --model "$MODEL" --db "$DB" --port {api} --ops-bind 127.0.0.1:{ops} --roots "$ROOTS" \\
    --runtime onnxruntime --decoder pillow --max-upload-bytes 400000 --max-upload-files 8 --request-timeout 5 \\
    > "$LOG" 2>&1 &
server=$!
ready=0
for _ in $(seq 240); do
    "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \\
        http://127.0.0.1:{api}/readyz 2>/dev/null && ready=1 && break
    kill -0 $server 2>/dev/null || break
    sleep 0.25
done
if [ $ready = 1 ]; then
    "$PYTHON" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \\
        http://127.0.0.1:{ops}/openapi.json > openapi.json
    "$ST" --config-file "$CONFIG" run http://127.0.0.1:{ops}/openapi.json --url http://127.0.0.1:{api} \\
        -H "Authorization: Bearer $TOKEN" --checks all --max-examples {examples} --seed 23 --workers 2 \\
        --no-color --output-truncate false
    rc=$?
else
    echo "the server did not start"; rc=99
fi
kill $server; wait $server
exit $rc
"""


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no user and network namespaces here: {probe.stderr.strip()}"


def _owned_scan(db_url: str, key_id: int) -> int:
    """A finished scan of the test's key, so that the scan operations also answer 200 to schemathesis."""
    engine = db.make_engine(db_url)
    now = datetime.now(timezone.utc)
    try:
        with db.session_factory(engine).begin() as session:
            model_id = db.get_or_create_model(session, sha256="c" * 64, name="m", path="/m", info={})
            scan_id = db.create_scan(session, name="mine", roots=["/srv/mine"], model_id=model_id, threshold=0.5,
                                     settings={})
            db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[
                db.ResultRow("/srv/mine/a.jpg", 10, 1.0, "ok", "fake", 0.9, 0.8, None, None, now),
                db.ResultRow("/srv/mine/b.jpg", 0, 1.0, "error", None, None, None, "empty file", "empty", now)])
            db.mark_walk_done(session, scan_id, n_chunks=0, skipped=0)
            db.finish_scan(session, scan_id=scan_id, status="completed")
            set_scan_owner(session, scan_id, key_id)
    finally:
        engine.dispose()
    return scan_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_failure(sqlite_url: str, tiny_onnx_model: Path, tmp_path: Path) -> None:  # noqa: F811
    reason = _can_unshare()
    if reason:
        pytest.skip(reason)
    res = CliRunner().invoke(main, ["api-key", "create", "--name", "st", "--db", sqlite_url, "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    key = json.loads(res.output)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(scan_id=_owned_scan(sqlite_url, key["id"])))
    (tmp_path / "storage").mkdir()
    env = {"DFSCAN": DFSCAN, "ST": ST, "PYTHON": sys.executable, "MODEL": str(tiny_onnx_model), "DB": sqlite_url,
           "ROOTS": str(tmp_path / "storage"), "LOG": str(tmp_path / "serve.log"), "TOKEN": key["token"],
           "CONFIG": str(config), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DFSCAN_THREADS": "1",
           "HOME": str(tmp_path)}
    script = SCRIPT.format(api=API_PORT, ops=OPS_PORT, examples=EXAMPLES)
    run = subprocess.run(["unshare", "-rn", "bash", "-c", script], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=280)
    report = run.stdout + run.stderr
    print(report[-3000:])
    assert run.returncode == 0, report[-12000:] + (tmp_path / "serve.log").read_text()[-3000:]
    document = json.loads((tmp_path / "openapi.json").read_text())
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in report  # every operation of the API's bind
