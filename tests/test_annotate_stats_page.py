"""The statistics page (/stats) against the real `segany annotate` server, in headless Chromium: the figures
of a seeded project (tests/annotate_stats_seed.py) as the page shows them, sign-in with --auth, the empty
state of a fresh project, no console errors, nothing fetched from outside."""

from __future__ import annotations

import os
import socket
import threading

import pytest

pytest.importorskip("playwright")
pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")

from annotate_browser import block_external, chromium_path, shared_browser
from annotate_stats_seed import DAYS, EXPECTED, PASSWORDS, demo, photos, rle, seed
from annotate_stub import ServerThread

if chromium_path() is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

PORTS = range(18700, 18800)  # this test file's own loopback ports


class PortServer(ServerThread):
    """ServerThread on the first free port of PORTS."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        super().__init__(app)
        self.sock.close()
        for port in PORTS:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                sock.close()
        else:
            pytest.skip(f"no free port in {PORTS}")
        self.sock, self.port = sock, port
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)


def _serve(root, **settings):  # type: ignore[no-untyped-def]
    from sam_testing import random_tiny

    from segany.annotate.app import create_app
    from segany.annotate.server import Settings

    app = create_app(Settings(root=root, model=random_tiny(seed=3), background=False, export_decoder=False, **settings))
    return app, PortServer(app)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):  # type: ignore[no-untyped-def]
    import httpx

    root = tmp_path_factory.mktemp("seeded")
    photos(root, 4)
    app, srv = _serve(root, auth=True)
    with srv:
        with httpx.Client(base_url=srv.url) as client:
            seed(client, app.state.server)
        yield srv.url
    app.state.server.close()


@pytest.fixture(scope="session")
def browser():  # type: ignore[no-untyped-def]
    return shared_browser()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    blocked = block_external(context)
    pg = context.new_page()
    pg.problems = []

    def on_console(msg):  # type: ignore[no-untyped-def]
        # The one expected error: the first /api/session answers 401 on a server with --auth.
        if msg.type == "error" and not ("401" in msg.text and msg.location.get("url", "").endswith("/api/session")):
            pg.problems.append(msg.text)

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: pg.problems.append(str(exc)))
    yield pg
    context.close()
    assert blocked == []


def _open(page, url: str, user: str | None = None) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/stats")
    if user:
        page.locator("#login").wait_for(state="visible")
        page.fill("#login-user", user)
        page.fill("#login-password", PASSWORDS[user])
        page.click("#login-form button")
    page.wait_for_function("() => window.__seganyStats.ready && window.__seganyStats.renders > 0", timeout=30000)


def _values(page, selector: str) -> list[float]:  # type: ignore[no-untyped-def]
    return [float(v) for v in page.eval_on_selector_all(selector, "els => els.map(e => e.getAttribute('data-value'))")]


def test_seeded_figures_on_the_page(page, seeded) -> None:  # type: ignore[no-untyped-def]
    _open(page, seeded, "rev")  # a reviewer sees the statistics too (any signed-in person)
    assert page.locator("#who").inner_text() == "rev" and page.locator("#error-banner").is_hidden()
    assert page.locator("#empty").is_hidden()
    card = lambda name: page.locator(f'.stat[data-stat="{name}"] .value').inner_text()  # noqa: E731
    assert card("images") == "2 / 4"
    assert card("masks") == "18"
    assert card("median-seconds") == "12 s"
    assert card("masks-per-image") == "5.5"
    assert card("auto-share") == "55%"
    assert "1 without a time" in page.locator('.stat[data-stat="median-seconds"] .detail').inner_text()
    # Three days: by day is the default view; the overall medians, then one thin line per person.
    assert "active" in page.locator("#mode-day").get_attribute("class")
    assert _values(page, '#time-chart circle.pt[data-series="all"]') == list(EXPECTED["by_day"].values())
    assert _values(page, '#time-chart circle.pt[data-series="user-0"]') == list(
        EXPECTED["by_user_day"]["ann1"].values()
    )
    assert _values(page, '#time-chart circle.pt[data-series="user-1"]') == list(
        EXPECTED["by_user_day"]["ann2"].values()
    )
    assert page.locator("#time-chart .ref").count() == 2
    assert page.locator("#time-legend").inner_text().split() == ["everyone", "ann1", "ann2"]
    ticks = page.eval_on_selector_all("#time-chart text.tick", "els => els.map(e => e.textContent)")
    assert [t for t in ticks if t.startswith("2026")] == DAYS
    page.click("#mode-order")
    assert _values(page, '#time-chart circle.pt[data-series="all"]') == EXPECTED["order"]
    assert page.locator("#time-note").inner_text() == "one point per mask"
    # Masks per finished image: one bar per count 0..7, the two images at 4 and 7.
    bars = _values(page, "#mpi-chart rect.bar")
    assert bars == [0, 0, 0, 0, 1, 0, 0, 1]
    # Automatic masks on finished images: kept 5, edited 1, deleted 2 (of 8), widths in that proportion.
    widths = page.eval_on_selector_all(
        "#auto-chart rect.share", "els => els.map(e => [e.dataset.part, parseFloat(e.getAttribute('width'))])"
    )
    assert [p for p, _ in widths] == ["kept", "edited", "deleted"]
    assert [w for _, w in widths] == pytest.approx([900 * 5 / 8, 900 / 8, 900 * 2 / 8], abs=0.1)
    assert "kept 63% (5)" in page.locator("#auto-legend").inner_text()
    assert "2 more on images still in work" in page.locator("#auto-note").inner_text()
    rows = page.eval_on_selector_all("#users tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [
        ["ann1", "7", "10", "12.9", "1 min 30 s", "1", "1"],
        ["ann2", "2", "45", "45", "1 min 30 s", "2", "1"],
    ]
    assert page.problems == []


def test_fresh_project_says_so(page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    photos(tmp_path / "fresh", 3)
    app, srv = _serve(tmp_path / "fresh")
    try:
        with srv:
            _open(page, srv.url)
            assert page.locator("#empty").is_visible() and page.locator("#figures").is_hidden()
            assert "3 images and no saved masks" in page.locator("#empty").inner_text()
            assert page.locator("#who").inner_text() == "local"
            # The first timed mask, then "refresh": the figures replace the empty state.
            made = page.request.post(f"{srv.url}/api/images/1/objects", data={"rle": rle(0), "seconds": 21.5})
            assert made.status == 201
            renders = page.evaluate("window.__seganyStats.renders")
            page.click("#refresh")
            page.wait_for_function("(n) => window.__seganyStats.renders > n", arg=renders)
            assert page.locator("#empty").is_hidden() and page.locator("#figures").is_visible()
            assert page.locator('.stat[data-stat="median-seconds"] .value').inner_text() == "21.5 s"
            assert _values(page, '#time-chart circle.pt[data-series="all"]') == [21.5]
            assert page.locator("#mpi-empty").is_visible() and page.locator("#auto-empty").is_visible()
            # The main page links here.
            page.goto(srv.url + "/")
            assert page.locator("#stats-link").get_attribute("href") == "/stats"
    finally:
        app.state.server.close()
    assert page.problems == []


def test_stage1_like_project_and_screenshot(page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A project like the paper's stage 1 then 2 (times falling from about 34 s to 14 s over 8 days,
    masks per image rising, pre-filled masks at the end). With SEGANY_WRITE_SCREENSHOT=1 the picture
    goes to docs/annotate-stats.png (the README's); otherwise to a temporary folder."""
    from pathlib import Path

    photos(tmp_path / "demo", 27)
    app, srv = _serve(tmp_path / "demo")
    try:
        manual = demo(app.state.server, days=8)
        with srv:
            _open(page, srv.url)
            day_medians = _values(page, '#time-chart circle.pt[data-series="all"]')
            assert len(day_medians) == 8 and day_medians[0] > 25 > 18 > day_medians[-1]
            assert page.locator("#time-legend").inner_text().split() == ["everyone", "alice", "bruno", "chen"]
            assert page.locator("#users tbody tr").count() == 3
            assert (
                sum(
                    int(c)
                    for c in page.eval_on_selector_all(
                        "#users tbody tr td:nth-child(2)", "els => els.map(e => e.textContent)"
                    )
                )
                == manual
            )
            write = os.environ.get("SEGANY_WRITE_SCREENSHOT") == "1"
            out = (
                Path(__file__).resolve().parents[1] / "docs" / "annotate-stats.png" if write else tmp_path / "stats.png"
            )
            page.screenshot(path=str(out), full_page=True)
            assert out.stat().st_size > 10_000
            if write:  # a small file for the repository
                from PIL import Image

                Image.open(out).convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(
                    out, optimize=True
                )
    finally:
        app.state.server.close()
    assert page.problems == []
