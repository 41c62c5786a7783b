"""The statistics the stats page is fed (GET /api/projects/{pid}/stats) on a seeded project, on SQLite and
PostgreSQL: every figure against numbers worked out by hand (tests/annotate_stats_seed.py)."""

from __future__ import annotations

import pytest
from annotate_stats_seed import DAYS, EXPECTED, SIZES, seed


def test_seeded_project_figures(make_client) -> None:
    c = make_client(sizes=SIZES, auth=True)
    tokens = seed(c, c.app.state.server)
    assert c.get("/api/projects/1/stats").status_code == 401  # signed-in users only, as every page call
    st = c.get("/api/projects/1/stats", headers={"Authorization": f"Bearer {tokens['ann2']}"}).json()
    e = EXPECTED
    assert (st["images"], st["images_finished"]) == (e["images"], e["images_finished"])
    assert st["images_by_state"] == e["images_by_state"]
    assert st["objects"] == e["objects"]
    t = st["seconds_per_manual_mask"]
    assert (t["count"], t["median"]) == (e["timed"], e["median_seconds"])
    assert t["mean"] == pytest.approx(180 / 9)
    assert st["untimed_manual_masks"] == e["untimed"]
    assert sorted(st["by_user"]) == ["ann1", "ann2"]  # boss imported, rev reviewed: no timed masks, no images
    for user, (count, median, total, done) in e["by_user"].items():
        u = st["by_user"][user]
        assert (u["count"], u["median"], u["images_finished"]) == (count, median, done)
        assert u["total_seconds"] == pytest.approx(total) and u["mean"] == pytest.approx(total / count)
    assert (st["by_user"]["ann1"]["median_clicks"], st["by_user"]["ann2"]["median_clicks"]) == (1, 2)
    assert {d: v["median"] for d, v in st["by_day"].items()} == e["by_day"]
    assert list(st["by_day"]) == DAYS
    assert {u: {d: v["median"] for d, v in days.items()} for u, days in st["by_user_day"].items()} == e["by_user_day"]
    assert st["by_order"]["group"] == 1
    assert [p["median"] for p in st["by_order"]["points"]] == e["order"]
    assert [p["first"] for p in st["by_order"]["points"]] == list(range(1, 10))
    assert st["masks_per_image"]["median"] == e["masks_per_image"]
    assert st["manual_masks_per_image"]["median"] == e["manual_masks_per_image"]
    assert st["masks_per_image_histogram"] == e["histogram"]
    assert st["auto_masks"] == e["auto_masks"]
    assert st["auto_masks_finished"] == e["auto_masks_finished"]
    assert st["auto_share"] == pytest.approx(e["auto_share"])


def test_fresh_project_is_empty_not_broken(make_sqlite_client) -> None:
    c = make_sqlite_client(sizes=[(20, 30), (30, 20)])
    st = c.get("/api/projects/1/stats").json()
    assert (st["images"], st["images_finished"]) == (2, 0)
    assert st["images_by_state"]["todo"] == 2 and st["objects"]["total"] == 0
    assert st["seconds_per_manual_mask"] == {"count": 0, "median": None, "mean": None}
    assert st["by_user"] == {} and st["by_day"] == {} and st["by_order"] == {"group": 1, "points": []}
    assert st["masks_per_image_histogram"] == {"all": [], "manual": []} and st["auto_share"] is None
    assert st["auto_masks"] == st["auto_masks_finished"] == {"imported": 0, "kept": 0, "edited": 0, "deleted": 0}
    assert c.get("/api/projects/99/stats").status_code == 404
    assert c.get("/api/projects/x/stats").status_code == 400


def test_saving_order_groups_keep_at_most_50_points() -> None:
    import datetime as dt

    from segany.annotate.stats import _by_order

    t0 = dt.datetime(2026, 1, 1)
    # 120 masks saved in reverse id order; each group of 3 consecutive masks has the median of its middle one.
    rows = [(t0 + dt.timedelta(seconds=i), 1000 - i, float(i)) for i in range(120)]
    out = _by_order(list(reversed(rows)))
    assert out["group"] == 3 and len(out["points"]) == 40
    assert out["points"][0] == {"first": 1, "count": 3, "median": 1.0}
    assert out["points"][-1] == {"first": 118, "count": 3, "median": 118.0}
    # 101 masks: groups of 3, the last one short.
    out = _by_order(rows[:101])
    assert (
        out["group"] == 3
        and len(out["points"]) == 34
        and out["points"][-1] == {"first": 100, "count": 2, "median": 99.5}
    )


def test_stats_page_is_served_and_linked(make_sqlite_client) -> None:
    c = make_sqlite_client()
    r = c.get("/stats")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/stats.js">' in r.text and "<script>" not in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'href="/stats"' in c.get("/").text
    for name in ("stats.js", "charts.js", "stats.css"):
        assert c.get(f"/static/{name}").status_code == 200
