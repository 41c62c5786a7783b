"""BSDS500 edge-detection benchmark (ODS / OIS / AP / R50).

Our own implementation of the benchmark's rules (Arbelaez et al., TPAMI 2011; R50 as in Dollar's
structured-edge toolbox):

* An edge map in [0, 1] is thresholded at ``nthresh`` levels ``linspace(1/(n+1), 1-1/(n+1), n)``
  (``edge >= t``); each binary map is thinned to 1-px lines (:func:`thin`, the same two-subiteration
  algorithm as MATLAB's ``bwmorph(..., 'thin', inf)``).
* It is matched to each annotator's boundary map separately (:func:`match_boundaries`): pixels
  within ``max_dist`` x image diagonal may match, one to one, and the number of matches is
  maximised exactly (a unit-capacity max flow). The official code solves a min-cost assignment
  whose outlier cost is so large that it also maximises the number of matches; only which pairs
  match (not how many) can differ, which can shift precision slightly with several annotators.
* Cost: seconds per BSDS-sized image with 99 thresholds on one CPU core; images are
  independent, so a runner can spread them over processes.
* Counts per threshold: recall = matched GT pixels / GT pixels, both summed over annotators;
  precision = predicted pixels matched to any annotator / predicted pixels.
* Dataset scores (:func:`summarize_edges`): ODS = best F of the summed counts over thresholds,
  linearly interpolated between neighbouring thresholds (the benchmark's ``maxF``); OIS = F of
  the counts summed at each image's own best threshold (the highest one among ties); AP = mean of
  the precision interpolated at recall 0:0.01:1 (0 outside the measured range; for repeated
  recall values the lowest threshold's point is used); R50 = recall interpolated at precision
  0.5 (0.0 if precision never reaches 0.5).

Edge maps from SAM's masks are made in :mod:`segany.eval.edge_maps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

__all__ = [
    "load_bsds_boundaries",
    "thin",
    "match_boundaries",
    "EdgeCounts",
    "EdgeScores",
    "edge_thresholds",
    "evaluate_edge_image",
    "summarize_edges",
]

MAX_DIST: float = 0.0075  # matching tolerance as a fraction of the image diagonal (benchmark default)


# --------------------------------------------------------------------------- ground truth


def load_bsds_boundaries(mat_path: str | Path) -> list[np.ndarray]:
    """Every annotator's boundary map from a BSDS500 ``groundTruth`` .mat file.

    Returns a list (one per annotator, usually 4-9) of bool [H, W] arrays.
    """
    from scipy.io import loadmat

    from segany.io import FormatError

    try:
        data = loadmat(str(mat_path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # noqa: BLE001 - scipy raises OSError, ValueError, IndexError, ... for bad files
        raise FormatError(f"{mat_path}: not a readable MATLAB file (truncated or corrupt?): "
                          f"{type(exc).__name__}: {exc}") from None
    if "groundTruth" not in data:
        raise FormatError(f"{mat_path}: no 'groundTruth' variable (not a BSDS500 ground-truth file)")
    # squeeze_me turns a single annotator's cell into a bare struct.
    try:
        entries = np.atleast_1d(data["groundTruth"])
        maps = [np.asarray(e.Boundaries).astype(bool) for e in entries]
    except (AttributeError, TypeError, ValueError) as exc:
        raise FormatError(f"{mat_path}: 'groundTruth' does not hold BSDS500 'Boundaries' maps ({exc})") from None
    if not maps or any(m.ndim != 2 for m in maps):
        raise FormatError(f"{mat_path}: 'groundTruth' does not hold 2-D boundary maps")
    return maps


# --------------------------------------------------------------------------- thinning


def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion look-up tables over the 8-neighbourhood code for the two subiterations.

    Neighbours x1..x8 start east and go counter-clockwise; bit i-1 of the code holds x_i.
    Conditions G1, G2, G3 / G3' of Lam, Lee & Suen (1992), the algorithm bwmorph 'thin' uses.
    """
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [(code >> i) & 1 for i in range(8)]
        x = x + [x[0]]  # x[8] == x9 == x1 for the wrap-around
        xh = sum(1 for i in range(4) if x[2 * i] == 0 and (x[2 * i + 1] or x[2 * i + 2]))
        n1 = sum(1 for k in range(4) if x[2 * k] or x[2 * k + 1])
        n2 = sum(1 for k in range(4) if x[2 * k + 1] or x[2 * k + 2])
        g12 = xh == 1 and 2 <= min(n1, n2) <= 3
        x1, x2, x3, x4, x5, x6, x7, x8 = x[:8]
        first[code] = g12 and ((x2 or x3 or not x8) and x1) == 0
        second[code] = g12 and ((x6 or x7 or not x4) and x5) == 0
    return first, second


_THIN_FIRST, _THIN_SECOND = _thin_tables()
# (row offset, col offset) of x1..x8: E, NE, N, NW, W, SW, S, SE.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _neighbour_code(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, 1).astype(np.uint8)
    h, w = img.shape
    code = np.zeros((h, w), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] << bit
    return code


def thin(bmap: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Thin a binary map to 1-px lines (MATLAB ``bwmorph(bmap, 'thin', inf)``).

    Args:
        bmap: bool [H, W].
        max_iter: stop after this many iterations (None: until nothing changes).

    Returns:
        bool [H, W], a subset of ``bmap``.
    """
    img = np.asarray(bmap, dtype=bool).copy()
    it = 0
    while max_iter is None or it < max_iter:
        changed = False
        for table in (_THIN_FIRST, _THIN_SECOND):
            delete = img & table[_neighbour_code(img)]
            if delete.any():
                img &= ~delete
                changed = True
        it += 1
        if not changed:
            break
    return img


# --------------------------------------------------------------------------- matching


class _GtIndex:
    """One annotator's boundary pixels, indexed for radius look-ups (built once per image)."""

    def __init__(self, gt: np.ndarray, max_dist: float) -> None:
        h, w = gt.shape
        radius = max_dist * float(np.hypot(h, w))
        self.r = r = int(np.floor(radius))
        self.width = w + 2 * r  # padded so that every offset stays inside
        self.gy, self.gx = np.nonzero(gt)
        self.index = np.full((h + 2 * r) * self.width, -1, dtype=np.int64)
        self.index[(self.gy + r) * self.width + self.gx + r] = np.arange(len(self.gy))
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        keep = dy**2 + dx**2 <= radius**2
        self.offsets = dy[keep] * self.width + dx[keep]  # flat offsets of the tolerance disk

    def match(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(matched_pred, matched_gt) bool [H, W] for a bool [H, W] prediction."""
        matched_p = np.zeros(pred.shape, dtype=bool)
        matched_g = np.zeros(pred.shape, dtype=bool)
        py, px = np.nonzero(pred)
        n, m = len(py), len(self.gy)
        if n == 0 or m == 0:
            return matched_p, matched_g
        base = (py + self.r) * self.width + px + self.r
        cand = self.index[base[:, None] + self.offsets[None, :]]  # [n, disk] GT ids or -1
        row, k = np.nonzero(cand >= 0)
        if row.size == 0:
            return matched_p, matched_g
        # Only pixels with a candidate take part: renumber them compactly.
        p_ids, row = np.unique(row, return_inverse=True)
        g_ids, col = np.unique(cand[p_ids[row], k], return_inverse=True)
        n, m = len(p_ids), len(g_ids)
        # Maximum bipartite matching as a unit-capacity max flow, source -> pred -> gt -> sink.
        # Dinic's algorithm here, not csgraph.maximum_bipartite_matching: that one can take
        # exponential time on chain-like graphs such as boundaries (scipy issue 26147).
        src, snk = n + m, n + m + 1
        heads = np.concatenate([np.full(n, src), row, n + np.arange(m)])
        tails = np.concatenate([np.arange(n), n + col, np.full(m, snk)])
        cap = csr_matrix((np.ones(heads.size, dtype=np.int32), (heads, tails)), shape=(n + m + 2, n + m + 2))
        flow = maximum_flow(cap, src, snk, method="dinic").flow.tocsr()
        hit_p = p_ids[flow[src, :n].toarray().ravel() > 0]
        hit_g = g_ids[flow[n : n + m, snk].toarray().ravel() > 0]
        matched_p[py[hit_p], px[hit_p]] = True
        matched_g[self.gy[hit_g], self.gx[hit_g]] = True
        return matched_p, matched_g


def match_boundaries(
    pred: np.ndarray, gt: np.ndarray, max_dist: float = MAX_DIST
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one correspondence of predicted and ground-truth boundary pixels.

    Args:
        pred: bool [H, W] (thin) predicted boundary map.
        gt: bool [H, W] one annotator's boundary map.
        max_dist: tolerance as a fraction of the image diagonal.

    Returns:
        (matched_pred, matched_gt): bool [H, W] each, the pixels that found a partner within
        the tolerance in a maximum-cardinality matching.
    """
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    return _GtIndex(g, max_dist).match(p)


# --------------------------------------------------------------------------- benchmark


def edge_thresholds(nthresh: int = 99) -> np.ndarray:
    """The benchmark's thresholds: ``linspace(1/(n+1), 1 - 1/(n+1), n)``, float64 [n]."""
    return np.linspace(1.0 / (nthresh + 1), 1.0 - 1.0 / (nthresh + 1), nthresh)


@dataclass
class EdgeCounts:
    """Per-image match counts at every threshold (all arrays float64 [T])."""

    thresholds: np.ndarray
    cnt_r: np.ndarray  # matched GT pixels, summed over annotators
    sum_r: np.ndarray  # GT pixels, summed over annotators
    cnt_p: np.ndarray  # predicted pixels matched to any annotator
    sum_p: np.ndarray  # predicted pixels


def evaluate_edge_image(
    edge_map: np.ndarray,
    gt_boundaries: Sequence[np.ndarray],
    nthresh: int = 99,
    max_dist: float = MAX_DIST,
    thin_pred: bool = True,
) -> EdgeCounts:
    """Benchmark counts for one image.

    Args:
        edge_map: float [H, W] in [0, 1] (higher = more likely an edge).
        gt_boundaries: one bool [H, W] boundary map per annotator (e.g. :func:`load_bsds_boundaries`).
        nthresh: number of thresholds.
        max_dist: matching tolerance as a fraction of the image diagonal.
        thin_pred: thin each thresholded map first (the benchmark default).
    """
    e = np.asarray(edge_map, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"edge_map must be 2-D, got shape {e.shape}")
    gts = [np.asarray(g, dtype=bool) for g in gt_boundaries]
    if not gts:
        raise ValueError("need at least one ground-truth boundary map")
    for g in gts:
        if g.shape != e.shape:
            raise ValueError(f"ground truth {g.shape} and edge map {e.shape} differ in shape")
    thresholds = edge_thresholds(nthresh)
    n = len(thresholds)
    cnt_r, sum_r, cnt_p, sum_p = (np.zeros(n) for _ in range(4))
    gt_total = float(sum(int(g.sum()) for g in gts))
    indexes = [_GtIndex(g, max_dist) for g in gts]
    prev_key: bytes | None = None
    for t, thr in enumerate(thresholds):
        bmap = e >= thr
        if thin_pred:
            bmap = thin(bmap)
        key = np.packbits(bmap).tobytes()
        if key == prev_key:  # same map as at the previous threshold: same counts
            cnt_r[t], cnt_p[t], sum_p[t], sum_r[t] = cnt_r[t - 1], cnt_p[t - 1], sum_p[t - 1], gt_total
            continue
        prev_key = key
        any_match = np.zeros_like(bmap)
        for gi in indexes:
            mp, mg = gi.match(bmap)
            any_match |= mp
            cnt_r[t] += mg.sum()
        sum_r[t] = gt_total
        cnt_p[t] = any_match.sum()
        sum_p[t] = bmap.sum()
    return EdgeCounts(thresholds, cnt_r, sum_r, cnt_p, sum_p)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.where(den == 0, 1.0, den)


def _fmeasure(r: np.ndarray, p: np.ndarray) -> np.ndarray:
    s = p + r
    return 2.0 * p * r / np.where(s == 0, 1.0, s)


@dataclass
class EdgeScores:
    """Dataset-level edge scores and the dataset PR curve (arrays over thresholds)."""

    ods: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ois: float
    ap: float
    r50: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray

    def to_dict(self) -> dict[str, float]:
        """The scalar scores (JSON-friendly)."""
        return {
            "ODS": self.ods,
            "ODS_threshold": self.ods_threshold,
            "ODS_recall": self.ods_recall,
            "ODS_precision": self.ods_precision,
            "OIS": self.ois,
            "AP": self.ap,
            "R50": self.r50,
        }


def _max_f(t: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """Best (F, threshold, recall, precision), interpolating 100 steps between thresholds."""
    if len(t) == 1:
        return float(_fmeasure(r, p)[0]), float(t[0]), float(r[0]), float(p[0])
    d = np.linspace(0.0, 1.0, 100)[None, :]
    ti = t[1:, None] * d + t[:-1, None] * (1 - d)
    ri = r[1:, None] * d + r[:-1, None] * (1 - d)
    pi = p[1:, None] * d + p[:-1, None] * (1 - d)
    fi = _fmeasure(ri, pi).ravel()
    k = int(np.argmax(fi))  # first maximum, as the benchmark's strict '>' update
    return float(fi[k]), float(ti.ravel()[k]), float(ri.ravel()[k]), float(pi.ravel()[k])


def summarize_edges(per_image: Sequence[EdgeCounts]) -> EdgeScores:
    """ODS, OIS, AP and R50 over a dataset from per-image counts (same thresholds everywhere)."""
    if not per_image:
        raise ValueError("no images to summarize")
    t = per_image[0].thresholds
    tot = {k: np.zeros_like(t) for k in ("cnt_r", "sum_r", "cnt_p", "sum_p")}
    best = dict.fromkeys(tot, 0.0)
    for c in per_image:
        if not np.array_equal(c.thresholds, t):
            raise ValueError("all images must use the same thresholds")
        for k in tot:
            tot[k] += getattr(c, k)
        f = _fmeasure(_ratio(c.cnt_r, c.sum_r), _ratio(c.cnt_p, c.sum_p))
        i = int(np.flatnonzero(f == f.max())[-1])  # highest threshold among ties
        for k in best:
            best[k] += float(getattr(c, k)[i])
    r = _ratio(tot["cnt_r"], tot["sum_r"])
    p = _ratio(tot["cnt_p"], tot["sum_p"])
    ods, ods_t, ods_r, ods_p = _max_f(t, r, p)
    r_ois = best["cnt_r"] / (best["sum_r"] or 1.0)
    p_ois = best["cnt_p"] / (best["sum_p"] or 1.0)
    ois = float(_fmeasure(np.array([r_ois]), np.array([p_ois]))[0])
    return EdgeScores(ods, ods_t, ods_r, ods_p, ois, _average_precision(r, p), _recall_at_precision(r, p, 0.5), t, r, p)


def _average_precision(r: np.ndarray, p: np.ndarray) -> float:
    """Area under the PR curve, precision interpolated at recall 0:0.01:1 (benchmark's rule)."""
    ru, first = np.unique(r, return_index=True)  # first occurrence = lowest threshold
    if len(ru) < 2:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    pi = np.interp(grid, ru, p[first])
    pi[(grid < ru[0]) | (grid > ru[-1])] = 0.0  # interp1 gives NaN outside, counted as 0
    return float(pi.sum() * 0.01)


def _recall_at_precision(r: np.ndarray, p: np.ndarray, level: float) -> float:
    """Recall interpolated at precision ``level`` (at the lowest precision if that is higher)."""
    pu, first = np.unique(p, return_index=True)
    target = max(float(pu[0]), level)
    if target > pu[-1]:
        return 0.0
    return float(np.interp(target, pu, r[first]))
