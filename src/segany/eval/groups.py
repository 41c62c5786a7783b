"""Results per group with bootstrap confidence intervals (the paper's responsible-AI analysis, §6).

The paper asks whether SAM segments people equally well across perceived gender presentation, age and
skin tone: mIoU at one and three clicks per group, each with a 95% confidence interval. Here any
attribute splits any protocol's results:

* a key of the annotations (``category_name``, BSDS500's ``annotator``, a COCO ``attributes`` entry),
* a key of the image records (``source_id``, a custom ``"region"`` key, ...),
* a column of a CSV file mapping image ids (or file names) to groups (``--groups FILE.csv``),
* derived keys: ``size`` (COCO's object size buckets: small < 32², medium, large > 96² pixels) and
  ``category`` (the annotation's ``category_name``, else its ``category_id``).

Per-object protocols (points, boxes, proposals) resample objects; the edge protocol resamples images
(its ODS sums counts over images). Intervals are seeded percentile bootstraps. Objects without a value
for the key are counted in the group :data:`MISSING`, never dropped; groups the CSV names but the
evaluated objects never reach are listed with zero objects.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segany.errors import SeganyError

__all__ = [
    "MISSING",
    "DERIVED_KEYS",
    "GroupError",
    "GroupKey",
    "bootstrap_ci",
    "bootstrap_stat",
    "read_group_csv",
    "resolve_group_key",
    "GroupStats",
    "GroupedMetrics",
    "group_records",
]

MISSING = "(no value)"
DERIVED_KEYS = {
    "size": "object size: small (area < 32^2 px), medium, large (area > 96^2 px), COCO's buckets",
    "category": "the annotation's category_name, else its category_id",
}


class GroupError(SeganyError, ValueError):
    """A grouping key or group table that does not fit the data."""


# --------------------------------------------------------------------------- intervals


def bootstrap_stat(
    n: int, stat: Callable[[np.ndarray], float], n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items resampled with replacement.

    ``stat`` gets an int64 index array of length ``n`` (one resample) and returns the statistic.
    Returns ``(low, high)``; NaN for ``n == 0``.
    """
    if n == 0:
        return float("nan"), float("nan")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval: ``(mean, low, high)``.

    Vectorised in chunks of resamples, about four million indices at a time.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, min(n_boot, 4_000_000 // n))  # resamples per step: at most ~4M indices in memory
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        means[s : s + k] = v[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(lo), float(hi)


# --------------------------------------------------------------------------- keys


def _flat(record: Mapping[str, Any], fixed: Iterable[str]) -> dict[str, Any]:
    """A record's groupable values: scalar keys outside ``fixed``, plus a nested ``attributes`` dict."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k in fixed:
            continue
        if k == "attributes" and isinstance(v, Mapping):
            out.update({str(a): b for a, b in v.items() if _scalar(b)})
        elif _scalar(v):
            out[str(k)] = v
    return out


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def size_bucket(area: float) -> str:
    """COCO's object size bucket of a mask area in pixels."""
    return "small" if area < 32**2 else ("medium" if area <= 96**2 else "large")


@dataclass(frozen=True)
class GroupKey:
    """How to read one object's (or image's) group.

    Attributes:
        name: the key as given (``size``, ``category``, a data key, or a CSV column).
        table: image id -> group, when the key is a CSV column.
        declared: groups the CSV names (listed even when no evaluated object falls in them).
    """

    name: str
    table: Mapping[int, str] | None = None
    declared: tuple[str, ...] = ()

    def of(self, sample: Any, instance: Any | None = None) -> str:
        """The group of ``instance`` of ``sample`` (``instance=None``: an image-level key)."""
        if self.table is not None:
            return self.table.get(int(sample.image_id), MISSING)
        if self.name == "size" and instance is not None:
            return size_bucket(float(instance.area))
        if self.name == "category" and instance is not None:
            name = _flat(instance.attributes, ()).get("category_name")
            return str(name) if name is not None else str(instance.category_id)
        if instance is not None:
            value = _flat(instance.attributes, ()).get(self.name)
            if value is not None:
                return str(value)
        value = _flat(sample.attributes, ()).get(self.name)
        return MISSING if value is None else str(value)


def data_keys(dataset: Any, image_level: bool = False) -> list[str]:
    """Keys that can split ``dataset``: derived ones, then those of its image and annotation records."""
    image_keys: set[str] = set()
    object_keys: set[str] = set()
    for sample in dataset:
        image_keys.update(_flat(sample.attributes, ()))
        if not image_level:
            for inst in sample.annotations:
                object_keys.update(_flat(inst.attributes, ()))
    derived = [] if image_level else sorted(DERIVED_KEYS)
    return derived + sorted(object_keys | image_keys)


def read_group_csv(path: str | Path, dataset: Any) -> dict[str, dict[int, str]]:
    """A CSV of groups: ``{column: {image id: group}}``.

    The file has a header row with an ``image_id`` or ``file_name`` column; every other column is a
    grouping key. Rows naming an image the data does not have, and images named twice, are refused
    with the offending rows (numbered as in the file, header = row 1).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GroupError(f"cannot read group table {path}: {exc}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise GroupError(f"{path}: empty group table (expected a header row with image_id or file_name)")
    header = [h.strip() for h in rows[0]]
    by = "image_id" if "image_id" in header else "file_name" if "file_name" in header else None
    if by is None:
        raise GroupError(f"{path}: the header needs an image_id or file_name column (it has {', '.join(header)})")
    columns = [h for h in header if h and h != by]
    if not columns:
        raise GroupError(f"{path}: no group column beside {by}")
    ids = {int(s.image_id): s for s in dataset} if by == "image_id" else {s.file_name: s for s in dataset}
    col = header.index(by)
    unknown: list[str] = []
    seen: dict[int, int] = {}
    dupes: list[str] = []
    table: dict[str, dict[int, str]] = {c: {} for c in columns}
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise GroupError(f"{path}: row {n} has {len(row)} cells, the header {len(header)}")
        ref = row[col].strip()
        try:
            sample = ids.get(int(ref)) if by == "image_id" else ids.get(ref)
        except ValueError:
            sample = None
        if sample is None:
            unknown.append(f"row {n} ({by} {ref})")
            continue
        iid = int(sample.image_id)
        if iid in seen:
            dupes.append(f"rows {seen[iid]} and {n} ({by} {ref})")
            continue
        seen[iid] = n
        for c in columns:
            value = row[header.index(c)].strip()
            table[c][iid] = value if value else MISSING
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise GroupError(f"{path}: images not in the data: {', '.join(unknown[:5])}{more}")
    if dupes:
        more = f" and {len(dupes) - 5} more" if len(dupes) > 5 else ""
        raise GroupError(f"{path}: images named twice: {', '.join(dupes[:5])}{more}")
    return table


def resolve_group_key(
    key: str, dataset: Any, csv_path: str | Path | None = None, image_level: bool = False
) -> GroupKey:
    """Check ``key`` against the data (and the CSV) and return how to read it.

    Raises:
        GroupError: the key exists neither in the data nor in the CSV; the message lists those that do.
    """
    if csv_path is not None:
        table = read_group_csv(csv_path, dataset)
        if key in table:
            declared = tuple(sorted(set(table[key].values()) - {MISSING}))
            return GroupKey(key, table[key], declared)
    keys = data_keys(dataset, image_level)
    if key in keys:
        return GroupKey(key)
    extra = f"; columns of {csv_path}: {', '.join(read_group_csv(csv_path, dataset))}" if csv_path else ""
    level = "image keys" if image_level else "keys"
    raise GroupError(f"no group key {key!r} in the data ({level} there: {', '.join(keys) or 'none'}{extra})")


# --------------------------------------------------------------------------- grouped metrics


@dataclass
class GroupStats:
    """One group's size and, per metric, ``(value, low, high)``."""

    n: int
    metrics: dict[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass
class GroupedMetrics:
    """Every group of one method under one key, with the checks the report makes."""

    key: str
    unit: str  # "objects" or "images"
    groups: dict[str, GroupStats]
    primary: str
    min_size: int

    def too_small(self) -> list[str]:
        """Groups with fewer than ``min_size`` items: too small to say anything."""
        return [g for g, s in self.groups.items() if s.n < self.min_size]

    def separated(self, metric: str | None = None) -> list[tuple[str, str]]:
        """Pairs of large-enough groups whose intervals of ``metric`` do not overlap."""
        m = metric or self.primary
        big = [(g, s.metrics[m]) for g, s in self.groups.items() if s.n >= self.min_size and m in s.metrics]
        out = []
        for i, (ga, (_, la, ha)) in enumerate(big):
            for gb, (_, lb, hb) in big[i + 1 :]:
                if ha < lb or hb < la:
                    out.append((ga, gb))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "unit": self.unit,
            "primary": self.primary,
            "min_size": self.min_size,
            "groups": {
                g: {"n": s.n, **{m: {"value": v, "low": lo, "high": hi} for m, (v, lo, hi) in s.metrics.items()}}
                for g, s in self.groups.items()
            },
            "too_small": self.too_small(),
            "non_overlapping": [list(p) for p in self.separated()],
        }


def group_records(
    key: str,
    groups: Sequence[str],
    values: Mapping[str, Sequence[float]],
    primary: str,
    unit: str = "objects",
    declared: Iterable[str] = (),
    min_size: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
    custom: Mapping[str, Callable[[np.ndarray], float]] | None = None,
) -> GroupedMetrics:
    """Split per-item values into groups and bootstrap each group's metrics.

    Args:
        groups: the group of each item (same length as each ``values`` list).
        values: metric name -> per-item value; a group's metric is the mean, with its interval.
        custom: metric name -> ``stat(item indices)`` for metrics that are not means of per-item
            values (e.g. ODS from summed edge counts); resampled within each group.
        declared: groups to list even when empty (e.g. every group a CSV names).
    """
    for name, vals in values.items():
        if len(vals) != len(groups):
            raise ValueError(f"{name}: {len(vals)} values for {len(groups)} items")
    members: dict[str, list[int]] = {g: [] for g in sorted(set(declared))}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: dict[str, GroupStats] = {}
    for g in sorted(members, key=lambda s: (s == MISSING, s)):
        idx = np.asarray(members[g], dtype=np.int64)
        st = GroupStats(len(idx))
        for name, vals in values.items():
            st.metrics[name] = bootstrap_ci(np.asarray(vals, np.float64)[idx], n_boot=n_boot, seed=seed)
        for name, fn in (custom or {}).items():
            if len(idx) == 0:
                st.metrics[name] = (float("nan"),) * 3
                continue
            lo, hi = bootstrap_stat(len(idx), lambda r, idx=idx, fn=fn: fn(idx[r]), n_boot=n_boot, seed=seed)
            st.metrics[name] = (fn(idx), lo, hi)
        out[g] = st
    return GroupedMetrics(key, unit, out, primary, min_size)
