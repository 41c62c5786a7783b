// Two decoders with one interface: the in-browser WebAssembly worker, and the server's /predict as
// the fallback when WebAssembly cannot load. decode() resolves to null for a superseded request.
import { base64ToBuffer, bytesToBase64, npyBytes, parseNpy } from "./sam.js";
import { rleDecode, resizeNearest } from "./mask.js";

export class WorkerDecoder {
  constructor() {
    this.kind = "wasm";
    this.worker = new Worker(new URL("./decoder-worker.js", import.meta.url), { type: "module" });
    this.waiting = new Map(); // seq -> {resolve, reject}
    this.embeddingWaits = new Map(); // key -> [{resolve, reject}]
    this.ready = null;
    this.timings = [];
    this.worker.onmessage = (event) => this.onMessage(event.data);
  }

  /** `model`: the server's /api/model answer (decoder_url, and decoder_split when it offers segany's
   *  split decoder, which the worker prefers), or just the official decoder's URL. */
  init(model, threads, threshold) {
    this.ready = new Promise((resolve, reject) => {
      this.onReady = resolve;
      this.onInitError = reject;
    });
    const info = typeof model === "string" ? { decoder_url: model } : model;
    const split = info.decoder_split
      ? { cacheUrl: info.decoder_split.image_cache_url, lowresUrl: info.decoder_split.decoder_lowres_url,
        precision: info.decoder_split.precision }
      : null;
    this.worker.onerror = (event) => this.onInitError?.(new Error(event.message || "decoder worker failed to start"));
    this.worker.postMessage({
      type: "init", modelUrl: info.decoder_url, split, imageSize: info.image_size, threads, threshold,
    });
    return this.ready;
  }

  onMessage(msg) {
    if (msg.type === "ready") {
      this.info = msg;
      this.onReady(msg);
    } else if (msg.type === "embedding") {
      for (const w of this.embeddingWaits.get(msg.key) || []) w.resolve();
      this.embeddingWaits.delete(msg.key);
    } else if (msg.type === "result" || msg.type === "dropped") {
      // Per decode: graph time and (split decoder) upscaling time in the worker, for benchmarks.
      if (msg.type === "result") {
        this.timings.push({ ms: msg.ms, cacheMs: msg.cacheMs, upscaleMs: msg.upscaleMs, final: msg.final });
        if (this.timings.length > 1000) this.timings.shift();
      }
      const w = this.waiting.get(msg.seq);
      this.waiting.delete(msg.seq);
      w?.resolve(msg.type === "result" ? { ...msg, tokens: [...msg.ious.keys()] } : null);
    } else if (msg.type === "error") {
      if (msg.stage === "init") this.onInitError(new Error(msg.message));
      else if (msg.stage === "embedding") {
        for (const w of this.embeddingWaits.get(msg.key) || []) w.reject(new Error(msg.message));
        this.embeddingWaits.delete(msg.key);
      } else {
        const w = this.waiting.get(msg.seq);
        this.waiting.delete(msg.seq);
        w?.reject(new Error(msg.message));
      }
    }
  }

  loadEmbedding(key, url) {
    return new Promise((resolve, reject) => {
      if (!this.embeddingWaits.has(key)) this.embeddingWaits.set(key, []);
      this.embeddingWaits.get(key).push({ resolve, reject });
      this.worker.postMessage({ type: "embedding", key, url });
    });
  }

  decode(req) {
    return new Promise((resolve, reject) => {
      this.waiting.set(req.seq, { resolve, reject });
      this.worker.postMessage({
        type: "decode", seq: req.seq, key: req.key, coords: req.coords, labels: req.feedLabels,
        maskInput: req.maskInput, outH: req.outH, outW: req.outW, final: req.final,
      });
    });
  }
}

/** Server-side decoding through POST /api/images/{id}/predict (segany's Python predictor). */
export class RemoteDecoder {
  constructor(api) {
    this.kind = "server";
    this.api = api;
    this.latest = 0;
  }

  async loadEmbedding() {}

  async decode(req) {
    if (!req.final) this.latest = req.seq;
    const body = {
      points: req.points, labels: req.labels, box: req.box,
      mask_input: req.maskInput ? bytesToBase64(npyBytes(req.maskInput, [1, req.lowShape[0], req.lowShape[1]])) : null,
      multimask: req.k < 3,
    };
    const t0 = performance.now();
    const out = await this.api.json("POST", `/api/images/${req.imageId}/predict`, body);
    if (!req.final && req.seq !== this.latest) return null;
    const low = parseNpy(base64ToBuffer(out.low_res));
    const [n, lh, lw] = low.shape.slice(-3);
    const masks = new Uint8Array(n * req.outH * req.outW);
    out.masks.forEach((rle, i) => {
      const [h, w] = rle.size;
      const full = rleDecode(rle.counts, h, w);
      masks.set(resizeNearest(full, h, w, req.outH, req.outW), i * req.outH * req.outW);
    });
    return {
      seq: req.seq, final: req.final, masks, ious: Float32Array.from(out.scores), lowres: Float32Array.from(low.data),
      lowShape: [lh, lw], ms: performance.now() - t0, tokens: n === 1 ? [0] : [1, 2, 3].slice(0, n),
    };
  }
}
