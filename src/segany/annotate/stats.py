"""The paper's data-engine statistics for a project: seconds per manual mask (median, by user, by day, in
saving order), masks per image, and what became of the automatic masks (kept, edited, deleted).

Times count manual masks only (the paper's stage-2 figure leaves the automatic ones out) and only those
that carry a time: a manual mask saved through the API without ``seconds`` is counted in ``untimed``,
not as a 0 s mask. Days are UTC dates of the mask's creation. "Finished" images are submitted or
accepted; masks per image and the ``*_finished`` figures count those only, since the masks of an image
still being worked on are not final.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select

from segany.annotate.db import IMAGE_STATES, Database, Image, Object, User

FINISHED = ("submitted", "accepted")
ORDER_POINTS = 50  # at most this many groups in the "saving order" series


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "median": statistics.median(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


def _auto_fates(rows: list[tuple[str, bool]]) -> dict[str, int]:
    """Counts of automatic masks by fate, from (source, deleted) pairs of non-manual objects."""
    fates = {"imported": len(rows), "kept": 0, "edited": 0, "deleted": 0}
    for source, deleted in rows:
        fates["deleted" if deleted else "edited" if source == "auto_edited" else "kept"] += 1
    return fates


def _by_order(timed: list[tuple[Any, int, float]]) -> dict[str, Any]:
    """Manual masks in saving order, in consecutive groups of equal size: each group's median time
    (the learning curve of the paper's stage 1, whatever the calendar)."""
    ordered = [sec for _, _, sec in sorted(timed, key=lambda r: (r[0], r[1]))]
    size = max(1, math.ceil(len(ordered) / ORDER_POINTS))
    points = [
        {"first": i + 1, "count": len(chunk), "median": statistics.median(chunk)}
        for i in range(0, len(ordered), size)
        for chunk in [ordered[i : i + size]]
    ]
    return {"group": size, "points": points}


def _histogram(counts: list[int]) -> list[list[int]]:
    """[[masks, images], ...] in increasing number of masks."""
    return [[k, n] for k, n in sorted(Counter(counts).items())]


def project_stats(db: Database, project_id: int) -> dict[str, Any]:
    with db.read() as s:
        names = dict(s.execute(select(User.id, User.name)).all())
        rows = s.execute(
            select(
                Object.id,
                Object.image_id,
                Object.source,
                Object.deleted,
                Object.seconds,
                Object.user_id,
                Object.created,
                Object.clicks,
            )
            .join(Image, Image.id == Object.image_id)
            .where(Image.project_id == project_id)
        ).all()
        images = s.execute(
            select(Image.id, Image.state, Image.annotator_id).where(Image.project_id == project_id)
        ).all()
    states = {i: st for i, st, _ in images}
    finished = [i for i, st, _ in images if st in FINISHED]
    finished_set = set(finished)

    def who(user_id: int | None) -> str:
        return names.get(user_id, "?") if user_id is not None else "?"

    manual: list[float] = []
    timed: list[tuple[Any, int, float]] = []
    by_user: dict[str, list[float]] = defaultdict(list)
    clicks_by_user: dict[str, list[float]] = defaultdict(list)
    by_day: dict[str, list[float]] = defaultdict(list)
    by_user_day: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_image: dict[int, dict[str, int]] = defaultdict(lambda: {"manual": 0, "auto": 0})
    live = {"manual": 0, "auto": 0, "auto_edited": 0}
    auto_rows: list[tuple[str, bool]] = []
    auto_rows_finished: list[tuple[str, bool]] = []
    untimed = 0
    for obj_id, image_id, source, deleted, seconds, user_id, created, clicks in rows:
        if source != "manual":
            auto_rows.append((source, bool(deleted)))
            if image_id in finished_set:
                auto_rows_finished.append((source, bool(deleted)))
        if deleted:
            continue
        live[source] = live.get(source, 0) + 1
        per_image[image_id]["manual" if source == "manual" else "auto"] += 1
        if source != "manual":
            continue
        if not seconds or seconds <= 0:
            untimed += 1
            continue
        sec, name, day = float(seconds), who(user_id), created.date().isoformat()
        manual.append(sec)
        timed.append((created, obj_id, sec))
        by_user[name].append(sec)
        clicks_by_user[name].append(float(clicks or 0))
        by_day[day].append(sec)
        by_user_day[name][day].append(sec)

    counts_all = [per_image[i]["manual"] + per_image[i]["auto"] for i in finished]
    counts_manual = [per_image[i]["manual"] for i in finished]
    done_by: Counter[str] = Counter(who(a) for i, st, a in images if st in FINISHED and a is not None)
    users = sorted(set(by_user) | set(done_by))
    return {
        "images": len(states),
        "images_finished": len(finished),
        "images_by_state": {st: sum(1 for v in states.values() if v == st) for st in IMAGE_STATES},
        "objects": {**live, "total": sum(live.values())},
        "seconds_per_manual_mask": _summary(manual),
        "untimed_manual_masks": untimed,
        "by_user": {
            u: {
                **_summary(by_user.get(u, [])),
                "total_seconds": sum(by_user.get(u, [])),
                "median_clicks": statistics.median(clicks_by_user[u]) if clicks_by_user.get(u) else None,
                "images_finished": done_by.get(u, 0),
            }
            for u in users
        },
        "by_day": {d: _summary(v) for d, v in sorted(by_day.items())},
        "by_user_day": {
            u: {d: _summary(v) for d, v in sorted(days.items())} for u, days in sorted(by_user_day.items())
        },
        "by_order": _by_order(timed),
        "masks_per_image": _summary([float(c) for c in counts_all]),
        "manual_masks_per_image": _summary([float(c) for c in counts_manual]),
        "masks_per_image_histogram": {"all": _histogram(counts_all), "manual": _histogram(counts_manual)},
        "auto_masks": _auto_fates(auto_rows),
        "auto_masks_finished": _auto_fates(auto_rows_finished),
        "auto_share": (sum(per_image[i]["auto"] for i in finished) / sum(counts_all)) if sum(counts_all) else None,
    }
