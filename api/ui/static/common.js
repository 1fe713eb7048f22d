"use strict";
// Shared by every page: the API (same origin, the login cookie, the CSRF header on writes),
// element building, status badges, numbers, toasts and charts.

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = cookie("mec_csrf");
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  if (response.status === 401) {  // logged out meanwhile: back here after logging in
    window.location = `/ui/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`;
    throw new ApiError(401, {});
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

const badge = (status) => el("span", { class: `badge ${status}`, text: status });
const num = (v, digits = 4) => (v === null || v === undefined ? "—" : Number(v).toPrecision(digits));
const pct = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(2)} %`);

// A running job's time left, rounded as honestly as a rate from the steps so far allows
// (none before the first step).
function eta(seconds) {
  if (seconds < 60) return "under a minute left";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `about ${minutes} min left`;
  const tens = Math.round(minutes / 10) * 10;  // 2 h 10 min, not 2 h 7 min
  return `about ${Math.floor(tens / 60)} h${tens % 60 ? ` ${tens % 60} min` : ""} left`;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

function progressBar(job) {
  const outer = el("div", { class: "progress" });
  const inner = el("div", { class: job.status });
  inner.style.width = `${Math.min(100, job.progress.percent)}%`;
  outer.append(inner);
  const left = job.eta_seconds ? ` · ${eta(job.eta_seconds)}` : "";
  return el("div", { class: "progress-cell" }, outer,
            el("span", { class: "small muted", text: `${job.progress.percent.toFixed(0)} %${left}` }));
}

// The monitor's kNN top-1 while a job trains, and an evaluate job's top-1: two measures,
// shown apart.
const onlineKnnOf = (job) => (job.last_metrics ? job.last_metrics.knn_top1 : undefined);
const evaluationOf = (job) => (job.kind === "evaluate" && job.result ? job.result.top1 : undefined);
const orDash = (v) => (v === undefined ? "—" : pct(v));

function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = `toast ${kind}`;
  box.hidden = false;
  clearTimeout(box.timer);
  box.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

// Poll `fn` every `ms` while the page is visible; errors are shown, polling goes on.
function every(ms, fn) {
  let timer = null;
  const tick = async () => {
    try { await fn(); } catch (e) { if (e.status !== 401) toast(e.message, "error"); }
    timer = setTimeout(tick, document.hidden ? ms * 5 : ms);
  };
  tick();
  return () => clearTimeout(timer);
}

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

// A y axis as wide as its widest tick label ("1,217.55" MB needs more room than "0.5").
function axisWidth(u, values, index) {
  const axis = u.axes[index];
  u.ctx.font = axis.font[0];
  const widest = Math.max(0, ...(values || []).map((v) => u.ctx.measureText(v).width));
  return Math.max(40, Math.ceil(widest / uPlot.pxRatio + axis.ticks.size + axis.gap + 4));
}

// One uPlot chart of several series that share the x axis (`xLabel`, steps by default).
// `onZoom(min, max)`: called with the x range the user dragged over (the chart zooms to it).
function lineChart(container, title, xs, series, { xLabel = "step", onZoom = null } = {}) {
  const wrap = el("div", { class: "chart", "data-metric": title });
  container.append(wrap);
  const width = Math.max(280, wrap.clientWidth - 16);
  const options = {
    title, width, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, { size: axisWidth }],
    cursor: { drag: { x: true, y: false } },
    hooks: onZoom ? { setSelect: [(u) => {
      if (u.select.width < 2) return;
      onZoom(u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x"));
    }] } : {},
    series: [{ label: xLabel }, ...series.map((s, i) => ({
      label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
    }))],
  };
  const data = [xs, ...series.map((s) => s.values)];
  wrap.plot = new uPlot(options, data, wrap);
  return wrap.plot;
}

// The curves people judge a run by first, then the rest (timings last).
const FIRST = ["loss", "coding_length", "knn_top1", "effective_rank", "spectral_norm", "lr"];
function metricOrder(names) {
  const rank = (n) => (FIRST.includes(n) ? FIRST.indexOf(n) : n.startsWith("time_") ? 200 : 100);
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

document.addEventListener("DOMContentLoaded", () => {
  const logout = document.getElementById("logout-csrf");
  if (logout) logout.value = cookie("mec_csrf");
});

// Charts follow their cell's width (when the window is resized, or a folded group opens).
function fitCharts() {
  document.querySelectorAll(".chart").forEach((wrap) => {
    const plot = wrap.plot;
    if (plot && wrap.clientWidth) plot.setSize({ width: Math.max(280, wrap.clientWidth - 16), height: 220 });
  });
}
window.addEventListener("resize", () => {
  clearTimeout(window.resizeTimer);
  window.resizeTimer = setTimeout(fitCharts, 150);
});
