"""The background encoder and the decoder ONNX served to the browser."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from segany.io.rle import decode_rle


def _wait_for_embeddings(c, total: int) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = c.get("/api/embeddings/progress").json()
        if progress["done"] == progress["total"] == total:
            break
        time.sleep(0.2)
    return progress


def test_background_embeddings(make_sqlite_client) -> None:
    c = make_sqlite_client(sizes=[(40, 60), (50, 30), (32, 32)], background=True)
    progress = _wait_for_embeddings(c, 3)
    assert progress["done"] == 3 and progress["failed"] == 0
    server = c.app.state.server
    files = sorted(p.stem for p in server.service.embedding_dir.glob("*.npy"))
    assert files == sorted(im["sha256"] for im in c.get("/api/projects/1/images").json())
    assert server.service.embedding_dir.name == server.service.id  # keyed by model, then by image content


@pytest.mark.slow
def test_decoder_onnx_matches_server_predict(make_sqlite_client) -> None:
    """About 15-40 s: exports the decoder (segany.export) in the background worker."""
    ort = pytest.importorskip("onnxruntime")
    c = make_sqlite_client(sizes=[(40, 60), (50, 30), (32, 32)], background=True, export_decoder=True)
    _wait_for_embeddings(c, 3)
    server = c.app.state.server
    deadline = time.monotonic() + 180
    while not (server.service.cache_dir / "onnx" / server.service.id / "decoder.onnx").is_file():
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # The decoder: official input/output names; same masks as the server's PyTorch predictor.
    r = c.get("/api/model/decoder.onnx")
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    assert c.get("/api/model/decoder.onnx", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    assert [o.name for o in session.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    emb = np.load(io.BytesIO(c.get("/api/images/1/embedding.npy").content))
    h, w = 40, 60
    point = np.array([[25.0, 12.0]])
    scale = server.service.image_size / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    coords = np.concatenate([point * [new_w / w, new_h / h], [[0.0, 0.0]]])[None].astype(np.float32)
    size = server.service.mask_input_size
    masks, scores, _ = session.run(None, {
        "image_embeddings": emb, "point_coords": coords, "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, size, size), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([h, w], np.float32)})
    got = c.post("/api/images/1/predict", json={"points": point.tolist(), "labels": [1], "multimask": True}).json()
    for k in range(3):  # the official graph's outputs 1..3 are the multimask outputs
        server_mask = decode_rle(got["masks"][k])
        onnx_mask = masks[0, k + 1] > 0
        assert (server_mask == onnx_mask).mean() > 0.999
    np.testing.assert_allclose(scores[0, 1:], got["scores"], atol=1e-4)
