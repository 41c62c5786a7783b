// Binary masks (Uint8Array, row-major, 1 = inside): COCO compressed RLE, resizing, brush strokes.

/** Row-major mask (h x w) -> COCO compressed RLE counts string (column-major runs, as pycocotools). */
export function rleEncode(mask, h, w) {
  const counts = [];
  let prev = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = mask[y * w + x] ? 1 : 0;
      if (v !== prev) { counts.push(run); run = 0; prev = v; }
      run++;
    }
  }
  counts.push(run);
  let s = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x = Math.floor(x / 32); // arithmetic shift without the 32-bit limit of >>
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

/** COCO compressed RLE counts string -> row-major mask (h x w). */
export function rleDecode(str, h, w) {
  const counts = [];
  let p = 0;
  while (p < str.length) {
    let x = 0;
    let k = 0;
    let more = true;
    let c = 0;
    while (more) {
      c = str.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
    }
    if (c & 0x10) x -= 2 ** (5 * k);
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let idx = 0;
  let v = 0;
  for (const n of counts) {
    if (v) for (let i = idx; i < idx + n; i++) mask[(i % h) * w + Math.floor(i / h)] = 1;
    idx += n;
    v ^= 1;
  }
  return mask;
}

/** Nearest-neighbour resize of a row-major mask (pixel centres mapped as cv2.INTER_NEAREST_EXACT). */
export function resizeNearest(src, sh, sw, dh, dw) {
  if (sh === dh && sw === dw) return src.slice();
  const out = new Uint8Array(dh * dw);
  const xs = new Int32Array(dw);
  for (let x = 0; x < dw; x++) xs[x] = Math.min(sw - 1, Math.floor(((x + 0.5) * sw) / dw));
  for (let y = 0; y < dh; y++) {
    const sy = Math.min(sh - 1, Math.floor(((y + 0.5) * sh) / dh)) * sw;
    const row = y * dw;
    for (let x = 0; x < dw; x++) out[row + x] = src[sy + xs[x]];
  }
  return out;
}

/**
 * Paint a brush stroke into `mask` (h x w pixels covering an image of imgH x imgW pixels): every pixel
 * whose centre, in image coordinates, lies within `stroke.r` image pixels of the stroke's polyline is
 * set to 1 (brush) or 0 (eraser). The same rule at any mask size, so the work-size and the
 * full-resolution masks agree.
 */
export function paintStroke(mask, h, w, imgH, imgW, stroke) {
  const sx = imgW / w;
  const sy = imgH / h;
  const value = stroke.mode === "erase" ? 0 : 1;
  const r = stroke.r;
  const r2 = r * r;
  const pts = stroke.pts.length === 1 ? [stroke.pts[0], stroke.pts[0]] : stroke.pts;
  for (let i = 0; i + 1 < pts.length; i++) {
    const [ax, ay] = pts[i];
    const [bx, by] = pts[i + 1];
    const x0 = Math.max(0, Math.floor((Math.min(ax, bx) - r) / sx - 1));
    const x1 = Math.min(w - 1, Math.ceil((Math.max(ax, bx) + r) / sx + 1));
    const y0 = Math.max(0, Math.floor((Math.min(ay, by) - r) / sy - 1));
    const y1 = Math.min(h - 1, Math.ceil((Math.max(ay, by) + r) / sy + 1));
    const dx = bx - ax;
    const dy = by - ay;
    const len2 = dx * dx + dy * dy;
    for (let y = y0; y <= y1; y++) {
      const py = (y + 0.5) * sy;
      for (let x = x0; x <= x1; x++) {
        const px = (x + 0.5) * sx;
        let t = len2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / len2 : 0;
        t = Math.max(0, Math.min(1, t));
        const ex = px - (ax + t * dx);
        const ey = py - (ay + t * dy);
        if (ex * ex + ey * ey <= r2) mask[y * w + x] = value;
      }
    }
  }
}

/** [x, y, w, h] of the mask's pixels (zeros when empty) and its area. */
export function bboxArea(mask, h, w) {
  let x0 = w, y0 = h, x1 = -1, y1 = -1, area = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (mask[y * w + x]) {
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return area ? { bbox: [x0, y0, x1 - x0 + 1, y1 - y0 + 1], area } : { bbox: [0, 0, 0, 0], area: 0 };
}
