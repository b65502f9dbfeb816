"""No password reaches a terminal, a log, the audit record or a report.

One masking function (:mod:`dfscan.core.redact`) is tested with each form a
secret takes in a URL, then each place a URL is printed or stored is tested
with a real PostgreSQL URL carrying a password (the shared server trusts
local connections, so the password is accepted and ignored).
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.commands.distributed import safe_url
from dfscan.db.errors import DatabaseURLError
from dfscan.core.redact import mask_text, mask_url
from dfscan.core.settings import Settings
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

SECRET = "S3cr3t-pw"


@pytest.mark.parametrize("url, masked", [
    (f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test",
     "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"),
    (f"redis://:{SECRET}@broker:6379/0", "redis://:***@broker:6379/0"),
    (f"rediss://user:{SECRET}@broker/0?ssl_cert_reqs=none", "rediss://user:***@broker/0?ssl_cert_reqs=none"),
    (f"postgresql://u@h/db?password={SECRET}&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    (f"postgresql://u@h/db?sslmode=require&sslpassword={SECRET}", "postgresql://u@h/db?sslmode=require&sslpassword=***"),
    (f"redis://h:6379/0?token={SECRET}", "redis://h:6379/0?token=***"),
    # Unparseable: a password with "@" and "/" in it, a port that isn't a number, no scheme at all.
    (f"postgresql://u:{SECRET}@x/y@h:notaport/db", "postgresql://u:***@h:notaport/db"),
    (f"u:{SECRET}@h/db", "***@h/db"),
    # Nothing to mask: kept exactly.
    ("sqlite:///dfscan.db", "sqlite:///dfscan.db"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
])  # fmt: skip
def test_mask_url_hides_every_form_of_password(url, masked):
    assert mask_url(url) == masked
    assert SECRET not in mask_text(f"see '{url}' and --db={url}")


def test_mask_text_hides_keyword_passwords_and_keeps_the_rest():
    line = f"connect host=h password={SECRET} dbname=x; then redis://:{SECRET}@h/0 failed"
    assert mask_text(line) == "connect host=h password=*** dbname=x; then redis://:***@h/0 failed"


def test_mask_text_hides_aws_credentials():
    """A signed S3 request as botocore would log it, and the AWS chain's variables, written out."""
    key_id, temp_id, secret = "AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    line = (f"Authorization: AWS4-HMAC-SHA256 Credential={key_id}/20261126/us-east-1/s3/aws4_request, "
            f"SignedHeaders=host, Signature=abc123; https://b.s3.amazonaws.com/k?X-Amz-Credential={temp_id}%2F1"
            f"&X-Amz-Signature=deadbeef; aws_secret_access_key={secret} AWS_SESSION_TOKEN=tok3n")
    masked = mask_text(line)
    for secret_part in (key_id, temp_id, secret, "deadbeef", "tok3n"):
        assert secret_part not in masked, (secret_part, masked)
    assert "us-east-1/s3/aws4_request" in masked  # the rest is kept


def test_s3_endpoint_with_credentials_is_refused_before_it_is_stored():
    from dfscan.core.settings import SettingsError

    with pytest.raises(SettingsError, match="must not hold credentials") as info:
        Settings(s3_endpoint_url=f"http://AKIAIOSFODNN7EXAMPLE:{SECRET}@127.0.0.1:8333")
    assert SECRET not in str(info.value) and "AKIA" not in str(info.value)
    assert Settings(s3_endpoint_url="https://s3.example.internal:8443").s3_endpoint_url


def test_settings_repr_and_worker_messages_mask_urls():
    settings = Settings(db_url=f"postgresql://u:{SECRET}@h/db", broker_url=f"redis://:{SECRET}@h/0")
    assert SECRET not in repr(settings) and "u:***@h" in repr(settings)
    assert safe_url(settings.broker_url) == "redis://:***@h/0"


def test_unparseable_database_url_is_not_quoted_raw():
    for url in (f"postgresql://u:{SECRET}@h:notaport/db", f"postgresql//u:{SECRET}@h/db", f"nosuch://u:{SECRET}@h/db",
                f"postgresql://u@h/db?password={SECRET}&port=x"):
        with pytest.raises(DatabaseURLError) as info:
            db.make_engine(url)
            raise DatabaseURLError("accepted")  # make_engine may accept a URL that only fails on connect
        assert SECRET not in str(info.value)
        res = CliRunner().invoke(main, ["results", "--db", url])
        assert res.exit_code != 0 and SECRET not in res.output and "Traceback" not in res.output


@pytest.fixture
def secret_urls(pg_url):
    """The same database named with a password in the userinfo and in the query."""
    userinfo = pg_url.replace("://postgres@", f"://postgres:{SECRET}@").replace("://root@", f"://root:{SECRET}@")
    return userinfo, f"{pg_url}?password={SECRET}"


@pytest.mark.postgres
def test_migrate_and_scan_print_no_password(tmp_path, tiny_onnx_model, secret_urls, monkeypatch):
    write_jpegs(tmp_path / "imgs", 2)
    for url in secret_urls:
        res = CliRunner().invoke(main, ["migrate", "--db", url])
        assert res.exit_code == 0 and SECRET not in res.output and "***" in res.output, res.output
        res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", url])
        assert res.exit_code == 0, res.output
        assert SECRET not in res.output and "results: " in res.output
        # The same URL from the environment.
        monkeypatch.setenv("DFSCAN_DB_URL", url)
        res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model)])
        monkeypatch.delenv("DFSCAN_DB_URL")
        assert res.exit_code == 0 and SECRET not in res.output, res.output


@pytest.mark.postgres
def test_audit_record_and_report_hold_no_password(tmp_path, tiny_onnx_model, secret_urls, pg_url, monkeypatch):
    write_jpegs(tmp_path / "imgs", 2)
    query_url = secret_urls[1]
    argv = ["dfscan", "scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", query_url,
            f"--broker-password={SECRET}"]
    monkeypatch.setattr("sys.argv", argv)  # origin() records the process's argv
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", query_url,
                                    "--json"])
    assert res.exit_code == 0, res.output
    scan_id = json.loads(res.output)["scan_id"]
    engine = db.make_engine(pg_url)
    with engine.connect() as conn:
        record = conn.execute(text("SELECT settings FROM scans WHERE id = :s"), {"s": scan_id}).scalar_one()
        # A record written before masking existed: the report masks it too.
        old = dict(record, command=["dfscan", "scan", "--db", f"postgresql://u:{SECRET}@h/db"])
        conn.execute(text("UPDATE scans SET settings = CAST(:r AS JSON) WHERE id = :s"),
                     {"r": json.dumps(old), "s": scan_id})
        conn.commit()
    engine.dispose()
    assert SECRET not in json.dumps(record)
    assert "password=***" in " ".join(record["command"]) and "--broker-password=***" in record["command"]
    out = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", str(scan_id), "--db", pg_url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert SECRET not in html and "u:***@h" in html


def test_broker_url_is_masked_when_unreachable(tmp_path, tiny_onnx_model, sqlite_url):
    write_jpegs(tmp_path / "imgs", 1)
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url,
                                    "--broker", f"redis://:{SECRET}@127.0.0.1:1/0"])
    assert res.exit_code == 1 and SECRET not in res.output and "redis://:***@127.0.0.1:1/0" in res.output
    assert os.environ.get("DFSCAN_BROKER_URL") is None
