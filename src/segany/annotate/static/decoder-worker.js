// Web Worker running SAM's prompt encoder + mask decoder (the exported decoder.onnx) with
// onnxruntime-web's WebAssembly backend, so the page's main thread never blocks on a decode.
//
// Messages in:  {type: "init", modelUrl, threads}            -> {type: "ready", threads, isolated, version}
//               {type: "embedding", key, url}                  -> {type: "embedding", key} (cached, LRU of 4)
//               {type: "decode", seq, key, coords, labels, maskInput, outH, outW, final}
//                 -> {type: "result", seq, masks (Uint8Array C*outH*outW, logits > threshold), ious,
//                     lowres (Float32Array C*lh*lw), lowShape [lh, lw], ms, final}
// Interactive decodes are "latest wins": a request still queued when a newer one arrives is answered
// {type: "dropped", seq}. Final (full-resolution, on accept) decodes are never dropped.
import { parseNpy } from "./sam.js";

let ort = null;
let session = null;
let threshold = 0.0;
const embeddings = new Map(); // key -> {tensor} | {promise}
let pending = null; // latest interactive request not yet started
const finals = []; // full-resolution requests, in order
let running = false;

function post(msg, transfer = []) {
  self.postMessage(msg, transfer);
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
    const response = await fetch(msg.modelUrl);
    if (!response.ok) throw new Error(`decoder model: HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    post({ type: "ready", threads: ort.env.wasm.numThreads, isolated, version: ort.env.versions?.web || "" });
  } catch (err) {
    post({ type: "error", stage: "init", message: String(err && err.message ? err.message : err) });
  }
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
    entry.tensor = new ort.Tensor("float32", data, shape);
    return entry.tensor;
  })();
  embeddings.set(key, entry);
  while (embeddings.size > 4) embeddings.delete(embeddings.keys().next().value);
  entry.promise.catch(() => embeddings.delete(key));
  return entry.promise;
}

async function decode(req) {
  const entry = embeddings.get(req.key);
  if (!entry) throw new Error(`no embedding loaded for ${req.key}`);
  const emb = await entry.promise;
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
  const out = await session.run(feeds);
  const ms = performance.now() - t0;
  const logits = out.masks.data;
  const masks = new Uint8Array(logits.length);
  for (let i = 0; i < logits.length; i++) masks[i] = logits[i] > threshold ? 1 : 0;
  const ious = Float32Array.from(out.iou_predictions.data);
  const lowres = Float32Array.from(out.low_res_masks.data);
  for (const t of Object.values(out)) t.dispose?.();
  return { masks, ious, lowres, lowShape: [out.low_res_masks.dims[2], out.low_res_masks.dims[3]], ms };
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
