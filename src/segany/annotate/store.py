"""What the server does to the database, without HTTP: images, the "next image" lock, objects with
optimistic locking and idempotency keys, submission and review.

Every function takes a :class:`~segany.annotate.db.Database` and raises
:class:`~segany.annotate.errors.ApiError` for anything a client did wrong.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segany.annotate.db import (
    SOURCES,
    Category,
    Database,
    Image,
    Object,
    Project,
    User,
    utcnow,
)
from segany.annotate.errors import ApiError, bad_request, conflict, forbidden, not_found
from segany.annotate.images import file_facts, scan_folder
from segany.io import FormatError
from segany.io.rle import decode_rle, encode_mask, rle_area, rle_to_bbox

EDITABLE_STATES = ("todo", "in_progress", "rejected")
MAX_PROMPT_POINTS = 1000


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user id, name and roles; ``local`` is the implicit admin of an auth-free server."""

    id: int
    name: str
    roles: tuple[str, ...]
    via: str = "local"  # "local", "token" or "cookie"

    def has(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.replace(tzinfo=dt.timezone.utc).isoformat().replace("+00:00", "Z")


# -- users and projects --------------------------------------------------------------------------


def ensure_user(db: Database, name: str, roles: str) -> int:
    with db.write() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            user = User(name=name, roles=roles)
            s.add(user)
            s.flush()
        return user.id


def ensure_project(db: Database, name: str) -> int:
    with db.write() as s:
        project = s.scalar(select(Project).where(Project.name == name))
        if project is None:
            project = Project(name=name, allow_unlabelled=True)
            s.add(project)
            s.flush()
        return project.id


def user_names(s: Session) -> dict[int, str]:
    return dict(s.execute(select(User.id, User.name)).all())  # type: ignore[arg-type]


def sync_folder(db: Database, project_id: int, root: Path, max_pixels: int) -> int:
    """Add the folder's new images to the project; return how many were added.

    Files whose path, size and modification time are already recorded are not read again.
    """
    with db.read() as s:
        known = {
            row.path: (row.file_size, row.mtime_ns)
            for row in s.execute(
                select(Image.path, Image.file_size, Image.mtime_ns).where(Image.project_id == project_id)
            )
        }
        hashes = set(s.scalars(select(Image.sha256).where(Image.project_id == project_id)))
    added = 0
    for rel, path in scan_folder(root):
        st = path.stat()
        if known.get(rel) == (st.st_size, st.st_mtime_ns):
            continue
        try:
            facts = file_facts(path, max_pixels)
        except ApiError:
            continue  # not an image after all (or too large): leave it out
        if facts.sha256 in hashes:
            continue
        hashes.add(facts.sha256)
        added += add_image(db, project_id, rel, facts.sha256, st.st_size, st.st_mtime_ns, facts.width, facts.height)
    return added


def add_image(db: Database, project_id: int, rel: str, sha: str, size: int, mtime_ns: int, w: int, h: int) -> int:
    """Insert one image record; 0 when the project already has these bytes."""
    try:
        with db.write() as s:
            s.add(Image(project_id=project_id, sha256=sha, path=rel, file_size=size, mtime_ns=mtime_ns,
                        width=w, height=h, state="todo", version=1))
        return 1
    except IntegrityError:
        return 0


# -- records -------------------------------------------------------------------------------------


def object_record(obj: Object, image: Image, names: dict[int, str]) -> dict[str, Any]:
    return {
        "id": obj.id,
        "image_id": obj.image_id,
        "version": obj.version,
        "category": obj.category,
        "source": obj.source,
        "rle": {"size": [image.height, image.width], "counts": obj.counts},
        "bbox": obj.bbox,
        "area": obj.area,
        "prompts": obj.prompts,
        "model": obj.model,
        "user": names.get(obj.user_id) if obj.user_id is not None else None,
        "created": iso(obj.created),
        "updated": iso(obj.updated),
        "seconds": obj.seconds,
        "clicks": obj.clicks,
        "strokes": obj.strokes,
        "undos": obj.undos,
        "extra": obj.extra or {},
    }


def image_record(s: Session, image: Image, objects: bool = True, names: dict[int, str] | None = None) -> dict[str, Any]:
    names = names if names is not None else user_names(s)
    lock_live = image.lock_owner is not None and image.lock_expires is not None and image.lock_expires > utcnow()
    rec: dict[str, Any] = {
        "id": image.id,
        "project_id": image.project_id,
        "file_name": image.path.rsplit("/", 1)[-1],
        "sha256": image.sha256,
        "width": image.width,
        "height": image.height,
        "state": image.state,
        "version": image.version,
        "lock_owner": names.get(image.lock_owner) if lock_live and image.lock_owner is not None else None,
        "lock_expires": iso(image.lock_expires) if lock_live else None,
        "annotator": names.get(image.annotator_id) if image.annotator_id is not None else None,
        "review_comment": image.review_comment,
    }
    if objects:
        objs = s.scalars(
            select(Object).where(Object.image_id == image.id, Object.deleted.is_(False)).order_by(Object.id)
        ).all()
        rec["objects"] = [object_record(o, image, names) for o in objs]
        rec["prev_id"] = s.scalar(
            select(func.max(Image.id)).where(Image.project_id == image.project_id, Image.id < image.id)
        )
        rec["next_id"] = s.scalar(
            select(func.min(Image.id)).where(Image.project_id == image.project_id, Image.id > image.id)
        )
    return rec


def get_image(s: Session, image_id: int) -> Image:
    image = s.get(Image, image_id)
    if image is None:
        raise not_found(f"image {image_id}")
    return image


# -- next image ----------------------------------------------------------------------------------


def next_image(db: Database, project_id: int, user: Principal, ttl: dt.timedelta) -> int | None:
    """Lock an image to ``user`` for ``ttl`` and return its id (None when nothing is left).

    Order: an image the user already holds, then images rejected back to the user, then unclaimed
    ``todo`` images, then ``in_progress`` images whose lock ran out. Two callers never receive the
    same image while its lock lasts: on PostgreSQL the candidate row is taken with ``SELECT ... FOR
    UPDATE SKIP LOCKED``; on SQLite the claim is a single conditional UPDATE inside a write
    transaction (SQLite runs one writer at a time).
    """
    now = utcnow()
    expires = now + ttl
    free = or_(Image.lock_owner.is_(None), Image.lock_expires < now, Image.lock_owner == user.id)
    tiers = [
        and_(Image.lock_owner == user.id, Image.lock_expires >= now, Image.state.in_(EDITABLE_STATES)),
        and_(Image.state == "rejected", Image.annotator_id == user.id),
        and_(Image.state == "todo", free),
        and_(Image.state == "in_progress", free),
    ]
    with db.write() as s:
        for tier in tiers:
            query = select(Image.id).where(Image.project_id == project_id, tier).order_by(Image.id).limit(1)
            if db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            image_id = s.scalar(query)
            if image_id is None:
                continue
            claimed: Any = s.execute(
                update(Image)
                .where(Image.id == image_id, free)
                .values(
                    lock_owner=user.id,
                    lock_expires=expires,
                    state=_claim_state(),
                    annotator_id=user.id,  # whoever takes it over (a rejected image comes back to its own)
                    updated=now,
                )
            )
            if claimed.rowcount == 1:
                return image_id
    return None


def _claim_state() -> Any:
    from sqlalchemy import case

    return case((Image.state == "todo", "in_progress"), else_=Image.state)


def release_lock(db: Database, image_id: int, user: Principal) -> None:
    with db.write() as s:
        s.execute(
            update(Image)
            .where(Image.id == image_id, Image.lock_owner == user.id)
            .values(lock_owner=None, lock_expires=None)
        )


# -- objects -------------------------------------------------------------------------------------


def mask_from_body(body: dict[str, Any], height: int, width: int) -> tuple[str, list[float], int]:
    """The (counts, bbox, area) of the mask in ``body`` (``rle`` or ``mask_png_base64``); bbox and area
    are always computed from the mask itself."""
    if body.get("rle") is not None:
        rle = body["rle"]
        if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str):
            raise bad_request("rle must be {'size': [h, w], 'counts': '<COCO compressed RLE>'}")
        if list(rle.get("size", [])) != [height, width]:
            raise bad_request(f"rle size {rle.get('size')} does not match the image ({height}, {width})")
        try:
            decode_rle(rle)  # checks that the counts cover the image exactly
        except (FormatError, ValueError, TypeError) as exc:
            raise bad_request(f"invalid rle: {exc}") from None
        counts = rle["counts"]
        canonical = {"size": [height, width], "counts": counts}
    elif body.get("mask_png_base64") is not None:
        mask = _png_mask(body["mask_png_base64"], height, width)
        canonical = encode_mask(mask)
        counts = canonical["counts"]
    else:
        raise bad_request("an object needs 'rle' or 'mask_png_base64'")
    area = rle_area(canonical)
    if area == 0:
        raise bad_request("the mask is empty")
    return counts, rle_to_bbox(canonical), area


def _png_mask(data: Any, height: int, width: int) -> np.ndarray:
    from PIL import Image as PILImage

    if not isinstance(data, str):
        raise bad_request("mask_png_base64 must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
        with PILImage.open(io.BytesIO(raw)) as im:
            if im.format != "PNG":
                raise bad_request("mask_png_base64 is not a PNG")
            if im.size != (width, height):
                raise bad_request(f"mask PNG is {im.size[0]}x{im.size[1]}, the image {width}x{height}")
            arr = np.asarray(im.convert("L"))
    except ApiError:
        raise
    except (binascii.Error, ValueError, OSError):
        raise bad_request("mask_png_base64 is not a readable PNG") from None
    return arr != 0


def check_prompts(prompts: Any) -> dict[str, Any] | None:
    if prompts is None:
        return None
    if not isinstance(prompts, dict):
        raise bad_request("prompts must be an object")
    points = prompts.get("points") or []
    labels = prompts.get("labels") or []
    box = prompts.get("box")
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if points else np.zeros((0, 2))
        lbl = np.asarray(labels, dtype=np.int64).reshape(-1)
        bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
    except (ValueError, TypeError):
        raise bad_request("prompts: points [[x, y], ...], labels [int, ...], box [x0, y0, x1, y1] or null") from None
    if len(pts) != len(lbl) or len(pts) > MAX_PROMPT_POINTS:
        raise bad_request("prompts: one label per point (at most 1000 points)")
    if not np.isfinite(pts).all() or (bx is not None and not np.isfinite(bx).all()):
        raise bad_request("prompts: coordinates must be finite numbers")
    return {"points": pts.tolist(), "labels": lbl.tolist(), "box": None if bx is None else bx.tolist()}


def _counters(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in (("seconds", float), ("clicks", int), ("strokes", int), ("undos", int)):
        if body.get(key) is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise bad_request(f"{key} must be a non-negative number")
            out[key] = kind(value)
    return out


def _category(body: dict[str, Any]) -> str | None:
    value = body.get("category")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise bad_request("category must be a non-empty string of at most 256 characters")
    return " ".join(value.split())


def ensure_category(s: Session, dialect: str, project_id: int, name: str | None, fixed: bool = False) -> None:
    if name is None:
        return
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    s.execute(
        insert(Category).values(project_id=project_id, name=name, fixed=fixed).on_conflict_do_nothing(
            index_elements=["project_id", "name"]
        )
    )


def may_edit(user: Principal, image: Image) -> None:
    """Annotators edit images that are not submitted or accepted; admins edit anything."""
    if "admin" in user.roles:
        return
    if not user.has("annotator"):
        raise forbidden("editing objects needs the annotator role")
    if image.state not in EDITABLE_STATES:
        raise forbidden(f"image {image.id} is {image.state}: it can no longer be edited")


def create_object(
    db: Database, image_id: int, user: Principal, body: dict[str, Any], key: str | None, model: str
) -> tuple[dict[str, Any], bool]:
    """Store a new object; returns (record, created). The same idempotency key again returns the
    object it created, without storing a second one."""
    if key is not None and (not key or len(key) > 128):
        raise bad_request("Idempotency-Key must be 1-128 characters")
    scoped = f"{user.id}:{key}" if key else None
    source = body.get("source") or "manual"
    if source not in SOURCES:
        raise bad_request(f"source must be one of {', '.join(SOURCES)}")
    category = _category(body)
    prompts = check_prompts(body.get("prompts"))
    counters = _counters(body)
    extra = body.get("extra") if isinstance(body.get("extra"), dict) else None
    try:
        with db.write() as s:
            image = get_image(s, image_id)
            if scoped:  # a retry: answer with what the first request stored, whatever happened since
                existing = s.scalar(select(Object).where(Object.idempotency_key == scoped))
                if existing is not None:
                    return object_record(existing, get_image(s, existing.image_id), user_names(s)), False
            may_edit(user, image)
            counts, bbox, area = mask_from_body(body, image.height, image.width)
            project = s.get(Project, image.project_id)
            assert project is not None
            if category is None and not project.allow_unlabelled:
                raise bad_request("this project needs a category on every object")
            ensure_category(s, db.dialect, image.project_id, category)
            now = utcnow()
            obj = Object(
                image_id=image_id, version=1, idempotency_key=scoped, category=category, source=source,
                counts=counts, bbox=bbox, area=area, prompts=prompts, extra=extra,
                model=body.get("model") if isinstance(body.get("model"), str) else model,
                user_id=user.id, created=now, updated=now, deleted=False, **_defaults(counters),
            )
            s.add(obj)
            s.flush()
            return object_record(obj, image, {user.id: user.name}), True
    except IntegrityError:
        # The same key committed by a concurrent request in the meantime.
        again = _by_key(db, scoped) if scoped else None
        if again is None:
            raise
        return again, False


def _defaults(counters: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": 0.0, "clicks": 0, "strokes": 0, "undos": 0, **counters}


def _by_key(db: Database, scoped: str) -> dict[str, Any] | None:
    with db.read() as s:
        obj = s.scalar(select(Object).where(Object.idempotency_key == scoped))
        if obj is None:
            return None
        return object_record(obj, get_image(s, obj.image_id), user_names(s))


def parse_if_match(value: str | None) -> int:
    if value is None:
        raise ApiError(428, "If-Match with the object's version is required")
    v = value.strip()
    v = v.removeprefix("W/")
    v = v.strip('"')
    if not v.isdigit():
        raise bad_request(f"If-Match must be a version number such as \"3\", got {value!r}")
    return int(v)


def _current(s: Session, object_id: int) -> tuple[Object, Image]:
    obj = s.get(Object, object_id)
    if obj is None or obj.deleted:
        raise not_found(f"object {object_id}")
    return obj, get_image(s, obj.image_id)


def update_object(db: Database, object_id: int, user: Principal, version: int, body: dict[str, Any]) -> dict[str, Any]:
    """Apply a change if ``version`` is still current (409 with the current object otherwise)."""
    values: dict[str, Any] = {}
    if "category" in body:
        values["category"] = _category(body)
    if "prompts" in body:
        values["prompts"] = check_prompts(body["prompts"])
    values.update(_counters(body))
    if isinstance(body.get("extra"), dict):
        values["extra"] = body["extra"]
    with db.write() as s:
        obj, image = _current(s, object_id)
        may_edit(user, image)
        if body.get("rle") is not None or body.get("mask_png_base64") is not None:
            values["counts"], values["bbox"], values["area"] = mask_from_body(body, image.height, image.width)
            if obj.source == "auto":
                values["source"] = "auto_edited"
        if "category" in values:
            ensure_category(s, db.dialect, image.project_id, values["category"])
        done: Any = s.execute(
            update(Object)
            .where(Object.id == object_id, Object.version == version, Object.deleted.is_(False))
            .values(version=Object.version + 1, updated=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:
            raise _stale(s, object_id, image)
        s.expire(obj)
        return object_record(obj, image, user_names(s))


def _stale(s: Session, object_id: int, image: Image) -> ApiError:
    s.expire_all()
    obj = s.get(Object, object_id)
    current = None if obj is None or obj.deleted else object_record(obj, image, user_names(s))
    return conflict("the object changed since you read it", current=current)


def delete_object(db: Database, object_id: int, user: Principal, version: int) -> None:
    with db.write() as s:
        _obj, image = _current(s, object_id)
        may_edit(user, image)
        done: Any = s.execute(
            update(Object)
            .where(Object.id == object_id, Object.version == version, Object.deleted.is_(False))
            .values(deleted=True, version=Object.version + 1, updated=utcnow())
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:
            raise _stale(s, object_id, image)


# -- submission and review -----------------------------------------------------------------------


def submit(db: Database, image_id: int, user: Principal) -> dict[str, Any]:
    with db.write() as s:
        image = get_image(s, image_id)
        may_edit(user, image)
        if image.state not in EDITABLE_STATES and "admin" not in user.roles:
            raise conflict(f"image {image_id} is already {image.state}")
        image.state = "submitted"
        image.annotator_id = image.annotator_id or user.id
        image.lock_owner = None
        image.lock_expires = None
        image.version += 1
        image.updated = utcnow()
        s.flush()
        return image_record(s, image)


def review(
    db: Database, image_id: int, user: Principal, decision: str, comment: str | None, auth_on: bool
) -> dict[str, Any]:
    if decision not in ("accept", "reject"):
        raise bad_request("decision must be 'accept' or 'reject'")
    if not user.has("reviewer"):
        raise forbidden("reviewing needs the reviewer role")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 4000):
        raise bad_request("comment must be a string of at most 4000 characters")
    with db.write() as s:
        image = get_image(s, image_id)
        if image.state != "submitted":
            raise conflict(f"image {image_id} is {image.state}, not submitted")
        if image.annotator_id == user.id and auth_on:
            raise forbidden("you cannot review your own work")
        image.state = "accepted" if decision == "accept" else "rejected"
        image.review_comment = comment
        image.reviewer_id = user.id
        image.version += 1
        image.updated = utcnow()
        s.flush()
        return image_record(s, image)


def list_images(db: Database, project_id: int, state: str | None) -> list[dict[str, Any]]:
    with db.read() as s:
        query = select(Image).where(Image.project_id == project_id).order_by(Image.id)
        if state is not None:
            query = query.where(Image.state == state)
        names = user_names(s)
        return [image_record(s, im, objects=False, names=names) for im in s.scalars(query)]


def project_list(db: Database) -> list[dict[str, Any]]:
    with db.read() as s:
        rows = []
        for p in s.scalars(select(Project).order_by(Project.id)):
            total = s.scalar(select(func.count()).select_from(Image).where(Image.project_id == p.id)) or 0
            done = (
                s.scalar(
                    select(func.count())
                    .select_from(Image)
                    .where(Image.project_id == p.id, Image.state.in_(("submitted", "accepted")))
                )
                or 0
            )
            rows.append({"id": p.id, "name": p.name, "images": int(total), "done": int(done)})
        return rows


def categories(db: Database, project_id: int) -> list[dict[str, Any]]:
    with db.read() as s:
        rows = s.scalars(
            select(Category).where(Category.project_id == project_id).order_by(Category.fixed.desc(), Category.name)
        )
        return [{"id": c.id, "name": c.name, "fixed": c.fixed} for c in rows]


def ping(db: Database) -> None:
    with db.read() as s:
        s.execute(text("SELECT 1"))
