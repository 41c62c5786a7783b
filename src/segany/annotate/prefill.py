"""Stage 2: pre-fill images with automatic masks, from ``segany auto`` output (SA-1B or COCO files) or
by running the automatic generator with strict thresholds. Pre-filled objects have ``source="auto"``
(an edit makes them ``auto_edited``); importing the same masks again adds nothing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select

from segany.annotate import store
from segany.annotate.db import Database, Image
from segany.annotate.errors import ApiError
from segany.io import FormatError
from segany.io.rle import encode_mask, to_coco_rle

# Server-side pre-fill keeps only confident, stable masks (paper, stage 2): the predicted-IoU threshold
# this much above the model's own automatic one (SAM: 0.88 + 0.04 = 0.92; stability stays at its 0.95).
STRICT_IOU_MARGIN = 0.04


def strict_settings(model: Any) -> dict[str, float]:
    """The pre-fill thresholds for ``model`` (a Sam or a predictor): its own, the IoU one made stricter."""
    from segany.inference.automatic import model_mask_thresholds

    iou, stability = model_mask_thresholds(model)
    return {"pred_iou_thresh": round(iou + STRICT_IOU_MARGIN, 4), "stability_score_thresh": stability}


@dataclass
class PrefillReport:
    added: int = 0
    existing: int = 0
    unmatched: list[str] = field(default_factory=list)  # file names with no image in the project
    skipped: int = 0  # masks refused (wrong size, empty)


def _images_by_name(db: Database, project_id: int) -> dict[str, tuple[int, int, int, str]]:
    table: dict[str, tuple[int, int, int, str]] = {}
    with db.read() as s:
        for im in s.scalars(select(Image).where(Image.project_id == project_id)):
            entry = (im.id, im.height, im.width, im.sha256)
            table.setdefault(im.path, entry)
            table.setdefault(PurePosixPath(im.path).name, entry)
    return table


def _add(db: Database, user: store.Principal, image: tuple[int, int, int, str], rle: dict[str, Any],
         extra: dict[str, Any], model: str | None, category: str | None, report: PrefillReport) -> None:
    image_id, h, w, sha = image
    try:
        rle = to_coco_rle(rle, h, w)
    except FormatError:
        report.skipped += 1
        return
    key = "prefill:" + hashlib.sha256(f"{sha}|{rle['counts']}".encode()).hexdigest()[:40]
    body = {"rle": rle, "source": "auto", "extra": extra, "category": category, "model": model or "import",
            "prompts": {"points": extra.get("point_coords") or [], "labels": [1] * len(extra.get("point_coords") or []),
                        "box": None}}
    try:
        _, created = store.create_object(db, image_id, user, body, key, model or "import")
    except ApiError:
        report.skipped += 1
        return
    if created:
        report.added += 1
    else:
        report.existing += 1


def import_file(
    db: Database, project_id: int, user: store.Principal, path: Path, min_iou: float = 0.0
) -> PrefillReport:
    """Import one SA-1B per-image file or one COCO instances file."""
    from segany.io.coco import load_coco
    from segany.io.sa1b import read_sa1b

    report = PrefillReport()
    images = _images_by_name(db, project_id)
    try:
        head = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot read JSON ({exc})") from None
    if isinstance(head, dict) and "image" in head:
        sa1b = read_sa1b(path)
        image = images.get(sa1b.image.file_name) or images.get(PurePosixPath(sa1b.image.file_name).name)
        if image is None:
            report.unmatched.append(sa1b.image.file_name)
            return report
        for ann in sa1b.annotations:
            if ann.predicted_iou < min_iou:
                continue
            extra = {"predicted_iou": ann.predicted_iou, "stability_score": ann.stability_score,
                     "crop_box": ann.crop_box, "point_coords": ann.point_coords}
            _add(db, user, image, ann.segmentation, extra, None, None, report)
        return report
    coco = load_coco(path)
    names = {c.get("id"): c.get("name") for c in coco.categories if isinstance(c, dict)}
    by_id = {im["id"]: im for im in coco.images}
    for entry in coco.annotations:
        info = by_id[entry["image_id"]]
        image = images.get(info["file_name"]) or images.get(PurePosixPath(info["file_name"]).name)
        if image is None:
            if info["file_name"] not in report.unmatched:
                report.unmatched.append(info["file_name"])
            continue
        score = float(entry.get("predicted_iou", entry.get("score", 1.0)))
        if score < min_iou:
            continue
        extra = {
            "predicted_iou": score,
            "stability_score": float(entry.get("stability_score", 1.0)),
            "crop_box": entry.get("crop_box") or [0, 0, image[2], image[1]],
            "point_coords": entry.get("point_coords") or [],
        }
        category = names.get(entry.get("category_id"))
        _add(
            db,
            user,
            image,
            entry["segmentation"],
            extra,
            None,
            None if category in (None, "object") else category,
            report,
        )
    return report


def generate(db: Database, project_id: int, user: store.Principal, root: Path, model: Any, model_id: str,
             settings: dict[str, Any] | None = None, progress: bool = True) -> PrefillReport:
    """Run the automatic mask generator on every ``todo`` image without objects and store its masks."""
    from tqdm import tqdm

    from segany.annotate.images import inside
    from segany.inference.automatic import SamAutomaticMaskGenerator
    from segany.io.image import read_image

    generator = SamAutomaticMaskGenerator(model, **{**strict_settings(model), **(settings or {})})
    report = PrefillReport()
    with db.read() as s:
        todo = [
            (im.id, im.height, im.width, im.sha256, im.path)
            for im in s.scalars(
                select(Image).where(Image.project_id == project_id, Image.state == "todo").order_by(Image.id)
            )
        ]
    for image_id, h, w, sha, rel in tqdm(todo, desc="pre-fill", disable=not progress):
        path = inside(root, root / rel)
        if path is None:
            report.unmatched.append(rel)
            continue
        for record in generator.generate(read_image(path)):
            seg = record["segmentation"]
            rle = seg if isinstance(seg, dict) else encode_mask(seg)
            extra = {
                "predicted_iou": float(record["predicted_iou"]),
                "stability_score": float(record["stability_score"]),
                "crop_box": [float(v) for v in record["crop_box"]],
                "point_coords": [[float(x), float(y)] for x, y in record["point_coords"]],
            }
            _add(db, user, (image_id, h, w, sha), rle, extra, model_id, None, report)
    return report
