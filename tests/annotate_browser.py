"""Browser helpers for the annotation page's tests and benchmark: Debian's chromium through Python
Playwright, every request to a non-loopback host blocked, masks read back from the page."""

from __future__ import annotations

import base64
import shutil
from typing import Any
from urllib.parse import urlparse

import numpy as np

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or (shutil.which("chromium-browser"))


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


def block_external(context: Any) -> list[str]:
    """Abort every request whose host is not loopback; returns the list of blocked URLs."""
    blocked: list[str] = []

    def handler(route: Any) -> None:
        host = urlparse(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
            route.fallback()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", handler)
    return blocked


def open_page(page: Any, url: str, image_id: int = 1, query: str = "", decoder: bool = True) -> None:
    page.goto(f"{url}/{'?' + query if query else ''}#image={image_id}")
    page.wait_for_function("() => window.__segany && window.__segany.ready", timeout=60000)
    if decoder:
        page.wait_for_function("() => window.__segany.S.decoder !== null", timeout=60000)


def to_page(page: Any, x: float, y: float) -> tuple[float, float]:
    """Image pixel coordinates -> page coordinates of the displayed image."""
    left, top, width, height, w, h = page.evaluate(
        "(() => { const r = document.getElementById('view').getBoundingClientRect(); const S = window.__segany.S;"
        " return [r.left, r.top, r.width, r.height, S.W, S.H]; })()")
    return left + x / w * width, top + y / h * height


def paints(page: Any) -> int:
    return int(page.evaluate("window.__segany.S.paints"))


def wait_result(page: Any, before: int) -> None:
    """Wait until a paint newer than ``before`` shows a decoded state."""
    page.wait_for_function(
        "(n) => window.__segany.S.paints > n && (window.__segany.S.cur.result || !window.__segany.S.cur.points.length && !window.__segany.S.cur.box)",
        arg=before,
        timeout=30000,
    )


def click(page: Any, x: float, y: float, button: str = "left", shift: bool = False) -> None:
    before = paints(page)
    px, py = to_page(page, x, y)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(px, py, button=button)
    if shift:
        page.keyboard.up("Shift")
    wait_result(page, before)


def drag(page: Any, x0: float, y0: float, x1: float, y1: float, wait: bool = True) -> None:
    before = paints(page)
    a, b = to_page(page, x0, y0), to_page(page, x1, y1)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=3)
    page.mouse.move(*b, steps=3)
    page.mouse.up()
    if wait:
        wait_result(page, before)


_B64 = (
    "(m) => { let s = ''; for (let i = 0; i < m.length; i += 0x8000) s += String.fromCharCode(...m.subarray(i, i + 0x8000));"
    " return btoa(s); }"
)


def display_mask(page: Any) -> np.ndarray:
    """The current object's mask as the page holds it (work size), bool ``(h, w)``."""
    b64, h, w = page.evaluate(
        f"(() => {{ const S = window.__segany.S; return [({_B64})(S.cur.display), S.wh, S.ww]; }})()")
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(h, w).astype(bool)


def canvas_alpha(page: Any, canvas_id: str = "mask-layer") -> np.ndarray:
    """Alpha channel of a drawn layer (what the person sees), uint8 ``(h, w)``."""
    b64, h, w = page.evaluate(
        f"(() => {{ const c = document.getElementById('{canvas_id}'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        f" const a = new Uint8Array(d.length / 4); for (let i = 0; i < a.length; i++) a[i] = d[4 * i + 3];"
        f" return [({_B64})(a), c.height, c.width]; }})()"
    )
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(h, w)


def state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "(() => { const S = window.__segany.S; const r = S.cur.result; return {points: S.cur.points, labels: S.cur.labels,"
        " box: S.cur.box, cand: S.cur.cand, wh: S.wh, ww: S.ww, H: S.H, W: S.W,"
        " ious: r ? Array.from(r.ious) : null, tokens: r ? r.tokens : null, fed: S.cur.feed !== null,"
        " lowShape: r ? r.lowShape : null, queue: S.queue ? S.queue.items.length : 0}; })()"
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same_mask(got, logits, near=1e-3):
    """``got`` (bool) equals ``logits > 0`` except where the reference logit is within ``near`` of the
    threshold (see test_annotate_page.py's docstring), and the mask is not trivial."""
    want = logits > 0
    assert got.shape == want.shape
    differ = got != want
    assert not differ.any() or float(np.abs(logits[differ]).max()) < near, (
        f"{int(differ.sum())} pixels differ, up to logit {float(np.abs(logits[differ]).max()):.2e} from the threshold")
    assert iou(got, want) >= 0.99


_shared: dict[str, Any] = {}


def shared_browser() -> Any:
    """One Playwright driver and one Chromium per process, for every test module (the sync API allows
    one driver at a time); closed at exit."""
    if "browser" not in _shared:
        import atexit

        from playwright.sync_api import sync_playwright

        driver = sync_playwright().start()
        _shared["driver"] = driver
        _shared["browser"] = launch(driver)

        def close() -> None:
            try:
                _shared["browser"].close()
            finally:
                _shared["driver"].stop()

        atexit.register(close)
    return _shared["browser"]
