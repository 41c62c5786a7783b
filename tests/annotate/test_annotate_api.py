"""The annotation API on SQLite and on a real PostgreSQL server (the same tests on both)."""

from __future__ import annotations

import base64
import io
import threading
import uuid

import numpy as np

from segany.io.rle import decode_rle, encode_mask


def _rle(h: int, w: int, box: tuple[int, int, int, int]) -> dict:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return encode_mask(m)


def test_session_projects_images(make_client) -> None:
    c = make_client()
    s = c.get("/api/session").json()
    assert s["user"] == "local" and s["roles"] == ["admin"]
    projects = c.get("/api/projects").json()
    assert len(projects) == 1 and projects[0]["images"] == 3 and projects[0]["done"] == 0
    pid = projects[0]["id"]
    listed = c.get(f"/api/projects/{pid}/images?state=todo").json()
    assert [im["file_name"] for im in listed] == ["img000.png", "img001.png", "img002.png"]
    assert (listed[0]["width"], listed[0]["height"]) == (60, 40)
    first = c.get(f"/api/images/{listed[0]['id']}").json()
    assert first["objects"] == [] and first["prev_id"] is None and first["next_id"] == listed[1]["id"]
    r = c.get(f"/api/images/{listed[0]['id']}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert c.get(f"/api/projects/{pid}/images?state=bogus").status_code == 400
    assert c.get("/api/images/999999").status_code == 404


def test_embedding_bytes_match_cache_and_model(make_client, tiny_model) -> None:
    c = make_client()
    server = c.app.state.server
    info = c.get("/api/model").json()
    assert info["id"] == server.service.id and len(info["id"]) == 16
    assert info["embedding_shape"] == [1, 64, 16, 16] and info["image_size"] == 256
    image_id = c.get("/api/projects/1/images").json()[0]["id"]
    r = c.get(f"/api/images/{image_id}/embedding.npy")
    assert r.status_code == 200
    assert r.headers["x-segany-model"] == info["id"] and "immutable" in r.headers["cache-control"]
    arr = np.load(io.BytesIO(r.content))
    assert arr.dtype == np.float32 and list(arr.shape) == info["embedding_shape"]
    sha = c.get(f"/api/images/{image_id}").json()["sha256"]
    np.testing.assert_array_equal(arr, np.load(server.service.embedding_path(sha)))
    # The same embedding as the Python API on the same file.
    from segany.inference.predictor import SamPredictor

    p = SamPredictor(tiny_model)
    p.set_image(str(server.root / "img000.png"))
    np.testing.assert_allclose(arr, p.get_image_embedding().numpy(), atol=1e-5)
    again = c.get(f"/api/images/{image_id}/embedding.npy", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    stale = c.get(f"/api/images/{image_id}/embedding.npy?model=0123456789abcdef")
    assert stale.status_code == 409 and "model" in stale.json()["detail"]


def test_predict_matches_python_predictor(make_client, tiny_model) -> None:
    c = make_client()
    server = c.app.state.server
    from segany.inference.predictor import SamPredictor

    p = SamPredictor(tiny_model)
    p.set_image(str(server.root / "img000.png"))
    points, labels = [[20.0, 15.0], [40.0, 30.0]], [1, 0]
    want_masks, want_scores, want_low = p.predict(np.array(points), np.array(labels), multimask_output=True)
    r = c.post("/api/images/1/predict", json={"points": points, "labels": labels, "multimask": True})
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got["masks"]) == 3
    for rle, want in zip(got["masks"], want_masks):
        np.testing.assert_array_equal(decode_rle(rle), want)
    np.testing.assert_allclose(got["scores"], want_scores, atol=1e-5)
    low = np.load(io.BytesIO(base64.b64decode(got["low_res"])))
    np.testing.assert_allclose(low, want_low, atol=1e-4)
    # Mask feedback and a box, as the official predictor takes them.
    fed = {"points": points[:1], "labels": [1], "box": [5, 5, 50, 35], "multimask": False,
           "mask_input": got["low_res"][:0] or base64.b64encode(_npy(low[:1])).decode()}
    r2 = c.post("/api/images/1/predict", json=fed)
    assert r2.status_code == 200, r2.text
    m2, _, _ = p.predict(np.array(points[:1]), np.array([1]), box=np.array([5, 5, 50, 35]), mask_input=low[:1],
                         multimask_output=False)
    np.testing.assert_array_equal(decode_rle(r2.json()["masks"][0]), m2[0])
    for bad in ({"points": [[1, 2]], "labels": [7]}, {"points": [[1, 2]]}, {},
                {"points": [[1, 2]], "labels": [1], "mask_input": "!!"},
                {"points": [[1, 2]], "labels": [1], "model": "deadbeefdeadbeef"}):
        r = c.post("/api/images/1/predict", json=bad)
        assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str), bad


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a.astype(np.float32))
    return buf.getvalue()


def test_objects_idempotent_versioned(make_client) -> None:
    c = make_client()
    rle = _rle(40, 60, (5, 5, 20, 25))
    key = str(uuid.uuid4())
    body = {"rle": rle, "category": "cat", "source": "manual", "seconds": 4.5, "clicks": 3,
            "prompts": {"points": [[10, 10]], "labels": [1], "box": None}}
    r1 = c.post("/api/images/1/objects", json=body, headers={"Idempotency-Key": key})
    r2 = c.post("/api/images/1/objects", json=body, headers={"Idempotency-Key": key})
    assert (r1.status_code, r2.status_code) == (201, 200)
    obj = r1.json()
    assert r2.json()["id"] == obj["id"] and obj["version"] == 1
    assert obj["area"] == 15 * 20 and obj["bbox"] == [5.0, 5.0, 15.0, 20.0]
    assert obj["user"] == "local" and obj["model"] == c.app.state.server.service.id
    assert len(c.get("/api/images/1").json()["objects"]) == 1
    # Optimistic locking: the second writer with the old version gets 409 and the current object.
    a = c.patch(f"/api/objects/{obj['id']}", json={"category": "dog"}, headers={"If-Match": '"1"'})
    assert a.status_code == 200 and a.json()["version"] == 2 and a.headers["etag"] == '"2"'
    b = c.patch(f"/api/objects/{obj['id']}", json={"category": "bird"}, headers={"If-Match": '"1"'})
    assert b.status_code == 409 and b.json()["current"]["category"] == "dog" and b.json()["current"]["version"] == 2
    assert c.patch(f"/api/objects/{obj['id']}", json={"category": "x"}).status_code == 428
    assert c.delete(f"/api/objects/{obj['id']}", headers={"If-Match": '"1"'}).status_code == 409
    assert c.delete(f"/api/objects/{obj['id']}", headers={"If-Match": '"2"'}).status_code == 204
    assert c.get("/api/images/1").json()["objects"] == []
    assert c.get(f"/api/objects/{obj['id']}").status_code == 404
    cats = [x["name"] for x in c.get("/api/projects/1/categories").json()]
    assert cats == ["cat", "dog"]


def test_object_input_checks(make_client) -> None:
    c = make_client()
    good = _rle(40, 60, (1, 1, 4, 4))
    m = np.zeros((40, 60), np.uint8)
    m[10:20, 30:50] = 255
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(m).save(buf, format="PNG")
    r = c.post("/api/images/1/objects", json={"mask_png_base64": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 201 and r.json()["area"] == 200
    np.testing.assert_array_equal(decode_rle(r.json()["rle"]), m > 0)
    bad_bodies = [
        {},
        {"rle": _rle(41, 60, (1, 1, 4, 4))},  # wrong size
        {"rle": {"size": [40, 60], "counts": "zzzz"}},  # counts not covering the image
        {"rle": good, "source": "robot"},
        {"rle": good, "seconds": -1},
        {"rle": good, "category": ""},
        {"rle": _rle(40, 60, (0, 0, 0, 0))},  # empty mask
        {"mask_png_base64": "not base64!"},
        {"rle": good, "prompts": {"points": [[1, 2]], "labels": []}},
    ]
    for body in bad_bodies:
        r = c.post("/api/images/1/objects", json=body)
        assert r.status_code == 400, (body, r.text)
        assert "\n" not in r.json()["detail"]
    assert (
        c.post("/api/images/1/objects", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    )


def test_next_hands_out_each_image_once_under_concurrency(make_client) -> None:
    c = make_client(sizes=[(16, 16)] * 12)
    server = c.app.state.server
    from segany.annotate import auth, store

    users = []
    for name in ("ann1", "ann2"):
        uid = auth.add_user(server.db, name, "annotator")
        users.append(store.Principal(uid, name, ("annotator",), "token"))
    got: list[tuple[str, int | None]] = []
    lock = threading.Lock()
    start = threading.Barrier(10)

    def worker(user: store.Principal) -> None:
        start.wait()
        for _ in range(5):
            image_id = store.next_image(server.db, 1, user, server.lock_ttl)
            with lock:
                got.append((user.name, image_id))

    threads = [threading.Thread(target=worker, args=(users[i % 2],)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 50
    owners: dict[int, set[str]] = {}
    for name, image_id in got:
        if image_id is not None:
            owners.setdefault(image_id, set()).add(name)
    # Each image went to one user only, and is locked to that user in the database. (Calls racing
    # for the same user may give that user a second image; calls in sequence return the held one.)
    assert owners and all(len(names) == 1 for names in owners.values())
    with server.db.read() as s:
        from segany.annotate.db import Image, User

        for image_id, names in owners.items():
            image = s.get(Image, image_id)
            assert s.get(User, image.lock_owner).name == next(iter(names))
    again = store.next_image(server.db, 1, users[0], server.lock_ttl)
    assert again in owners and owners[again] == {"ann1"}
    # Through HTTP: 'next' for the local admin returns a third image, locked with an expiry.
    r = c.post("/api/projects/1/next")
    assert r.status_code == 200 and r.json()["id"] not in owners and r.json()["lock_owner"] == "local"
    assert r.json()["lock_expires"].endswith("Z") and r.json()["state"] == "in_progress"


def test_next_distinct_images_when_each_submits(make_client) -> None:
    """Concurrent annotators who submit each image they get: every image annotated exactly once."""
    c = make_client(sizes=[(16, 16)] * 20)
    server = c.app.state.server
    from segany.annotate import auth, store

    seen: list[int] = []
    lock = threading.Lock()

    def annotator(name: str) -> None:
        uid = auth.add_user(server.db, name, "annotator")
        who = store.Principal(uid, name, ("annotator",), "token")
        while (image_id := store.next_image(server.db, 1, who, server.lock_ttl)) is not None:
            with lock:
                seen.append(image_id)
            store.submit(server.db, image_id, who)

    threads = [threading.Thread(target=annotator, args=(f"a{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 21))
    assert c.post("/api/projects/1/next").status_code == 204


def test_concurrent_object_writes_are_all_kept(make_client) -> None:
    c = make_client()
    rle = _rle(40, 60, (2, 2, 9, 9))
    keys = [str(uuid.uuid4()) for _ in range(12)]
    statuses: list[int] = []
    lock = threading.Lock()

    def post(key: str) -> None:
        for _ in range(2):  # every request sent twice, as a client retrying after a lost answer
            r = c.post("/api/images/1/objects", json={"rle": rle},
                       headers={"Idempotency-Key": key})
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=post, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 12 + [201] * 12
    assert len(c.get("/api/images/1").json()["objects"]) == 12


def test_stats_and_prefill_sources(make_client, tmp_path) -> None:
    c = make_client()
    server = c.app.state.server
    from segany.annotate import prefill, store
    from segany.io.sa1b import write_sa1b

    records = []
    for k in range(5):
        m = np.zeros((40, 60), bool)
        m[k * 7: k * 7 + 5, 2:50] = True
        records.append({"segmentation": m, "predicted_iou": 0.95, "stability_score": 0.97,
                        "crop_box": [0, 0, 60, 40], "point_coords": [[10.0, k * 7 + 2.0]]})
    sa1b = write_sa1b(
        tmp_path / "img000.json", {"image_id": 7, "width": 60, "height": 40, "file_name": "img000.png"}, records
    )
    report = prefill.import_file(server.db, 1, server.local, sa1b)
    assert (report.added, report.existing) == (5, 0)
    assert prefill.import_file(server.db, 1, server.local, sa1b).existing == 5  # idempotent
    objs = c.get("/api/images/1").json()["objects"]
    assert [o["source"] for o in objs] == ["auto"] * 5
    # Edit one auto mask (-> auto_edited), delete one, add two manual masks with timings.
    edited = c.patch(f"/api/objects/{objs[0]['id']}", json={"rle": _rle(40, 60, (0, 0, 10, 10))},
                     headers={"If-Match": '"1"'}).json()
    assert edited["source"] == "auto_edited"
    assert c.delete(f"/api/objects/{objs[1]['id']}", headers={"If-Match": '"1"'}).status_code == 204
    for seconds in (10.0, 20.0):
        assert (
            c.post(
                "/api/images/1/objects", json={"rle": _rle(40, 60, (30, 20, 40, 30)), "seconds": seconds}
            ).status_code
            == 201
        )
    assert c.post("/api/images/1/submit").json()["state"] == "submitted"
    st = c.get("/api/projects/1/stats").json()
    assert st["seconds_per_manual_mask"]["count"] == 2 and st["seconds_per_manual_mask"]["median"] == 15.0
    assert st["auto_masks"] == {"imported": 5, "kept": 3, "edited": 1, "deleted": 1}
    assert st["masks_per_image"]["median"] == 6.0 and st["manual_masks_per_image"]["median"] == 2.0
    assert st["by_user"]["local"]["count"] == 2
    assert store.list_images(server.db, 1, "submitted")[0]["id"] == 1


def test_migrations_match_the_tables(make_client) -> None:
    """Alembic's revisions create exactly the tables that segany.annotate.db declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from segany.annotate.db import Base

    server = make_client().app.state.server
    with server.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0001"


def test_next_lock_expires_and_passes_on(make_client) -> None:
    c = make_client(sizes=[(16, 16)], lock_minutes=0.002)  # 0.12 s
    server = c.app.state.server
    from segany.annotate import auth, store

    a = store.Principal(auth.add_user(server.db, "a", "annotator"), "a", ("annotator",), "token")
    b = store.Principal(auth.add_user(server.db, "b", "annotator"), "b", ("annotator",), "token")
    assert store.next_image(server.db, 1, a, server.lock_ttl) == 1
    assert store.next_image(server.db, 1, b, server.lock_ttl) is None  # locked to a
    import time

    time.sleep(0.3)
    assert c.get("/api/images/1").json()["lock_owner"] is None  # expired
    assert store.next_image(server.db, 1, b, server.lock_ttl) == 1
    record = c.get("/api/images/1").json()
    assert record["lock_owner"] == "b" and record["annotator"] == "b" and record["state"] == "in_progress"
