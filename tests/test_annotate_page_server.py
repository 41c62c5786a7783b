"""The annotation page against the real `segany annotate` server (segany.annotate.app), end to end:
a folder of photos, a seeded random tiny model, SQLite, headless Chromium (see test_annotate_page.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("playwright")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("sqlalchemy")

from annotate_browser import (
    assert_same_mask,
    block_external,
    canvas_alpha,
    chromium_path,
    click,
    display_mask,
    iou,
    open_page,
    shared_browser,
    state,
)
from annotate_stub import ServerThread, SplitReference, decode_rle, ort_decode

if chromium_path() is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server_app(tmp_path_factory, test_images):
    from PIL import Image
    from sam_testing import random_tiny

    from segany.annotate.app import create_app
    from segany.annotate.server import Settings
    from segany.io.image import read_image

    root = tmp_path_factory.mktemp("photos")
    by_name = {p.name: p for p in test_images}
    Image.fromarray(read_image(by_name["chelsea.jpg"])).resize((1500, 1001)).save(root / "a_wide.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(read_image(by_name["rocket.jpg"])))).save(root / "b_tall.png")
    app = create_app(Settings(root=root, model=random_tiny(seed=11), background=False, export_decoder=False))
    with ServerThread(app) as srv:
        app.state.server.start()
        yield srv.url, app
        app.state.server.close()


@pytest.fixture(scope="module")
def server(server_app):
    return server_app[0]


@pytest.fixture(scope="session")
def browser():
    return shared_browser()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    blocked = block_external(context)
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()
    assert blocked == []


def api(page, path):
    return page.request.get(page.url.split("/#")[0].rstrip("/") + path)


def images(page):
    pid = api(page, "/api/projects").json()[0]["id"]
    return api(page, f"/api/projects/{pid}/images").json()


def test_click_accept_reload_against_the_real_server(page, server_app):
    import onnxruntime as ort

    server, app = server_app
    models = []
    page.on("request", lambda r: models.append(r.url.split("/api/model/")[1]) if "/api/model/" in r.url else None)
    page.goto(server)
    tall = next(im for im in images(page) if im["width"] < im["height"])
    open_page(page, server, tall["id"])
    info = page.evaluate("window.__segany.decoderInfo")
    model_id = api(page, "/api/model").json()["id"]
    assert info["decoder"] == "split", info["splitError"]
    # The model's files are named by the model in their URL (they are cached as immutable).
    assert set(models) == {f"decoder_lowres.onnx?model={model_id}", f"image_cache.onnx?model={model_id}"}
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    click(page, 150, 300)
    assert requests == []
    s = state(page)
    # segany's Python onnxruntime predictor on the server's own split graphs and embedding.
    embedding = np.load(io.BytesIO(api(page, f"/api/images/{tall['id']}/embedding.npy").body()))
    reference = SplitReference(app.state.server.service.model_file("decoder_lowres.onnx").parent)
    masks, _, _ = reference.decode(embedding, (tall["height"], tall["width"]), s["points"], s["labels"])
    assert_same_mask(display_mask(page), masks[s["cand"]])
    want = masks[s["cand"]] > 0
    # The official-compatible graph the server also offers gives the same mask.
    session = ort.InferenceSession(api(page, "/api/model/decoder.onnx").body(), providers=["CPUExecutionProvider"])
    size = api(page, "/api/model").json()["image_size"]
    official, _, _ = ort_decode(session, embedding, size, (tall["height"], tall["width"]), s["points"], s["labels"])
    assert iou(official[s["cand"]] > 0, want) >= 0.99
    page.fill("#category", "<b>bear</b>")
    page.locator("#stage").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.__segany.S.queue.items.length === 0 && window.__segany.S.objects.length === 1")
    page.reload()
    open_page(page, server, tall["id"])
    assert page.locator("#objects li .category-name").inner_text() == "<b>bear</b>"
    assert iou(canvas_alpha(page, "objects-layer") > 0, want) >= 0.99
    (obj,) = api(page, f"/api/images/{tall['id']}").json()["objects"]
    assert iou(decode_rle(obj["rle"]), want) >= 0.99
    assert obj["clicks"] == 1 and obj["prompts"]["points"] == s["points"] and page.dialogs == []


def test_lost_answer_lands_once_on_the_real_server(page, server):
    page.goto(server)
    wide = next(im for im in images(page) if im["width"] > im["height"])
    open_page(page, server, wide["id"])
    before = len(api(page, f"/api/images/{wide['id']}").json()["objects"])
    lost = []

    def lose_response(route):
        if not lost:
            route.fetch()
            lost.append(1)
        route.abort()

    page.route("**/api/images/*/objects", lose_response)
    click(page, 700, 450)
    page.fill("#category", "cut")
    page.locator("#stage").focus()
    page.keyboard.press("Enter")
    page.locator("#save-banner").wait_for(state="visible")
    page.unroute("**/api/images/*/objects")
    page.click("#save-retry")
    page.locator("#save-banner").wait_for(state="hidden")
    page.wait_for_function("() => window.__segany.S.queue.items.length === 0")
    assert len(api(page, f"/api/images/{wide['id']}").json()["objects"]) == before + 1


def test_server_decoder_answers_when_webassembly_is_missing(page, server):
    # The runtime's .wasm answers 404 (as from a broken install): the page says so and decodes on the
    # server (POST /predict, segany's Python predictor).
    page.context.route("**/ort-wasm-simd-threaded.wasm", lambda route: route.fulfill(status=404, body="missing"))
    page.goto(server)
    tall = next(im for im in images(page) if im["width"] < im["height"])
    open_page(page, server, tall["id"])
    banner = page.locator("#wasm-banner")
    banner.wait_for(state="visible")
    assert "WebAssembly" in banner.inner_text()
    predicts = []
    page.on("request", lambda r: predicts.append(r.url) if r.url.endswith("/predict") else None)
    click(page, 150, 300)
    assert len(predicts) == 1
    s = state(page)
    assert s["tokens"] == [1, 2, 3] and display_mask(page).any()
    click(page, 200, 350)  # two points: the single-mask output, with the previous low-res mask fed back
    s = state(page)
    assert s["tokens"] == [0] and s["fed"] and len(predicts) == 2


def test_sign_in_then_save_with_csrf_on_a_server_with_auth(browser, tmp_path, test_images):
    """With --auth the page asks for a password, then sends the session's CSRF token with its saves."""
    from PIL import Image
    from sam_testing import random_tiny

    from segany.annotate import auth
    from segany.annotate.app import create_app
    from segany.annotate.server import Settings
    from segany.io.image import read_image

    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(read_image(next(p for p in test_images if p.name == "grey_camera.jpg"))).save(
        root / "x.png"
    )
    app = create_app(Settings(root=root, model=random_tiny(seed=11), background=False, export_decoder=False, auth=True))
    auth.add_user(app.state.server.db, "ann", "annotator", password="correct horse")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    blocked = block_external(context)
    page = context.new_page()
    try:
        with ServerThread(app) as srv:
            page.goto(srv.url)
            page.locator("#login").wait_for(state="visible")
            page.fill("#login-user", "ann")
            page.fill("#login-password", "wrong")
            page.click("#login-form button")
            page.wait_for_function("() => document.getElementById('login-error').textContent.length > 0")
            page.fill("#login-password", "correct horse")
            page.click("#login-form button")
            page.wait_for_function("() => window.__segany.ready && window.__segany.S.decoder !== null", timeout=60000)
            click(page, 150, 300)
            page.fill("#category", "signed")
            page.locator("#stage").focus()
            page.keyboard.press("Enter")
            page.wait_for_function(
                "() => window.__segany.S.queue.items.length === 0 && window.__segany.S.objects.length === 1"
            )
            (obj,) = page.evaluate("window.__segany.S.objects")
            assert obj["user"] == "ann" and obj["category"] == "signed"
            assert page.locator("#error-banner").is_hidden()
    finally:
        context.close()
        app.state.server.close()
    assert blocked == []
