"""Training logs: a CSV of metrics (appended across resumes) and a PNG loss curve."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from segany.io.files import atomic_write_bytes

COLUMNS = ("step", "lr", "loss", "focal", "dice", "iou_loss", "iou_first", "iou_last", "images_per_s", "elapsed_s")


class MetricsLog:
    """Appends rows to ``metrics.csv``; rows after the resumed step are dropped first, so a run
    resumed from an earlier checkpoint does not leave duplicate steps."""

    def __init__(self, path: str | os.PathLike[str], start_step: int = 0) -> None:
        self.path = Path(path)
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= start_step]
        text = ",".join(COLUMNS) + "\n" + "".join(",".join(r.get(c, "") for c in COLUMNS) + "\n" for r in rows)
        atomic_write_bytes(self.path, text.encode())

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in COLUMNS])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_metrics(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """The CSV as columns of floats."""
    out: dict[str, list[float]] = {c: [] for c in COLUMNS}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for c in COLUMNS:
                out[c].append(float(r[c]) if r.get(c) not in (None, "") else float("nan"))
    return out


def plot_losses(csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str]) -> Path | None:
    """Plot loss (and mIoU after the first and last round) against step; None if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    m = read_metrics(csv_path)
    if not m["step"]:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(m["step"], m["loss"], lw=1, label="total")
    ax1.plot(m["step"], [20 * v for v in m["focal"]], lw=1, label="20 x focal")
    ax1.plot(m["step"], m["dice"], lw=1, label="dice")
    ax1.plot(m["step"], m["iou_loss"], lw=1, label="IoU MSE")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(m["step"], m["iou_first"], lw=1, label="round 1")
    ax2.plot(m["step"], m["iou_last"], lw=1, label="last round")
    ax2.set_xlabel("step")
    ax2.set_ylabel("training mIoU")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(png_path, buf.getvalue())
