"""The FastAPI application: every route of ANNOTATE-API.md, on top of :mod:`segany.annotate.store`.

Routes are thin: they authenticate, check roles, call the store or the model service, and shape the
response. All errors leave as ``{"detail": "one line"}`` (see :mod:`segany.annotate.server`).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from segany.annotate import auth, stats, store
from segany.annotate.db import IMAGE_STATES, Image, Project, User
from segany.annotate.errors import ApiError, bad_request, conflict, forbidden, not_found
from segany.annotate.images import UPLOAD_FORMATS, content_type, image_facts, inside
from segany.annotate.modelsvc import load_npy, npy_bytes
from segany.annotate.server import SafetyMiddleware, Server, Settings
from segany.io.files import atomic_write_bytes
from segany.io.rle import encode_masks

STATIC_DIR = Path(__file__).parent / "static"
PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>segany annotate</title></head>
<body><h1>segany annotate</h1><p>The server is running; the annotation page is not installed.
The API is under <code>/api/</code>.</p></body></html>
"""
IMMUTABLE = "private, max-age=31536000, immutable"
Json = Annotated[dict[str, Any], Body()]
OptionalJson = Annotated[dict[str, Any] | None, Body()]


class _Static(StaticFiles):
    """Starlette's static files (paths kept inside the folder, symlinks not followed), answering 404
    instead of failing when the page is not installed."""

    async def check_config(self) -> None:
        return None


def current_user(request: Request) -> store.Principal:
    """The caller (see :func:`segany.annotate.auth.authenticate`); its session's CSRF token goes to
    ``request.state.csrf``."""
    srv: Server = request.app.state.server
    principal, csrf = auth.authenticate(
        srv.db, request.method, request.headers, dict(request.cookies), request.url.scheme,
        srv.settings.auth, srv.local, srv.settings.allowed_origins,
    )
    request.state.csrf = csrf
    return principal


Who = Annotated[store.Principal, Depends(current_user)]


def create_app(settings: Settings | Server) -> FastAPI:
    """The application for a folder of images (or an already opened :class:`Server`)."""
    srv = settings if isinstance(settings, Server) else Server(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        srv.start()
        try:
            yield
        finally:
            srv.close()

    app = FastAPI(title="segany annotate", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    app.add_middleware(SafetyMiddleware, settings=srv.settings)
    _error_handlers(app)
    app.mount("/static", _Static(directory=STATIC_DIR, check_dir=False), name="static")

    def project(pid: int) -> int:
        if pid != srv.project_id:
            with srv.db.read() as s:
                if s.get(Project, pid) is None:
                    raise not_found(f"project {pid}")
        return pid

    # -- page and session ------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})
        return HTMLResponse(PLACEHOLDER)

    @app.get("/stats", include_in_schema=False)
    def stats_page() -> Response:
        page = STATIC_DIR / "stats.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})
        return HTMLResponse(PLACEHOLDER)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        store.ping(srv.db)
        return {"ok": True}

    @app.get("/api/session")
    def session(request: Request, who: Who) -> dict[str, Any]:
        return {"user": who.name, "roles": list(who.roles), "csrf": request.state.csrf or "", "auth": srv.settings.auth}

    @app.post("/api/login")
    def login(request: Request, body: Json) -> JSONResponse:
        if not srv.settings.auth:
            raise bad_request("this server runs without authentication")
        if not auth.same_origin(request.headers, request.url.scheme, srv.settings.allowed_origins):
            raise forbidden("missing or foreign Origin")
        name, password = body.get("username"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise bad_request("login needs 'username' and 'password' strings")
        secret, csrf = auth.login(srv.db, name, password)
        response = JSONResponse({"user": name, "csrf": csrf})
        response.set_cookie(
            auth.SESSION_COOKIE, secret, httponly=True, samesite="lax", secure=request.url.scheme == "https",
            max_age=auth.SESSION_DAYS * 86400, path="/",
        )
        return response

    @app.post("/api/logout", status_code=204)
    def logout(request: Request, _who: Who) -> Response:
        cookie = request.cookies.get(auth.SESSION_COOKIE)
        if cookie:
            auth.revoke_secret(srv.db, cookie)
        response = Response(status_code=204)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    @app.post("/api/tokens", status_code=201)
    def create_token(who: Who, body: OptionalJson = None) -> dict[str, Any]:
        body = body or {}
        target = who.id
        if body.get("user") not in (None, who.name):
            if "admin" not in who.roles:
                raise forbidden("only an admin makes tokens for others")
            target = _user_id(srv, body["user"])
        days = body.get("days")
        if days is not None and (not isinstance(days, (int, float)) or isinstance(days, bool) or days <= 0):
            raise bad_request("days must be a positive number")
        token_id, secret, _ = auth.new_token(srv.db, target, "api", name=str(body.get("name") or "")[:128], days=days)
        return {"id": token_id, "token": secret}

    @app.delete("/api/tokens/{token_id}", status_code=204)
    def delete_token(token_id: int, who: Who) -> Response:
        auth.revoke_token(srv.db, token_id, who)
        return Response(status_code=204)

    @app.post("/api/users", status_code=201)
    def create_user(body: Json, who: Who) -> dict[str, Any]:
        if "admin" not in who.roles:
            raise forbidden("only an admin adds users")
        name, roles, password = body.get("name"), body.get("roles", "annotator"), body.get("password")
        if (
            not isinstance(name, str)
            or not isinstance(roles, str)
            or not (password is None or isinstance(password, str))
        ):
            raise bad_request("a user needs 'name', 'roles' (comma-separated) and optionally 'password'")
        user_id = auth.add_user(srv.db, name, roles, password)
        return {"id": user_id, "name": name, "roles": auth.parse_roles(roles).split(",")}

    # -- model -----------------------------------------------------------------------------------

    @app.get("/api/model")
    def model_info(_who: Who) -> dict[str, Any]:
        return {**srv.service.info(), "embeddings": srv.worker.progress()}

    @app.get("/api/model/{name}")
    def model_file(name: str, request: Request, _who: Who, model: str | None = None) -> Response:
        # decoder.onnx (official-compatible) and the split decoder's two graphs (see ModelService).
        _check_model(srv, model)
        if name not in srv.service.served_files():
            raise not_found(f"model file {name!r} (this server offers {', '.join(srv.service.served_files())})")
        etag = f'"{name.removesuffix(".onnx")}-{srv.service.id}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        path = srv.service.model_file(name)
        return FileResponse(
            path, media_type="application/octet-stream",
            headers={"ETag": etag, "Cache-Control": IMMUTABLE, "X-Segany-Model": srv.service.id},
        )

    @app.get("/api/embeddings/progress")
    def progress(_who: Who) -> dict[str, Any]:
        return {"model": srv.service.id, **srv.worker.progress()}

    # -- projects --------------------------------------------------------------------------------

    @app.get("/api/projects")
    def projects(_who: Who) -> list[dict[str, Any]]:
        return store.project_list(srv.db)

    @app.get("/api/projects/{pid}/images")
    def images(pid: int, _who: Who, state: str | None = None) -> list[dict[str, Any]]:
        if state is not None and state not in IMAGE_STATES:
            raise bad_request(f"state must be one of {', '.join(IMAGE_STATES)}")
        return store.list_images(srv.db, project(pid), state)

    @app.post("/api/projects/{pid}/next")
    def next_image(pid: int, who: Who) -> Response:
        if not who.has("annotator"):
            raise forbidden("taking images needs the annotator role")
        image_id = store.next_image(srv.db, project(pid), who, srv.lock_ttl)
        if image_id is None:
            return Response(status_code=204)
        with srv.db.read() as s:
            record = store.image_record(s, store.get_image(s, image_id))
        srv.worker.prefetch([image_id] + _following(srv, pid, image_id))
        return JSONResponse(record)

    @app.post("/api/projects/{pid}/images", status_code=201)
    async def upload(pid: int, request: Request, who: Who) -> JSONResponse:
        if "admin" not in who.roles:
            raise forbidden("adding images needs the admin role")
        project(pid)
        limit = srv.settings.max_upload_bytes
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"upload over the limit of {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise bad_request("empty upload: send the image bytes as the request body")
        # Decoding and storing block: off the event loop, so other requests keep flowing.
        record, added = await run_in_threadpool(_store_upload, srv, pid, data)
        srv.worker.wake()
        return JSONResponse(record, status_code=201 if added else 200)

    @app.get("/api/projects/{pid}/categories")
    def categories(pid: int, _who: Who) -> list[dict[str, Any]]:
        return store.categories(srv.db, project(pid))

    @app.post("/api/projects/{pid}/categories", status_code=201)
    def add_categories(pid: int, body: Json, who: Who) -> list[dict[str, Any]]:
        if "admin" not in who.roles:
            raise forbidden("the fixed category list needs the admin role")
        names = body.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise bad_request("names must be a list of non-empty strings")
        with srv.db.write() as s:
            for name in names:
                store.ensure_category(s, srv.db.dialect, project(pid), " ".join(name.split())[:256], fixed=True)
        return store.categories(srv.db, pid)

    @app.get("/api/projects/{pid}/stats")
    def project_stats(pid: int, _who: Who) -> dict[str, Any]:
        return stats.project_stats(srv.db, project(pid))

    # -- images ----------------------------------------------------------------------------------

    @app.get("/api/images/{image_id}")
    def image(image_id: int, _who: Who) -> JSONResponse:
        with srv.db.read() as s:
            record = store.image_record(s, store.get_image(s, image_id))
        srv.worker.prefetch([image_id] + _following(srv, record["project_id"], image_id))
        return JSONResponse(record, headers={"ETag": f'"{record["version"]}"'})

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: int, _who: Who) -> Response:
        path = _image_path(srv, image_id)
        return FileResponse(path, media_type=content_type(path), headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/images/{image_id}/embedding.npy")
    def embedding(image_id: int, request: Request, _who: Who, model: str | None = None) -> Response:
        _check_model(srv, model)
        with srv.db.read() as s:
            sha = store.get_image(s, image_id).sha256
        etag = f'"{srv.service.id}-{sha[:32]}"'
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "X-Segany-Model": srv.service.id}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        path = srv.service.embedding_path(sha)
        # Asked before the worker got there: encode now rather than make the page wait and retry.
        if not path.is_file() and not srv.worker.encode(image_id):
            raise ApiError(422, f"image {image_id} cannot be encoded: {srv.worker.failed.get(image_id, 'unreadable')}")
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    @app.post("/api/images/{image_id}/objects", status_code=201)
    def create_object(
        image_id: int,
        body: Json,
        who: Who,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        record, created = store.create_object(srv.db, image_id, who, body, idempotency_key, srv.service.id)
        return JSONResponse(record, status_code=201 if created else 200, headers={"ETag": f'"{record["version"]}"'})

    @app.post("/api/images/{image_id}/submit")
    def submit(image_id: int, who: Who) -> dict[str, Any]:
        return store.submit(srv.db, image_id, who)

    @app.post("/api/images/{image_id}/release")
    def release(image_id: int, who: Who) -> Response:
        store.release_lock(srv.db, image_id, who)
        return Response(status_code=204)

    @app.post("/api/images/{image_id}/review")
    def review(image_id: int, body: Json, who: Who) -> dict[str, Any]:
        return store.review(srv.db, image_id, who, str(body.get("decision")), body.get("comment"), srv.settings.auth)

    @app.post("/api/images/{image_id}/predict")
    def predict(image_id: int, body: Json, _who: Who) -> dict[str, Any]:
        _check_model(srv, body.get("model"))
        with srv.db.read() as s:
            im = store.get_image(s, image_id)
            size = (im.height, im.width)
        points, labels, box = _prompt_arrays(body)
        mask_input = None
        if body.get("mask_input") is not None:
            mask_input = _mask_input(body["mask_input"], srv.service.mask_input_size)
        if points is None and box is None:
            raise bad_request("predict needs points or a box")
        if not srv.worker.encode(image_id):
            raise ApiError(422, f"image {image_id} cannot be encoded")
        features = srv.service.load_embedding(store_sha(srv, image_id))
        masks, scores, low_res = srv.service.predict(
            features, size, points, labels, box, mask_input, bool(body.get("multimask", True))
        )
        return {
            "masks": encode_masks(masks),
            "scores": [float(v) for v in scores],
            "low_res": base64.b64encode(npy_bytes(low_res.astype(np.float32))).decode(),
            "model": srv.service.id,
        }

    # -- objects ---------------------------------------------------------------------------------

    @app.get("/api/objects/{object_id}")
    def get_object(object_id: int, _who: Who) -> JSONResponse:
        with srv.db.read() as s:
            obj, image = store._current(s, object_id)
            record = store.object_record(obj, image, store.user_names(s))
        return JSONResponse(record, headers={"ETag": f'"{record["version"]}"'})

    @app.patch("/api/objects/{object_id}")
    def patch_object(
        object_id: int,
        body: Json,
        who: Who,
        if_match: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        record = store.update_object(srv.db, object_id, who, store.parse_if_match(if_match), body)
        return JSONResponse(record, headers={"ETag": f'"{record["version"]}"'})

    @app.delete("/api/objects/{object_id}", status_code=204)
    def delete_object(object_id: int, who: Who, if_match: Annotated[str | None, Header()] = None) -> Response:
        store.delete_object(srv.db, object_id, who, store.parse_if_match(if_match))
        return Response(status_code=204)

    return app


# -- helpers -------------------------------------------------------------------------------------


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"detail": " ".join(detail.split())}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        return JSONResponse({"detail": " ".join(f"{where}: {message}".split())}, status_code=400)


def _store_upload(srv: Server, pid: int, data: bytes) -> tuple[dict[str, Any], bool]:
    """Check an uploaded image by its content, store it under a name made from its hash, record it."""
    facts = image_facts(data, srv.settings.max_pixels)
    if not srv.data_dir.is_relative_to(srv.root):
        raise bad_request("uploads need the data folder inside the images folder")
    rel = (srv.data_dir.relative_to(srv.root) / "uploads" / f"{facts.sha256}{UPLOAD_FORMATS[facts.format]}").as_posix()
    target = srv.root / rel
    if not target.exists():
        atomic_write_bytes(target, data)
    st = target.stat()
    added = store.add_image(srv.db, pid, rel, facts.sha256, st.st_size, st.st_mtime_ns, facts.width, facts.height)
    with srv.db.read() as s:
        image = s.scalar(select(Image).where(Image.project_id == pid, Image.sha256 == facts.sha256))
        assert image is not None
        return store.image_record(s, image, objects=False), bool(added)


def _user_id(srv: Server, name: Any) -> int:
    with srv.db.read() as s:
        found = s.scalar(select(User.id).where(User.name == str(name)))
    if found is None:
        raise not_found(f"user {name}")
    return int(found)


def _following(srv: Server, pid: int, image_id: int) -> list[int]:
    with srv.db.read() as s:
        rows = s.scalars(
            select(Image.id).where(Image.project_id == pid, Image.id > image_id, Image.state == "todo")
            .order_by(Image.id).limit(srv.settings.prefetch)
        )
        return list(rows)


def _image_path(srv: Server, image_id: int) -> Path:
    with srv.db.read() as s:
        rel = store.get_image(s, image_id).path
    path = inside(srv.root, srv.root / rel)
    if path is None:
        raise not_found(f"file of image {image_id}")
    return path


def store_sha(srv: Server, image_id: int) -> str:
    with srv.db.read() as s:
        return store.get_image(s, image_id).sha256


def _check_model(srv: Server, model: Any) -> None:
    if model is not None and model != srv.service.id:
        raise conflict(
            f"the client's model {str(model)[:32]} is not this server's model {srv.service.id}: reload the page "
            "to fetch the current decoder and embeddings"
        )


def _prompt_arrays(body: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    prompts = store.check_prompts({"points": body.get("points"), "labels": body.get("labels"), "box": body.get("box")})
    assert prompts is not None
    if len(prompts["points"]) > 100:
        raise bad_request("at most 100 points per prediction")
    if any(label not in (0, 1) for label in prompts["labels"]):
        raise bad_request("point labels must be 1 (foreground) or 0 (background)")
    points = np.asarray(prompts["points"], dtype=np.float32) if prompts["points"] else None
    labels = np.asarray(prompts["labels"], dtype=np.int64) if prompts["points"] else None
    box = np.asarray(prompts["box"], dtype=np.float32) if prompts["box"] is not None else None
    return points, labels, box


def _mask_input(value: Any, size: int) -> np.ndarray:
    if not isinstance(value, str):
        raise bad_request("mask_input must be base64 .npy bytes")
    try:
        raw = base64.b64decode(value, validate=True)
        arr = load_npy(raw, "mask_input", max_bytes=16 << 20)
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc) if "mask_input" in str(exc) else "mask_input is not base64") from None
    arr = np.asarray(arr, dtype=np.float32).reshape(-1, size, size) if arr.size == size * size else arr
    if arr.shape != (1, size, size) or not np.isfinite(arr).all():
        raise bad_request(f"mask_input must be finite float32 of shape (1, {size}, {size})")
    return arr
