"""A seeded annotation project for the statistics tests (API and page): three people, manual and automatic
masks, edits, deletions, reviews and timings spread over three days, driven through the HTTP API with
each person's token. ``EXPECTED`` holds the figures worked out by hand from the table below.

    image 1  5 auto (boss); ann1 edits 1, deletes 1, adds manual 30, 20, 10 s (day 1); submitted, rev accepts
    image 2  3 auto (boss); ann2 deletes 1, adds manual 40, 50 s (day 2); submitted
    image 3  ann1 adds manual 12, 8, 6, 4 s (day 3) and one without a time; still in progress
    image 4  2 auto (boss); untouched (todo)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from segany.io.rle import encode_mask

H, W = 40, 60
SIZES = [(H, W)] * 4
DAYS = ["2026-01-05", "2026-01-06", "2026-01-07"]
PASSWORDS = {"boss": "boss-password-1", "ann1": "ann1-password-1", "ann2": "ann2-password-1", "rev": "rev-password-1"}

# Worked out by hand from the module docstring (finished images: 1 and 2).
EXPECTED: dict[str, Any] = {
    "images": 4,
    "images_finished": 2,
    "images_by_state": {"todo": 1, "in_progress": 1, "submitted": 1, "accepted": 1, "rejected": 0},
    "objects": {"manual": 10, "auto": 7, "auto_edited": 1, "total": 18},
    "median_seconds": 12.0,  # of 4 6 8 10 12 20 30 40 50
    "timed": 9,
    "untimed": 1,
    "by_user": {"ann1": (7, 10.0, 90.0, 1), "ann2": (2, 45.0, 90.0, 1)},  # count, median, total s, images finished
    "by_day": {DAYS[0]: 20.0, DAYS[1]: 45.0, DAYS[2]: 7.0},
    "by_user_day": {"ann1": {DAYS[0]: 20.0, DAYS[2]: 7.0}, "ann2": {DAYS[1]: 45.0}},
    "order": [30.0, 20.0, 10.0, 40.0, 50.0, 12.0, 8.0, 6.0, 4.0],
    "masks_per_image": 5.5,  # 7 and 4
    "manual_masks_per_image": 2.5,  # 3 and 2
    "histogram": {"all": [[4, 1], [7, 1]], "manual": [[2, 1], [3, 1]]},
    "auto_masks": {"imported": 10, "kept": 7, "edited": 1, "deleted": 2},
    "auto_masks_finished": {"imported": 8, "kept": 5, "edited": 1, "deleted": 2},
    "auto_share": 6 / 11,
}


def rle(k: int) -> dict:
    """A distinct small rectangle for mask number ``k``."""
    m = np.zeros((H, W), bool)
    y, x = 2 + (k % 6) * 6, 2 + (k // 6 % 7) * 8
    m[y : y + 4, x : x + 6] = True
    return encode_mask(m)


def people(server: Any) -> dict[str, str]:
    """The project's people (with passwords) and an API token for each."""
    from segany.annotate import auth

    tokens = {}
    for name, roles in (("boss", "admin"), ("ann1", "annotator"), ("ann2", "annotator"), ("rev", "reviewer")):
        uid = auth.add_user(server.db, name, roles, password=PASSWORDS[name])
        tokens[name] = auth.new_token(server.db, uid, "api")[1]
    return tokens


def seed(client: Any, server: Any) -> dict[str, Any]:
    """Fill the project of ``server`` through ``client`` (a TestClient or an httpx.Client on its URL);
    returns the tokens."""
    from sqlalchemy import update

    from segany.annotate.db import Object

    tokens = people(server)
    counter = iter(range(1000))

    def call(method: str, who: str, url: str, ok: int, **kw: Any) -> Any:
        r = client.request(
            method, url, headers={"Authorization": f"Bearer {tokens[who]}", **kw.pop("headers", {})}, **kw
        )
        assert r.status_code == ok, (method, url, r.status_code, r.text)
        return r.json() if r.content else None

    def add(who: str, image: int, **body: Any) -> int:
        return call("POST", who, f"/api/images/{image}/objects", 201, json={"rle": rle(next(counter)), **body})["id"]

    auto = {image: [add("boss", image, source="auto") for _ in range(n)] for image, n in ((1, 5), (2, 3), (4, 2))}
    timed: list[tuple[int, str]] = []  # (object id, day), in the order they are made

    assert call("POST", "ann1", "/api/projects/1/next", 200)["id"] == 1
    call("PATCH", "ann1", f"/api/objects/{auto[1][0]}", 200, json={"rle": rle(41)}, headers={"If-Match": '"1"'})
    call("DELETE", "ann1", f"/api/objects/{auto[1][1]}", 204, headers={"If-Match": '"1"'})
    timed += [(add("ann1", 1, seconds=s, clicks=3, category="thing"), DAYS[0]) for s in (30, 20, 10)]
    call("POST", "ann1", "/api/images/1/submit", 200)

    assert call("POST", "ann2", "/api/projects/1/next", 200)["id"] == 2
    call("DELETE", "ann2", f"/api/objects/{auto[2][0]}", 204, headers={"If-Match": '"1"'})
    timed += [(add("ann2", 2, seconds=s, clicks=2), DAYS[1]) for s in (40, 50)]
    call("POST", "ann2", "/api/images/2/submit", 200)

    assert call("POST", "ann1", "/api/projects/1/next", 200)["id"] == 3
    timed += [(add("ann1", 3, seconds=s, clicks=1), DAYS[2]) for s in (12, 8, 6, 4)]
    add("ann1", 3)  # saved without a time (an API client): counted apart

    call("POST", "rev", "/api/images/1/review", 200, json={"decision": "accept"})

    # Spread the timed masks over three days, in the order they were made (the API stamps "now").
    with server.db.write() as s:
        for i, (obj_id, day) in enumerate(timed):
            when = dt.datetime.fromisoformat(day) + dt.timedelta(hours=9, minutes=i)
            s.execute(update(Object).where(Object.id == obj_id).values(created=when))
    return tokens


def photos(folder: Any, n: int, seed: int = 0) -> None:
    """``n`` distinct random PNGs of ``H`` x ``W`` in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")


def demo(server: Any, days: int = 8, seed: int = 0) -> int:
    """A stage-1-like project for the README's picture, written with the store (no HTTP): three people
    over ``days`` days, seconds per mask falling from about 34 to 14 with noise and masks per image
    rising, then automatic masks pre-filled on the last images (some edited, some deleted). Returns the
    number of manual masks."""
    from sqlalchemy import select, update

    from segany.annotate import auth, store
    from segany.annotate.db import Image, Object

    rng = np.random.default_rng(seed)
    team = [
        store.Principal(auth.add_user(server.db, u, "annotator"), u, ("annotator",), "token")
        for u in ("alice", "bruno", "chen")
    ]
    speed = {"alice": 0.85, "bruno": 1.0, "chen": 1.25}
    with server.db.read() as s:
        ids = list(s.scalars(select(Image.id).where(Image.project_id == server.project_id).order_by(Image.id)))
    per_day = max(1, (len(ids) - 3) // days)
    made, k = 0, 0
    for d in range(days):
        base = 34.0 - 20.0 * d / max(1, days - 1)
        for j, image_id in enumerate(ids[d * per_day : (d + 1) * per_day]):
            who = team[j % len(team)]
            if d >= days - 2:  # stage 2: pre-filled first
                autos = [
                    store.create_object(
                        server.db, image_id, server.local, {"rle": rle(k + a), "source": "auto"}, None, "demo"
                    )[0]["id"]
                    for a in range(int(rng.integers(4, 9)))
                ]
                k += len(autos)
                store.update_object(server.db, autos[0], who, 1, {"rle": rle(k)})
                store.delete_object(server.db, autos[1], who, 1)
            for _ in range(int(rng.integers(4 + 2 * d, 8 + 3 * d)) // 2):
                sec = float(max(3.0, rng.normal(base * speed[who.name], 5.0)))
                obj = store.create_object(
                    server.db,
                    image_id,
                    who,
                    {"rle": rle(k), "seconds": round(sec, 1), "clicks": int(rng.integers(1, 6))},
                    None,
                    "demo",
                )[0]
                k += 1
                made += 1
                when = dt.datetime.fromisoformat("2026-01-05") + dt.timedelta(days=d, hours=9, seconds=made * 30)
                with server.db.write() as s:
                    s.execute(update(Object).where(Object.id == obj["id"]).values(created=when))
            store.submit(server.db, image_id, who)
    return made
