// Web Worker running SAM's prompt encoder + mask decoder with onnxruntime-web's WebAssembly backend,
// so the page's main thread never blocks on a decode.
//
// Two ways to decode, chosen at init:
// - "split" (preferred): segany's split decoder. image_cache.onnx runs once per image (embedding ->
//   the first layer's cached image-side projections; again per click only when a previous mask is
//   fed back, since the mask changes them) and decoder_lowres.onnx once per click (prompts + cache ->
//   low-resolution logits and IoUs); the logits become masks here, by segany's post-processing
//   (sam.js upscaleMasks). Much less work per click than the official graph.
// - "official": the official-compatible decoder.onnx, which upscales inside the graph; used when the
//   split files are not offered or cannot be loaded.
//
// Messages in:  {type: "init", modelUrl, split: {cacheUrl, lowresUrl, precision} | null, imageSize,
//                threads, threshold}
//                 -> {type: "ready", threads, isolated, version, decoder ("split" | "official"),
//                     precision, files (URLs loaded), splitError (why split was not used, or "")}
//               {type: "embedding", key, url}                  -> {type: "embedding", key} (cached, LRU of 4)
//               {type: "decode", seq, key, coords, labels, maskInput, outH, outW, final}
//                 -> {type: "result", seq, masks (Uint8Array C*outH*outW, logits > threshold), ious,
//                     lowres (Float32Array C*lh*lw), lowShape [lh, lw], ms (session.run time, all
//                     graphs of this click), cacheMs (split: of which image_cache, on a fed-back mask),
//                     upscaleMs (split: low-res logits -> masks), final}
// Interactive decodes are "latest wins": a request still queued when a newer one arrives is answered
// {type: "dropped", seq}. Final (full-resolution, on accept) decodes are never dropped.
import { parseNpy, upscaleMasks } from "./sam.js";

let ort = null;
let session = null; // decoder.onnx ("official")
let cacheSession = null; // image_cache.onnx ("split")
let lowresSession = null; // decoder_lowres.onnx ("split")
let imageSize = 1024;
let threshold = 0.0;
const embeddings = new Map(); // key -> {promise} resolving to {emb, cache}
let pending = null; // latest interactive request not yet started
const finals = []; // full-resolution requests, in order
let running = false;
let chain = Promise.resolve(); // session runs, one at a time (embedding caches and decodes interleave)

function post(msg, transfer = []) {
  self.postMessage(msg, transfer);
}

function exclusive(fn) {
  const result = chain.then(fn);
  chain = result.catch(() => {});
  return result;
}

async function fetchModel(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${what}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

function createSession(bytes) {
  return ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

async function init(msg) {
  try {
    ort = await import("./vendor/onnxruntime-web/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
    const isolated = self.crossOriginIsolated === true;
    // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages.
    const hw = self.navigator.hardwareConcurrency || 1;
    ort.env.wasm.numThreads = isolated ? Math.max(1, Math.min(msg.threads || hw, 4)) : 1;
    ort.env.wasm.proxy = false;
    threshold = msg.threshold ?? 0.0;
    imageSize = msg.imageSize || imageSize;
    let splitError = "";
    const files = [];
    if (msg.split && msg.split.cacheUrl && msg.split.lowresUrl) {
      try {
        const [c, l] = await Promise.all([
          fetchModel(msg.split.cacheUrl, "image cache model"), fetchModel(msg.split.lowresUrl, "low-res decoder model"),
        ]);
        cacheSession = await createSession(c);
        lowresSession = await createSession(l);
        files.push(msg.split.cacheUrl, msg.split.lowresUrl);
      } catch (err) {
        // An older server or cache without the split graphs: the official graph still works.
        splitError = String(err && err.message ? err.message : err);
        cacheSession = lowresSession = null;
      }
    } else {
      splitError = "not offered by the server";
    }
    if (!lowresSession) {
      session = await createSession(await fetchModel(msg.modelUrl, "decoder model"));
      files.push(msg.modelUrl);
    }
    post({
      type: "ready", threads: ort.env.wasm.numThreads, isolated, version: ort.env.versions?.web || "",
      decoder: lowresSession ? "split" : "official", precision: lowresSession ? msg.split.precision || "fp32" : "fp32",
      files, splitError,
    });
  } catch (err) {
    post({ type: "error", stage: "init", message: String(err && err.message ? err.message : err) });
  }
}

/** image_cache.onnx on an embedding tensor and an optional (1, 1, lh, lw) mask -> {src, k1, v1, q1}. */
function runCache(emb, mask) {
  const lh = emb.dims[2] * 4;
  const lw = emb.dims[3] * 4;
  return exclusive(() => cacheSession.run({
    image_embeddings: emb,
    mask_input: new ort.Tensor("float32", mask || new Float32Array(lh * lw), [1, 1, lh, lw]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([mask ? 1 : 0]), [1]),
  }));
}

function loadEmbedding(key, url) {
  if (embeddings.has(key)) {
    const hit = embeddings.get(key);
    embeddings.delete(key);
    embeddings.set(key, hit); // most recently used last
    return hit.promise;
  }
  const entry = {};
  entry.promise = (async () => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`embedding: HTTP ${response.status}`);
    const { data, shape } = parseNpy(await response.arrayBuffer());
    const emb = new ort.Tensor("float32", data, shape);
    // Split decoder: the image-side cache is computed once here and kept with the embedding.
    const cache = lowresSession ? await runCache(emb, null) : null;
    return { emb, cache };
  })();
  embeddings.set(key, entry);
  // Evicted entries are left to the garbage collector (a decode may still hold them).
  while (embeddings.size > 4) embeddings.delete(embeddings.keys().next().value);
  entry.promise.catch(() => embeddings.delete(key));
  return entry.promise;
}

async function decodeOfficial(req, emb) {
  const k = req.labels.length;
  const lh = emb.dims[2] * 4;
  const lw = emb.dims[3] * 4;
  const feeds = {
    image_embeddings: emb,
    point_coords: new ort.Tensor("float32", req.coords, [1, k, 2]),
    point_labels: new ort.Tensor("float32", req.labels, [1, k]),
    mask_input: new ort.Tensor("float32", req.maskInput || new Float32Array(lh * lw), [1, 1, lh, lw]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([req.maskInput ? 1 : 0]), [1]),
    orig_im_size: new ort.Tensor("float32", new Float32Array([req.outH, req.outW]), [2]),
  };
  const t0 = performance.now();
  const out = await exclusive(() => session.run(feeds));
  const ms = performance.now() - t0;
  const logits = out.masks.data;
  const masks = new Uint8Array(logits.length);
  for (let i = 0; i < logits.length; i++) masks[i] = logits[i] > threshold ? 1 : 0;
  const ious = Float32Array.from(out.iou_predictions.data);
  const lowres = Float32Array.from(out.low_res_masks.data);
  const lowShape = [out.low_res_masks.dims[2], out.low_res_masks.dims[3]];
  for (const t of Object.values(out)) t.dispose?.();
  return { masks, ious, lowres, lowShape, ms, cacheMs: 0, upscaleMs: 0 };
}

async function decodeSplit(req, emb, imageCache) {
  const k = req.labels.length;
  const t0 = performance.now();
  // A fed-back mask changes the cached projections: recompute them for this click only.
  const cache = req.maskInput ? await runCache(emb, req.maskInput) : imageCache;
  const cacheMs = cache === imageCache ? 0 : performance.now() - t0;
  const out = await exclusive(() => lowresSession.run({
    src: cache.src, k1: cache.k1, v1: cache.v1, q1: cache.q1,
    point_coords: new ort.Tensor("float32", req.coords, [1, k, 2]),
    point_labels: new ort.Tensor("float32", req.labels, [1, k]),
  }));
  const t1 = performance.now();
  if (cache !== imageCache) for (const t of Object.values(cache)) t.dispose?.();
  const [, m, lh, lw] = out.low_res_masks.dims;
  const lowres = new Float32Array(out.low_res_masks.data); // a copy: the result transfers its buffer
  const ious = new Float32Array(out.iou_predictions.data);
  for (const t of Object.values(out)) t.dispose?.();
  const masks = upscaleMasks(lowres, m, lh, lw, imageSize, req.outH, req.outW, threshold);
  return { masks, ious, lowres, lowShape: [lh, lw], ms: t1 - t0, cacheMs, upscaleMs: performance.now() - t1 };
}

async function decode(req) {
  const entry = embeddings.get(req.key);
  if (!entry) throw new Error(`no embedding loaded for ${req.key}`);
  const { emb, cache } = await entry.promise;
  return lowresSession ? decodeSplit(req, emb, cache) : decodeOfficial(req, emb);
}

async function pump() {
  if (running) return;
  running = true;
  try {
    while (finals.length || pending) {
      const req = finals.length ? finals.shift() : pending;
      if (req === pending) pending = null;
      try {
        const r = await decode(req);
        post({ type: "result", seq: req.seq, final: !!req.final, ...r }, [r.masks.buffer, r.lowres.buffer]);
      } catch (err) {
        post({ type: "error", stage: "decode", seq: req.seq, final: !!req.final, message: String(err && err.message ? err.message : err) });
      }
    }
  } finally {
    running = false;
  }
}

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "init") {
    init(msg);
  } else if (msg.type === "embedding") {
    loadEmbedding(msg.key, msg.url).then(
      () => post({ type: "embedding", key: msg.key }),
      (err) => post({ type: "error", stage: "embedding", key: msg.key, message: String(err.message || err) }),
    );
  } else if (msg.type === "decode") {
    if (msg.final) {
      finals.push(msg);
    } else {
      if (pending) post({ type: "dropped", seq: pending.seq });
      pending = msg;
    }
    pump();
  }
};
