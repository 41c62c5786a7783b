// SAM prompt geometry shared by the page and the decoder worker: the same arithmetic as segany's
// Python code (segany.ops.transforms.ResizeLongestSide), so the page's masks equal Python's.

/** Size [h, w] after scaling the long side to `longSide`, rounded as Python's int(x + 0.5). */
export function preprocessShape(h, w, longSide) {
  const scale = (longSide * 1.0) / Math.max(h, w);
  return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
}

/** Image pixel (x, y) -> the model's input frame, per axis as ResizeLongestSide.apply_coords. */
export function applyCoords(points, h, w, longSide) {
  const [nh, nw] = preprocessShape(h, w, longSide);
  return points.map(([x, y]) => [x * (nw / w), y * (nh / h)]);
}

/**
 * The decoder's prompt inputs, as the official export expects them: points (labels 1/0), then the
 * box as two corners labelled 2 and 3, or a (0, 0) padding point labelled -1 when there is no box.
 * Returns {coords: Float32Array(2K), labels: Float32Array(K), k}.
 */
export function promptFeeds(points, labels, box, h, w, longSide) {
  const pts = points.slice();
  const labs = labels.slice();
  if (box) {
    pts.push([box[0], box[1]], [box[2], box[3]]);
    labs.push(2, 3);
  }
  const scaled = applyCoords(pts, h, w, longSide);
  if (!box) {
    scaled.push([0, 0]);
    labs.push(-1);
  }
  const k = labs.length;
  const coords = new Float32Array(2 * k);
  scaled.forEach(([x, y], i) => { coords[2 * i] = x; coords[2 * i + 1] = y; });
  return { coords, labels: Float32Array.from(labs), k };
}

/** The candidate the official export's return_single_mask picks: token 0 when the prompt has >= 3
 *  points (padding included), else the multimask token with the best predicted IoU. */
export function defaultCandidate(ious, k) {
  if (k >= 3 || ious.length < 2) return 0;
  let best = 1;
  for (let i = 2; i < ious.length; i++) if (ious[i] > ious[best]) best = i;
  return best;
}

/**
 * Size at which masks are drawn while editing: the image itself when its long side is at most
 * `maxLong`, else scaled down with the same rounding, nudged so the decoder crops the same valid
 * region as for the full image (its crop is computed from the requested size).
 */
export function workSize(h, w, longSide, maxLong = 1024) {
  if (Math.max(h, w) <= maxLong) return [h, w];
  const k = maxLong / Math.max(h, w);
  let wh = Math.max(1, Math.floor(h * k + 0.5));
  let ww = Math.max(1, Math.floor(w * k + 0.5));
  const want = preprocessShape(h, w, longSide).join();
  for (const d of [0, 1, -1, 2, -2]) {
    const th = h >= w ? wh : wh + d;
    const tw = h >= w ? ww + d : ww;
    if (th > 0 && tw > 0 && preprocessShape(th, tw, longSide).join() === want) return [th, tw];
  }
  return [wh, ww];
}

/** Source index of output `dst` for a 1-D bilinear resize `nIn -> nOut` (align_corners=False), in
 *  float32 as PyTorch's F.interpolate computes it: [i0, i1, w0, w1]. */
function linearSource(dst, nIn, nOut) {
  const f = Math.fround;
  const scale = f(nIn / nOut);
  let src = f(f(scale * (dst + 0.5)) - 0.5);
  if (src < 0) src = 0;
  const i0 = Math.floor(src);
  const w1 = f(src - i0);
  return [i0, i0 < nIn - 1 ? i0 + 1 : i0, f(1 - w1), w1];
}

/**
 * One axis of segany's mask post-processing (segany.ops.postprocess.axis_resize): bilinear
 * `nLow -> square` (the model's input frame), keep the first `valid` (the image without its
 * padding), bilinear `valid -> nOut`. Composed into at most `taps` consecutive low-resolution
 * indices per output: {start: Int32Array(nOut), weights: Float32Array(nOut * taps), taps}.
 */
export function axisTaps(nLow, square, valid, nOut) {
  const per = [];
  let taps = 1;
  for (let i = 0; i < nOut; i++) {
    const acc = new Map();
    const [j0, j1, a0, a1] = linearSource(i, valid, nOut);
    for (const [j, a] of [[j0, a0], [j1, a1]]) {
      const [k0, k1, b0, b1] = linearSource(j, nLow, square);
      acc.set(k0, (acc.get(k0) || 0) + a * b0);
      acc.set(k1, (acc.get(k1) || 0) + a * b1);
    }
    const used = [...acc.entries()].filter(([, w]) => w !== 0);
    const lo = Math.min(...used.map(([k]) => k));
    const hi = Math.max(...used.map(([k]) => k));
    taps = Math.max(taps, hi - lo + 1);
    per.push([lo, used]);
  }
  const start = new Int32Array(nOut);
  const weights = new Float32Array(nOut * taps);
  per.forEach(([lo, used], i) => {
    const s0 = Math.min(lo, nLow - taps); // every window inside the axis
    start[i] = s0;
    for (const [k, w] of used) weights[i * taps + (k - s0)] += w;
  });
  return { start, weights, taps };
}

const scratches = new Map();
/** A typed array of at least `size` elements kept for reuse (contents left from the previous use). */
function scratch(name, Type, size) {
  let a = scratches.get(name);
  if (!a || a.length < size) {
    a = new Type(size);
    scratches.set(name, a);
  }
  return a.length === size ? a : a.subarray(0, size);
}

const tapCache = new Map();
function cachedTaps(nLow, square, valid, nOut) {
  const key = `${nLow},${square},${valid},${nOut}`;
  if (!tapCache.has(key)) {
    if (tapCache.size > 16) tapCache.clear();
    tapCache.set(key, axisTaps(nLow, square, valid, nOut));
  }
  return tapCache.get(key);
}

/**
 * Low-resolution mask logits -> masks at (outH, outW), as segany's Python code does it
 * (segany.ops.postprocess.upscale_masks): bilinear to the `imageSize` square, crop the padding (the
 * resized image's size, from outH x outW as the official graph computes it), bilinear to outH x outW,
 * logits > threshold. `low`: Float32Array (m, lh, lw). Returns Uint8Array (m, outH, outW) of 0/1.
 *
 * Both resizes are linear and act on rows and columns separately: each output logit is a weighted
 * mean (weights >= 0, summing to 1) of a small window of low-resolution logits. Where the whole window
 * lies on one side of the threshold the pixel is decided without computing it; elsewhere (near mask
 * edges) the logit is interpolated separably: low-resolution rows resized along x (each computed once,
 * when first needed), then combined along y.
 */
export function upscaleMasks(low, m, lh, lw, imageSize, outH, outW, threshold) {
  const [vh, vw] = preprocessShape(outH, outW, imageSize);
  const cols = cachedTaps(lw, imageSize, vw, outW);
  const rows = cachedTaps(lh, imageSize, vh, outH);
  const ct = cols.taps, cs = cols.start, cw = cols.weights;
  const rt = rows.taps, rs = rows.start, rw = rows.weights;
  // side[(c, r, x)] for the window of rt x ct logits starting at (r, x): 1 all above, 0 all at or
  // below the threshold, 2 mixed. Separable: along x first, then along y.
  const n = lh * lw;
  const rowSide = new Uint8Array(m * n);
  for (let i = 0; i < m * lh; i++) {
    const b = i * lw;
    for (let x = 0; x + ct <= lw; x++) {
      let above = 0;
      for (let t = 0; t < ct; t++) above += low[b + x + t] > threshold ? 1 : 0;
      rowSide[b + x] = above === ct ? 1 : above === 0 ? 0 : 2;
    }
  }
  const side = new Uint8Array(m * n);
  for (let c = 0; c < m; c++) {
    for (let r = 0; r + rt <= lh; r++) {
      const b = c * n + r * lw;
      for (let x = 0; x + ct <= lw; x++) {
        let v = rowSide[b + x];
        for (let t = 1; t < rt && v !== 2; t++) if (rowSide[b + t * lw + x] !== v) v = 2;
        side[b + x] = v;
      }
    }
  }
  // Runs of output columns that read the same window: one decision per run.
  const starts = [];
  for (let x = 0; x < outW; x++) if (x === 0 || cs[x] !== cs[x - 1]) starts.push(x);
  starts.push(outW);
  const runs = Int32Array.from(starts);
  // Low rows resized along x, filled on demand (scratch reused from call to call: no 4 MB of fresh,
  // zeroed memory per click).
  const table = scratch("table", Float32Array, m * lh * outW);
  const ready = scratch("ready", Uint8Array, m * lh).fill(0);
  const base = new Int32Array(rt);
  const wts = new Float32Array(rt);
  const out = new Uint8Array(m * outH * outW);
  for (let c = 0; c < m; c++) {
    for (let y = 0; y < outH; y++) {
      const sb = c * n + rs[y] * lw;
      const o = (c * outH + y) * outW;
      let nt = -1;
      for (let k = 0; k + 1 < runs.length; k++) {
        const x0 = runs[k], x1 = runs[k + 1];
        const v = side[sb + cs[x0]];
        if (v === 1) for (let x = x0; x < x1; x++) out[o + x] = 1;
        if (v !== 2) continue; // 0: already zero
        if (nt < 0) { // the rows with a non-zero weight for this output row, resized along x
          nt = 0;
          for (let t = 0; t < rt; t++) {
            const w = rw[y * rt + t];
            if (w === 0) continue;
            const i = c * lh + rs[y] + t;
            wts[nt] = w;
            base[nt++] = i * outW;
            if (ready[i]) continue;
            ready[i] = 1;
            const src = i * lw;
            for (let x = 0; x < outW; x++) {
              let sum = 0;
              for (let u = 0; u < ct; u++) sum += cw[x * ct + u] * low[src + cs[x] + u];
              table[i * outW + x] = sum;
            }
          }
        }
        for (let x = x0; x < x1; x++) {
          let sum = 0;
          for (let t = 0; t < nt; t++) sum += wts[t] * table[base[t] + x];
          out[o + x] = sum > threshold ? 1 : 0;
        }
      }
    }
  }
  return out;
}

/** Parse `.npy` bytes (little-endian float32, C order) -> {data: Float32Array, shape}. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.slice(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const order = /'fortran_order':\s*(True|False)/.exec(header);
  const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || descr[1] !== "<f4") throw new Error(`.npy dtype must be <f4, got ${descr && descr[1]}`);
  if (!order || order[1] !== "False") throw new Error(".npy must be C ordered");
  const shape = shapeM[1].split(",").map((s) => s.trim()).filter((s) => s).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  // NumPy pads the header to 64 bytes, so the data is 4-aligned; copy anyway if it is not.
  const data = offset % 4 === 0 ? new Float32Array(buffer, offset, n) : new Float32Array(buffer.slice(offset, offset + 4 * n));
  return { data, shape };
}

/** float32 data + shape -> `.npy` (version 1.0) bytes. */
export function npyBytes(data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}

export function bytesToBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function base64ToBuffer(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out.buffer;
}
