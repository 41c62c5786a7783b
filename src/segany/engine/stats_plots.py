"""Figures of :mod:`segany.engine.stats`, data sets side by side (as the paper's figures 5-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segany.engine.stats import (
    CONCAVITY_BINS,
    MASK_COUNT_EDGES,
    MEGAPIXEL_EDGES,
    SIZE_BINS,
    DatasetStats,
)
from segany.io.files import atomic_write_bytes

__all__ = ["plot_attribute", "plot_centres", "plot_distributions"]


def _save(fig, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _percent(values: np.ndarray) -> np.ndarray:
    total = values.sum()
    return values / total * 100 if total else values.astype(float)


def _labels(edges: list[int] | list[float], unit: str = "") -> list[str]:
    out = []
    for a, b in zip(edges, edges[1:] + [None]):
        if b is None:
            out.append(f">={a:g}{unit}")
        elif isinstance(a, int) and b == a + 1:
            out.append(f"{a}")
        else:
            out.append(f"{a:g}-{b:g}{unit}" if not isinstance(a, int) else f"{a}-{b - 1}")
    return out


def _grouped_bars(ax, labels: list[str], series: dict[str, np.ndarray]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for k, (name, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)


def plot_distributions(stats: list[DatasetStats], path: Path) -> Path:
    """Masks per image, relative mask size, concavity and image size, one line or bar per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    per_image = {}
    for s in stats:
        counts = np.zeros(len(MASK_COUNT_EDGES))
        for n, images in s.masks_per_image.items():
            counts[int(np.searchsorted(MASK_COUNT_EDGES, n, side="right")) - 1] += images
        per_image[s.name] = _percent(counts)
    _grouped_bars(axes[0, 0], _labels(MASK_COUNT_EDGES), per_image)
    axes[0, 0].set(title="Masks per image", xlabel="masks in the image", ylabel="% of images")
    centres = (SIZE_BINS[:-1] + SIZE_BINS[1:]) / 2
    for s in stats:
        axes[0, 1].plot(centres, _percent(s.relative_size), marker=".", label=s.name)
    axes[0, 1].set(title="Relative mask size", xlabel="sqrt(mask area / image area)", ylabel="% of masks")
    axes[0, 1].set_yscale("symlog", linthresh=0.1)
    centres = (CONCAVITY_BINS[:-1] + CONCAVITY_BINS[1:]) / 2
    for s in stats:
        axes[1, 0].plot(centres, _percent(s.concavity), marker=".", label=s.name)
    axes[1, 0].set(title="Mask concavity", xlabel="1 - mask area / convex hull area", ylabel="% of masks")
    _grouped_bars(axes[1, 1], _labels(MEGAPIXEL_EDGES, " MP"), {s.name: _percent(s.megapixels) for s in stats})
    axes[1, 1].set(title="Image size", xlabel="megapixels", ylabel="% of images")
    for ax in axes.flat:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(", ".join(f"{s.name}: {s.images} images, {s.masks} masks" for s in stats), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_centres(stats: list[DatasetStats], path: Path) -> Path:
    """Where mask centres lie in the (normalised) image: one heat map per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stats), figsize=(3.6 * len(stats), 3.6), squeeze=False)
    for ax, s in zip(axes[0], stats):
        density = s.centres / max(s.centres.sum(), 1)
        ax.imshow(density, cmap="viridis", extent=(0, 1, 1, 0), interpolation="bilinear")
        ax.set_title(f"{s.name} ({s.masks} masks)", fontsize=9)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
    fig.suptitle("Mask centres (normalised image coordinates)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_attribute(stats: list[DatasetStats], key: str, path: Path) -> Path:
    """Share of images and of masks per value of an image attribute, data sets side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted(set().union(*(s.by for s in stats)))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(values) + 4), 4))
    for ax, what in zip(axes, ("images", "masks")):
        series = {s.name: _percent(np.array([s.by[v][what] if v in s.by else 0 for v in values], float))
                  for s in stats}
        _grouped_bars(ax, values, series)
        ax.set(title=f"{what.capitalize()} by {key}", ylabel=f"% of {what}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
