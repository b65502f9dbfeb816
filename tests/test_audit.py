"""The audit record of a scan, read back after a real `dfscan scan` process.

Any verdict must be traceable to what produced it: who ran the scan and
where, the command line, the model's SHA-256, the runtime and decoder with
their versions, and the threshold.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import onnxruntime
import PIL
from sqlalchemy import text

from dfscan import db
from dfscan import __version__
from dfscan.core.settings import Settings
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

SECRET = "s3cret-Pa55"
DFSCAN = Path(sys.executable).with_name("dfscan")


def test_scan_records_who_what_and_how(tmp_path, tiny_onnx_model, db_url):
    write_jpegs(tmp_path / "imgs", 5)
    # A password in the URL, as operators pass it: the shared server trusts
    # local connections, so it is accepted and ignored; it must not be stored.
    url = db_url.replace("://postgres@", f"://postgres:{SECRET}@").replace("://root@", f"://root:{SECRET}@")
    argv = [str(DFSCAN), "scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", url,
            "--threshold", "0.42", "--name", "audited", "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    scan_id = json.loads(done.stdout)["scan_id"]

    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        scan = conn.execute(text("SELECT s.settings, s.threshold, m.sha256 FROM scans AS s "
                                 "JOIN models AS m ON m.id = s.model_id WHERE s.id = :s"), {"s": scan_id}).one()
        row_models = set(conn.execute(text("SELECT DISTINCT model_sha256 FROM scan_results WHERE scan_id = :s"),
                                      {"s": scan_id}).scalars())
        workers_ = conn.execute(text("SELECT host, runtime, runtime_version, decoder FROM scan_workers "
                                     "WHERE scan_id = :s"), {"s": scan_id}).all()
    engine.dispose()
    audit = scan.settings if isinstance(scan.settings, dict) else json.loads(scan.settings)

    assert audit["user"] == getpass.getuser()
    assert audit["host"] == socket.gethostname()
    masked = [a.replace(SECRET, "***") for a in argv]
    assert audit["command"] == masked
    if SECRET in url:
        assert SECRET not in json.dumps(audit) and "postgres:***@" in " ".join(audit["command"])
    sha = hashlib.sha256(Path(tiny_onnx_model).read_bytes()).hexdigest()
    assert audit["model_sha256"] == sha == scan.sha256
    assert row_models == {sha}  # every verdict of the scan points at the model the record names
    assert audit["model_path"] == str(tiny_onnx_model)
    assert (audit["runtime"], audit["runtime_version"]) == ("onnxruntime", onnxruntime.__version__)
    assert (audit["decoder"], audit["decoder_version"]) == ("pillow", PIL.__version__)
    assert audit["threshold"] == scan.threshold == 0.42
    assert audit["dfscan_version"] == __version__
    assert audit["device"] == "cpu" and audit["precision"] == "fp32"
    assert audit["batch_size"] == 64 and audit["chunk_size"] == Settings().chunk_size == 1024
    # The scanning process is the scan's one worker.
    assert [tuple(w) for w in workers_] == [(socket.gethostname(), "onnxruntime", onnxruntime.__version__, "pillow")]
