// The statistics page: the paper's data-engine figures for one project, from GET /api/projects/{id}/stats.
// Plain ES module, no build step; signs in as the annotation page does (session cookie, or none on
// loopback). User names are only ever set as text.
import { Api, signIn } from "./api.js";
import { PALETTE, barChart, lineChart, shareBar } from "./charts.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const PAPER_REFS = [{ y: 34, label: "paper: 34 s" }, { y: 14, label: "paper: 14 s" }];
const MAX_BARS = 30;
const AUTO_PARTS = [
  { id: "kept", name: "kept", colour: "#6cc47a" },
  { id: "edited", name: "edited", colour: "#e0a84a" },
  { id: "deleted", name: "deleted", colour: "#d9665b" },
];

const P = { api: new Api(), project: null, data: null, mode: null };
window.__seganyStats = { P, ready: false, renders: 0 };

function showError(message) {
  $("error-banner").textContent = message;
  $("error-banner").hidden = false;
}

// -- formatting ---------------------------------------------------------------------------------

const num = (v, digits = 1) => (v === null || v === undefined ? "–" : Number.isInteger(v) ? String(v) : v.toFixed(digits));
const pct = (a, b) => (b ? `${((100 * a) / b).toFixed(0)}%` : "–");
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function duration(seconds) {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : m ? `${m} min ${String(r).padStart(2, "0")} s` : `${r} s`;
}

function node(tag, className, text) {
  const n = document.createElement(tag);
  if (className) n.className = className;
  if (text !== undefined) n.textContent = text;
  return n;
}

function legend(container, entries) {
  container.replaceChildren();
  for (const { name, colour } of entries) {
    const item = node("span", "legend-item");
    const sw = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    sw.setAttribute("width", "10"); sw.setAttribute("height", "10"); sw.setAttribute("class", "swatch");
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    for (const [k, v] of Object.entries({ width: 10, height: 10, rx: 2, fill: colour })) r.setAttribute(k, String(v));
    sw.append(r);
    item.append(sw, document.createTextNode(name));
    container.append(item);
  }
}

// -- sections -----------------------------------------------------------------------------------

function summary(d) {
  const o = d.objects;
  const t = d.seconds_per_manual_mask;
  const cards = [
    ["images finished", `${d.images_finished} / ${d.images}`,
      `${d.images_by_state.accepted} accepted, ${d.images_by_state.submitted} submitted, ${d.images_by_state.in_progress} in progress, ${d.images_by_state.rejected} rejected`],
    ["masks", String(o.total), `${o.manual} manual, ${o.auto + o.auto_edited} automatic (${o.auto_edited} edited)`],
    ["median s per manual mask", t.median === null ? "–" : `${num(t.median)} s`,
      `${plural(t.count, "timed mask")}${d.untimed_manual_masks ? `, ${d.untimed_manual_masks} without a time` : ""}`],
    ["masks per finished image", d.masks_per_image.median === null ? "–" : num(d.masks_per_image.median),
      d.manual_masks_per_image.median === null ? "median" : `median; ${num(d.manual_masks_per_image.median)} manual`],
    ["automatic share", d.auto_share === null ? "–" : `${(100 * d.auto_share).toFixed(0)}%`, "of the masks on finished images"],
  ];
  $("summary").replaceChildren(...cards.map(([label, value, detail], i) => {
    const card = node("div", "stat");
    card.dataset.stat = ["images", "masks", "median-seconds", "masks-per-image", "auto-share"][i];
    card.append(node("div", "label", label), node("div", "value", value), node("div", "detail", detail));
    return card;
  }));
}

function timeChart(d) {
  const svg = $("time-chart");
  const empty = d.seconds_per_manual_mask.count === 0;
  $("time-empty").hidden = !empty;
  svg.hidden = empty;
  $("time-legend").hidden = empty;
  for (const b of document.querySelectorAll("button.mode")) b.classList.toggle("active", b.dataset.mode === P.mode);
  if (empty) { $("time-note").textContent = ""; return; }
  if (P.mode === "day") {
    const days = Object.keys(d.by_day);
    const users = Object.keys(d.by_user_day);
    const series = [{ id: "all", name: "everyone", colour: "#e6e6e6", main: true,
      values: days.map((day) => d.by_day[day].median) }];
    // One thin line per user (the paper's figure is the overall one; people differ).
    if (users.length > 1) {
      users.forEach((u, i) => series.push({ id: `user-${i}`, name: u, colour: PALETTE[i % PALETTE.length],
        values: days.map((day) => (d.by_user_day[u][day] ? d.by_user_day[u][day].median : null)) }));
    }
    lineChart(svg, { categories: days, series, refs: PAPER_REFS, yLabel: "seconds per mask (median)", xLabel: "day (UTC)", unit: " s" });
    legend($("time-legend"), series.map((s) => ({ name: s.name, colour: s.colour })));
    $("time-note").textContent = `${plural(days.length, "day")}`;
  } else {
    const { group, points } = d.by_order;
    const categories = points.map((p) => (p.count === 1 ? `#${p.first}` : `#${p.first}–${p.first + p.count - 1}`));
    const series = [{ id: "all", name: "everyone", colour: "#e6e6e6", main: true, values: points.map((p) => p.median) }];
    lineChart(svg, { categories, series, refs: PAPER_REFS, yLabel: "seconds per mask (median)", xLabel: "manual masks in the order they were saved", unit: " s" });
    legend($("time-legend"), []);
    $("time-note").textContent = group === 1 ? "one point per mask" : `one point per ${group} masks`;
  }
}

/** Histogram bars: one per mask count, or bins of equal width when counts spread wide. */
function histogramBars(hist) {
  const max = hist.length ? hist[hist.length - 1][0] : 0;
  const width = Math.max(1, Math.ceil((max + 1) / MAX_BARS));
  const bins = Math.floor(max / width) + 1;
  const values = new Array(bins).fill(0);
  for (const [k, n] of hist) values[Math.floor(k / width)] += n;
  const labels = values.map((_, i) => (width === 1 ? String(i) : `${i * width}–${i * width + width - 1}`));
  return { labels, values };
}

function masksPerImage(d) {
  const hist = d.masks_per_image_histogram.all;
  const empty = d.images_finished === 0;
  $("mpi-empty").hidden = !empty;
  $("mpi-chart").hidden = empty;
  $("mpi-note").textContent = empty ? "" :
    `${plural(d.images_finished, "finished image")}: median ${num(d.masks_per_image.median)} masks (${num(d.manual_masks_per_image.median)} manual), mean ${num(d.masks_per_image.mean)}`;
  if (empty) return;
  const { labels, values } = histogramBars(hist);
  barChart($("mpi-chart"), { labels, values, yLabel: "images", xLabel: "masks on the image (manual and automatic)",
    title: (i) => `${labels[i]} masks: ${plural(values[i], "image")}` });
}

function autoMasks(d) {
  const all = d.auto_masks;
  const fin = d.auto_masks_finished;
  const empty = all.imported === 0;
  $("auto-empty").hidden = !empty;
  $("auto-chart").hidden = empty;
  $("auto-legend").hidden = empty;
  if (empty) { $("auto-note").textContent = ""; return; }
  // Shares on finished images only: on an image still in work a mask left alone is not yet "kept".
  const parts = AUTO_PARTS.map((p) => ({ ...p, value: fin[p.id] }));
  shareBar($("auto-chart"), fin.imported ? parts : []);
  legend($("auto-legend"), parts.map((p) => ({ name: `${p.name} ${pct(p.value, fin.imported)} (${p.value})`, colour: p.colour })));
  const pending = all.imported - fin.imported;
  $("auto-note").textContent = `${plural(fin.imported, "automatic mask")} on finished images` +
    `${pending ? `; ${pending} more on images still in work (${all.edited - fin.edited} edited, ${all.deleted - fin.deleted} deleted so far)` : ""}.`;
}

function users(d) {
  const names = Object.keys(d.by_user);
  $("users-empty").hidden = names.length > 0;
  $("users").hidden = names.length === 0;
  $("users").tBodies[0].replaceChildren(...names.map((u) => {
    const s = d.by_user[u];
    const tr = node("tr");
    tr.dataset.user = u;
    for (const text of [u, String(s.count), num(s.median), num(s.mean), s.count ? duration(s.total_seconds) : "–",
      num(s.median_clicks), String(s.images_finished)]) tr.append(node("td", "", text));
    return tr;
  }));
}

function render() {
  const d = P.data;
  $("loading").hidden = true;
  const nothing = d.objects.total === 0 && d.images_finished === 0 && d.auto_masks.imported === 0;
  $("empty").hidden = !nothing;
  $("figures").hidden = nothing;
  $("empty-images").textContent = plural(d.images, "image");
  if (!nothing) {
    summary(d);
    timeChart(d);
    masksPerImage(d);
    autoMasks(d);
    users(d);
  }
  window.__seganyStats.renders += 1;
}

async function load() {
  try {
    P.data = await P.api.json("GET", `/api/projects/${P.project.id}/stats`);
  } catch (err) {
    showError(`could not read the statistics: ${err.message}`);
    return;
  }
  $("error-banner").hidden = true;
  if (P.mode === null) P.mode = Object.keys(P.data.by_day).length > 1 ? "day" : "order";
  render();
}

async function main() {
  for (const b of document.querySelectorAll("button.mode")) {
    b.addEventListener("click", () => { P.mode = b.dataset.mode; if (P.data) render(); });
  }
  $("refresh").addEventListener("click", load);
  try {
    const session = await signIn(P.api);
    P.api.csrf = session.csrf || null;
    $("who").textContent = session.user;
    const projects = await P.api.json("GET", "/api/projects");
    if (!projects.length) { showError("no project on this server"); return; }
    P.project = projects.find((p) => String(p.id) === params.get("project")) || projects[0];
    $("project-name").textContent = P.project.name;
    $("back").href = `/?project=${encodeURIComponent(P.project.id)}`;
    await load();
  } catch (err) {
    showError(`could not start: ${err.message}`);
  }
  window.__seganyStats.ready = true;
}

main();
