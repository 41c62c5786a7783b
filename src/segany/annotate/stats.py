"""The paper's data-engine statistics for a project: seconds per manual mask (median, by user, by day),
masks per image, and what became of the automatic masks (kept, edited, deleted)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from segany.annotate.db import Database, Image, Object, User


def _summary(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "median": statistics.median(values) if values else None,
            "mean": statistics.fmean(values) if values else None}


def project_stats(db: Database, project_id: int) -> dict[str, Any]:
    with db.read() as s:
        names = dict(s.execute(select(User.id, User.name)).all())
        rows = s.execute(
            select(Object.image_id, Object.source, Object.deleted, Object.seconds, Object.user_id, Object.created)
            .join(Image, Image.id == Object.image_id)
            .where(Image.project_id == project_id)
        ).all()
        states = dict(s.execute(select(Image.id, Image.state).where(Image.project_id == project_id)).all())
    manual: list[float] = []
    by_user: dict[str, list[float]] = defaultdict(list)
    by_day: dict[str, list[float]] = defaultdict(list)
    per_image: dict[int, dict[str, int]] = defaultdict(lambda: {"manual": 0, "auto": 0})
    auto = {"imported": 0, "kept": 0, "edited": 0, "deleted": 0}
    for image_id, source, deleted, seconds, user_id, created in rows:
        if source != "manual":
            auto["imported"] += 1
            if deleted:
                auto["deleted"] += 1
            elif source == "auto_edited":
                auto["edited"] += 1
            else:
                auto["kept"] += 1
        if deleted:
            continue
        per_image[image_id]["manual" if source == "manual" else "auto"] += 1
        if source == "manual":
            manual.append(float(seconds))
            by_user[names.get(user_id, "?") if user_id is not None else "?"].append(float(seconds))
            by_day[created.date().isoformat()].append(float(seconds))
    finished = [i for i, st in states.items() if st in ("submitted", "accepted")]
    counts_all = [per_image[i]["manual"] + per_image[i]["auto"] for i in finished]
    counts_manual = [per_image[i]["manual"] for i in finished]
    return {
        "images": len(states),
        "images_finished": len(finished),
        "seconds_per_manual_mask": _summary(manual),
        "by_user": {u: _summary(v) for u, v in sorted(by_user.items())},
        "by_day": {d: _summary(v) for d, v in sorted(by_day.items())},
        "masks_per_image": _summary([float(c) for c in counts_all]),
        "manual_masks_per_image": _summary([float(c) for c in counts_manual]),
        "auto_masks": auto,
        "auto_share": (sum(per_image[i]["auto"] for i in finished) / sum(counts_all)) if sum(counts_all) else None,
    }
