// Small SVG charts for the statistics page: points and lines, bars, one stacked bar. No library, no
// inline styles (the CSP forbids them): colours are presentation attributes or CSS classes, and every
// text (user names are user text) is set with textContent.

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#4a9be0", "#e0a84a", "#6cc47a", "#d9665b", "#a98be0", "#4ac6c0", "#d98bc0", "#b0b04a"];

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

/** Round numbers for an axis from 0 to at least `max`: [step, top]. */
export function niceScale(max, ticks = 5) {
  if (!(max > 0)) return [1, ticks];
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return [step, Math.ceil(max / step) * step];
}

function fmt(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 10 ? 1 : 0);
}

function frame(svg, { width, height, top, yLabel, xLabel }) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const box = { left: 48, right: width - 12, top, bottom: height - 40 };
  svg.append(el("text", { x: 12, y: 14, class: "axis-label" }, yLabel || ""));
  svg.append(el("text", { x: (box.left + box.right) / 2, y: height - 4, class: "axis-label", "text-anchor": "middle" }, xLabel || ""));
  return box;
}

function yAxis(svg, box, max) {
  const [step, top] = niceScale(max);
  const y = (v) => box.bottom - (v / top) * (box.bottom - box.top);
  for (let v = 0; v <= top + step / 2; v += step) {
    svg.append(el("line", { x1: box.left, x2: box.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: box.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, fmt(v)));
  }
  return y;
}

/** x tick labels at positions `xs` (at most ~8 shown). */
function xTicks(svg, box, xs, labels) {
  const every = Math.max(1, Math.ceil(xs.length / 8));
  xs.forEach((x, i) => {
    if (i % every !== 0 && i !== xs.length - 1) return;
    svg.append(el("line", { x1: x, x2: x, y1: box.bottom, y2: box.bottom + 4, class: "axis" }));
    svg.append(el("text", { x, y: box.bottom + 16, class: "tick", "text-anchor": "middle" }, labels[i]));
  });
  svg.append(el("line", { x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom, class: "axis" }));
}

/**
 * Points joined by lines. `categories`: x labels (evenly spaced); `series`: [{id, name, values:
 * [number|null per category], colour, main}]; `refs`: [{y, label}] dashed horizontal lines.
 * Each point is a <circle class="pt" data-series=id> with a <title> saying what it is.
 */
export function lineChart(svg, { categories, series, refs = [], yLabel, xLabel, unit = "" }) {
  const width = 900, height = 340;
  const box = frame(svg, { width, height, top: 24, yLabel, xLabel });
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const max = Math.max(1, ...all, ...refs.map((r) => r.y)) * 1.05;
  const y = yAxis(svg, box, max);
  const n = categories.length;
  const x = (i) => (n === 1 ? (box.left + box.right) / 2 : box.left + 40 + (i / (n - 1)) * (box.right - box.left - 80));
  xTicks(svg, box, categories.map((_, i) => x(i)), categories);
  for (const r of refs) {
    svg.append(el("line", { x1: box.left, x2: box.right, y1: y(r.y), y2: y(r.y), class: "ref" }));
    svg.append(el("text", { x: box.left + 4, y: y(r.y) - 4, class: "ref-label" }, r.label));
  }
  // Thin series first, the main one on top.
  for (const s of [...series].sort((a, b) => Number(a.main || 0) - Number(b.main || 0))) {
    const g = el("g", { class: s.main ? "series main" : "series", "data-series": s.id });
    const pts = s.values.map((v, i) => (v === null || v === undefined ? null : [x(i), y(v), v, i])).filter(Boolean);
    if (pts.length > 1) {
      g.append(el("polyline", { points: pts.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" "),
        fill: "none", stroke: s.colour, "stroke-width": s.main ? 2.5 : 1.5 }));
    }
    for (const [px, py, v, i] of pts) {
      const c = el("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: s.main ? 4 : 3, fill: s.colour, class: "pt",
        "data-series": s.id, "data-value": v });
      c.append(el("title", {}, `${s.name}, ${categories[i]}: ${fmt(v)}${unit}`));
      g.append(c);
    }
    svg.append(g);
  }
  return svg;
}

/** Vertical bars: `labels[i]` under bar i of height `values[i]`; <rect class="bar" data-value>. */
export function barChart(svg, { labels, values, yLabel, xLabel, colour = PALETTE[0], title = () => "" }) {
  const width = 900, height = 300;
  const box = frame(svg, { width, height, top: 24, yLabel, xLabel });
  const y = yAxis(svg, box, Math.max(1, ...values));
  const n = values.length;
  const slot = (box.right - box.left) / Math.max(1, n);
  const xs = values.map((_, i) => box.left + slot * (i + 0.5));
  values.forEach((v, i) => {
    const r = el("rect", { x: (xs[i] - slot * 0.4).toFixed(1), y: y(v).toFixed(1), width: (slot * 0.8).toFixed(1),
      height: (box.bottom - y(v)).toFixed(1), fill: colour, class: "bar", "data-value": v });
    r.append(el("title", {}, title(i)));
    svg.append(r);
  });
  xTicks(svg, box, xs, labels);
  return svg;
}

/** One horizontal bar split into shares: parts [{id, name, value, colour}]; <rect class="share" data-part>. */
export function shareBar(svg, parts) {
  const width = 900, height = 44;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const total = parts.reduce((a, p) => a + p.value, 0);
  let x = 0;
  for (const p of parts) {
    if (!p.value) continue;
    const w = (p.value / total) * width;
    const r = el("rect", { x: x.toFixed(1), y: 4, width: w.toFixed(1), height: 36, fill: p.colour, class: "share", "data-part": p.id });
    r.append(el("title", {}, `${p.name}: ${p.value} (${((100 * p.value) / total).toFixed(1)}%)`));
    svg.append(r);
    if (w > 60) {
      svg.append(el("text", { x: x + w / 2, y: 27, class: "share-label", "text-anchor": "middle" },
        `${p.name} ${((100 * p.value) / total).toFixed(0)}%`));
    }
    x += w;
  }
  return svg;
}
