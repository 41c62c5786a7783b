"""The annotation page in a real headless Chromium (Debian's `chromium`, Python Playwright).

The page runs the decoders exported by segany's exporter from a seeded random tiny model, served by the
stand-in server of `annotate_stub.py` (the endpoints of the annotation API contract); every request to a
host other than loopback is blocked. The page prefers segany's split decoder (image_cache.onnx once per
image, decoder_lowres.onnx per click, upscaling in the worker); its masks are compared with segany's
Python onnxruntime predictor on the same split graphs and the same prompts (:class:`SplitReference`).
The official-compatible decoder.onnx, the fallback, is compared with Python onnxruntime on that graph.

Tolerances: both sides run the same graphs, but WebAssembly kernels and native onnxruntime sum in
different orders, and the page upscales in JavaScript (weights composed per axis) where Python runs
PyTorch's two float32 resizes; logits then differ by ~1e-5. A pixel can only flip where the reference
logit is that close to the threshold, so masks must agree except at pixels within 1e-3 of it, and IoU
predictions within 1e-3.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from annotate_browser import (
    assert_same_mask,
    block_external,
    canvas_alpha,
    chromium_path,
    click,
    display_mask,
    drag,
    iou,
    open_page,
    paints,
    shared_browser,
    state,
    to_page,
    wait_result,
)
from annotate_stub import (
    STATIC,
    ServerThread,
    SplitReference,
    build_state,
    decode_rle,
    make_app,
    ort_decode,
    split_files,
)

if chromium_path() is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
WIDE, TALL = 1, 2  # image ids: a 1500 x 1001 photo (drawn at a reduced work size) and a 427 x 640 one


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    from sam_testing import random_tiny

    from segany.export.onnx import export_onnx

    model = random_tiny(seed=11)
    folder = tmp_path_factory.mktemp("annotate_onnx")
    # int8 as `segany annotate --decoder-precision int8` writes it (unsigned weights).
    result = export_onnx(model, folder, encoder=False, check=False, quantize="int8", int8_weights="u8")
    assert {"image_cache", "decoder_lowres", "image_cache.int8", "decoder_lowres.int8"} <= set(result.files)
    return model, result.files["decoder"]


@pytest.fixture(scope="session")
def stub(exported, test_images):
    from PIL import Image

    from segany.io.image import read_image

    model, decoder = exported
    by_name = {p.name: p for p in test_images}
    wide = np.asarray(Image.fromarray(read_image(by_name["chelsea.jpg"])).resize((1500, 1001)))
    tall = np.ascontiguousarray(np.rot90(read_image(by_name["rocket.jpg"])))  # 427 x 640: taller than wide
    st = build_state(model, decoder, [wide, tall])
    with ServerThread(make_app(st)) as server:
        yield st, server.url


@pytest.fixture(scope="session")
def ort_session(exported):
    import onnxruntime as ort

    return ort.InferenceSession(str(exported[1]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def reference(exported):
    return SplitReference(exported[1].parent)


@pytest.fixture(scope="session")
def browser():
    return shared_browser()


@pytest.fixture
def page(browser, stub):
    st, _ = stub
    st.reset()
    st.isolate = True
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    blocked = block_external(context)
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()
    assert blocked == [], f"the page tried to reach the network: {blocked}"


def python_masks(st, reference, image_id, s, out="work", mask_input=None):
    """The reference for the page's prompts: logits (M, h, w) at the work or full size, IoUs, low-res logits.
    ``reference``: a :class:`SplitReference` (the page's split decoder) or an onnxruntime session on
    decoder.onnx (the official graph)."""
    im = st.images[image_id - 1]
    size = (s["wh"], s["ww"]) if out == "work" else (im.height, im.width)
    if isinstance(reference, SplitReference):
        return reference.decode(im.embedding, (im.height, im.width), s["points"], s["labels"], s["box"], mask_input,
                                size)
    return ort_decode(reference, im.embedding, st.image_size, (im.height, im.width), s["points"], s["labels"],
                      s["box"], mask_input, size)



def saved_objects(st):
    return sorted(st.objects.values(), key=lambda o: o["id"])


def accept(page, category="thing"):
    page.fill("#category", category)
    page.locator("#stage").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => window.__segany.S.queue.items.length === 0 && !window.__segany.S.cur.points.length", timeout=30000
    )


# -- the decoder in the page --------------------------------------------------------------------------


@pytest.mark.parametrize("image_id", [WIDE, TALL], ids=["wide", "tall"])
def test_click_mask_equals_python_onnxruntime(page, stub, reference, image_id):
    st, url = stub
    open_page(page, url, image_id)
    # The worker runs segany's split decoder: it fetched those two graphs and not decoder.onnx.
    info = page.evaluate("window.__segany.decoderInfo")
    assert info["decoder"] == "split" and info["precision"] == "fp32" and info["splitError"] == ""
    fetched = [path for method, path in st.requests if path.startswith("/api/model/")]
    assert sorted(fetched) == ["/api/model/decoder_lowres.onnx", "/api/model/image_cache.onnx"]
    im = st.images[image_id - 1]
    x, y = 0.43 * im.width, 0.57 * im.height
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    click(page, x, y)
    assert requests == [], "a click must be answered without any HTTP request"
    s = state(page)
    assert s["cand"] in (1, 2, 3) and len(s["points"]) == 1 and s["labels"] == [1]
    # The click lands where it was made (the page maps display -> image pixels).
    assert abs(s["points"][0][0] - x) < 1.0 and abs(s["points"][0][1] - y) < 1.0
    masks, ious, _ = python_masks(st, reference, image_id, s)
    np.testing.assert_allclose(s["ious"], ious, atol=1e-3)
    got = display_mask(page)
    assert 0.002 < (masks[s["cand"]] > 0).mean() < 0.998, "the test needs a non-trivial mask (thousands of pixels)"
    assert_same_mask(got, masks[s["cand"]])
    # What is drawn is that mask.
    assert np.array_equal(canvas_alpha(page) > 0, got)

    # Accepted: saved at full resolution, equal to Python's full-resolution mask.
    accept(page)
    (obj,) = saved_objects(st)
    full, _, _ = python_masks(st, reference, image_id, s, out="full")
    saved = decode_rle(obj["rle"])
    assert saved.shape == (im.height, im.width)
    assert_same_mask(saved, full[s["cand"]])
    assert obj["prompts"]["points"] == s["points"] and obj["clicks"] == 1 and obj["category"] == "thing"


def test_undo_redo_restore_masks_bit_for_bit(page, stub):
    _, url = stub
    open_page(page, url, TALL)
    click(page, 150, 300)
    first, first_drawn = display_mask(page), canvas_alpha(page)
    click(page, 250, 420, button="right")
    second = display_mask(page)
    assert not np.array_equal(first, second)
    assert state(page)["fed"], "an appended prompt feeds the previous low-res mask back"
    page.keyboard.press("Control+z")
    assert np.array_equal(display_mask(page), first)
    assert np.array_equal(canvas_alpha(page), first_drawn)
    page.keyboard.press("Control+Shift+z")
    assert np.array_equal(display_mask(page), second)
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+z")
    assert not display_mask(page).any() and state(page)["points"] == []
    # Clicking on a point removes it (and starts from no fed-back mask).
    click(page, 150, 300)
    click(page, 250, 420)
    before = paints(page)
    page.mouse.click(*to_page(page, 250, 420))
    wait_result(page, before)
    s = state(page)
    assert len(s["points"]) == 1 and not s["fed"]
    assert np.array_equal(display_mask(page), first)


@pytest.mark.parametrize("image_size,low,threshold", [(1024, 256, 0.0), (64, 64, 0.3)])
def test_worker_upscaling_equals_segany_postprocess(page, stub, image_size, low, threshold):
    """sam.js upscaleMasks (the split decoder's low-res logits -> masks in the worker) against
    segany.ops.postprocess.upscale_logits on smooth random logits, for wide, tall, display-sized, small
    and odd output sizes: equal except where the logit is within 1e-4 of the threshold (float rounding)."""
    import base64

    import torch
    import torch.nn.functional as F

    from segany.ops.postprocess import upscale_logits
    from segany.ops.transforms import ResizeLongestSide

    _, url = stub
    page.goto(f"{url}/static/sam.js")
    g = torch.Generator().manual_seed(3)
    logits = F.interpolate(torch.randn(1, 3, low // 8, low // 8, generator=g) * 4, size=(low, low), mode="bicubic")
    data = base64.b64encode(logits.numpy().astype(np.float32).tobytes()).decode()
    for out_h, out_w in [(683, 1024), (1001, 1500), (640, 427), (37, 53), (300, 5)]:
        got = page.evaluate(
            """async ([b64, lh, imageSize, h, w, thr]) => {
                 const { upscaleMasks } = await import("/static/sam.js");
                 const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                 const low = new Float32Array(bytes.buffer);
                 const m = upscaleMasks(low, 3, lh, lh, imageSize, h, w, thr);
                 let s = "";
                 for (let i = 0; i < m.length; i += 0x8000) s += String.fromCharCode(...m.subarray(i, i + 0x8000));
                 return btoa(s);
               }""",
            [data, low, image_size, out_h, out_w, threshold],
        )
        got = np.frombuffer(base64.b64decode(got), dtype=np.uint8).reshape(3, out_h, out_w).astype(bool)
        input_size = ResizeLongestSide(image_size).get_preprocess_shape(out_h, out_w)
        want = upscale_logits(logits, input_size, (out_h, out_w), image_size)[0].numpy() - threshold
        assert 0.05 < (want > 0).mean() < 0.95
        assert_same_mask(got, want, near=1e-4)


def test_box_mixed_prompts_and_multimask_choice(page, stub, reference):
    st, url = stub
    open_page(page, url, WIDE)
    drag(page, 300, 250, 900, 700)
    s1 = state(page)
    assert s1["points"] == [] and s1["box"] is not None
    m1, iou1, low1 = python_masks(st, reference, WIDE, s1)
    assert s1["cand"] == 1 + int(np.argmax(iou1[1:])), "a box alone picks the best multimask output"
    assert_same_mask(display_mask(page), m1[s1["cand"]])

    click(page, 600, 480)  # a point added to the box: the previous low-res mask is fed back
    s2 = state(page)
    assert s2["fed"] and s2["cand"] == 0, "box + point: the single-mask output, as the official export"
    fed = low1[s1["cand"]]
    m2, iou2, _ = python_masks(st, reference, WIDE, s2, mask_input=fed)
    np.testing.assert_allclose(s2["ious"], iou2, atol=1e-3)
    assert_same_mask(display_mask(page), m2[0])

    page.keyboard.press("w")  # candidate 2
    s3 = state(page)
    assert s3["cand"] == 2
    assert_same_mask(display_mask(page), m2[2])
    page.keyboard.press("Tab")
    assert state(page)["cand"] == 3
    page.keyboard.press("Shift+Tab")
    assert state(page)["cand"] == 2
    accept(page, "box thing")
    (obj,) = saved_objects(st)
    full, _, _ = python_masks(st, reference, WIDE, s2, out="full", mask_input=fed)
    assert_same_mask(decode_rle(obj["rle"]), full[2])
    assert obj["prompts"]["box"] == s2["box"]

    # Three clicks without waiting: whatever finished in between, the mask left is the last prompt's.
    for x, y in ((500, 400), (650, 450), (800, 500)):
        page.mouse.click(*to_page(page, x, y))
    page.wait_for_function("() => window.__segany.S.cur.points.length === 3 && window.__segany.S.cur.result")
    s4 = state(page)
    feed = page.evaluate("(() => { const f = window.__segany.S.cur.feed; return f ? Array.from(f) : null; })()")
    m4, _, _ = python_masks(st, reference, WIDE, s4, mask_input=None if feed is None else np.array(feed, np.float32))
    assert_same_mask(display_mask(page), m4[s4["cand"]])


def test_brush_and_eraser_paint_exact_discs(page, stub, reference):
    st, url = stub
    open_page(page, url, TALL)
    im = st.images[TALL - 1]
    yy, xx = np.mgrid[0:im.height, 0:im.width]

    def disc(cx, cy, r):
        return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r

    page.keyboard.press("b")
    r = float(page.evaluate("window.__segany.S.radius"))
    before = paints(page)
    page.mouse.click(*to_page(page, 100.3, 200.6))
    page.wait_for_function(
        "(n) => window.__segany.S.paints > n && window.__segany.S.cur.strokes.length === 1", arg=before
    )
    cx, cy = page.evaluate("window.__segany.S.cur.strokes[0].pts[0]")
    accept(page, "painted")
    (obj,) = saved_objects(st)
    assert np.array_equal(decode_rle(obj["rle"]), disc(cx, cy, r))
    assert obj["strokes"] == 1 and obj["clicks"] == 0

    page.keyboard.press("v")
    click(page, 150, 300)
    s = state(page)
    page.keyboard.press("x")
    before = paints(page)
    page.mouse.click(*to_page(page, 150, 300))
    page.wait_for_function(
        "(n) => window.__segany.S.paints > n && window.__segany.S.cur.strokes.length === 1", arg=before
    )
    ex, ey = page.evaluate("window.__segany.S.cur.strokes[0].pts[0]")
    accept(page, "erased")
    obj = saved_objects(st)[-1]
    full, _, _ = python_masks(st, reference, TALL, s, out="full")
    want = (full[s["cand"]] > 0) & ~disc(ex, ey, r)
    got = decode_rle(obj["rle"])
    assert not got[disc(ex, ey, r)].any()
    assert iou(got, want) >= 0.99


# -- saving ------------------------------------------------------------------------------------------------


def test_accepted_object_survives_reload_and_exports_to_the_mask_shown(page, stub, tmp_path):
    st, url = stub
    open_page(page, url, TALL)  # drawn at full size: the mask shown is the full-resolution one
    click(page, 150, 300)
    shown = display_mask(page)
    accept(page, "bear")
    page.reload()
    open_page(page, url, TALL)
    assert page.locator("#objects li").count() == 1
    assert page.locator("#objects li .category-name").inner_text() == "bear"
    drawn = canvas_alpha(page, "objects-layer") > 0
    assert iou(drawn, shown) >= 0.99

    # COCO export of what is stored: pycocotools gives back the mask shown.
    import json

    from pycocotools.coco import COCO

    (obj,) = saved_objects(st)
    im = st.images[TALL - 1]
    coco = {"images": [{"id": im.id, "width": im.width, "height": im.height, "file_name": "tall.png"}],
            "categories": [{"id": 1, "name": "bear"}],
            "annotations": [{"id": obj["id"], "image_id": im.id, "category_id": 1, "segmentation": obj["rle"],
                             "area": obj["area"], "bbox": obj["bbox"], "iscrowd": 0}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    coco_api = COCO(str(path))
    exported_mask = coco_api.annToMask(coco_api.anns[obj["id"]]).astype(bool)
    assert exported_mask.shape == shown.shape
    assert iou(exported_mask, shown) >= 0.99
    assert exported_mask.sum() == obj["area"]


def test_save_with_network_cut_shows_banner_and_lands_once(page, stub):
    st, url = stub
    open_page(page, url, TALL)
    lost = []

    def lose_response(route):
        # The server stores the object but the answer never arrives: only the Idempotency-Key
        # prevents a duplicate when the page retries.
        if not lost:
            route.fetch()
            lost.append(route.request.headers.get("idempotency-key"))
        route.abort()

    page.route("**/api/images/*/objects", lose_response)
    click(page, 150, 300)
    page.fill("#category", "cut")
    page.locator("#stage").focus()
    page.keyboard.press("Enter")
    page.locator("#save-banner").wait_for(state="visible")
    assert "not saved" in page.locator("#save-banner").inner_text()
    assert len(st.objects) == 1  # landed once, the page does not know yet
    page.reload()  # the unsaved change is kept by the page across a reload
    open_page(page, url, TALL)
    page.locator("#save-banner").wait_for(state="visible")
    assert page.locator("#objects li.pending").count() == 1
    page.unroute("**/api/images/*/objects")
    # The page also retries on its own (500 ms, doubling): that retry may land and hide the banner
    # before a pointer click could reach the button, so the button is pressed from script. Either way
    # the object must land exactly once.
    page.evaluate("document.getElementById('save-retry').click()")
    page.locator("#save-banner").wait_for(state="hidden")
    page.wait_for_function("() => window.__segany.S.queue.items.length === 0")
    assert len(st.objects) == 1 and list(st.keys) == lost
    assert page.locator("#objects li").count() == 1 and page.locator("#objects li.pending").count() == 0


def test_timing_recorded_under_a_controlled_clock_and_hint_after_30s(page, stub):
    st, url = stub
    page.clock.install()
    open_page(page, url, TALL)
    # From here on the page's time moves only when the test moves it.
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    click(page, 150, 300)
    page.clock.run_for(2500)
    click(page, 200, 350)
    page.clock.run_for(2500)
    click(page, 120, 250, button="right")
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+Shift+z")
    accept(page, "timed")
    (obj,) = saved_objects(st)
    assert obj["seconds"] == pytest.approx(5.0, abs=0.1)
    assert obj["clicks"] == 3 and obj["undos"] == 1 and obj["strokes"] == 0
    assert obj["prompts"]["labels"] == [1, 1, 0]

    click(page, 150, 300)
    page.clock.run_for(29000)
    assert page.locator("#hint").is_hidden()
    page.clock.run_for(2000)
    assert page.locator("#hint").is_visible()
    page.keyboard.press("Escape")
    assert page.locator("#hint").is_hidden()


# -- safety, fallbacks ------------------------------------------------------------------------------------


def test_category_named_like_html_renders_as_text(page, stub):
    st, url = stub
    evil = '<img src=x onerror="alert(1)">'
    st.categories.append({"id": 99, "name": evil, "fixed": True})
    open_page(page, url, TALL)
    click(page, 150, 300)
    page.keyboard.press("1")  # the first category by number
    assert page.input_value("#category") == evil
    page.locator("#stage").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.__segany.S.queue.items.length === 0")
    assert page.locator("#objects li .category-name").inner_text() == evil
    assert page.locator("#category-keys li").first.inner_text() == evil
    assert page.locator("img[src='x']").count() == 0
    page.reload()
    open_page(page, url, TALL)
    assert page.locator("#objects li .category-name").inner_text() == evil
    assert page.dialogs == []


def test_int8_split_decoder_equals_python_int8_predictor(page, stub, exported):
    """The int8 split decoder (a server option) in the page against segany's Python predictor on the
    same int8 graphs; the tolerance is the float32 one's (integer products are exact on both sides)."""
    st, url = stub
    folder = exported[1].parent
    float_split = st.split
    try:
        st.split, st.split_precision = split_files(folder, "int8"), "int8"
        open_page(page, url, WIDE)
        info = page.evaluate("window.__segany.decoderInfo")
        assert info["decoder"] == "split" and info["precision"] == "int8"
        assert ("GET", "/api/model/decoder_lowres.int8.onnx") in st.requests
        click(page, 0.43 * 1500, 0.57 * 1001)
        click(page, 0.55 * 1500, 0.45 * 1001)  # a second point: the fed-back mask re-runs image_cache
        s = state(page)
        assert s["fed"]
        reference = SplitReference(folder, "int8")
        prev = page.evaluate(
            "(() => { const f = window.__segany.S.cur.feed; return f ? Array.from(f) : null; })()")
        masks, ious, _ = python_masks(st, reference, WIDE, s, mask_input=np.array(prev, np.float32))
        np.testing.assert_allclose(s["ious"], ious, atol=1e-3)
        assert 0.002 < (masks[s["cand"]] > 0).mean() < 0.998
        assert_same_mask(display_mask(page), masks[s["cand"]])
    finally:
        st.split, st.split_precision = float_split, "fp32"


def test_official_decoder_when_the_split_one_is_missing(page, stub, ort_session):
    """An older server or cache without the split graphs: the worker runs decoder.onnx instead."""
    st, url = stub
    st.blocked.add("/api/model/decoder_lowres.onnx")
    open_page(page, url, WIDE)
    info = page.evaluate("window.__segany.decoderInfo")
    assert info["decoder"] == "official" and "404" in info["splitError"]
    assert ("GET", "/api/model/decoder.onnx") in st.requests
    click(page, 0.43 * 1500, 0.57 * 1001)
    s = state(page)
    masks, ious, _ = python_masks(st, ort_session, WIDE, s)
    np.testing.assert_allclose(s["ious"], ious, atol=1e-3)
    assert 0.002 < (masks[s["cand"]] > 0).mean() < 0.998
    assert_same_mask(display_mask(page), masks[s["cand"]])


def test_missing_webassembly_shows_message_and_uses_server_decoder(page, stub, ort_session):
    st, url = stub
    st.blocked.add("/static/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")
    open_page(page, url, TALL)
    banner = page.locator("#wasm-banner")
    banner.wait_for(state="visible")
    assert "WebAssembly" in banner.inner_text() and "server" in banner.inner_text()
    st.requests.clear()
    click(page, 150, 300)
    assert ("POST", f"/api/images/{TALL}/predict") in st.requests
    s = state(page)
    masks, _, _ = python_masks(st, ort_session, TALL, s)
    assert iou(display_mask(page), masks[s["cand"]] > 0) >= 0.98
    accept(page, "fallback")
    assert len(st.objects) == 1


def test_single_threaded_without_cross_origin_isolation(page, stub):
    st, url = stub
    open_page(page, url, TALL)
    info = page.evaluate("window.__segany.decoderInfo")
    assert info["isolated"] is True and info["threads"] > 1 and info["version"] == "1.31.1"
    st.isolate = False
    page.reload()
    open_page(page, url, TALL)
    info = page.evaluate("window.__segany.decoderInfo")
    assert info["isolated"] is False and info["threads"] == 1
    click(page, 150, 300)
    assert display_mask(page).any()


# -- keyboard flow, objects, review ---------------------------------------------------------------------


def test_keyboard_flow_objects_prefill_and_review(page, stub):
    st, url = stub
    im = st.images[TALL - 1]
    auto = np.zeros((im.height, im.width), dtype=bool)
    auto[100:200, 50:150] = True
    from annotate_stub import encode_rle

    st.objects[50] = {"id": 50, "image_id": TALL, "version": 1, "category": "rock", "source": "auto",
                      "rle": encode_rle(auto), "bbox": [50, 100, 100, 100], "area": int(auto.sum())}
    st.categories.append({"id": 1, "name": "rock", "fixed": True})
    open_page(page, url, TALL)
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    assert "undo" in page.locator("#help-table").inner_text()
    page.keyboard.press("Escape")
    assert page.locator("#help").is_hidden()
    # The pre-filled mask is drawn striped, unlike a manual one.
    alpha = canvas_alpha(page, "objects-layer")
    inside = alpha[110:190, 60:140] > 0
    assert 0.3 < inside.mean() < 0.7
    assert "pre-filled" in page.locator("#objects li").first.inner_text()

    click(page, 250, 450)
    page.keyboard.press("Escape")  # cancel
    assert state(page)["points"] == []
    # Relabel and delete the pre-filled object.
    page.locator("#objects li").first.click()
    page.fill("#category", "stone")
    page.locator("#stage").focus()
    page.keyboard.press("r")
    page.wait_for_function("() => window.__segany.S.queue.items.length === 0")
    assert st.objects[50]["category"] == "stone" and st.objects[50]["version"] == 2
    page.locator("#stage").focus()  # still selected
    page.keyboard.press("Delete")
    page.wait_for_function("() => window.__segany.S.queue.items.length === 0")
    assert 50 not in st.objects and page.locator("#objects li").count() == 0

    # Next / previous image.
    page.keyboard.press("a")
    page.wait_for_function(f"() => window.__segany.ready && window.__segany.S.image.id === {WIDE}")
    page.keyboard.press("d")
    page.wait_for_function(f"() => window.__segany.ready && window.__segany.S.image.id === {TALL}")

    # Zoom keeps clicks on the right pixel.
    page.keyboard.press("+")
    page.keyboard.press("+")
    click(page, 190, 320)
    p = state(page)["points"][0]
    assert abs(p[0] - 190) < 0.5 and abs(p[1] - 320) < 0.5
    page.keyboard.press("0")

    # Reviewer view: reject with a comment, the annotator sees it.
    page.keyboard.press("Escape")
    page.check("#review-mode")
    page.fill("#review-text", "missing the <b>dog</b>")
    page.click("#review-reject")
    page.wait_for_function("() => window.__segany.S.image.state === 'rejected'")
    assert im.state == "rejected" and im.review_comment == "missing the <b>dog</b>"
    assert page.locator("#review-comment").inner_text() == "Reviewer: missing the <b>dog</b>"
    page.click("#review-accept")
    page.wait_for_function("() => window.__segany.S.image.state === 'accepted'")


def test_page_screenshot(page, stub, tmp_path):
    """The README's picture of the page. With SEGANY_WRITE_SCREENSHOT=1 it is taken with segany's default
    (trained) model and written to docs/annotate-page.png; otherwise with the tests' random model."""
    st, url = stub
    server = None
    if os.environ.get("SEGANY_WRITE_SCREENSHOT") == "1":
        from segany.build import load_model
        from segany.export.onnx import export_onnx

        model = load_model()
        decoder = export_onnx(model, tmp_path / "onnx", encoder=False, check=False).files["decoder"]
        default = build_state(model, decoder, [np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
            __import__("io").BytesIO(st.images[WIDE - 1].file)).convert("RGB"))])
        server = ServerThread(make_app(default)).__enter__()
        st, url = default, server.url
    try:
        st.categories.extend([{"id": 1, "name": "bear", "fixed": True}, {"id": 2, "name": "snow", "fixed": True}])
        open_page(page, url, WIDE)
        click(page, 1100, 850)
        accept(page, "snow")
        click(page, 450, 520)
        click(page, 600, 540)
        page.fill("#category", "bear")
        out = REPO / "docs" / "annotate-page.png" if server else tmp_path / "page.png"
        out.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(out))
        assert out.stat().st_size > 10_000
        if server:  # a small file for the repository
            from PIL import Image

            Image.open(out).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
                out, optimize=True
            )
    finally:
        if server:
            server.__exit__(None, None, None)


# -- the vendored runtime ------------------------------------------------------------------------------------


def test_vendored_runtime_matches_its_checksums_and_is_served_with_the_right_types(page, stub):
    vendor = STATIC / "vendor" / "onnxruntime-web"
    lines = (vendor / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in lines if line.strip())
    assert set(sums) == {"ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"}
    for name, digest in sums.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert (vendor / "LICENSE").read_text().count("MIT License") == 1
    assert sum(p.stat().st_size for p in vendor.iterdir()) < 25_000_000
    _, url = stub
    types = {}
    page.on("response", lambda r: types.__setitem__(r.url.rsplit("/", 1)[-1], r.headers.get("content-type", "")))
    open_page(page, url, TALL)
    assert types["ort-wasm-simd-threaded.wasm"].startswith("application/wasm")
    assert types["ort.wasm.min.mjs"].startswith("text/javascript")
    assert types["app.js"].startswith("text/javascript")
