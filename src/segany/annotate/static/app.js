// The annotation page: prompts -> masks in the browser (decoder worker), objects saved to the server.
// Plain ES module, no build step. User text (category names, comments) is only ever set as text.
import { Api, SaveQueue, signIn } from "./api.js";
import { RemoteDecoder, WorkerDecoder } from "./decoder.js";
import { bboxArea, paintStroke, resizeNearest, rleDecode, rleEncode } from "./mask.js";
import { defaultCandidate, promptFeeds, workSize } from "./sam.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const HINT_MS = 30000;
const SHORTCUTS = [
  ["left click", "foreground point"],
  ["right click / Shift+click", "background point"],
  ["drag", "box (replaces the box)"],
  ["click a point or box corner", "remove it"],
  ["Tab / Shift+Tab", "next / previous candidate mask"],
  ["q  w  e", "candidate mask 1, 2, 3"],
  ["v  b  x", "SAM prompts, brush, eraser"],
  ["[  ]", "brush radius smaller / larger"],
  ["Ctrl+Z, Ctrl+Shift+Z (Ctrl+Y)", "undo, redo"],
  ["Enter or f", "accept the object (saves it)"],
  ["Esc", "cancel the object / close this help"],
  ["1 … 9", "pick a category; or type one in the box"],
  ["r", "relabel the selected object"],
  ["Delete", "delete the selected object"],
  ["a  d", "previous / next image"],
  ["wheel, +  -", "zoom; 0 fits the image"],
  ["middle drag, Space+drag", "pan"],
  ["?", "this help"],
];

const S = {
  api: new Api(),
  model: null, project: null, images: [], image: null, objects: [], categories: [],
  decoder: null, decoderReady: null, queue: null,
  H: 0, W: 0, wh: 0, ww: 0,
  cur: null, history: [], future: [],
  counters: { clicks: 0, strokes: 0, undos: 0, tFirst: null },
  tool: "prompt", radius: 8, selected: null,
  seq: 0, view: { fit: 1, z: 1, tx: 0, ty: 0 },
  latencies: [], decodeMs: [], paints: 0, objectMasks: new Map(), hintShown: false,
};
window.__segany = { S, ready: false };

// -- object state -------------------------------------------------------------------------------

function freshState() {
  return { points: [], labels: [], box: null, strokes: [], result: null, cand: null, feed: null,
    display: new Uint8Array(S.wh * S.ww), editing: null, baseFull: null, baseWork: null };
}

const hasPrompts = (st) => st.points.length > 0 || st.box !== null;
const hasContent = (st) => hasPrompts(st) || st.strokes.length > 0 || st.editing !== null;

function candidateMask(st) {
  const r = st.result;
  const i = r.tokens.indexOf(st.cand);
  const n = S.wh * S.ww;
  return r.masks.subarray(i * n, (i + 1) * n);
}

/** The mask shown for a state: the decoder's chosen candidate (or the edited object's own mask),
 *  then the brush strokes in order. */
function composite(st) {
  let m;
  if (hasPrompts(st) && st.result) m = candidateMask(st).slice();
  else if (st.baseWork) m = st.baseWork.slice();
  else m = new Uint8Array(S.wh * S.ww);
  for (const stroke of st.strokes) paintStroke(m, S.wh, S.ww, S.H, S.W, stroke);
  st.display = m;
}

function startTiming() {
  if (S.counters.tFirst === null) S.counters.tFirst = performance.now();
}

/** Make `next` the current state; the old one goes on the undo stack. */
function commit(next, { decode = false, tEvent = null } = {}) {
  S.history.push(S.cur);
  S.future = [];
  S.cur = next;
  startTiming();
  if (decode) requestDecode(tEvent);
  else { composite(next); paintMask(tEvent); }
  renderPrompts();
  renderCandidates();
}

function samePoints(a, b) {
  return a.length === b.length && a.every((p, i) => p[0] === b[i][0] && p[1] === b[i][1]);
}

/** The previous low-res logits are fed back only when prompts were appended to the old ones (CVAT's
 *  rule): the old mask then still describes the same object. */
function feedFor(prev, next) {
  if (!prev.result || prev.cand === null) return null;
  const grewPoints = next.points.length >= prev.points.length && samePoints(prev.points, next.points.slice(0, prev.points.length));
  const boxKept = prev.box === null || (next.box !== null && prev.box.every((v, i) => v === next.box[i]));
  const added = next.points.length > prev.points.length || (prev.box === null && next.box !== null);
  if (!(grewPoints && boxKept && added)) return null;
  const r = prev.result;
  const i = r.tokens.indexOf(prev.cand);
  const n = r.lowShape[0] * r.lowShape[1];
  return r.lowres.slice(i * n, (i + 1) * n);
}

function withPrompts(prev, points, labels, box) {
  const next = { ...prev, points, labels, box, result: null, cand: null, feed: null };
  next.feed = feedFor(prev, next);
  return next;
}

function decodeRequest(st, final) {
  const f = promptFeeds(st.points, st.labels, st.box, S.H, S.W, S.model.image_size);
  const low = S.model.embedding_shape.slice(-2).map((g) => 4 * g);
  return {
    key: `${S.model.id}:${S.image.id}`, imageId: S.image.id,
    points: st.points, labels: st.labels, box: st.box,
    coords: f.coords, feedLabels: f.labels, k: f.k,
    maskInput: st.feed ? st.feed.slice() : null, lowShape: low,
    outH: final ? S.H : S.wh, outW: final ? S.W : S.ww, final,
  };
}

async function requestDecode(tEvent) {
  const st = S.cur;
  if (!hasPrompts(st)) { composite(st); paintMask(tEvent); return; }
  const seq = ++S.seq;
  const req = { ...decodeRequest(st, false), seq };
  let r;
  try {
    await S.decoderReady;
    r = await S.decoder.decode(req);
  } catch (err) {
    showError(`decoding failed: ${err.message}`);
    return;
  }
  // Stale: a newer prompt, an undo or another image superseded this request.
  if (!r || seq !== S.seq || S.cur !== st) return;
  st.result = r;
  S.decodeMs.push(r.ms);
  st.cand = r.tokens[r.tokens.length === 1 ? 0 : defaultCandidate(r.ious, req.k)];
  if (r.tokens[0] !== 0 && r.tokens.length > 1) st.cand = r.tokens[bestIndex(r.ious)];
  composite(st);
  paintMask(tEvent);
  renderCandidates();
}

function bestIndex(values) {
  let b = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[b]) b = i;
  return b;
}

// -- drawing --------------------------------------------------------------------------------------

function paintMask(tEvent) {
  const canvas = $("mask-layer");
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(S.ww, S.wh);
  const d = img.data;
  const m = S.cur.display;
  for (let i = 0; i < m.length; i++) {
    if (m[i]) { d[4 * i] = 30; d[4 * i + 1] = 144; d[4 * i + 2] = 255; d[4 * i + 3] = 140; }
  }
  ctx.putImageData(img, 0, 0);
  S.paints++;
  if (tEvent !== null && tEvent !== undefined) S.latencies.push(performance.now() - tEvent);
  canvas.dataset.paints = String(S.paints);
}

function colourFor(name) {
  let h = 0;
  for (const ch of name || "") h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  const hue = h % 360;
  const c = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (0.55 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [c(0), c(8), c(4)];
}

function objectWorkMask(obj) {
  const key = `${obj.id}:${obj.version}:${obj.rle.counts.length}`;
  if (!S.objectMasks.has(key)) {
    const [h, w] = obj.rle.size;
    S.objectMasks.set(key, resizeNearest(rleDecode(obj.rle.counts, h, w), h, w, S.wh, S.ww));
  }
  return S.objectMasks.get(key);
}

function paintObjects() {
  const canvas = $("objects-layer");
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(S.ww, S.wh);
  const d = img.data;
  for (const obj of visibleObjects()) {
    if (S.cur.editing === obj.id) continue;
    const m = objectWorkMask(obj);
    const [r, g, b] = obj.source === "auto" ? [255, 170, 0] : colourFor(obj.category);
    const auto = obj.source === "auto";
    const alpha = obj.id === S.selected ? 190 : 110;
    for (let y = 0; y < S.wh; y++) {
      for (let x = 0; x < S.ww; x++) {
        const i = y * S.ww + x;
        // Pre-filled (automatic) masks are drawn striped, so they stand apart from manual ones.
        if (m[i] && (!auto || (x + y) % 8 < 4)) { d[4 * i] = r; d[4 * i + 1] = g; d[4 * i + 2] = b; d[4 * i + 3] = alpha; }
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}

function svgEl(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function screenScale() {
  return S.view.fit * S.view.z; // CSS px per image pixel
}

function renderPrompts(dragBox = null) {
  const svg = $("prompt-layer");
  svg.replaceChildren();
  const k = 1 / screenScale();
  const box = dragBox || S.cur.box;
  if (box) {
    svg.append(svgEl("rect", { x: Math.min(box[0], box[2]), y: Math.min(box[1], box[3]), width: Math.abs(box[2] - box[0]),
      height: Math.abs(box[3] - box[1]), fill: "none", stroke: "#ffd400", "stroke-width": 2 * k, class: "prompt-box" }));
  }
  S.cur.points.forEach(([x, y], i) => {
    const fg = S.cur.labels[i] === 1;
    svg.append(svgEl("circle", { cx: x, cy: y, r: 5 * k, fill: fg ? "#1ec850" : "#e8413c", stroke: "#fff",
      "stroke-width": 1.5 * k, class: fg ? "point fg" : "point bg" }));
  });
}

function renderCandidates() {
  const box = $("candidates");
  box.replaceChildren();
  const r = S.cur.result;
  if (!r || !hasPrompts(S.cur)) return;
  r.tokens.forEach((token, i) => {
    const b = document.createElement("button");
    b.textContent = `${token === 0 ? "single" : token}: IoU ${r.ious[i].toFixed(3)}`;
    b.dataset.token = String(token);
    if (token === S.cur.cand) b.classList.add("chosen");
    b.addEventListener("click", () => chooseCandidate(token));
    box.append(b);
  });
}

function chooseCandidate(token) {
  const r = S.cur.result;
  if (!r || !r.tokens.includes(token) || token === S.cur.cand) return;
  commit({ ...S.cur, cand: token }, { tEvent: performance.now() });
}

function cycleCandidate(step) {
  const r = S.cur.result;
  if (!r) return;
  const i = r.tokens.indexOf(S.cur.cand);
  chooseCandidate(r.tokens[(i + step + r.tokens.length) % r.tokens.length]);
}

// -- view: fit, zoom, pan ----------------------------------------------------------------------------

function applyView() {
  const v = S.view;
  const view = $("view");
  view.style.width = `${S.W * v.fit}px`;
  view.style.height = `${S.H * v.fit}px`;
  view.style.transform = `translate(${v.tx}px, ${v.ty}px) scale(${v.z})`;
  renderPrompts();
}

function fitView() {
  const stage = $("stage").getBoundingClientRect();
  const fit = Math.min(stage.width / S.W, stage.height / S.H);
  S.view = { fit, z: 1, tx: (stage.width - S.W * fit) / 2, ty: (stage.height - S.H * fit) / 2 };
  applyView();
}

function zoomAt(factor, cx, cy) {
  const v = S.view;
  const z = Math.max(0.2, Math.min(64, v.z * factor));
  const f = z / v.z;
  v.tx = cx - (cx - v.tx) * f;
  v.ty = cy - (cy - v.ty) * f;
  v.z = z;
  applyView();
}

function toImage(event) {
  const rect = $("view").getBoundingClientRect();
  return [((event.clientX - rect.left) / rect.width) * S.W, ((event.clientY - rect.top) / rect.height) * S.H];
}

// -- pointer input -----------------------------------------------------------------------------------

let drag = null;
let spaceDown = false;

function onPointerDown(event) {
  if (!S.image) return;
  $("stage").focus();
  const panning = event.button === 1 || (event.button === 0 && spaceDown);
  if (panning) {
    drag = { kind: "pan", x: event.clientX, y: event.clientY, tx: S.view.tx, ty: S.view.ty };
  } else if (S.tool === "prompt" && (event.button === 0 || event.button === 2)) {
    drag = { kind: "prompt", start: toImage(event), sx: event.clientX, sy: event.clientY, button: event.button, shift: event.shiftKey, moved: false };
  } else if (S.tool !== "prompt" && event.button === 0) {
    const stroke = { mode: S.tool === "erase" ? "erase" : "add", r: S.radius, pts: [toImage(event)] };
    drag = { kind: "stroke", stroke, live: S.cur.display.slice() };
    paintStroke(drag.live, S.wh, S.ww, S.H, S.W, stroke);
    paintLive(drag.live);
  } else {
    return;
  }
  $("stage").setPointerCapture(event.pointerId);
  event.preventDefault();
}

function paintLive(mask) {
  const saved = S.cur.display;
  S.cur.display = mask;
  paintMask(null);
  S.cur.display = saved;
}

function onPointerMove(event) {
  if (!drag) return;
  if (drag.kind === "pan") {
    S.view.tx = drag.tx + event.clientX - drag.x;
    S.view.ty = drag.ty + event.clientY - drag.y;
    applyView();
  } else if (drag.kind === "prompt") {
    if (Math.hypot(event.clientX - drag.sx, event.clientY - drag.sy) > 4 && drag.button === 0 && !drag.shift) drag.moved = true;
    if (drag.moved) renderPrompts([...drag.start, ...toImage(event)]);
  } else if (drag.kind === "stroke") {
    const p = toImage(event);
    const pts = drag.stroke.pts;
    paintStroke(drag.live, S.wh, S.ww, S.H, S.W, { ...drag.stroke, pts: [pts[pts.length - 1], p] });
    pts.push(p);
    paintLive(drag.live);
  }
}

function onPointerUp(event) {
  const d = drag;
  drag = null;
  if (!d) return;
  const tEvent = event.timeStamp;
  if (d.kind === "prompt") {
    const end = toImage(event);
    if (d.moved) {
      const box = [Math.min(d.start[0], end[0]), Math.min(d.start[1], end[1]), Math.max(d.start[0], end[0]), Math.max(d.start[1], end[1])];
      S.counters.clicks++;
      commit(withPrompts(S.cur, S.cur.points, S.cur.labels, box), { decode: true, tEvent });
    } else {
      promptClick(d.start, d.button === 2 || d.shift ? 0 : 1, tEvent);
    }
  } else if (d.kind === "stroke") {
    S.counters.strokes++;
    commit({ ...S.cur, strokes: [...S.cur.strokes, d.stroke] }, { tEvent });
  }
}

function promptClick([x, y], label, tEvent) {
  const tol = 8 / screenScale();
  const st = S.cur;
  const hit = st.points.findIndex(([px, py]) => Math.hypot(px - x, py - y) <= tol);
  if (hit >= 0) {
    commit(withPrompts(st, st.points.filter((_, i) => i !== hit), st.labels.filter((_, i) => i !== hit), st.box), { decode: true, tEvent });
    return;
  }
  if (st.box) {
    const corners = [[st.box[0], st.box[1]], [st.box[2], st.box[3]], [st.box[0], st.box[3]], [st.box[2], st.box[1]]];
    if (corners.some(([cx, cy]) => Math.hypot(cx - x, cy - y) <= tol)) {
      commit(withPrompts(st, st.points, st.labels, null), { decode: true, tEvent });
      return;
    }
  }
  S.counters.clicks++;
  commit(withPrompts(st, [...st.points, [x, y]], [...st.labels, label], st.box), { decode: true, tEvent });
}

// -- undo / redo / cancel / accept --------------------------------------------------------------------

function restore(st) {
  S.cur = st;
  S.seq++; // any decode in flight belongs to another state now
  if (hasPrompts(st) && !st.result) requestDecode(performance.now());
  else { paintMask(null); }
  paintObjects(); // an undone "edit mask" shows the object again
  renderPrompts();
  renderCandidates();
}

function undo() {
  if (!S.history.length) return;
  S.future.push(S.cur);
  S.counters.undos++;
  restore(S.history.pop());
}

function redo() {
  if (!S.future.length) return;
  S.history.push(S.cur);
  restore(S.future.pop());
}

function resetObject() {
  S.cur = freshState();
  S.history = [];
  S.future = [];
  S.counters = { clicks: 0, strokes: 0, undos: 0, tFirst: null };
  S.seq++;
  S.hintShown = false;
  $("hint").hidden = true;
  paintMask(null);
  paintObjects();
  renderPrompts();
  renderCandidates();
  updateTimer();
}

function cancel() {
  resetObject();
}

async function fullResolutionMask(st) {
  let full;
  if (hasPrompts(st)) {
    const r = await S.decoder.decode({ ...decodeRequest(st, true), seq: `final-${++S.seq}` });
    const i = r.tokens.indexOf(st.cand);
    const n = S.H * S.W;
    full = r.masks.slice(i * n, (i + 1) * n);
  } else if (st.baseFull) {
    full = st.baseFull.slice();
  } else {
    full = new Uint8Array(S.H * S.W);
  }
  for (const stroke of st.strokes) paintStroke(full, S.H, S.W, S.H, S.W, stroke);
  return full;
}

let accepting = false;

async function accept() {
  const st = S.cur;
  if (!S.image || !hasContent(st) || accepting) return;
  if (hasPrompts(st) && !st.result) return; // its mask is not there yet
  const category = $("category").value.trim();
  if (!category) {
    showError("type or pick a category before accepting");
    $("category").focus();
    return;
  }
  accepting = true;
  try {
    await S.decoderReady;
    const full = await fullResolutionMask(st);
    const { bbox, area } = bboxArea(full, S.H, S.W);
    const seconds = S.counters.tFirst === null ? 0 : (performance.now() - S.counters.tFirst) / 1000;
    const rle = { size: [S.H, S.W], counts: rleEncode(full, S.H, S.W) };
    const imageId = S.image.id;
    if (st.editing !== null) {
      const obj = S.objects.find((o) => o.id === st.editing);
      S.queue.add({ method: "PATCH", url: `/api/objects/${obj.id}`, headers: { "If-Match": `"${obj.version}"` }, imageId,
        body: { rle, category, seconds, clicks: S.counters.clicks, strokes: S.counters.strokes, undos: S.counters.undos }, objectId: obj.id });
    } else {
      S.queue.add({ method: "POST", url: `/api/images/${imageId}/objects`, imageId, bbox, area,
        body: { rle, category, source: "manual", seconds, clicks: S.counters.clicks, strokes: S.counters.strokes, undos: S.counters.undos,
          prompts: { points: st.points, labels: st.labels, box: st.box } } });
    }
    addCategory(category);
    clearError();
    resetObject();
    renderObjects();
  } catch (err) {
    showError(`accept failed: ${err.message}`);
  } finally {
    accepting = false;
  }
}

// -- objects and categories -----------------------------------------------------------------------------

function pendingObjects() {
  if (!S.queue) return [];
  return S.queue.items.filter((it) => it.method === "POST" && it.imageId === S.image?.id)
    .map((it) => ({ id: `pending-${it.key}`, version: 0, pending: true, category: it.body.category, source: it.body.source, rle: it.body.rle }));
}

function visibleObjects() {
  const pendingPatch = new Map();
  const deleted = new Set();
  for (const it of S.queue ? S.queue.items : []) {
    if (it.method === "PATCH") pendingPatch.set(it.objectId, it.body);
    if (it.method === "DELETE") deleted.add(it.objectId);
  }
  const saved = S.objects.filter((o) => !deleted.has(o.id)).map((o) => (pendingPatch.has(o.id) ? { ...o, ...pendingPatch.get(o.id), pending: true } : o));
  return [...saved, ...pendingObjects()];
}

function renderObjects() {
  const list = $("objects");
  list.replaceChildren();
  const objs = visibleObjects();
  for (const obj of objs) {
    const li = document.createElement("li");
    li.dataset.id = String(obj.id);
    const [r, g, b] = colourFor(obj.category);
    li.style.borderLeftColor = `rgb(${r},${g},${b})`;
    const name = document.createElement("span");
    name.className = "category-name";
    name.textContent = obj.category || "(no category)";
    li.append(name);
    if (obj.source && obj.source !== "manual") {
      const src = document.createElement("span");
      src.className = "source";
      src.textContent = obj.source === "auto" ? "pre-filled" : "pre-filled, edited";
      li.append(src);
    }
    if (obj.pending) { li.classList.add("pending"); li.title = "saving…"; }
    if (obj.id === S.selected) li.classList.add("selected");
    li.addEventListener("click", () => { S.selected = obj.id === S.selected ? null : obj.id; renderObjects(); paintObjects(); });
    list.append(li);
  }
  $("object-count").textContent = `(${objs.length})`;
}

function renderCategories() {
  const dl = $("category-list");
  const keys = $("category-keys");
  dl.replaceChildren();
  keys.replaceChildren();
  S.categories.forEach((c, i) => {
    const opt = document.createElement("option");
    opt.value = c.name;
    dl.append(opt);
    if (i < 9) {
      const li = document.createElement("li");
      li.textContent = c.name;
      li.addEventListener("click", () => { $("category").value = c.name; });
      keys.append(li);
    }
  });
}

function addCategory(name) {
  if (!S.categories.some((c) => c.name === name)) {
    S.categories.push({ id: null, name, fixed: false });
    renderCategories();
  }
}

function selectedObject() {
  return S.objects.find((o) => o.id === S.selected) || null;
}

function relabel() {
  const obj = selectedObject();
  const category = $("category").value.trim();
  if (!obj || !category) return;
  S.queue.add({ method: "PATCH", url: `/api/objects/${obj.id}`, headers: { "If-Match": `"${obj.version}"` }, imageId: S.image.id, objectId: obj.id, body: { category } });
  addCategory(category);
  renderObjects();
}

function deleteSelected() {
  const obj = selectedObject();
  if (!obj) return;
  S.queue.add({ method: "DELETE", url: `/api/objects/${obj.id}`, headers: { "If-Match": `"${obj.version}"` }, imageId: S.image.id, objectId: obj.id });
  S.selected = null;
  renderObjects();
  paintObjects();
}

function editSelected() {
  const obj = selectedObject();
  if (!obj || hasContent(S.cur)) return;
  const [h, w] = obj.rle.size;
  const st = freshState();
  st.editing = obj.id;
  st.baseFull = rleDecode(obj.rle.counts, h, w);
  st.baseWork = objectWorkMask(obj).slice();
  $("category").value = obj.category || "";
  commit(st);
  paintObjects();
}

function onSaved(item, data) {
  if (item.imageId !== S.image?.id) return;
  if (item.method === "DELETE") S.objects = S.objects.filter((o) => o.id !== item.objectId);
  else if (data && data.id !== undefined) {
    const i = S.objects.findIndex((o) => o.id === data.id);
    if (i >= 0) S.objects[i] = data; else S.objects.push(data);
  }
  renderObjects();
  paintObjects();
}

async function onSaveRefused(item, err, status, data) {
  showError(`not saved (${status}): ${err.message}`);
  if (status === 409 && data && data.current) onSaved({ ...item, method: "PATCH" }, data.current);
}

function onQueueChange(items, error) {
  const banner = $("save-banner");
  if (error && items.length) {
    banner.hidden = false;
    $("save-banner-text").textContent = `${items.length} change${items.length > 1 ? "s" : ""} not saved yet (${error}); retrying…`;
  } else {
    banner.hidden = true;
  }
  renderObjects();
}

// -- images -----------------------------------------------------------------------------------------------

async function loadImage(id) {
  const image = await S.api.json("GET", `/api/images/${id}`);
  S.image = image;
  S.H = image.height;
  S.W = image.width;
  [S.wh, S.ww] = workSize(S.H, S.W, S.model.image_size);
  for (const c of [$("mask-layer"), $("objects-layer")]) { c.width = S.ww; c.height = S.wh; }
  $("prompt-layer").setAttribute("viewBox", `0 0 ${S.W} ${S.H}`);
  $("prompt-layer").setAttribute("preserveAspectRatio", "none");
  S.objects = image.objects || [];
  S.objectMasks.clear();
  S.selected = null;
  S.radius = Math.max(2, Math.round(Math.max(S.H, S.W) / 100));
  $("brush-radius").textContent = String(S.radius);
  history.replaceState(null, "", `${location.pathname}${location.search}#image=${id}`);
  const photo = $("photo");
  const loaded = new Promise((resolve) => { photo.onload = resolve; photo.onerror = resolve; });
  photo.src = `/api/images/${id}/file`;
  resetObject();
  fitView();
  renderObjects();
  renderImageInfo();
  const embedding = S.decoderReady.then(() => S.decoder.loadEmbedding(`${S.model.id}:${id}`, `/api/images/${id}/embedding.npy`));
  await Promise.all([loaded, embedding.catch((err) => showError(`embedding: ${err.message}`))]);
  window.__segany.ready = true;
  window.__segany.readyMs = performance.now();
  document.body.dataset.ready = "1";
  // Prefetch the next image's embedding so moving on is instant.
  if (image.next_id !== null && image.next_id !== undefined) S.decoder.loadEmbedding(`${S.model.id}:${image.next_id}`, `/api/images/${image.next_id}/embedding.npy`).catch(() => {});
}

function renderImageInfo() {
  const i = S.images.findIndex((im) => im.id === S.image.id);
  $("image-pos").textContent = `${i + 1} / ${S.images.length}`;
  $("image-state").textContent = S.image.state;
  const note = $("review-comment");
  note.hidden = !S.image.review_comment;
  note.textContent = S.image.review_comment ? `Reviewer: ${S.image.review_comment}` : "";
}

function neighbour(step) {
  const key = step > 0 ? "next_id" : "prev_id";
  if (S.image[key] !== undefined && S.image[key] !== null) return S.image[key];
  const i = S.images.findIndex((im) => im.id === S.image.id);
  const j = i + step;
  return j >= 0 && j < S.images.length ? S.images[j].id : null;
}

async function goImage(step) {
  const id = neighbour(step);
  if (id === null) return;
  window.__segany.ready = false;
  document.body.dataset.ready = "0";
  await loadImage(id);
}

async function imageAction(url, body) {
  try {
    S.image = { ...S.image, ...(await S.api.json("POST", url, body)) };
    renderImageInfo();
    clearError();
  } catch (err) {
    showError(`${err.message}`);
  }
}

// -- timer, hint, banners ---------------------------------------------------------------------------------

function updateTimer() {
  const t = S.counters.tFirst;
  const el = $("object-timer");
  if (t === null) { el.textContent = ""; return; }
  const ms = performance.now() - t;
  el.textContent = `${(ms / 1000).toFixed(0)} s on this object`;
  if (ms >= HINT_MS && !S.hintShown) { S.hintShown = true; $("hint").hidden = false; }
}

function showError(message) {
  const b = $("error-banner");
  b.textContent = message;
  b.hidden = false;
}

function clearError() {
  $("error-banner").hidden = true;
}

// -- keyboard ---------------------------------------------------------------------------------------------

function toggleHelp(show) {
  $("help").hidden = show === undefined ? !$("help").hidden : !show;
}

function setTool(tool) {
  S.tool = tool;
  for (const b of document.querySelectorAll("button.tool")) b.classList.toggle("active", b.dataset.tool === tool);
  $("stage").style.cursor = tool === "prompt" ? "crosshair" : "cell";
}

function onKey(event) {
  const inField = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
  const ctrl = event.ctrlKey || event.metaKey;
  if (inField) {
    if (event.target.id === "category" && event.key === "Enter") { event.preventDefault(); event.target.blur(); accept(); }
    else if (event.key === "Escape") event.target.blur();
    return;
  }
  const k = event.key;
  if (!$("help").hidden && (k === "Escape" || k === "?")) { toggleHelp(false); event.preventDefault(); return; }
  if (ctrl && (k === "z" || k === "Z")) { event.preventDefault(); if (event.shiftKey) redo(); else undo(); return; }
  if (ctrl && (k === "y" || k === "Y")) { event.preventDefault(); redo(); return; }
  if (ctrl || event.altKey) return;
  if (k === " ") { spaceDown = true; event.preventDefault(); return; }
  const actions = {
    "?": () => toggleHelp(),
    Enter: accept, f: accept, Escape: cancel,
    Tab: () => cycleCandidate(event.shiftKey ? -1 : 1),
    q: () => chooseCandidate(1), w: () => chooseCandidate(2), e: () => chooseCandidate(3),
    v: () => setTool("prompt"), b: () => setTool("brush"), x: () => setTool("erase"),
    "[": () => setRadius(S.radius / 1.25), "]": () => setRadius(S.radius * 1.25),
    a: () => goImage(-1), d: () => goImage(1),
    r: relabel, Delete: deleteSelected, Backspace: deleteSelected,
    "+": () => zoomKey(1.25), "=": () => zoomKey(1.25), "-": () => zoomKey(0.8), "0": fitView,
  };
  if (/^[1-9]$/.test(k)) {
    const c = S.categories[Number(k) - 1];
    if (c) $("category").value = c.name;
    event.preventDefault();
    return;
  }
  const act = actions[k];
  if (act) { event.preventDefault(); act(); }
}

function setRadius(r) {
  S.radius = Math.max(1, Math.round(r * 10) / 10);
  $("brush-radius").textContent = String(S.radius);
}

function zoomKey(f) {
  const r = $("stage").getBoundingClientRect();
  zoomAt(f, r.width / 2, r.height / 2);
}

// -- start ------------------------------------------------------------------------------------------------

function startDecoder() {
  const threads = params.has("threads") ? Number(params.get("threads")) : undefined;
  const fallback = (reason) => {
    const banner = $("wasm-banner");
    banner.textContent = `The in-browser decoder (WebAssembly) could not start: ${reason}. Masks now come from the server's decoder, one round trip per click.`;
    banner.hidden = false;
    S.decoder = new RemoteDecoder(S.api);
    $("decoder-status").textContent = "decoder: server";
    return S.decoder;
  };
  if (params.get("decoder") === "server") { S.decoderReady = Promise.resolve(fallback("disabled by ?decoder=server")); return; }
  let worker;
  try {
    worker = new WorkerDecoder();
  } catch (err) {
    S.decoderReady = Promise.resolve(fallback(err.message));
    return;
  }
  S.decoderReady = worker.init(S.model, threads, S.model.mask_threshold ?? 0.0).then(
    (info) => {
      S.decoder = worker;
      $("decoder-status").textContent = `decoder: in browser, ${info.threads} thread${info.threads > 1 ? "s" : ""}`;
      window.__segany.decoderInfo = { ...info, readyMs: performance.now() };
      return worker;
    },
    (err) => { worker.worker.terminate(); return fallback(err.message); },
  );
}

function buildHelp() {
  const table = $("help-table");
  for (const [keys, what] of SHORTCUTS) {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    a.textContent = keys;
    const b = document.createElement("td");
    b.textContent = what;
    tr.append(a, b);
    table.append(tr);
  }
}

function wire() {
  const stage = $("stage");
  stage.addEventListener("pointerdown", onPointerDown);
  stage.addEventListener("pointermove", onPointerMove);
  stage.addEventListener("pointerup", onPointerUp);
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = stage.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", (e) => { if (e.key === " ") spaceDown = false; });
  window.addEventListener("resize", () => S.image && fitView());
  window.addEventListener("hashchange", () => {
    const m = /image=([^&]+)/.exec(location.hash);
    if (m && S.image && String(S.image.id) !== m[1]) loadImage(decodeURIComponent(m[1]));
  });
  for (const b of document.querySelectorAll("button.tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("accept").addEventListener("click", accept);
  $("cancel").addEventListener("click", cancel);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("prev-image").addEventListener("click", () => goImage(-1));
  $("next-image").addEventListener("click", () => goImage(1));
  $("relabel").addEventListener("click", relabel);
  $("delete-object").addEventListener("click", deleteSelected);
  $("edit-object").addEventListener("click", editSelected);
  $("help-button").addEventListener("click", () => toggleHelp());
  $("save-retry").addEventListener("click", () => S.queue.retryNow());
  $("submit-image").addEventListener("click", () => imageAction(`/api/images/${S.image.id}/submit`, {}));
  $("review-mode").addEventListener("change", (e) => { $("review-panel").hidden = !e.target.checked; });
  const review = (decision) => imageAction(`/api/images/${S.image.id}/review`, { decision, comment: $("review-text").value });
  $("review-accept").addEventListener("click", () => review("accept"));
  $("review-reject").addEventListener("click", () => review("reject"));
  setInterval(updateTimer, 1000);
}

async function main() {
  buildHelp();
  wire();
  if (params.get("review") === "1") { $("review-mode").checked = true; $("review-panel").hidden = false; }
  try {
    const session = await signIn(S.api);
    S.api.csrf = session.csrf || null;
    S.session = session;
    const roles = session.roles || [];
    if (roles.includes("reviewer") && !roles.includes("annotator") && !roles.includes("admin")) {
      $("review-mode").checked = true;
      $("review-panel").hidden = false;
    }
    S.model = await S.api.json("GET", "/api/model");
    startDecoder();
    const projects = await S.api.json("GET", "/api/projects");
    if (!projects.length) { showError("no project on this server"); return; }
    S.project = projects.find((p) => String(p.id) === params.get("project")) || projects[0];
    $("project-name").textContent = S.project.name;
    S.images = await S.api.json("GET", `/api/projects/${S.project.id}/images`);
    S.categories = await S.api.json("GET", `/api/projects/${S.project.id}/categories`);
    renderCategories();
    S.queue = new SaveQueue(S.api, { onChange: onQueueChange, onDone: onSaved, onFail: onSaveRefused });
    S.queue.run(); // changes left unsaved by an earlier visit
    if (!S.images.length) { showError("this project has no images"); return; }
    const m = /image=([^&]+)/.exec(location.hash);
    const wanted = m ? decodeURIComponent(m[1]) : null;
    const first = S.images.find((im) => String(im.id) === wanted) || S.images.find((im) => im.state === "todo" || im.state === "in_progress") || S.images[0];
    await loadImage(first.id);
  } catch (err) {
    showError(`could not start: ${err.message}`);
  }
}

main();
