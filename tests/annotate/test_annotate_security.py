"""Safety of the annotation server: authentication, CSRF, roles, traversal, uploads, headers, errors."""

from __future__ import annotations

import hashlib
import http.client
import io
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from annotate_helpers import write_images
from PIL import Image

from segany.io.rle import encode_mask


def _rle(h: int = 40, w: int = 60) -> dict:
    m = np.zeros((h, w), bool)
    m[3:9, 4:12] = True
    return encode_mask(m)


def _people(server):  # type: ignore[no-untyped-def]
    from segany.annotate import auth

    tokens = {}
    for name, roles in (("boss", "admin"), ("ann", "annotator"), ("rev", "reviewer"), ("both", "annotator,reviewer")):
        uid = auth.add_user(server.db, name, roles, password="pw-" + name + "-123")
        tokens[name] = auth.new_token(server.db, uid, "api")[1]
    return tokens


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_security_headers_mime_and_index(make_sqlite_client, tmp_path, monkeypatch) -> None:
    import segany.annotate.app as app_module

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>page</title>")
    (static / "ort.wasm").write_bytes(b"\0asm\1\0\0\0")
    (static / "main.mjs").write_text("export {};")
    (static / "app.js").write_text("1;")
    monkeypatch.setattr(app_module, "STATIC_DIR", static)
    c = make_sqlite_client()
    for path, kind in (("/", "text/html"), ("/static/ort.wasm", "application/wasm"),
                       ("/static/main.mjs", "text/javascript"), ("/static/app.js", "text/javascript"),
                       ("/api/session", "application/json"), ("/static/missing.js", "application/json"),
                       ("/api/images/x", "application/json")):
        r = c.get(path)
        assert r.headers["content-type"].startswith(kind), (path, r.headers["content-type"])
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self' 'wasm-unsafe-eval'" in r.headers["content-security-policy"]
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert r.headers["cross-origin-opener-policy"] == "same-origin"
        assert r.headers["cross-origin-embedder-policy"] == "require-corp"
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
    assert c.get("/").text.startswith("<!doctype html><title>page")


def test_placeholder_page_without_static(make_sqlite_client, tmp_path, monkeypatch) -> None:
    import segany.annotate.app as app_module

    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path / "nothing")
    c = make_sqlite_client()
    r = c.get("/")
    assert r.status_code == 200 and "segany annotate" in r.text and "<script" not in r.text


def test_loopback_only_without_auth(make_sqlite_client) -> None:
    c = make_sqlite_client()
    r = c.get("/api/session", headers={"Host": "evil.example"})
    assert r.status_code == 421 and "loopback" in r.json()["detail"]
    r = c.post("/api/images/1/objects", json={"rle": _rle()}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert (
        c.post("/api/images/1/objects", json={"rle": _rle()}, headers={"Origin": "http://127.0.0.1"}).status_code == 201
    )
    assert c.post("/api/login", json={"username": "a", "password": "b"}).status_code == 400
    data = c.app.state.server.data_dir
    assert data.stat().st_mode & 0o777 == 0o700


def test_tokens_hashed_revocable_expiring(make_client) -> None:
    c = make_client(auth=True)
    server = c.app.state.server
    tokens = _people(server)
    assert c.get("/api/session").status_code == 401
    assert c.get("/api/session", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/session", headers={"Authorization": "Basic abc"}).status_code == 401
    s = c.get("/api/session", headers=_h(tokens["ann"])).json()
    assert s["user"] == "ann" and s["roles"] == ["annotator"]
    # A token made over the API works, can be revoked by its owner, and is then refused.
    made = c.post("/api/tokens", json={"name": "laptop"}, headers=_h(tokens["ann"]))
    assert made.status_code == 201
    assert c.get("/api/session", headers=_h(made.json()["token"])).status_code == 200
    assert c.delete(f"/api/tokens/{made.json()['id']}", headers=_h(tokens["rev"])).status_code == 404  # not theirs
    assert c.delete(f"/api/tokens/{made.json()['id']}", headers=_h(tokens["ann"])).status_code == 204
    r = c.get("/api/session", headers=_h(made.json()["token"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # Expired tokens are refused.
    import datetime as dt

    from segany.annotate import auth
    from segany.annotate.db import Token, User, utcnow

    with server.db.write() as s:
        uid = s.query(User).filter_by(name="ann").one().id
    _, old, _ = auth.new_token(server.db, uid, "api", days=1)
    with server.db.write() as s:
        s.query(Token).filter_by(secret_hash=auth.digest(old)).update({"expires": utcnow() - dt.timedelta(seconds=1)})
    assert c.get("/api/session", headers=_h(old)).status_code == 401
    # Only hashes are stored.
    with server.db.read() as s:
        stored = {t.secret_hash for t in s.query(Token)}
    for secret in tokens.values():
        assert auth.digest(secret) in stored and secret not in stored
    if server.db.dialect == "sqlite":
        raw = b"".join(p.read_bytes() for p in server.data_dir.glob("annotate.sqlite3*"))
        assert not any(secret.encode() in raw for secret in tokens.values())


def test_cookie_session_needs_csrf_and_origin(make_client) -> None:
    c = make_client(auth=True)
    _people(c.app.state.server)
    assert c.post("/api/login", json={"username": "ann", "password": "wrong"},
                  headers={"Origin": "http://127.0.0.1"}).status_code == 401
    assert c.post("/api/login", json={"username": "ann", "password": "pw-ann-123"},
                  headers={"Origin": "http://evil.example"}).status_code == 403
    r = c.post("/api/login", json={"username": "ann", "password": "pw-ann-123"}, headers={"Origin": "http://127.0.0.1"})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    csrf = c.get("/api/session").json()["csrf"]
    assert csrf and csrf == r.json()["csrf"]
    body = {"rle": _rle()}
    assert c.post("/api/images/1/objects", json=body, headers={"Origin": "http://127.0.0.1"}).status_code == 403
    assert (
        c.post(
            "/api/images/1/objects", json=body, headers={"X-CSRF-Token": "x" + csrf, "Origin": "http://127.0.0.1"}
        ).status_code
        == 403
    )
    assert c.post("/api/images/1/objects", json=body, headers={"X-CSRF-Token": csrf}).status_code == 403  # no Origin
    assert (
        c.post(
            "/api/images/1/objects", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        ).status_code
        == 403
    )
    ok = c.post("/api/images/1/objects", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1"})
    assert ok.status_code == 201 and ok.json()["user"] == "ann"
    assert c.post("/api/logout", headers={"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1"}).status_code == 204
    assert c.get("/api/session").status_code == 401


def test_role_matrix_and_review_cycle(make_client) -> None:
    c = make_client(auth=True)
    t = _people(c.app.state.server)
    rle = _rle()
    # Reviewers neither take images nor draw; annotators do not review; only admins manage.
    assert c.post("/api/projects/1/next", headers=_h(t["rev"])).status_code == 403
    assert c.post("/api/images/1/objects", json={"rle": rle}, headers=_h(t["rev"])).status_code == 403
    assert c.post("/api/users", json={"name": "x", "roles": "admin"}, headers=_h(t["ann"])).status_code == 403
    assert c.post("/api/projects/1/categories", json={"names": ["a"]}, headers=_h(t["ann"])).status_code == 403
    assert c.post("/api/projects/1/images", content=b"x", headers=_h(t["ann"])).status_code == 403
    assert c.post("/api/tokens", json={"user": "boss"}, headers=_h(t["ann"])).status_code == 403
    assert c.post("/api/users", json={"name": "newbie", "roles": "annotator"}, headers=_h(t["boss"])).status_code == 201
    assert c.post("/api/users", json={"name": "bad", "roles": "god"}, headers=_h(t["boss"])).status_code == 400
    # The annotator works on an image and submits it; it is then read-only to them.
    image = c.post("/api/projects/1/next", headers=_h(t["ann"])).json()
    iid = image["id"]
    obj = c.post(f"/api/images/{iid}/objects", json={"rle": rle}, headers=_h(t["ann"])).json()
    assert c.post(f"/api/images/{iid}/review", json={"decision": "accept"}, headers=_h(t["rev"])).status_code == 409
    assert c.post(f"/api/images/{iid}/submit", headers=_h(t["ann"])).json()["state"] == "submitted"
    assert c.post(f"/api/images/{iid}/objects", json={"rle": rle}, headers=_h(t["ann"])).status_code == 403
    assert c.patch(f"/api/objects/{obj['id']}", json={"category": "x"},
                   headers={**_h(t["ann"]), "If-Match": '"1"'}).status_code == 403
    assert c.delete(f"/api/objects/{obj['id']}", headers={**_h(t["ann"]), "If-Match": '"1"'}).status_code == 403
    assert c.post(f"/api/images/{iid}/review", json={"decision": "accept"}, headers=_h(t["ann"])).status_code == 403
    assert c.post(f"/api/images/{iid}/review", json={"decision": "maybe"}, headers=_h(t["rev"])).status_code == 400
    # Reject with a comment: it goes back to its annotator, who fixes and resubmits; then accept.
    r = c.post(
        f"/api/images/{iid}/review", json={"decision": "reject", "comment": "missed the cat"}, headers=_h(t["rev"])
    )
    assert r.json()["state"] == "rejected" and r.json()["review_comment"] == "missed the cat"
    back = c.post("/api/projects/1/next", headers=_h(t["ann"])).json()
    assert back["id"] == iid and back["review_comment"] == "missed the cat"
    assert c.post(f"/api/images/{iid}/objects", json={"rle": rle}, headers=_h(t["ann"])).status_code == 201
    assert c.post(f"/api/images/{iid}/submit", headers=_h(t["ann"])).json()["state"] == "submitted"
    assert (
        c.post(f"/api/images/{iid}/review", json={"decision": "accept"}, headers=_h(t["rev"])).json()["state"]
        == "accepted"
    )
    # Someone with both roles cannot accept their own work.
    own = c.post("/api/projects/1/next", headers=_h(t["both"])).json()["id"]
    c.post(f"/api/images/{own}/submit", headers=_h(t["both"]))
    r = c.post(f"/api/images/{own}/review", json={"decision": "accept"}, headers=_h(t["both"]))
    assert r.status_code == 403 and "own" in r.json()["detail"]
    # Admins may still edit accepted images.
    assert c.post(f"/api/images/{iid}/objects", json={"rle": rle}, headers=_h(t["boss"])).status_code == 201


# -- a live server for raw HTTP ------------------------------------------------------------------


@pytest.fixture
def live(tmp_path, tiny_model, monkeypatch):  # type: ignore[no-untyped-def]
    import uvicorn

    import segany.annotate.app as app_module

    static = tmp_path / "static"
    static.mkdir()
    (static / "app.js").write_text("1;")
    monkeypatch.setattr(app_module, "STATIC_DIR", static)

    from segany.annotate.app import create_app
    from segany.annotate.server import Settings

    root = tmp_path / "images"
    write_images(root, [(40, 60), (30, 30)])
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    app = create_app(Settings(root=root, model=tiny_model, background=False, export_decoder=False,
                              max_upload_bytes=2_000_000, max_pixels=50_000_000))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield app, sock.getsockname()[1], outside
    server.should_exit = True
    thread.join(10)


def _raw(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if body is not None and "Content-Length" not in (headers or {}):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body is not None:
        conn.send(body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_traversal_and_symlinks(live) -> None:
    app, port, outside = live
    from segany.annotate import store

    names = [im["file_name"] for im in store.list_images(app.state.server.db, 1, None)]
    assert "link.png" not in names and len(names) == 2  # the symlink out of the folder is not imported
    for path in [
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/....//....//etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/api/images/..%2f..%2fetc%2fpasswd/file",
        "/api/images/%2e%2e/file",
        "/../../etc/passwd",
        "//etc/passwd",
        "/static/..\\..\\etc\\passwd",
    ]:
        status, body = _raw(port, "GET", path)
        assert status in (400, 404, 405), (path, status)
        assert b"root:" not in body and b"Traceback" not in body
    assert _raw(port, "GET", "/static/app.js")[0] == 200
    # A file swapped for a symlink out of the folder after import is not served.
    root = app.state.server.root
    target = root / "img001.png"
    target.unlink()
    target.symlink_to(outside / "secret.png")
    assert _raw(port, "GET", "/api/images/2/file")[0] == 404
    assert _raw(port, "GET", "/api/images/1/file")[0] == 200


def _png_bomb(side: int) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels that compresses to a few kB."""
    raw = zlib.compress(b"\0" * ((side // 8 + 1) * side), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


def test_uploads(live) -> None:
    app, port, _ = live
    # Over the limit: 413 at once, from the Content-Length, while the server keeps answering.
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/api/projects/1/images")
    conn.putheader("Content-Length", str(500_000_000))
    conn.endheaders()
    conn.send(b"\0" * 65536)
    r = conn.getresponse()
    assert r.status == 413 and b"limit" in r.read()
    assert time.perf_counter() - t0 < 1.0
    conn.close()
    t1 = time.perf_counter()
    assert _raw(port, "GET", "/api/health")[0] == 200
    assert time.perf_counter() - t1 < 0.5
    # Chunked (no Content-Length) over the limit: stopped while streaming.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/api/projects/1/images", body=iter([b"\0" * 1_000_000] * 3), encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    # Not images, or bombs: 400 from the content, whatever the name says.
    for payload in (b"<html><script>alert(1)</script></html>", b'<svg xmlns="http://www.w3.org/2000/svg"/>',
                    _png_bomb(20_000), b"\x89PNG\r\n\x1a\n" + b"\0" * 100, b""):
        status, body = _raw(port, "POST", "/api/projects/1/images?name=x.jpg", payload)
        assert status == 400, (payload[:20], status, body)
    # A real image is stored under a name made from its content and listed; the same bytes again add nothing.
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    status, body = _raw(port, "POST", "/api/projects/1/images", buf.getvalue())
    assert status == 201, body
    import json

    record = json.loads(body)
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    assert record["sha256"] == sha and (record["width"], record["height"]) == (30, 20)
    assert (app.state.server.data_dir / "uploads" / f"{sha}.png").is_file()
    assert _raw(port, "POST", "/api/projects/1/images", buf.getvalue())[0] == 200
    status, data = _raw(port, "GET", f"/api/images/{record['id']}/file")
    assert status == 200 and data == buf.getvalue()


def test_internal_errors_are_one_line_json(make_sqlite_client, monkeypatch) -> None:
    from segany.annotate import store

    c = make_sqlite_client()

    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals\nline two")

    monkeypatch.setattr(store, "project_list", boom)
    c_raise = c
    c_raise.raise_server_exceptions = False  # type: ignore[attr-defined]
    r = c_raise.get("/api/projects")
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert r.headers["x-content-type-options"] == "nosniff"
    assert c.get("/api/health").status_code == 200  # still serving


def test_cli_refuses_public_bind_without_auth(tmp_path) -> None:
    from segany.annotate.server import is_loopback
    from segany.cli.main import main

    write_images(tmp_path / "im", [(8, 8)])
    assert main(["annotate", str(tmp_path / "im"), "--host", "0.0.0.0"]) == 2
    assert main(["annotate", str(tmp_path / "nope")]) == 2
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_build_server_serves_on_a_free_loopback_port(tmp_path, tiny_model) -> None:
    """The path `segany annotate DIR` takes: bind (port 0), create the app, run uvicorn; then stop."""
    from segany.annotate.server import Settings, build_server
    from segany.errors import SeganyError

    root = tmp_path / "im"
    write_images(root, [(8, 8)])
    settings = Settings(root=root, model=tiny_model, background=False, export_decoder=False)
    with pytest.raises(SeganyError, match="without authentication"):
        build_server(settings, "0.0.0.0", 0)
    server, sock, url = build_server(settings, "127.0.0.1", 0)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.05)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert _raw(port, "GET", "/api/health")[0] == 200
        status, body = _raw(port, "GET", "/api/projects")
        assert status == 200 and b'"images": 1' in body.replace(b'"images":1', b'"images": 1')
    finally:
        server.should_exit = True
        thread.join(10)
