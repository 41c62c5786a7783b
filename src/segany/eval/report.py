"""Evaluation reports: ``results.json``, a Markdown summary, plots and pictures of chosen cases.

A :class:`ReportWriter` collects the pieces of one report folder::

    REPORT_DIR/results.json   figures, settings, model and data set info, date, command line
    REPORT_DIR/report.md      human-readable tables, the plots and the case pictures
    REPORT_DIR/*.png          plots (matplotlib, drawn without pyplot's global state)
    REPORT_DIR/cases/*.jpg    best and worst cases: the image, ground truth and prediction side by side

Every file is written atomically (temporary file + rename), so a reader never sees a half-written
report. Protocol modules decide what goes in; this module only knows how to draw and write.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from segany.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "Panel",
    "ReportWriter",
    "case_picture",
    "context_box",
    "fmt",
    "json_safe",
    "load_compare",
    "markdown_table",
    "pick_extremes",
    "plot_curves",
    "plot_histograms",
    "plot_pr_curves",
    "jpeg_bytes",
    "run_info",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- small helpers


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals; None, NaN and COCO's -1 as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "–" if not np.isfinite(v) or v == -1.0 else f"{v:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float, np.number)) or r[i] is None for r in rows) if rows else False
               for i in range(len(headers))]
    align = ["---:" if n and i > 0 else "---" for i, n in enumerate(numeric)]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def pick_extremes(items: Sequence[T], key: Callable[[T], float], k: int = 3) -> tuple[list[T], list[T]]:
    """The ``k`` best and ``k`` worst items by ``key`` (NaN keys skipped; no item in both lists)."""
    scored = [(float(key(it)), i) for i, it in enumerate(items)]
    scored = [s for s in scored if np.isfinite(s[0])]
    scored.sort(key=lambda s: (-s[0], s[1]))
    k_best = min(k, len(scored) // 2 + len(scored) % 2)
    best = [items[i] for _, i in scored[:k_best]]
    worst = [items[i] for _, i in scored[k_best:][::-1][:k]]
    return best, worst


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def run_info(command: str) -> dict[str, Any]:
    """Date, versions and the command line, for ``results.json``."""
    import torch

    from segany import __version__

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "segany_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
    }


def load_compare(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Earlier reports (a ``results.json`` or the folder holding one) to show alongside a new one."""
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "results.json"
        data = read_json(path, "earlier evaluation results")
        if not isinstance(data, dict) or "methods" not in data:
            from segany.io import FormatError

            raise FormatError(f"{path}: not a segany eval results.json (no 'methods')")
        data["_path"] = str(path)
        out.append(data)
    return out


# --------------------------------------------------------------------------- plots


def method_entries(
    results: Sequence[Any], compare: Sequence[Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any], str]]:
    """``(method, results JSON, tag)`` for this run's results (objects with ``method`` and ``to_json()``),
    then for the methods of earlier runs (``--compare``), tagged as such."""
    entries: list[tuple[str, Mapping[str, Any], str]] = [(r.method, r.to_json(), "") for r in results]
    entries += [(name, m, " (earlier run)") for c in compare for name, m in c.get("methods", {}).items()]
    return entries


def metric_rows(entries: Sequence[tuple[str, Mapping[str, Any], str]], keys: Sequence[str]) -> list[list[Any]]:
    """Table rows ``[method, objects, *metrics]`` for :func:`method_entries`."""
    return [
        [name + tag, js["metrics"].get("num_objects", 0), *[js["metrics"].get(k, float("nan")) for k in keys]]
        for name, js, tag in entries
    ]


def _figure(width: float = 5.0, height: float = 3.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    marks: Sequence[float] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> bytes:
    """Line plot, one line per label (``{label: (xs, ys)}``); ``marks`` draws dots at those xs."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in curves.items():
        xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
        style = "--" if "oracle" in label else "-"
        (line,) = ax.plot(xs_a, ys_a, style, label=label, linewidth=1.6)
        if marks is not None:
            sel = np.isin(xs_a, marks)
            ax.plot(xs_a[sel], ys_a[sel], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if marks is not None:
        ax.set_xticks(list(marks))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _fig_png(fig)


def plot_intervals(
    series: Mapping[str, Mapping[str, tuple[float, float, float]]], xlabel: str, ylabel: str, title: str
) -> bytes:
    """Groups side by side: ``{label: {group: (value, low, high)}}`` as dots with interval bars."""
    fig = _figure(max(5.0, 0.6 * max((len(g) for g in series.values()), default=1) + 2.5), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    groups = list(dict.fromkeys(g for per in series.values() for g in per))
    width = 0.7 / max(len(series), 1)
    for j, (label, per) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i, g in enumerate(groups) if g in per]
        v = np.array([per[g] for g in groups if g in per], float).reshape(-1, 3)
        err = np.abs(np.stack([v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]]))
        ax.errorbar(xs, v[:, 0], yerr=err, fmt="o", capsize=3, label=label)
    ax.set_xticks(range(len(groups)))
    tilt = len(groups) > 4
    ax.set_xticklabels([g if tilt else textwrap.fill(g, 16) for g in groups], rotation=30 if tilt else 0,
                       ha="right" if tilt else "center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _fig_png(fig)


def plot_pr_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], title: str) -> bytes:
    """Precision-recall plot with iso-F contours; ``{label: (recall, precision, ods)}``."""
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    r = np.linspace(0.01, 1, 200)
    for f in np.arange(0.1, 1.0, 0.1):
        p = f * r / (2 * r - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="0.85", linewidth=0.7)
    for label, (rec, prec, ods) in curves.items():
        rec_a, prec_a = np.asarray(rec, float), np.asarray(prec, float)
        keep = (rec_a > 0) | (prec_a > 0)
        ax.plot(rec_a[keep], prec_a[keep], linewidth=1.8, label=f"{label} (ODS {ods:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return _fig_png(fig)


def plot_histograms(values: Mapping[str, Sequence[float]], xlabel: str, title: str, bins: int = 20) -> bytes:
    """Overlaid histograms of per-item values in [0, 1] (e.g. per-object IoU)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0, 1, bins + 1)
    for label, vals in values.items():
        ax.hist(np.asarray(vals, float), bins=edges, alpha=0.55, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _fig_png(fig)


# --------------------------------------------------------------------------- case pictures


@dataclass
class Panel:
    """One tile of a case picture.

    Attributes:
        title: caption drawn above the tile.
        masks: bool [H, W] masks overlaid in colour on the image.
        outline: bool [H, W] mask whose contour is drawn (e.g. the ground truth).
        clicks: ``(x, y, is_positive)``; positive green, negative red, numbered in order.
        heatmap: float [H, W] in [0, 1] shown (dark = 1, as edge maps are usually drawn) instead
            of the image.
        boxes: ``(x0, y0, x1, y1)`` boxes drawn in white.
    """

    title: str
    masks: Sequence[np.ndarray] = ()
    outline: np.ndarray | None = None
    clicks: Sequence[tuple[int, int, bool]] = ()
    heatmap: np.ndarray | None = None
    boxes: Sequence[Sequence[float]] = ()


def _draw_panel(image: np.ndarray, panel: Panel, max_side: int) -> np.ndarray:
    import cv2

    from segany.io.overlay import overlay_masks

    if panel.heatmap is not None:
        grey = (np.clip(panel.heatmap, 0, 1) * 255).astype(np.uint8)
        base = np.repeat(255 - grey[..., None], 3, axis=2)  # dark edges on white, like the benchmark's figures
    else:
        base = image.copy()
    if len(panel.masks):
        base = np.ascontiguousarray(overlay_masks(base, np.stack([np.asarray(m, bool) for m in panel.masks])))
    h, w = base.shape[:2]
    # Shrink big images; enlarge small crops (up to 4x, nearest neighbour keeps pixels visible).
    scale = min(4.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    out = np.ascontiguousarray(cv2.resize(base, size, interpolation=interp) if scale != 1 else base)
    if panel.outline is not None and np.asarray(panel.outline).any():
        m = np.asarray(panel.outline, np.uint8)
        if scale != 1:
            m = cv2.resize(m, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    for x0, y0, x1, y1 in panel.boxes:
        p0, p1 = (int(round(x0 * scale)), int(round(y0 * scale))), (int(round(x1 * scale)), int(round(y1 * scale)))
        cv2.rectangle(out, p0, p1, (0, 0, 0), 3)
        cv2.rectangle(out, p0, p1, (255, 255, 255), 1)
    for i, (x, y, pos) in enumerate(panel.clicks):
        c = (int(round(x * scale)), int(round(y * scale)))
        cv2.circle(out, c, 5, (0, 0, 0), -1)
        cv2.circle(out, c, 4, (40, 220, 40) if pos else (230, 40, 40), -1)
        if len(panel.clicks) > 1:
            cv2.putText(
                out, str(i + 1), (c[0] + 6, c[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
            )
    bar = np.full((18, out.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, panel.title[:70], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, out], axis=0)


def context_box(bbox: Sequence[float], height: int, width: int, factor: float = 3.0, min_side: int = 96
                ) -> tuple[int, int, int, int] | None:
    """A crop ``(x0, y0, x1, y1)`` (end exclusive) around a COCO xywh box: ``factor`` x its size,
    at least ``min_side`` px, inside the image. None when it would cover most of the image anyway."""
    x, y, w, h = bbox
    side_w, side_h = max(w * factor, min_side), max(h * factor, min_side)
    if side_w >= 0.7 * width and side_h >= 0.7 * height:
        return None
    cx, cy = x + w / 2, y + h / 2
    x0 = int(np.clip(round(cx - side_w / 2), 0, max(0, width - side_w)))
    y0 = int(np.clip(round(cy - side_h / 2), 0, max(0, height - side_h)))
    return x0, y0, min(width, x0 + int(round(side_w))), min(height, y0 + int(round(side_h)))


def _crop_panel(panel: Panel, x0: int, y0: int, x1: int, y1: int) -> Panel:
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a)[y0:y1, x0:x1]

    return Panel(
        panel.title,
        masks=[cut(m) for m in panel.masks],  # type: ignore[misc]
        outline=cut(panel.outline),
        clicks=[(x - x0, y - y0, p) for x, y, p in panel.clicks if x0 <= x < x1 and y0 <= y < y1],
        heatmap=cut(panel.heatmap),
        boxes=[(b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0) for b in panel.boxes],
    )


def case_picture(
    image: np.ndarray, panels: Sequence[Panel], max_side: int = 360, crop: Sequence[int] | None = None
) -> np.ndarray:
    """Tiles side by side: RGB uint8 [h, sum(w_i) + gaps, 3]; ``crop`` (x0, y0, x1, y1) zooms in."""
    if crop is not None:
        x0, y0, x1, y1 = (int(v) for v in crop)
        image = image[y0:y1, x0:x1]
        panels = [_crop_panel(p, x0, y0, x1, y1) for p in panels]
    tiles = [_draw_panel(image, p, max_side) for p in panels]
    h = max(t.shape[0] for t in tiles)
    gap = np.full((h, 4, 3), 255, np.uint8)
    row: list[np.ndarray] = []
    for t in tiles:
        pad = np.full((h - t.shape[0], t.shape[1], 3), 255, np.uint8)
        row += [np.concatenate([t, pad], axis=0), gap]
    return np.concatenate(row[:-1], axis=1)


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG encoding of an RGB uint8 [H, W, 3] picture (case pictures are photos: PNG is 5x larger)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- writer


@dataclass
class ReportWriter:
    """Collects a report's Markdown body, plots and case pictures; :meth:`finish` writes the rest."""

    out_dir: Path
    title: str
    body: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)  # created by the first write, so a failed run leaves nothing

    def text(self, markdown: str) -> None:
        self.body.append(markdown.rstrip() + "\n")

    def table(self, heading: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        self.text(f"## {heading}\n\n{markdown_table(headers, rows)}\n" + (f"\n{note}\n" if note else ""))

    def plot(self, filename: str, png: bytes, caption: str) -> None:
        atomic_write_bytes(self.out_dir / filename, png)
        self.files.append(filename)
        self.text(f"![{caption}]({filename})\n\n*{caption}*\n")

    def cases(self, heading: str, pictures: Sequence[tuple[str, np.ndarray, str]]) -> None:
        """Write ``cases/<name>.jpg`` for each ``(name, picture, caption)`` and list them."""
        if not pictures:
            return
        lines = [f"## {heading}\n"]
        for name, picture, caption in pictures:
            rel = f"cases/{name}.jpg"
            atomic_write_bytes(self.out_dir / rel, jpeg_bytes(picture))
            self.files.append(rel)
            lines.append(f"**{caption}**\n\n![{caption}]({rel})\n")
        self.text("\n".join(lines))

    def finish(self, results: Mapping[str, Any], extra_files: Mapping[str, Any] | None = None) -> Path:
        """Write any extra JSON files, ``results.json`` and ``report.md`` (last, so it lists all)."""
        for name, obj in (extra_files or {}).items():
            atomic_write_json(self.out_dir / name, json_safe(obj))
            self.files.append(name)
        atomic_write_json(self.out_dir / "results.json", json_safe(dict(results)), indent=1)
        info = results.get("run", {})
        head = [f"# {self.title}\n"]
        if info:
            head.append(f"Made on {info.get('date', '?')} by segany {info.get('segany_version', '?')} with:\n")
            head.append(f"```\n{info.get('command', '')}\n```\n")
        md = "\n".join(head + self.body)
        md += "\nFiles: `results.json` (all numbers and settings)" + "".join(
            f", `{f}`" for f in self.files if f.endswith(".json")
        ) + ".\n"
        return atomic_write_text(self.out_dir / "report.md", md)
