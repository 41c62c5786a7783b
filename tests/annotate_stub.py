"""A small stand-in for the `segany annotate` server, for the page's browser tests and benchmark.

It serves `src/segany/annotate/static/` and the endpoints of the annotation API contract
(ANNOTATE-API.md) that the page uses, with the same security headers, from memory. The decoders are
real graphs written by segany's exporter: the split decoder the page prefers (`image_cache.onnx`,
`decoder_lowres.onnx`) and the official-compatible `decoder.onnx` it falls back to; embeddings come
from a real (random) segany model. `/predict` runs `decoder.onnx` with Python onnxruntime. The
references the browser tests compare the page with: :class:`SplitReference` (segany's Python
onnxruntime predictor on the same split graphs) and :func:`ort_decode` (the official graph).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pycocotools import mask as mask_utils

from segany.ops.transforms import ResizeLongestSide

STATIC = Path(__file__).resolve().parents[1] / "src" / "segany" / "annotate" / "static"
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; style-src 'self'; "
       "img-src 'self' data: blob:; connect-src 'self'")


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
    return buf.getvalue()


def ort_decode(
    session: Any,
    embedding: np.ndarray,
    image_size: int,
    original_size: tuple[int, int],
    points: list[list[float]],
    labels: list[int],
    box: list[float] | None = None,
    mask_input: np.ndarray | None = None,
    out_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Python onnxruntime on the exported decoder with segany's coordinate transform.

    Returns ``masks (M, h, w)`` logits at ``out_size`` (default: the original size), ``ious (M,)`` and
    ``low_res (M, 4g, 4g)``.
    """
    coords = [list(p) for p in points]
    labs = [float(v) for v in labels]
    if box is not None:
        coords += [[box[0], box[1]], [box[2], box[3]]]
        labs += [2.0, 3.0]
    scaled = ResizeLongestSide(image_size).apply_coords(np.array(coords, dtype=float).reshape(-1, 2), original_size)
    if box is None:
        scaled = np.concatenate([scaled, np.zeros((1, 2))])
        labs.append(-1.0)
    low = 4 * embedding.shape[-1]
    feeds = {
        "image_embeddings": embedding.astype(np.float32),
        "point_coords": scaled[None].astype(np.float32),
        "point_labels": np.array([labs], dtype=np.float32),
        "mask_input": (np.zeros((1, 1, low, low)) if mask_input is None else mask_input.reshape(1, 1, low, low)).astype(
            np.float32
        ),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], dtype=np.float32),
        "orig_im_size": np.array(out_size or original_size, dtype=np.float32),
    }
    masks, ious, low_res = session.run(None, feeds)
    return masks[0], ious[0], low_res[0]


class SplitReference:
    """segany's Python onnxruntime predictor (:class:`~segany.inference.onnx_backend.OnnxPredictor`, one
    thread) on the split graphs of an export folder, with segany's post-processing
    (:func:`~segany.ops.postprocess.upscale_logits`) to any output size: what the page's split decoder
    must reproduce. :meth:`decode` answers like :func:`ort_decode`: all mask tokens, token 0 first."""

    def __init__(self, folder: Path, precision: str = "fp32") -> None:
        from segany.inference.onnx_backend import OnnxPredictor

        self.predictor = OnnxPredictor(folder, precision=precision, num_threads=1)  # type: ignore[arg-type]

    def decode(
        self,
        embedding: np.ndarray,
        original_size: tuple[int, int],
        points: list[list[float]],
        labels: list[int],
        box: list[float] | None = None,
        mask_input: np.ndarray | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``logits (M, h, w)`` at ``out_size`` (default: the original size), ``ious (M,)``, ``low_res (M, 4g, 4g)``."""
        import torch

        from segany.ops.postprocess import upscale_logits

        p = self.predictor
        p.set_image_embedding(torch.from_numpy(np.ascontiguousarray(embedding, dtype=np.float32)), original_size)
        low = 4 * embedding.shape[-1]
        prompts = {
            "point_coords": np.array(points, dtype=float).reshape(-1, 2) if points else None,
            "point_labels": np.array(labels, dtype=float) if points else None,
            "box": None if box is None else np.array(box, dtype=float),
            "mask_input": None if mask_input is None else np.asarray(mask_input, np.float32).reshape(1, low, low),
        }
        # Token 0 (single mask), then tokens 1..3 (multimask): the order of the graphs' outputs.
        _, iou0, low0 = p.predict(**prompts, multimask_output=False)
        _, iou3, low3 = p.predict(**prompts, multimask_output=True)
        lows = np.concatenate([low0, low3])
        size = p.model.image_size
        input_size = p.transform.get_preprocess_shape(original_size[0], original_size[1])
        logits = upscale_logits(torch.from_numpy(lows)[None], input_size, out_size or original_size, size)[0]
        return logits.numpy(), np.concatenate([iou0, iou3]), lows


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


@dataclass
class StubImage:
    id: int
    file: bytes
    width: int
    height: int
    embedding: np.ndarray
    state: str = "todo"
    review_comment: str | None = None
    version: int = 1


@dataclass
class StubState:
    model_id: str
    image_size: int
    decoder: bytes
    images: list[StubImage]
    categories: list[dict[str, Any]] = field(default_factory=list)
    objects: dict[int, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    isolate: bool = True
    next_object: int = 1
    split: dict[str, bytes] = field(default_factory=dict)  # split decoder files by name; empty: none offered
    split_precision: str = "fp32"

    def reset(self) -> None:
        self.objects.clear()
        self.keys.clear()
        self.requests.clear()
        self.blocked.clear()
        self.categories = [c for c in self.categories if c.get("fixed")]
        for im in self.images:
            im.state, im.review_comment = "todo", None


def make_app(state: StubState) -> Any:
    app = FastAPI()
    session: Any = None

    def ort_session() -> Any:
        nonlocal session
        if session is None:
            import onnxruntime as ort

            session = ort.InferenceSession(state.decoder, providers=["CPUExecutionProvider"])
        return session

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        state.requests.append((request.method, request.url.path))
        if any(request.url.path.startswith(p) for p in state.blocked):
            response: Response = JSONResponse({"detail": "blocked by the test"}, status_code=404)
        else:
            response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CSP
        if state.isolate:
            response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
            response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
            response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        return response

    def image(image_id: int) -> StubImage:
        for im in state.images:
            if im.id == image_id:
                return im
        raise HTTPException(404, "no such image")

    def record(im: StubImage) -> dict[str, Any]:
        ids = [i.id for i in state.images]
        k = ids.index(im.id)
        return {
            "id": im.id, "project_id": 1, "sha256": hashlib.sha256(im.file).hexdigest(), "width": im.width,
            "height": im.height, "state": im.state, "version": im.version, "lock_owner": None,
            "objects": [o for o in state.objects.values() if o["image_id"] == im.id],
            "prev_id": ids[k - 1] if k > 0 else None, "next_id": ids[k + 1] if k + 1 < len(ids) else None,
            "review_comment": im.review_comment,
        }

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/session")
    def get_session() -> dict[str, Any]:
        return {"user": "local", "roles": ["admin"], "csrf": "stub-csrf"}

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        emb = state.images[0].embedding
        info = {"id": state.model_id, "name": "stub", "image_size": state.image_size, "mask_threshold": 0.0,
                "embedding_shape": list(emb.shape), "decoder_url": f"/api/model/decoder.onnx?model={state.model_id}"}
        if state.split:
            cache = next(n for n in state.split if n.startswith("image_cache"))
            lowres = next(n for n in state.split if n.startswith("decoder_lowres"))
            info["decoder_split"] = {"image_cache_url": f"/api/model/{cache}?model={state.model_id}",
                                     "decoder_lowres_url": f"/api/model/{lowres}?model={state.model_id}",
                                     "precision": state.split_precision}
        return info

    @app.get("/api/model/{name}")
    def model_file(name: str) -> Response:
        data = state.decoder if name == "decoder.onnx" else state.split.get(name)
        if data is None:
            raise HTTPException(404, "no such model file")
        headers = {"ETag": f'"{name}-{state.model_id}"', "Cache-Control": "private, max-age=31536000, immutable"}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/api/projects")
    def projects() -> list[dict[str, Any]]:
        done = sum(im.state in ("submitted", "accepted") for im in state.images)
        return [{"id": 1, "name": "stub project", "images": len(state.images), "done": done}]

    @app.get("/api/projects/{pid}/images")
    def images(pid: int) -> list[dict[str, Any]]:
        return [record(im) for im in state.images]

    @app.get("/api/projects/{pid}/categories")
    def categories(pid: int) -> list[dict[str, Any]]:
        return state.categories

    @app.get("/api/images/{image_id}")
    def get_image(image_id: int) -> dict[str, Any]:
        return record(image(image_id))

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: int) -> Response:
        return Response(image(image_id).file, media_type="image/png")

    @app.get("/api/images/{image_id}/embedding.npy")
    def embedding(image_id: int) -> Response:
        return Response(
            npy_bytes(image(image_id).embedding),
            media_type="application/octet-stream",
            headers={"X-Segany-Model": state.model_id, "Cache-Control": "private, max-age=31536000, immutable"},
        )

    def mask_fields(body: dict[str, Any]) -> dict[str, Any]:
        m = decode_rle(body["rle"])
        ys, xs = np.nonzero(m)
        bbox = (
            [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if len(xs)
            else [0, 0, 0, 0]
        )
        return {"rle": body["rle"], "bbox": bbox, "area": int(m.sum())}

    def use_category(name: str) -> None:
        if name and not any(c["name"] == name for c in state.categories):
            state.categories.append({"id": len(state.categories) + 1, "name": name, "fixed": False})

    @app.post("/api/images/{image_id}/objects")
    async def create(image_id: int, request: Request, idempotency_key: str = Header(...)) -> JSONResponse:
        im = image(image_id)
        if idempotency_key in state.keys:
            return JSONResponse(state.objects[state.keys[idempotency_key]], status_code=200)
        body = await request.json()
        now = datetime.now(timezone.utc).isoformat()
        obj = {"id": state.next_object, "image_id": im.id, "version": 1, "category": body.get("category", ""),
               "source": body.get("source", "manual"), **mask_fields(body), "prompts": body.get("prompts"),
               "model": state.model_id, "user": "local", "created": now, "updated": now,
               **{k: body.get(k, 0) for k in ("seconds", "clicks", "strokes", "undos")}}
        state.next_object += 1
        state.objects[obj["id"]] = obj
        state.keys[idempotency_key] = obj["id"]
        use_category(obj["category"])
        if im.state == "todo":
            im.state = "in_progress"
        return JSONResponse(obj, status_code=201)

    def current(object_id: int, if_match: str | None) -> dict[str, Any]:
        obj = state.objects.get(object_id)
        if obj is None:
            raise HTTPException(404, "no such object")
        if if_match is None or if_match.strip('"') != str(obj["version"]):
            raise HTTPException(409, "stale version")
        return obj

    @app.patch("/api/objects/{object_id}")
    async def patch(object_id: int, request: Request, if_match: str | None = Header(None)) -> dict[str, Any]:
        obj = current(object_id, if_match)
        body = await request.json()
        if "rle" in body:
            obj.update(mask_fields(body))
            if obj["source"] == "auto":
                obj["source"] = "auto_edited"
        if "category" in body:
            obj["category"] = body["category"]
            use_category(body["category"])
        obj["version"] += 1
        return obj

    @app.delete("/api/objects/{object_id}")
    def delete(object_id: int, if_match: str | None = Header(None)) -> Response:
        current(object_id, if_match)
        del state.objects[object_id]
        return Response(status_code=204)

    @app.post("/api/images/{image_id}/submit")
    def submit(image_id: int) -> dict[str, Any]:
        im = image(image_id)
        im.state = "submitted"
        return record(im)

    @app.post("/api/images/{image_id}/review")
    async def review(image_id: int, request: Request) -> dict[str, Any]:
        im = image(image_id)
        body = await request.json()
        if body.get("decision") not in ("accept", "reject"):
            raise HTTPException(400, "decision must be accept or reject")
        im.state = "accepted" if body["decision"] == "accept" else "rejected"
        im.review_comment = body.get("comment") or None
        return record(im)

    @app.post("/api/images/{image_id}/predict")
    async def predict(image_id: int, request: Request) -> dict[str, Any]:
        im = image(image_id)
        body = await request.json()
        mask_input = None
        if body.get("mask_input"):
            mask_input = np.load(io.BytesIO(base64.b64decode(body["mask_input"])))
        masks, ious, low = ort_decode(ort_session(), im.embedding, state.image_size, (im.height, im.width),
                                      body.get("points") or [], body.get("labels") or [], body.get("box"), mask_input)
        keep = slice(1, None) if body.get("multimask", True) else slice(0, 1)
        return {"masks": [encode_rle(m > 0) for m in masks[keep]], "scores": ious[keep].tolist(),
                "low_res": base64.b64encode(npy_bytes(low[keep])).decode("ascii")}

    return app


class ServerThread:
    """uvicorn in a daemon thread on 127.0.0.1 and an ephemeral port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:  # noqa: PYI034
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def split_files(folder: Path, precision: str = "fp32") -> dict[str, bytes]:
    """The split decoder's two files of an export folder, by name (``precision``: ``fp32`` or ``int8``)."""
    suffix = ".int8.onnx" if precision == "int8" else ".onnx"
    return {f"{n}{suffix}": (folder / f"{n}{suffix}").read_bytes() for n in ("image_cache", "decoder_lowres")}


def build_state(
    model: Any, decoder_path: Path, photos: list[np.ndarray], model_id: str = "stubmodel0000001"
) -> StubState:
    """Images (RGB uint8 arrays) with their embeddings from ``model`` (segany's predictor); the decoders
    of the export folder that holds ``decoder_path`` (the split one offered as well when it is there)."""
    from segany.inference.predictor import SamPredictor

    predictor = SamPredictor(model)
    images = []
    for i, photo in enumerate(photos, start=1):
        predictor.set_image(photo)
        emb = predictor.get_image_embedding().detach().cpu().numpy().astype(np.float32)
        images.append(StubImage(i, png_bytes(photo), photo.shape[1], photo.shape[0], emb))
    folder = decoder_path.parent
    split = split_files(folder) if (folder / "decoder_lowres.onnx").is_file() else {}
    return StubState(
        model_id=model_id, image_size=model.image_encoder.img_size, decoder=decoder_path.read_bytes(), images=images,
        split=split,
    )


def json_dumps(obj: Any) -> str:
    return json.dumps(obj)
