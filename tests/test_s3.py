"""Object-storage roots (``s3://bucket/prefix``) against a real S3 server on 127.0.0.1 (SeaweedFS, tests/_s3.py)."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.scanner import ScanSource, WalkOptions, objects
from dfscan.scanner.errors import RootNotFound
from dfscan.core.settings import DEFAULT_EXTENSIONS, Settings, SettingsError
from tests._images import jpeg_bytes
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests._s3 import ADMIN, LIMITED, LIMITED_BUCKET, aws_env, s3_server  # noqa: F401 - fixture

SECRETS = (*ADMIN, *LIMITED)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def rows_by_path(url: str, scan_id: int) -> dict[str, dict]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM scan_results WHERE scan_id = :s"),
                                                           {"s": scan_id})]
            stats = {r.path: (r.size, r.mtime, r.error_code) for r in conn.execute(
                text("SELECT path, size, mtime, error_code FROM results WHERE scan_id = :s"), {"s": scan_id})}
    finally:
        engine.dispose()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path has more than one row"
    for r in rows:
        r["size"], r["mtime"], r["error_code"] = stats[r["path"]]
    return {r["path"]: r for r in rows}


def audit(url: str, scan_id: int) -> dict:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT settings FROM scans WHERE id = :s"), {"s": scan_id}).scalar_one()
    finally:
        engine.dispose()
    return json.loads(value) if isinstance(value, str) else value


@pytest.fixture
def s3(s3_server, monkeypatch):  # noqa: F811 - the fixture imported above
    """The server, the admin's credentials in the AWS chain, and a fresh bucket name."""
    aws_env(monkeypatch, ADMIN)
    return s3_server


def fresh_bucket(server) -> str:
    return server.bucket(f"b-{uuid.uuid4().hex[:12]}")


def scan(server, *args: str):
    return run("scan", *args, "--s3-endpoint-url", server.endpoint, "--batch-size", "4", "--chunk-size", "8",
               "--json", "--no-progress")


# --- listing ---------------------------------------------------------------------------


def test_walk_lists_a_prefix_page_by_page_lazily(s3, monkeypatch):
    bucket = fresh_bucket(s3)
    for i in range(23):
        s3.put(bucket, f"set/{i:03d}.jpg", b"x")
    s3.put(bucket, "set/sub/deep.PNG", b"x")
    s3.put(bucket, "set/notes.txt", b"not an image name: not taken")
    s3.put(bucket, "set/folder/", b"")  # a "folder" marker
    s3.put(bucket, "set2/other.jpg", b"x")  # shares the prefix's letters, not its folder
    monkeypatch.setattr(objects, "LIST_PAGE_SIZE", 5)
    store = objects.object_store(s3.endpoint)
    calls = []
    store.client.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda **kw: calls.append(kw["params"]))
    source = ScanSource((f"s3://{bucket}/set",), (), WalkOptions(DEFAULT_EXTENSIONS, s3_endpoint_url=s3.endpoint))
    paths = source.paths()
    first = next(paths)
    assert first == f"s3://{bucket}/set/000.jpg"
    assert len(calls) == 1 and calls[0]["MaxKeys"] == 5, calls  # one page asked for, not the whole listing
    rest = list(paths)
    expected = [f"s3://{bucket}/set/{i:03d}.jpg" for i in range(23)] + [f"s3://{bucket}/set/sub/deep.PNG"]
    assert [first, *rest] == expected
    assert len(calls) == 6  # 27 keys under set/, 5 a page
    # What the listing said travels with the path: --incremental needs no request for it.
    assert rest[0].info.size == 1 and rest[0].info.mtime == int(rest[0].info.mtime)
    assert source.count() is None  # a bucket is listed once: the progress bar gets no total
    # An exact key is that object, whatever its extension (as a file named as a root).
    one = ScanSource((f"s3://{bucket}/set/notes.txt",), (), WalkOptions(DEFAULT_EXTENSIONS, s3_endpoint_url=s3.endpoint))
    assert list(one.paths()) == [f"s3://{bucket}/set/notes.txt"]


def test_record_replays_the_same_walk_and_keeps_no_credentials(s3):
    bucket = fresh_bucket(s3)
    s3.put(bucket, "a/1.jpg", b"x")
    source = ScanSource((f"s3://{bucket}/a/",), (), WalkOptions(DEFAULT_EXTENSIONS, s3_endpoint_url=s3.endpoint))
    record = source.record()
    assert record["roots"] == [f"s3://{bucket}/a/"] and record["s3_endpoint_url"] == s3.endpoint
    assert not any(secret in json.dumps(record) for secret in SECRETS)
    assert list(ScanSource.from_record(record).paths()) == [f"s3://{bucket}/a/1.jpg"]


# --- scans -----------------------------------------------------------------------------


def test_scan_of_a_bucket_prefix_gives_every_object_one_row(s3, monkeypatch, tiny_onnx_model, sqlite_url):
    bucket = fresh_bucket(s3)
    images = {f"s3://{bucket}/photos/{i:02d}.jpg": jpeg_bytes(i, size=(64, 64)) for i in range(11)}
    for url, data in images.items():
        s3.put(bucket, url.split("/", 3)[3], data)
    s3.put(bucket, "photos/fake.jpg", b"this is text, not a JPEG")
    s3.put(bucket, "photos/empty.png", b"")
    s3.put(bucket, "photos/readme.txt", b"skipped by the extension filter")
    monkeypatch.setattr(objects, "LIST_PAGE_SIZE", 4)  # several pages in the scan too
    result = scan(s3, f"s3://{bucket}/photos", "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["total"] == 13 and summary["errors"] == 2
    rows = rows_by_path(sqlite_url, summary["scan_id"])
    assert set(rows) == set(images) | {f"s3://{bucket}/photos/fake.jpg", f"s3://{bucket}/photos/empty.png"}
    for url, data in images.items():
        row = rows[url]
        assert row["status"] == "ok" and row["label"] in ("real", "fake"), row
        assert row["size"] == len(data) and row["mtime"] > time.time() - 3600
    assert rows[f"s3://{bucket}/photos/fake.jpg"]["error_code"] == "not-image"
    assert rows[f"s3://{bucket}/photos/empty.png"]["error_code"] == "empty"
    assert audit(sqlite_url, summary["scan_id"])["walk"]["roots"] == [f"s3://{bucket}/photos"]


def test_large_object_is_read_in_two_requests_and_scored(s3, tiny_onnx_model, sqlite_url):
    """An object over the reader's head (256 KiB) gets a ranged GET for its header, then a full GET."""
    import numpy as np
    from PIL import Image
    import io

    bucket = fresh_bucket(s3)
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > 256 * 1024
    s3.put(bucket, "big.png", data)
    store = objects.object_store(s3.endpoint)
    ranges = []
    store.client.meta.events.register("provide-client-params.s3.GetObject", lambda **kw: ranges.append(kw["params"]["Range"]))
    # The reader's requests alone: the provenance stage reads an object once more (it keeps no bytes of the
    # image stage's), so it is off here.
    result = scan(s3, f"s3://{bucket}", "--model", str(tiny_onnx_model), "--db", sqlite_url, "--no-provenance")
    assert result.exit_code == 0, result.output
    row = rows_by_path(sqlite_url, json.loads(result.stdout)["scan_id"])[f"s3://{bucket}/big.png"]
    assert row["status"] == "ok" and row["size"] == len(data), row
    assert ranges == ["bytes=0-262143", f"bytes=0-{len(data) - 1}"]


def test_path_list_with_s3_urls_and_a_vanished_object(s3, tmp_path, tiny_onnx_model, sqlite_url):
    bucket = fresh_bucket(s3)
    s3.put(bucket, "x/a.jpg", jpeg_bytes(1, size=(48, 48)))
    s3.put(bucket, "x/b.jpg", jpeg_bytes(2, size=(48, 48)))
    local = tmp_path / "local.jpg"
    local.write_bytes(jpeg_bytes(3, size=(48, 48)))
    listing = tmp_path / "paths.txt"
    listing.write_text(f"s3://{bucket}/x/a.jpg\n# a comment\ns3://{bucket}/x/gone.jpg\n{local}\ns3://{bucket}/x/b.jpg\n")
    result = scan(s3, "--paths-from", str(listing), "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    rows = rows_by_path(sqlite_url, json.loads(result.stdout)["scan_id"])
    assert {p: r["status"] for p, r in rows.items()} == {
        f"s3://{bucket}/x/a.jpg": "ok", f"s3://{bucket}/x/b.jpg": "ok", str(local): "ok",
        f"s3://{bucket}/x/gone.jpg": "error"}  # fmt: skip
    gone = rows[f"s3://{bucket}/x/gone.jpg"]
    assert gone["error_code"] == "missing" and "vanished" in gone["error"]


def test_object_deleted_between_listing_and_reading_is_one_error_row(s3):
    from dfscan.workers.images.decode import Preprocess
    from dfscan.workers.scoring import Stages
    from dfscan.workers.scoring.images import ImageStage
    from dfscan.workers.images.decoders import create_decoder

    bucket = fresh_bucket(s3)
    for i in range(3):
        s3.put(bucket, f"p/{i}.jpg", jpeg_bytes(i, size=(40, 40)))
    listed = list(ScanSource((f"s3://{bucket}/p",), (), WalkOptions(DEFAULT_EXTENSIONS,
                                                                      s3_endpoint_url=s3.endpoint)).paths())
    s3.client().delete_object(Bucket=bucket, Key="p/1.jpg")
    pre = Preprocess(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    maker = Stages([ImageStage(create_decoder("pillow", pre, threads=1, batch_size=4), read_threads=2,
                               store=objects.object_store(s3.endpoint))])
    try:
        items = maker.prepare(listed).items
    finally:
        maker.close()
    assert [i for i, it in enumerate(items) if it.payload is not None] == [0, 2]
    assert items[1].error.code == "missing"
    assert items[0].size > 0 and items[1].size is None


def test_access_denied_is_an_error_row_not_a_crash(s3_server, monkeypatch, tmp_path, tiny_onnx_model,  # noqa: F811
                                                   sqlite_url):
    aws_env(monkeypatch, ADMIN)
    bucket = s3_server.bucket(LIMITED_BUCKET)
    s3_server.put(bucket, "open/a.jpg", jpeg_bytes(5, size=(48, 48)))
    s3_server.put(bucket, "secret/b.jpg", jpeg_bytes(6, size=(48, 48)))
    aws_env(monkeypatch, LIMITED)  # may list the bucket and read open/* only: the server answers 403 for the rest
    result = scan(s3_server, f"s3://{bucket}", "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    rows = rows_by_path(sqlite_url, json.loads(result.stdout)["scan_id"])
    assert rows[f"s3://{bucket}/open/a.jpg"]["status"] == "ok"
    denied = rows[f"s3://{bucket}/secret/b.jpg"]
    assert denied["status"] == "error" and denied["error_code"] == "unreadable"
    assert denied["error"] == "access denied (AccessDenied)"
    # A bucket the identity may not list at all: a one-line setup error before any scan row.
    other = s3_server.bucket(f"nope-{uuid.uuid4().hex[:8]}")
    result = scan(s3_server, f"s3://{other}", "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert result.exit_code == 1 and "access denied" in result.output and "Traceback" not in result.output
    assert not any(secret in result.output for secret in SECRETS)


@pytest.mark.parametrize("case", ["no-bucket", "empty-prefix", "bad-endpoint", "not-a-url", "userinfo",
                                  "no-credentials"])
def test_setup_errors_are_one_line(s3, monkeypatch, tiny_onnx_model, sqlite_url, case):
    from tests._cluster import free_port

    bucket = fresh_bucket(s3)
    root, endpoint = f"s3://{bucket}/photos", s3.endpoint
    expected = {
        "no-bucket": "no such bucket", "empty-prefix": "no objects under this prefix",
        "bad-endpoint": "object store unreachable", "not-a-url": "must be an http:// or https:// URL",
        "userinfo": "must not hold credentials", "no-credentials": "no AWS credentials found"}[case]  # fmt: skip
    if case == "no-bucket":
        root = f"s3://missing-{uuid.uuid4().hex[:8]}/photos"
    elif case == "bad-endpoint":
        endpoint = f"http://127.0.0.1:{free_port()}"
    elif case == "not-a-url":
        endpoint = "127.0.0.1:8333"
    elif case == "userinfo":
        endpoint = f"http://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:8333"
    elif case == "no-credentials":  # nothing in the chain: no variables, no files, no instance metadata
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        objects.forget_stores()
    result = run("scan", root, "--s3-endpoint-url", endpoint, "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert result.exit_code == 1, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not any(secret in result.output for secret in SECRETS)
    if case not in ("not-a-url", "userinfo"):
        with pytest.raises(RootNotFound, match=expected):
            from dfscan.scanner import check_roots

            check_roots([root], endpoint)
    else:
        with pytest.raises(SettingsError):
            Settings(s3_endpoint_url=endpoint)


def test_incremental_rescan_skips_unchanged_objects_and_rescores_changed_ones(s3, tmp_path, tiny_onnx_model,
                                                                           sqlite_url):
    bucket = fresh_bucket(s3)
    for i in range(6):
        s3.put(bucket, f"inc/{i}.jpg", jpeg_bytes(i, size=(48, 48)))
    first = scan(s3, f"s3://{bucket}/inc", "--model", str(tiny_onnx_model), "--db", sqlite_url)
    assert json.loads(first.stdout)["total"] == 6
    again = json.loads(scan(s3, f"s3://{bucket}/inc", "--model", str(tiny_onnx_model), "--db", sqlite_url,
                            "--incremental").stdout)
    assert (again["total"], again["skipped"]) == (0, 6)
    time.sleep(1.1)  # LastModified has whole seconds
    s3.put(bucket, "inc/1.jpg", jpeg_bytes(100, size=(64, 64)))  # new content
    s3.put(bucket, "inc/2.jpg", jpeg_bytes(2, size=(48, 48)))  # the same bytes again: a new LastModified, same ETag
    s3.put(bucket, "inc/new.jpg", jpeg_bytes(7, size=(48, 48)))
    third = json.loads(scan(s3, f"s3://{bucket}/inc", "--model", str(tiny_onnx_model), "--db", sqlite_url,
                            "--incremental").stdout)
    assert (third["total"], third["skipped"]) == (2, 5)
    assert set(rows_by_path(sqlite_url, third["scan_id"])) == {f"s3://{bucket}/inc/{n}.jpg" for n in ("1", "new")}
    # The same objects named by a path list: their size and LastModified come from HEAD requests.
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"s3://{bucket}/inc/{n}.jpg\n" for n in ("0", "1", "new", "gone")))
    fourth = json.loads(scan(s3, "--paths-from", str(listing), "--model", str(tiny_onnx_model), "--db", sqlite_url,
                             "--incremental").stdout)
    assert (fourth["total"], fourth["skipped"], fourth["errors"]) == (1, 3, 1)  # only the missing one is tried


def _etag(server, bucket: str, key: str) -> str:
    return server.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def _set_rows(url: str, sql: str, **params) -> None:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def test_incremental_rescores_an_object_rewritten_in_the_same_second_with_the_same_size(s3, tiny_onnx_model,
                                                                                       sqlite_url):
    """Same size, same LastModified, other bytes: the ETag alone tells the rewrite; re-uploaded bytes are skipped."""
    bucket = fresh_bucket(s3)
    before = {n: jpeg_bytes(n, size=(48, 48), comment=b"version 1") for n in range(3)}
    for n, data in before.items():
        s3.put(bucket, f"etag/{n}.jpg", data)
    first = json.loads(scan(s3, f"s3://{bucket}/etag", "--model", str(tiny_onnx_model), "--db", sqlite_url).stdout)
    rows = rows_by_path(sqlite_url, first["scan_id"])
    assert {u: r["etag"] for u, r in rows.items()} == {
        f"s3://{bucket}/etag/{n}.jpg": _etag(s3, bucket, f"etag/{n}.jpg") for n in range(3)}
    after = jpeg_bytes(0, size=(48, 48), comment=b"version 2")  # other bytes, the same size
    assert len(after) == len(before[0]) and after != before[0]
    s3.put(bucket, "etag/0.jpg", after)
    s3.put(bucket, "etag/1.jpg", before[1])  # the same bytes uploaded again: the same ETag
    assert _etag(s3, bucket, "etag/0.jpg") != rows[f"s3://{bucket}/etag/0.jpg"]["etag"]
    assert _etag(s3, bucket, "etag/1.jpg") == rows[f"s3://{bucket}/etag/1.jpg"]["etag"]
    # A rewrite within the same second: the rows' mtimes made the objects' LastModified now, whatever the
    # clock did between the two PUTs, so size and mtime match for all three and only the ETag differs.
    for n in range(3):
        modified = s3.client().head_object(Bucket=bucket, Key=f"etag/{n}.jpg")["LastModified"].timestamp()
        _set_rows(sqlite_url, "UPDATE results SET mtime = :m WHERE path = :p", m=float(int(modified)),
                  p=f"s3://{bucket}/etag/{n}.jpg")
    again = json.loads(scan(s3, f"s3://{bucket}/etag", "--model", str(tiny_onnx_model), "--db", sqlite_url,
                            "--incremental").stdout)
    assert (again["total"], again["skipped"]) == (1, 2)
    rescored = rows_by_path(sqlite_url, again["scan_id"])
    assert list(rescored) == [f"s3://{bucket}/etag/0.jpg"]
    assert rescored[f"s3://{bucket}/etag/0.jpg"]["etag"] == _etag(s3, bucket, "etag/0.jpg")


def test_incremental_falls_back_to_size_and_mtime_for_rows_without_an_etag(s3, tiny_onnx_model, sqlite_url):
    """Rows written before migration 0012 have no etag: size and LastModified decide, as they did."""
    bucket = fresh_bucket(s3)
    for n in range(2):
        s3.put(bucket, f"old/{n}.jpg", jpeg_bytes(n, size=(48, 48)))
    first = json.loads(scan(s3, f"s3://{bucket}/old", "--model", str(tiny_onnx_model), "--db", sqlite_url).stdout)
    _set_rows(sqlite_url, "UPDATE results SET etag = NULL WHERE scan_id = :s", s=first["scan_id"])
    _set_rows(sqlite_url, "UPDATE results SET mtime = mtime - 5 WHERE path = :p", p=f"s3://{bucket}/old/1.jpg")
    again = json.loads(scan(s3, f"s3://{bucket}/old", "--model", str(tiny_onnx_model), "--db", sqlite_url,
                            "--incremental").stdout)
    assert (again["total"], again["skipped"]) == (1, 1)
    assert list(rows_by_path(sqlite_url, again["scan_id"])) == [f"s3://{bucket}/old/1.jpg"]


def test_a_copy_keeps_its_own_objects_etag(s3, tiny_onnx_model, sqlite_url):
    """The same bytes in three objects, two uploaded in parts (another ETag): each row has its own object's ETag.

    b is a copy in a's batch, z one in a later batch (batches of 4).
    """
    bucket = fresh_bucket(s3)
    data = jpeg_bytes(5, size=(48, 48))
    client = s3.client()
    s3.put(bucket, "copies/a.jpg", data)
    for key in ("copies/b.jpg", "copies/z.jpg"):
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=data)
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                         MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    for n in range(3):
        s3.put(bucket, f"copies/c{n}.jpg", jpeg_bytes(20 + n, size=(48, 48)))
    etags = {f"s3://{bucket}/{k}": _etag(s3, bucket, k)
             for k in ("copies/a.jpg", "copies/b.jpg", "copies/z.jpg", *(f"copies/c{n}.jpg" for n in range(3)))}
    assert etags[f"s3://{bucket}/copies/a.jpg"] != etags[f"s3://{bucket}/copies/b.jpg"]
    result = json.loads(scan(s3, f"s3://{bucket}/copies", "--model", str(tiny_onnx_model), "--db", sqlite_url).stdout)
    rows = rows_by_path(sqlite_url, result["scan_id"])
    assert [rows[f"s3://{bucket}/copies/{k}.jpg"]["verdict_source"] for k in "abz"] == ["computed", "copy", "copy"]
    assert {u: r["etag"] for u, r in rows.items()} == etags


def test_credentials_stay_out_of_logs_audit_report_and_errors(s3, caplog, tmp_path, tiny_onnx_model, sqlite_url):
    bucket = fresh_bucket(s3)
    s3.put(bucket, "c/a.jpg", jpeg_bytes(1, size=(48, 48)))
    s3.put(bucket, "c/b.jpg", b"not an image")
    listing = tmp_path / "paths.txt"
    listing.write_text(f"s3://{bucket}/c/gone.jpg\n")
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included, at its most talkative
    result = scan(s3, f"s3://{bucket}/c", "--paths-from", str(listing), "--model", str(tiny_onnx_model),
                  "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    scan_id = json.loads(result.stdout)["scan_id"]
    report = tmp_path / "report.html"
    made = run("report", str(scan_id), "--db", sqlite_url, "--out", str(report))
    assert made.exit_code == 0, made.output
    rows = rows_by_path(sqlite_url, scan_id)
    assert {r["error_code"] for r in rows.values()} == {None, "not-image", "missing"}
    everything = {
        "log": caplog.text, "output": result.output + made.output, "audit": json.dumps(audit(sqlite_url, scan_id)),
        "report": report.read_text(), "rows": json.dumps(list(rows.values()), default=str)}  # fmt: skip
    assert "s3://" in everything["report"] and s3.endpoint in everything["audit"]
    # The suspect's thumbnail was read from the scan's endpoint (its audit record), not from AWS.
    assert 'src="data:image/jpeg;base64,' in everything["report"]
    for where, text_ in everything.items():
        for secret in SECRETS:
            assert secret not in text_, f"{secret[:6]}... in the {where}"


# --- the fleet -------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_fleet_scan_of_an_s3_prefix(s3, redis_server, pg_url, tmp_path, tiny_onnx_model):
    """The producer lists the bucket, a Celery worker reads the objects by their URL from its chunks."""
    from tests._cluster import Worker, wait_for

    bucket = fresh_bucket(s3)
    expected = []
    for i in range(20):
        s3.put(bucket, f"fleet/{i:02d}.jpg", jpeg_bytes(i, size=(48, 48)))
        expected.append(f"s3://{bucket}/fleet/{i:02d}.jpg")
    s3.put(bucket, "fleet/broken.jpg", b"no image")
    expected.append(f"s3://{bucket}/fleet/broken.jpg")
    env = {"AWS_ACCESS_KEY_ID": ADMIN[0], "AWS_SECRET_ACCESS_KEY": ADMIN[1], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "DFSCAN_S3_ENDPOINT_URL": s3.endpoint}
    (tmp_path / "logs").mkdir()
    worker = Worker(redis_server.url(), pg_url, tmp_path / "logs", name="s3", env=env)
    try:
        worker.wait_ready()
        result = run("scan", f"s3://{bucket}/fleet", "--s3-endpoint-url", s3.endpoint, "--model", str(tiny_onnx_model),
                     "--db", pg_url, "--broker", redis_server.url(), "--chunk-size", "8", "--json")
        assert result.exit_code == 0, result.output
        scan_id = json.loads(result.stdout)["scan_id"]

        def done() -> bool:
            assert worker.alive(), worker.log()[-3000:]
            return run("status", str(scan_id), "--db", pg_url, "--json").stdout.count('"completed"') > 0

        wait_for(done, 120, f"scan {scan_id} to complete")
        rows = rows_by_path(pg_url, scan_id)
        assert sorted(rows) == sorted(expected)
        assert rows[f"s3://{bucket}/fleet/broken.jpg"]["error_code"] == "not-image"
        assert sum(r["status"] == "ok" for r in rows.values()) == 20
        # Written by COPY: every row, the error too, carries its object's ETag.
        assert {u: r["etag"] for u, r in rows.items()} == {u: _etag(s3, bucket, u.split("/", 3)[3]) for u in rows}
        assert not any(secret in worker.log() for secret in SECRETS)
    finally:
        worker.stop()


@pytest.mark.redis
def test_scheduled_scan_of_an_s3_root_lists_it_into_chunks(s3, redis_server, sqlite_url, tiny_onnx_model, tmp_path):
    """A schedule entry's ``s3://`` root: the producer task (run_entry) checks it, lists it and records its chunks."""
    from dfscan.core.settings import Settings
    from dfscan.workers.fleet.schedule import load_schedule, run_entry

    bucket = fresh_bucket(s3)
    for i in range(5):
        s3.put(bucket, f"nightly/{i}.jpg", jpeg_bytes(i, size=(32, 32)))
    schedule = tmp_path / "nightly.toml"
    schedule.write_text(f'[[scan]]\nname = "s3-nightly"\ncron = "30 2 * * *"\nroots = ["s3://{bucket}/nightly"]\n'
                        f'model = "{tiny_onnx_model}"\nchunk_size = 2\n')
    (entry,) = load_schedule(schedule)
    settings = Settings(db_url=sqlite_url, broker_url=redis_server.url(), s3_endpoint_url=s3.endpoint)
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)  # as `dfscan worker` does before it takes tasks
    scan_id = run_entry(settings, entry.message(), run_key="run-1")
    with db.session_factory(engine)() as session:
        paths = [p for seq in range(3) for p in db.chunk_paths(session, scan_id, seq)]
        walk = db.scan_audit(session, scan_id)["walk"]
    engine.dispose()
    assert paths == [f"s3://{bucket}/nightly/{i}.jpg" for i in range(5)]
    assert walk["roots"] == [f"s3://{bucket}/nightly"] and walk["s3_endpoint_url"] == s3.endpoint


def test_throttling_is_retried_by_botocore(s3):
    """Two 503 SlowDown answers before the real server's: the read succeeds on botocore's third attempt."""
    from dfscan.workers.reading.reader import read_head
    from tests._s3 import ThrottlingProxy

    bucket = fresh_bucket(s3)
    data = jpeg_bytes(3, size=(32, 32))
    s3.put(bucket, "t/a.jpg", data)
    proxy = ThrottlingProxy(s3.endpoint, fail=2)
    try:
        got = read_head(f"s3://{bucket}/t/a.jpg", store=objects.ObjectStore(proxy.endpoint))
    finally:
        proxy.close()
    assert got.data == data and got.size == len(data)
    assert [status for _, status in proxy.requests] == [503, 503, 206]


def test_a_root_is_a_folder_or_one_object_never_a_name_prefix(s3):
    from dfscan.scanner import check_roots

    bucket = fresh_bucket(s3)
    s3.put(bucket, "photos2/x.jpg", b"x")
    s3.put(bucket, "photos-old/y.jpg", b"x")
    with pytest.raises(RootNotFound, match="no objects under this prefix"):
        check_roots([f"s3://{bucket}/photos"], s3.endpoint)
    s3.put(bucket, "photos", b"an object named like the folder")
    assert check_roots([f"s3://{bucket}/photos"], s3.endpoint) == [f"s3://{bucket}/photos"]
    s3.put(bucket, "photos/z.jpg", b"x")
    walked = ScanSource((f"s3://{bucket}/photos/",), (), WalkOptions(DEFAULT_EXTENSIONS, s3_endpoint_url=s3.endpoint))
    assert list(walked.paths()) == [f"s3://{bucket}/photos/z.jpg"]
    assert check_roots([f"s3://{bucket}"], s3.endpoint) == [f"s3://{bucket}"]  # a whole bucket


# --- videos ------------------------------------------------------------------------------
# FFmpeg streams an s3:// video from a presigned URL (workers.video._objects): it seeks with Range requests,
# and the URL (access key id, signature) never reaches a row, a log, the output or the report.

import re  # noqa: E402

from tests._models import tiny_video_model  # noqa: E402,F401 - fixture
from tests._videos import truncate_without_moov, write_video  # noqa: E402

# What a presigned URL holds, SigV2 or SigV4: none of it may leave the worker.
PRESIGNED_MARKS = ("Signature=", "AWSAccessKeyId", "X-Amz-Credential", "X-Amz-Signature", "Expires=")


def _video_bytes(tmp_path, name: str, frames: int = 30, **kw) -> bytes:
    return write_video(tmp_path / name, frames, size=(64, 48), **kw).read_bytes()


def test_scan_of_a_prefix_with_videos_streams_them_and_keeps_the_url_secret(s3, caplog, tmp_path, tiny_video_model,  # noqa: F811
                                                                          sqlite_url):
    bucket = fresh_bucket(s3)
    clip = _video_bytes(tmp_path, "clip.mp4", 60)
    cut = truncate_without_moov(write_video(tmp_path / "cut.mp4", 40, size=(64, 48))).read_bytes()
    s3.put(bucket, "v/photo.jpg", jpeg_bytes(1, size=(48, 48)))
    s3.put(bucket, "v/clip.mp4", clip)
    s3.put(bucket, "v/cut.mp4", cut)
    s3.put(bucket, "v/clip.webm", _video_bytes(tmp_path, "clip.webm", 20, codec="vp9-webm"))
    listing = tmp_path / "paths.txt"
    listing.write_text(f"s3://{bucket}/v/gone.mp4\n")  # vanished since it was listed
    store = objects.object_store(s3.endpoint)
    ranges: list[str] = []
    store.client.meta.events.register("provide-client-params.s3.GetObject",
                                      lambda **kw: ranges.append(kw["params"].get("Range", "")))
    caplog.set_level(logging.DEBUG)
    result = scan(s3, f"s3://{bucket}/v", "--paths-from", str(listing), "--model", str(tiny_video_model.parent),
                  "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    scan_id = json.loads(result.stdout)["scan_id"]
    rows = rows_by_path(sqlite_url, scan_id)
    url = f"s3://{bucket}/v/"
    assert set(rows) == {url + n for n in ("photo.jpg", "clip.mp4", "cut.mp4", "clip.webm", "gone.mp4")}
    for name in ("clip.mp4", "clip.webm"):
        row = rows[url + name]
        assert (row["kind"], row["status"], row["frames"]) == ("video", "ok", 4), row  # the sidecar's T
        assert row["duration_s"] > 0 and 0 <= row["p_fake"] <= 1 and row["mtime"] > time.time() - 3600
    assert rows[url + "clip.mp4"]["size"] == len(clip)
    assert (rows[url + "photo.jpg"]["kind"], rows[url + "photo.jpg"]["status"]) == ("image", "ok")
    cut_row = rows[url + "cut.mp4"]
    assert (cut_row["kind"], cut_row["error_code"]) == ("video", "truncated") and "no moov atom" in cut_row["error"]
    assert cut_row["size"] == len(cut)
    gone = rows[url + "gone.mp4"]
    assert (gone["kind"], gone["error_code"]) == ("video", "missing") and "vanished" in gone["error"]
    # A batch of an image and videos: each row has its object's ETag, the vanished one none.
    assert {u: r["etag"] for u, r in rows.items()} == {
        u: None if u.endswith("gone.mp4") else _etag(s3, bucket, u.split("/", 3)[3]) for u in rows}
    # Only the videos' first bytes went through boto3 (and the MP4 box walk of the cut one): FFmpeg read the rest.
    assert f"bytes=0-{len(clip) - 1}" not in ranges and "bytes=0-63" in ranges

    report = tmp_path / "report.html"
    made = run("report", str(scan_id), "--db", sqlite_url, "--out", str(report))
    assert made.exit_code == 0, made.output
    html = report.read_text()
    figure = re.search(rf'<figure class="suspect video" data-path="{re.escape(url)}clip.mp4">(.*?)</figure>', html,
                       re.S)
    assert figure is not None and len(re.findall(r'<svg class="frame"', figure.group(1))) == 4  # read via the store
    everything = {
        "log": caplog.text, "output": result.output + made.output, "audit": json.dumps(audit(sqlite_url, scan_id)),
        "report": html, "rows": json.dumps(list(rows.values()), default=str)}  # fmt: skip
    for where, text_ in everything.items():
        for secret in (*SECRETS, *PRESIGNED_MARKS):
            assert secret not in text_, f"{secret[:8]}... in the {where}"


def test_ffmpeg_messages_about_an_object_never_hold_its_presigned_url(s3, tmp_path):
    from dfscan.workers.video._objects import open_object
    from dfscan.workers.reading.errors import VideoError
    from dfscan.workers.video.sample import sample_video

    bucket = fresh_bucket(s3)
    s3.put(bucket, "a.mp4", _video_bytes(tmp_path, "a.mp4"))
    store = objects.object_store(s3.endpoint)
    video = open_object(f"s3://{bucket}/a.mp4", store, 10)
    assert ADMIN[0] in video.presigned and "Signature" in video.presigned  # what there is to hide
    assert video.presigned not in repr(video)
    said = video.clean(f"Server returned 403 Forbidden: '{video.presigned}'")
    assert said == f"Server returned 403 Forbidden: 's3://{bucket}/a.mp4'"
    # A URL that expired before FFmpeg used it: the server refuses FFmpeg's request (HTTP 403), a reason
    # without the URL.
    presign = store.presigned_get

    def expired(url: str, expires_s: int) -> str:
        signed = presign(url, 1)
        time.sleep(2.5)
        return signed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "presigned_get", expired)
        with pytest.raises(VideoError) as refused:
            sample_video(f"s3://{bucket}/a.mp4", 4, time_limit_s=10, store=store)
    assert refused.value.code == "unreadable" and "access denied" in refused.value.message
    assert not any(mark in refused.value.message for mark in (ADMIN[0], *PRESIGNED_MARKS))


def test_a_video_the_identity_may_not_read_is_unreadable(s3_server, monkeypatch, tmp_path, tiny_video_model,  # noqa: F811
                                                          sqlite_url):
    s3_server.bucket(LIMITED_BUCKET)
    s3_server.put(LIMITED_BUCKET, "open/ok.mp4", _video_bytes(tmp_path, "ok.mp4"))
    s3_server.put(LIMITED_BUCKET, "closed/no.mp4", _video_bytes(tmp_path, "no.mp4"))
    aws_env(monkeypatch, LIMITED)
    listing = tmp_path / "paths.txt"
    listing.write_text(f"s3://{LIMITED_BUCKET}/open/ok.mp4\ns3://{LIMITED_BUCKET}/closed/no.mp4\n")
    result = scan(s3_server, "--paths-from", str(listing), "--model", str(tiny_video_model.parent), "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    rows = rows_by_path(sqlite_url, json.loads(result.stdout)["scan_id"])
    assert rows[f"s3://{LIMITED_BUCKET}/open/ok.mp4"]["status"] == "ok"
    denied = rows[f"s3://{LIMITED_BUCKET}/closed/no.mp4"]
    assert (denied["kind"], denied["error_code"]) == ("video", "unreadable") and "access denied" in denied["error"]


def test_ffmpeg_seeks_in_the_object_with_range_requests_not_a_whole_download(s3, tmp_path):
    """16 frames of a 12.7 MB video cost a fraction of its bytes, counted on the wire by a proxy before the store.

    FFmpeg's requests are bounded (``HTTP_REQUEST_BYTES``): open-ended ones moved 60 MB here (the store fills
    the TCP buffers of every request FFmpeg abandons on a seek).
    """
    import numpy as np

    from dfscan.workers.video.sample import sample_video
    from tests._cluster import TcpProxy

    class CountingProxy(TcpProxy):
        """Counts the bytes the store sends back through it."""

        down = 0

        def _pump(self, src, dst) -> None:
            downstream = src.getpeername()[1] == self.target_port
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
                    if downstream:
                        self.down += len(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    self._close(s)

    bucket = fresh_bucket(s3)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(50)]
    data = write_video(tmp_path / "long.mp4", 1500, size=(128, 96), gop=30, draw=lambda i: noise[i % 50]).read_bytes()
    s3.put(bucket, "long.mp4", data)
    proxy = CountingProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        video = sample_video(f"s3://{bucket}/long.mp4", 16, time_limit_s=30,
                             store=objects.ObjectStore(f"http://127.0.0.1:{proxy.port}"))
    finally:
        proxy.close()
    assert len(video.frames) == 16
    print(f"\n16 frames of a {len(data) / 1e6:.1f} MB object: {proxy.down / 1e6:.2f} MB read "
          f"({proxy.down / len(data):.0%})")
    assert proxy.down < 0.5 * len(data)
