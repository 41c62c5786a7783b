"""The server's state (settings, database, model, worker) and its safety layer: security headers,
body-size limits, loopback-only Host names without authentication, and one-line JSON errors."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segany.annotate import store
from segany.annotate.db import Database, open_database, sqlite_url
from segany.annotate.errors import ApiError
from segany.annotate.images import DATA_DIR
from segany.annotate.modelsvc import DECODER_PRECISIONS, ModelService
from segany.annotate.worker import EmbeddingWorker

log = logging.getLogger("segany.annotate")

CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
LOCAL_USER = "local"


@dataclass
class Settings:
    """Everything ``segany annotate`` can be told. ``model`` (a loaded Sam) wins over ``checkpoint``."""

    root: Path
    db_url: str | None = None  # default: SQLite in ROOT/.segany/
    auth: bool = False
    model: Any = None
    checkpoint: str | None = None
    model_name: str = "segany"
    project_name: str | None = None
    max_upload_bytes: int = 64 << 20
    max_body_bytes: int = 16 << 20
    max_pixels: int = 100_000_000
    lock_minutes: float = 15.0
    background: bool = True  # encode embeddings in a background thread
    export_decoder: bool = True  # ... and export the decoder ONNX there once they are done
    decoder_precision: str = "fp32"  # the split decoder the page runs: "fp32" or "int8" (see ModelService)
    prefetch: int = 3
    allowed_origins: tuple[str, ...] = ()
    data_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Server:
    """Opened once per process: database (migrated), the project for the folder, the model service."""

    def __init__(self, settings: Settings) -> None:
        root = Path(settings.root)
        if not root.is_dir():
            raise ApiError(400, f"{root}: not a folder")
        if settings.decoder_precision not in DECODER_PRECISIONS:
            raise ApiError(400, f"decoder precision must be one of {', '.join(DECODER_PRECISIONS)}, "
                                f"not {settings.decoder_precision!r}")
        self.settings = settings
        self.root = root.resolve()
        self.data_dir = (settings.data_dir or self.root / DATA_DIR).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.db: Database = open_database(settings.db_url or sqlite_url(self.data_dir))
        self.local_id = store.ensure_user(self.db, LOCAL_USER, "admin")
        self.local = store.Principal(self.local_id, LOCAL_USER, ("admin",), "local")
        self.project_id = store.ensure_project(self.db, settings.project_name or self.root.name or "images")
        store.sync_folder(self.db, self.project_id, self.root, settings.max_pixels)
        model = settings.model
        if model is None:
            from segany.build import load_model

            model = load_model(settings.checkpoint)
        self.service = ModelService(model, self.data_dir, settings.model_name, settings.decoder_precision)  # type: ignore[arg-type]
        self.worker = EmbeddingWorker(
            self.db, self.service, self.root, settings.export_decoder,
            rescan=lambda: store.sync_folder(self.db, self.project_id, self.root, settings.max_pixels),
        )
        self.lock_ttl = dt.timedelta(minutes=settings.lock_minutes)

    def start(self) -> None:
        if self.settings.background:
            self.worker.start()

    def close(self) -> None:
        self.worker.stop()
        self.db.dispose()


def _json_error(status: int, detail: str, extra: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"detail": " ".join(str(detail).split()) or "error"}
    body.update(extra or {})
    return json.dumps(body).encode()


class SafetyMiddleware:
    """Pure ASGI: adds the security headers to every response, answers oversized bodies with 413
    before reading them, refuses non-loopback Host names when authentication is off (DNS rebinding),
    and turns any unhandled exception into a 500 with a one-line JSON body (the traceback goes to the
    log, never to the client)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def _send_error(self, send: Any, status: int, detail: str) -> None:
        body = _json_error(status, detail)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + SECURITY_HEADERS})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.settings.auth:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name not in ("127.0.0.1", "localhost", "[::1]"):
                await self._send_error(send, 421, "this server answers loopback host names only")
                return
        path = scope.get("path", "")
        limit = self.settings.max_upload_bytes if path.endswith("/images") else self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await self._send_error(send, 400, "bad Content-Length")
                return
            if int(length) > limit:
                await self._send_error(send, 413, f"request body over the limit of {limit} bytes")
                return
        started = False

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not started:
                await self._send_error(send, 500, "internal server error")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_server(settings: Settings, host: str = "127.0.0.1", port: int = 8714) -> tuple[Any, Any, str]:
    """The uvicorn server, its bound socket and its URL (port 0 picks a free port); refuses a
    non-loopback address without authentication. ``serve`` runs it; tests run it in a thread."""
    import socket

    import uvicorn

    from segany.annotate.app import create_app
    from segany.errors import SeganyError

    if not is_loopback(host) and not settings.auth:
        raise SeganyError(f"refusing to listen on {host} without authentication: add --auth (or use 127.0.0.1)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise SeganyError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        app = create_app(settings)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    # Keep idle connections open longer than browsers and proxies do (uvicorn's 5 s default makes a
    # client that reuses a connection just as the server closes it see a dropped request).
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            timeout_keep_alive=75)
    return uvicorn.Server(config), sock, f"http://{shown}:{bound}/"


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8714, announce: Any = print) -> None:
    """Run the server until interrupted (see :func:`build_server`)."""
    server, sock, url = build_server(settings, host, port)
    announce(f"segany annotate: serving {settings.root} on {url} (Ctrl+C to stop)")
    server.run(sockets=[sock])
