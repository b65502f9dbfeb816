"""Review (#26): the decisions table and view, the queue and reviews API, roles, sessions and CSRF, escaping.

Against the real `dfscan serve` process on SQLite and PostgreSQL, with scans of real JPEGs by a tiny ONNX model.
"""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image
from sqlalchemy import inspect, select, text

from dfscan import db
from dfscan.db.api_keys import create_api_key, set_scan_owner
from dfscan.db.models import REVIEW_VIEW_COLUMNS, ApiKey, Review
from dfscan.db.paths import path_hash
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests._review import HTML_NAME, SCAN_NAME, World, bearer, sign_in, world  # noqa: F401 - fixture


def _sql(url: str, query: str, **params: object) -> list[tuple]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query), params)]
    finally:
        engine.dispose()


def test_a_reviewer_sees_and_decides_only_its_teams_scans(world: World) -> None:
    rita = bearer(world.tokens["rita"])
    with httpx.Client(base_url=world.url, timeout=30) as client:
        assert client.get(f"/v1/scans/{world.scan_a}", headers=rita).status_code == 200
        queue = client.get(f"/v1/scans/{world.scan_a}/queue", headers=rita)
        assert queue.status_code == 200, queue.text
        assert sorted(i["path"] for i in queue.json()["items"]) == world.paths_a
        # Team b's scan does not exist for team a's reviewer, whatever the door.
        for method, path, body in (("GET", f"/v1/scans/{world.scan_b}", None),
                                   ("GET", f"/v1/scans/{world.scan_b}/queue", None),
                                   ("GET", f"/v1/scans/{world.scan_b}/results", None),
                                   ("POST", f"/v1/scans/{world.scan_b}/reviews",
                                    {"path": "/x.jpg", "decision": "fake"})):
            r = client.request(method, path, headers=rita, json=body)
            assert r.status_code == 404, (path, r.text)
        # A reviewer reads and reviews; it starts, cancels and scores nothing.
        assert client.post("/v1/scans", headers=rita, json={"roots": [str(world.folder)]}).status_code == 403
        assert client.post(f"/v1/scans/{world.scan_a}/cancel", headers=rita).status_code == 403
        # Bob (team b's scanner) does not see team a's scan either; the admin sees both.
        assert client.get(f"/v1/scans/{world.scan_a}/queue", headers=bearer(world.tokens["bob"])).status_code == 404
        admin = bearer(world.tokens["admin"])
        assert client.get(f"/v1/scans/{world.scan_b}/queue", headers=admin).status_code == 200
        # The page lists the scans the session's key may review: team a's, not team b's.
        sign_in(client, world.tokens["rita"])
        listing = client.get("/review").text
        assert f'href="/review?scan={world.scan_a}"' in listing
        assert f'href="/review?scan={world.scan_b}"' not in listing
        assert client.get(f"/review?scan={world.scan_b}").status_code == 404
        assert client.get(f"/review/api/scans/{world.scan_b}/queue").status_code == 404


def test_decisions_changes_and_copies_in_sql(world: World) -> None:
    rita = bearer(world.tokens["rita"])
    scan = world.scan_a
    copy_1, one = (str(world.folder / n) for n in ("copy_of_1.jpg", "img_00001.jpg"))
    target = str(world.folder / "img_00002.jpg")
    with httpx.Client(base_url=world.url, timeout=30) as client:
        items = client.get(f"/v1/scans/{scan}/queue", headers=rita, params={"order": "p_fake"}).json()["items"]
        p = [i["p_fake"] for i in items]
        assert p == sorted(p, reverse=True)
        first = client.post(f"/v1/scans/{scan}/reviews", headers=rita,
                            json={"path": target, "decision": "fake", "note": "blending at the jaw"})
        assert first.status_code == 201, first.text
        assert first.json()["decided"] == [target]
        assert client.post(f"/v1/scans/{scan}/reviews", headers=rita,
                           json={"path": target, "decision": "real"}).status_code == 201
        # Copies (the same bytes) decided together, and the answer says so.
        both = client.post(f"/v1/scans/{scan}/reviews", headers=rita,
                           json={"path": one, "decision": "escalate", "copies": True}).json()
        assert both["decided"] == [one, copy_1] and both["copies"] == [copy_1]
        # A path the scan does not hold, and a decision dfscan does not know, are refused.
        r = client.post(f"/v1/scans/{scan}/reviews", headers=rita, json={"path": "/etc/passwd", "decision": "fake"})
        assert r.status_code == 422 and "no file" in r.json()["detail"]
        r = client.post(f"/v1/scans/{scan}/reviews", headers=rita, json={"path": target, "decision": "maybe"})
        assert r.status_code == 422
        undecided = client.get(f"/v1/scans/{scan}/queue", headers=rita, params={"review": "undecided"}).json()
        assert {i["path"] for i in undecided["items"]} == set(world.paths_a) - {target, one, copy_1}
        page = client.get(f"/v1/scans/{scan}/queue", headers=rita, params={"limit": 2}).json()
        rest = client.get(f"/v1/scans/{scan}/queue", headers=rita,
                          params={"limit": 200, "cursor": page["next_cursor"]}).json()
        assert [i["path"] for i in page["items"] + rest["items"]] == [
            i["path"] for i in client.get(f"/v1/scans/{scan}/queue", headers=rita).json()["items"]]
        assert client.get(f"/v1/scans/{scan}/queue", headers=rita, params={"cursor": "bogus"}).status_code == 400

    view = dict(((row[1], row[2:]) for row in _sql(
        world.db_url, "SELECT scan_id, path, decision, reviewer, note FROM scan_reviews WHERE scan_id = :s", s=scan)))
    assert view == {target: ("real", "rita", None), one: ("escalate", "rita", None),
                    copy_1: ("escalate", "rita", None)}
    kept = _sql(world.db_url, "SELECT decision, note, copy_of FROM reviews WHERE scan_id = :s AND path = :p "
                "ORDER BY id", s=scan, p=target)
    assert kept == [("fake", "blending at the jaw", None), ("real", None, None)]
    assert _sql(world.db_url, "SELECT copy_of FROM reviews WHERE path = :p", p=copy_1) == [(one,)]
    engine = db.make_engine(world.db_url)
    try:
        assert [c["name"] for c in inspect(engine).get_columns("scan_reviews")] == list(REVIEW_VIEW_COLUMNS)
        with db.session_factory(engine)() as session:
            hashes = session.execute(select(Review.path, Review.path_hash).where(Review.scan_id == scan)).all()
            assert all(h == path_hash(p) for p, h in hashes)
            current = {i.path: i for i in db.current_decisions(session, [scan])}
            assert current[target].decision == "real" and current[target].status == "ok"
            assert [h["decision"] for h in db.history(session, scan, target)] == ["fake", "real"]
    finally:
        engine.dispose()


def test_the_page_signs_in_holds_a_session_and_refuses_decisions_without_csrf(world: World) -> None:
    scan = world.scan_a
    target = str(world.folder / "img_00003.jpg")
    with httpx.Client(base_url=world.url, timeout=30) as client:
        page = client.get(f"/review?scan={scan}")
        assert 'name="api_key"' in page.text and "csrf-token" not in page.text  # the sign-in form
        assert client.post("/review/session", data={"api_key": "dfs_nope_nope"}).status_code == 401
        r = client.post("/review/session", data={"api_key": world.tokens["rita"], "next": f"/review?scan={scan}"})
        assert r.status_code == 303 and r.headers["location"] == f"/review?scan={scan}"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "secure" not in cookie  # plain http on loopback; Secure everywhere else
        # A form posted from another site does not sign in.
        foreign = httpx.post(world.url + "/review/session", data={"api_key": world.tokens["rita"]},
                             headers={"Origin": "http://evil.test"})
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        csrf = sign_in(client, world.tokens["rita"], scan)
        queue = client.get(f"/review?scan={scan}")
        assert queue.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self'")
        assert "<script>" not in queue.text and "onerror" not in queue.text  # no inline script; no file names
        url = f"/review/api/scans/{scan}/reviews"
        body = {"path": target, "decision": "unsure"}
        assert client.post(url, json=body).status_code == 403
        assert client.post(url, json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
        assert httpx.post(world.url + url, json=body, headers={"X-CSRF-Token": csrf}).status_code == 401  # no cookie
        assert _sql(world.db_url, "SELECT count(*) FROM reviews WHERE path = :p", p=target) == [(0,)]
        ok = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 201, ok.text
        assert _sql(world.db_url, "SELECT decision, reviewer FROM scan_reviews WHERE path = :p", p=target) == [
            ("unsure", "rita")]
        assert client.post("/review/signout", data={}).status_code == 403  # sign-out needs the token too
        assert client.post("/review/signout", data={"csrf_token": csrf}).status_code == 303
        assert client.get(f"/review/api/scans/{scan}/queue").status_code == 401


def test_names_are_text_and_pictures_are_re_encoded(world: World) -> None:
    scan = world.scan_a
    html_path = str(world.folder / HTML_NAME)
    with httpx.Client(base_url=world.url, timeout=30) as client:
        sign_in(client, world.tokens["rita"])
        listing = client.get("/review").text
        assert "<b>team a</b>" not in listing and "&lt;b&gt;team a&lt;/b&gt; &amp; co" in listing
        assert SCAN_NAME not in client.get(f"/review?scan={scan}").text
        items = client.get(f"/review/api/scans/{scan}/queue").json()["items"]
        assert html_path in [i["path"] for i in items]  # JSON: the script puts it in the page as text
        thumb = client.get("/review/thumb", params={"scan": scan, "path": html_path})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content != (world.folder / HTML_NAME).read_bytes()  # made by the server, never the file
        assert Image.open(io.BytesIO(thumb.content)).size == (256, 256)
        # Only files the scan recorded are ever opened.
        outside = client.get("/review/thumb", params={"scan": scan, "path": str(world.folder.parent / "b" /
                                                                                "img_00010.jpg")})
        assert outside.status_code == 404
        assert client.get("/review/thumb", params={"scan": world.scan_b, "path": html_path}).status_code == 404
        static = client.get("/review/static/review.js")
        assert static.status_code == 200 and "textContent" in static.text and "innerHTML" not in static.text
        assert client.get("/review/static/..%2Fapp.py").status_code == 404
    with httpx.Client(base_url=world.url, timeout=30) as anonymous:
        assert anonymous.get("/review/thumb", params={"scan": scan, "path": html_path}).status_code == 401


def test_heatmaps_are_listed_and_served(world: World) -> None:
    path = str(world.folder / "img_00000.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, format="PNG")
    engine = db.make_engine(world.db_url)
    try:
        with db.session_factory(engine).begin() as session:
            db.write_explanations(session, world.scan_a, [db.ExplanationRow(
                path, "ok", "gradcam", "layer4", "a" * 64, p_fake=0.7, overlay=buf.getvalue())])
    finally:
        engine.dispose()
    with httpx.Client(base_url=world.url, timeout=30) as client:
        sign_in(client, world.tokens["rita"])
        items = {i["path"]: i for i in client.get(f"/review/api/scans/{world.scan_a}/queue").json()["items"]}
        assert [e["overlay"] for e in items[path]["explanations"]] == [True]
        assert items[str(world.folder / "img_00001.jpg")]["explanations"] == []
        r = client.get("/review/overlay", params={"scan": world.scan_a, "path": path, "n": 0})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == buf.getvalue()
        assert client.get("/review/overlay", params={"scan": world.scan_a, "path": path, "n": 1}).status_code == 404
        assert client.get("/review/overlay", params={"scan": world.scan_b, "path": path}).status_code == 404


def test_sessions_expire_and_close() -> None:
    from dfscan.serve._sessions import SessionStore, cookie_flags, csrf_ok

    store = SessionStore(ttl_s=3600)
    sid, session = store.open("dfs_token")
    assert store.get(sid) == session and csrf_ok(session, session.csrf) and not csrf_ok(session, "")
    store.close(sid)
    assert store.get(sid) is None
    expired = SessionStore(ttl_s=-1)
    sid, _ = expired.open("dfs_token")
    assert expired.get(sid) is None
    assert cookie_flags("review.example.org")["secure"] and not cookie_flags("127.0.0.1")["secure"]


def test_openapi_documents_the_review_api(world: World) -> None:
    doc = httpx.get(world.url + "/openapi.json", headers=bearer(world.tokens["admin"])).json()
    assert "get" in doc["paths"]["/v1/scans/{scan_id}/queue"]
    assert "post" in doc["paths"]["/v1/scans/{scan_id}/reviews"]
    assert not any(p.startswith("/review") for p in doc["paths"])


def test_migration_0017_down_and_up(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, "0016")
        with db.session_factory(engine).begin() as session:  # a scanner key with a scan, in 0016's columns
            owner = session.execute(text("INSERT INTO api_keys (name, prefix, key_hash, signing_secret, requests) "
                                         "VALUES ('owner', 'p', 'h', 's', 0) RETURNING id")).scalar()
            model_id = db.get_or_create_model(session, sha256="e" * 64, name="m", path="/m", info={})
            scan_id = db.create_scan(session, name="s", roots=["/d"], model_id=model_id, threshold=0.5, settings={})
            set_scan_owner(session, scan_id, owner)
        db.upgrade(engine)
        assert "reviews" in inspect(engine).get_table_names()
        with db.session_factory(engine).begin() as session:
            reviewer = create_api_key(session, "rita", "reviewer", team="a")
            with pytest.raises(Exception):  # noqa: B017 - the CHECK still refuses an unknown role
                with session.begin_nested():
                    session.execute(text("UPDATE api_keys SET role = 'root' WHERE id = :i"), {"i": reviewer.info.id})
        db.downgrade(engine, "0016")
        insp = inspect(engine)
        assert "reviews" not in insp.get_table_names() and "scan_reviews" not in insp.get_view_names()
        rows = _sql(db_url, "SELECT name, role, revoked_at IS NOT NULL FROM api_keys ORDER BY id")
        assert rows == [("owner", "scanner", False), ("rita", "scanner", True)]  # a reviewer never becomes a scanner
        assert _sql(db_url, "SELECT api_key_id FROM scans") == [(owner,)]
        db.upgrade(engine)
        with db.session_factory(engine)() as session:
            assert session.execute(select(ApiKey.team)).scalars().all() == [None, None]
    finally:
        engine.dispose()


def test_pictures_draw_face_boxes_and_a_videos_flagged_track(tmp_path) -> None:
    from dfscan.serve._review_media import image_jpeg, strip_jpeg
    from tests._images import write_jpegs
    from tests._videos import write_video

    jpeg = write_jpegs(tmp_path / "img", 1)[0]
    plain, _ = image_jpeg(str(jpeg), [], 128)
    boxed, _ = image_jpeg(str(jpeg), [(64, 64, 128, 128)], 128, roots=[str(tmp_path)])
    a, b = (Image.open(io.BytesIO(x)).convert("RGB") for x in (plain, boxed))
    edge = b.getpixel((32, 64))  # the box's left edge, scaled to 128 px: drawn in red
    assert edge[0] > edge[1] + 50 and edge[0] > edge[2] + 50, edge
    assert sum(abs(x - y) for x, y in zip(a.getpixel((32, 64)), edge)) > 60
    secret = write_jpegs(tmp_path / "outside", 1)[0]
    (tmp_path / "img" / "link.jpg").symlink_to(secret)  # a link under the scan's roots: never followed
    data, reason = image_jpeg(str(tmp_path / "img" / "link.jpg"), [], 128, roots=[str(tmp_path / "img")])
    assert data is None and "outside the scan's roots" in reason

    video = write_video(tmp_path / "v.mp4", 20, size=(64, 48))
    frames = [{"track": t, "frame_index": i, "timestamp_s": i * 0.5, "x": 8, "y": 8, "w": 16, "h": 16,
               "p_fake": 0.5, "track_p_fake": 0.9 if t == 1 else 0.1} for t in (0, 1) for i in range(3)]
    strip, reason = strip_jpeg(str(video), frames, 96)
    assert strip is not None, reason
    sheet = Image.open(io.BytesIO(strip))
    assert sheet.width == 3 * 64 + 2 * 4 and sheet.height == 48  # the flagged track's three frames side by side
    assert strip_jpeg(str(video), [], 96) == (None, "no frames recorded")
