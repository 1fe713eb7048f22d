"use strict";
// One job: facts, live progress, a chart per metric series (appended as the job logs),
// its log lines (followed while it runs), cancel and evaluate; a sweep shows its trials
// instead of curves, and deploys its best.

const jobId = Number(document.body.dataset.job);
const charts = {};      // metric name -> {plot, steps, values}
let lastStep = 0;
let finished = false;

function fact(label, value) {
  return el("div", { class: "fact" }, el("span", { class: "muted small", text: label }),
            el("strong", { text: value === null || value === undefined || value === "" ? "—" : value }));
}

// What ranks a sweep's trials: an evaluation's top-1 when the objective asks for one, else
// the logged metric.
function objectiveLabel(objective) {
  return objective.evaluation ? `${objective.evaluation.protocol || "knn"} top-1 (max)`
    : `${objective.metric} (${objective.mode})`;
}

function bestOf(sweep) {
  const best = sweep.result && sweep.result.best;
  return best ? `job ${best.job_id}: ${objectiveLabel(sweep.config.objective)} ${num(best.value)}` : "";
}

// The latest online kNN top-1: the curve's newest point (a job's last metrics hold only
// what its last flush carried), else its last metrics.
function onlineKnn(job) {
  const chart = charts.knn_top1;
  return chart && chart.values.length ? chart.values[chart.values.length - 1] : onlineKnnOf(job);
}

// An evaluate job's outcome in one line, and the facts of its result.
function evaluationText(job) {
  const r = job.result || {};
  if (r.top1 === undefined) return `${job.config.protocol || "knn"} evaluation of job ${job.config.job_id}`;
  return `${r.protocol} evaluation on ${r.dataset}: top-1 ${pct(r.top1)}, top-5 ${pct(r.top5)}` +
    ` (${r.train_size} train, ${r.test_size} test images)`;
}

function evaluationFacts(job) {
  const r = job.result || {};
  const ended = !["queued", "running"].includes(job.status);
  return [el("div", { class: "fact" }, el("span", { class: "muted small", text: "evaluated job" }),
             el("strong", {}, el("a", { href: `/ui/jobs/${job.config.job_id}`, text: `job ${job.config.job_id}` }))),
          ...(ended && r.top1 === undefined ? [] : [  // one that failed has no result to wait for
            fact("evaluation top-1", orDash(r.top1)), fact("top-5", orDash(r.top5)),
            fact("train / test images", r.train_size === undefined ? "" : `${r.train_size} / ${r.test_size}`)])];
}

function showJob(job) {
  document.getElementById("name").textContent = job.name;
  const running = job.status === "queued" || job.status === "running";
  document.getElementById("status").replaceChildren(badge(job.status));
  const bar = document.getElementById("bar");
  bar.className = job.status;
  bar.style.width = `${Math.min(100, job.progress.percent)}%`;
  document.getElementById("progress-text").textContent = progressText(job);
  const waiting = document.getElementById("waiting");
  waiting.hidden = !job.waiting;
  waiting.textContent = job.waiting ? `Waiting: ${job.waiting}` : "";
  const error = document.getElementById("error");
  error.hidden = !job.error;
  // a failure's cause, a cancelled trial's pruning reason, a re-queued job's lost lease
  error.textContent = job.error ? `${job.status[0].toUpperCase()}${job.status.slice(1)}: ${job.error}` : "";
  document.getElementById("facts").replaceChildren(
    fact("kind", job.kind + (job.parent_id ? ` · trial of sweep ${job.parent_id}` : "")),
    fact("queue", `${job.queue} · priority ${job.priority}`),
    fact("worker", [job.worker_host, job.device].filter(Boolean).join(" · ")),
    fact("attempts", `${job.attempts}${job.resumes ? ` (${job.resumes} resumed)` : ""}`),
    fact("created", when(job.created_at)), fact("started", when(job.started_at)),
    fact("finished", when(job.finished_at)),
    ...(job.kind === "sweep" ? [fact("best trial", bestOf(job))]
      : job.kind === "evaluate" ? evaluationFacts(job)
        : job.kind === "pretrain" && (running || onlineKnn(job) !== undefined)
          ? [fact("online kNN top-1", orDash(onlineKnn(job)))] : []));
  document.getElementById("cancel").hidden = !running || job.cancel_requested;
  document.getElementById("evaluate").hidden = !(job.kind === "pretrain" && job.status === "succeeded");
  document.getElementById("promote").hidden = !(job.kind === "sweep" && job.result && job.result.best);
  document.getElementById("tabs").hidden = job.kind === "sweep";
  if (job.kind === "sweep") document.getElementById("curves").hidden = true;
  if (job.kind !== "pretrain" && !document.querySelector('.tab[data-tab="curves"]').hidden) {
    document.querySelector('.tab[data-tab="curves"]').hidden = true;  // only training logs curves
    if (job.kind !== "sweep") document.querySelector('.tab[data-tab="logs"]').click();
  }
  document.getElementById("clone").hidden = running || !CLONABLE.includes(job.kind);
  // a pretraining job's fields left to the run show what it decided
  const resolved = job.resolved_config || job.config;
  const rows = Object.entries(job.config).map(([k, v]) => {
    const shown = k === "space" && job.kind === "sweep" ? setOnly(v) : resolved[k] ?? v;
    return el("tr", {}, el("th", { text: k }), el("td", {},
      shown === null ? el("span", { class: "muted", text: "null" })
        : typeof shown === "object" ? JSON.stringify(shown) : String(shown),
      v === null && shown !== null ? el("span", { class: "muted decided", text: " the run's default" }) : null));
  });
  document.querySelector("#config tbody").replaceChildren(...rows);
  finished = !running;
}

// Progress in the job's own units: training steps, finished trials, embedded images or items.
const UNITS = { deploy: "images embedded", gallery: "items embedded" };
function progressText(job) {
  if (job.kind === "evaluate") return evaluationText(job);
  const p = job.progress;
  if (p.step === 0 && job.finished_at) return "";  // it ended before its first step
  const of = `${p.step} of ${p.total_steps ?? "?"}`;
  const counted = job.kind === "pretrain" ? `step ${of}` : job.kind === "sweep" ? `${of} trials finished`
    : UNITS[job.kind] && p.total_steps ? `${UNITS[job.kind]} ${of}` : "";
  return (counted ? `${counted} (${p.percent.toFixed(1)} %)` : "") +
    (job.eta_seconds ? ` · ${eta(job.eta_seconds)}` : "");
}

// A sweep's space as it was given: each field's one distribution, without the unset ones.
const setOnly = (space) => Object.fromEntries(Object.entries(space).map(([field, dist]) =>
  [field, Object.fromEntries(Object.entries(dist).filter(([, v]) => v !== null))]));

// A pretraining job's evaluations and its model (from the jobs and models lists: an
// evaluation names the job it evaluated in its config).
async function showRelated() {
  const [evaluations, models] = await Promise.all([
    api("/v1/jobs?kind=evaluate&limit=500"), api("/v1/models?limit=500")]);
  const mine = evaluations.data.filter((e) => e.config.job_id === jobId).reverse();
  document.querySelector("#evaluations tbody").replaceChildren(...mine.map((e) =>
    el("tr", { "data-id": e.id }, el("td", {}, el("a", { href: `/ui/jobs/${e.id}`, text: `job ${e.id}` })),
       el("td", { text: e.config.protocol || "knn" }), el("td", {}, badge(e.status)),
       el("td", { class: "num", text: orDash(evaluationOf(e)) }))));
  document.getElementById("evaluations").hidden = mine.length === 0;
  const model = models.data.find((m) => m.job_id === jobId);
  const state = model && model.deployment ? model.deployment.status : "not deployed";
  document.getElementById("model").replaceChildren(...(model
    ? [el("a", { href: "/ui/models", text: `model ${model.id}` }), ` · ${state}`]
    : [el("span", { class: "muted", text: "No model" + (mine.length ? "" : " and no evaluation") + " yet." })]));
  document.getElementById("related").hidden = false;
}

// A sweep's trials, live: the searched fields, status, the objective (the sweep's record of
// it, else the trial's latest value), progress and why a trial stopped; the best one marked.
async function showTrials(sweep) {
  const children = (await api(`/v1/jobs?parent_id=${jobId}&limit=500`)).data.reverse();
  const trials = children.filter((t) => t.kind === "pretrain");  // not their evaluations
  const fields = Object.keys(sweep.config.space || {});
  const objective = sweep.config.objective || { metric: "knn_top1", mode: "max" };
  const rows = (sweep.result && sweep.result.trials) || [];
  const recorded = Object.fromEntries(rows.map((t) => [t.job_id, t.value]));
  const reasons = Object.fromEntries(rows.map((t) => [t.job_id, t.reason]));
  const best = sweep.result && sweep.result.best ? sweep.result.best.job_id : null;
  document.querySelector("#trials thead").replaceChildren(el("tr", {},
    ["trial", "job", ...fields, "status", objectiveLabel(objective), "progress", "why it stopped"]
      .map((h) => el("th", { text: h }))));
  document.querySelector("#trials tbody").replaceChildren(...trials.map((t, i) => {
    const live = !objective.evaluation && t.last_metrics ? t.last_metrics[objective.metric] : undefined;
    const value = recorded[t.id] ?? live;
    return el("tr", { class: t.id === best ? "best" : null, "data-id": t.id },
      el("td", { text: i + (t.id === best ? " ★ best" : "") }),
      el("td", {}, el("a", { href: `/ui/jobs/${t.id}`, text: t.id })),
      ...fields.map((f) => el("td", { class: "num", text: String(t.config[f]) })),
      el("td", {}, badge(t.status)),
      el("td", { class: "num", text: num(value) }),
      el("td", {}, progressBar(t)),
      el("td", { class: "muted small", text: reasons[t.id] || (t.status === "succeeded" ? "" : t.error || "") }));
  }));
  const done = trials.filter((t) => !["queued", "running"].includes(t.status)).length;
  document.getElementById("trials-summary").textContent =
    `${trials.length} started, ${done} finished` + (sweep.config.max_trials ? ` · at most ${sweep.config.max_trials}` : "");
  document.getElementById("trials-section").hidden = false;
}

// Which group of curves a metric is drawn in; the internal ones are folded.
const HEALTH = ["knn_top1", "effective_rank", "spectral_norm"];
const INTERNAL = ["lambda_inv", "lambda_scale", "monitor_seconds"];
function metricGroup(name) {
  if (name.startsWith("system_")) return "system";
  if (HEALTH.includes(name)) return "health";
  return name.startsWith("time_") || INTERNAL.includes(name) ? "internal" : "training";
}

const xAxis = document.getElementById("x-axis");
const smoothing = document.getElementById("smoothing");
let stepsPerEpoch = null;
let firstTime = Infinity;  // the earliest point's time: 0 on the time axis

function xsOf(chart) {
  if (xAxis.value === "epoch" && stepsPerEpoch) return chart.steps.map((st) => st / stepsPerEpoch);
  if (xAxis.value === "time") return chart.times.map((t) => (t - firstTime) / 60);
  return chart.steps;
}

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function smooth(values, weight) {
  let mean = 0;
  let n = 0;
  return values.map((v) => {
    n += 1;
    mean = weight * mean + (1 - weight) * v;
    return mean / (1 - weight ** n);
  });
}

function dataOf(chart) {
  const weight = Number(smoothing.value);
  return [xsOf(chart), chart.values, ...(weight > 0 ? [smooth(chart.values, weight)] : [])];
}

// (Re)draws a metric's chart with the x-axis and smoothing chosen now.
function draw(name) {
  const chart = charts[name];
  if (chart.plot) {
    chart.plot.root.parentNode.remove();
    chart.plot.destroy();
  }
  const group = document.getElementById(`group-${metricGroup(name)}`);
  group.hidden = false;
  const smoothed = Number(smoothing.value) > 0;
  const label = xAxis.value === "time" ? "minutes" : xAxis.value === "epoch" && stepsPerEpoch ? "epoch" : "step";
  const series = smoothed ? [{ label: name, values: [], color: "#bfdbfe" },
    { label: "smoothed", values: [], color: PALETTE[0] }] : [{ label: name, values: [] }];
  chart.plot = lineChart(group.querySelector(".charts"), name, [], series, {
    xLabel: label, onZoom: label === "step" ? (min, max) => zoomDetail(name, min, max) : null });
  show(name);
}

function show(name) {
  const chart = charts[name];
  chart.plot.setData(dataOf(chart));
  chart.plot.root.parentNode.dataset.points = chart.steps.length;
}

async function loadMetrics(job) {
  stepsPerEpoch = job.progress.steps_per_epoch;
  const m = await api(`/v1/jobs/${jobId}/metrics?since_step=${lastStep}&max_points=2000`);
  for (const name of metricOrder(Object.keys(m.series))) {
    const s = m.series[name];
    firstTime = Math.min(firstTime, s.times[0]);
    const chart = charts[name] || (charts[name] = { steps: [], values: [], times: [] });
    chart.steps.push(...s.steps);
    chart.values.push(...s.values);
    chart.times.push(...s.times);
    if (chart.plot) show(name); else draw(name);
  }
  lastStep = m.last_step;
  const none = document.getElementById("no-metrics");
  none.hidden = Object.keys(charts).length > 0;
  none.textContent = finished ? "This job recorded no metrics." : "No metrics yet.";
  document.querySelector(".curves-bar .filters").hidden = !none.hidden;  // nothing to zoom or smooth
}

function redraw() {
  const weight = Number(smoothing.value);
  document.getElementById("smoothing-value").textContent = weight > 0 ? weight.toFixed(2) : "off";
  metricOrder(Object.keys(charts)).forEach(draw);
}
xAxis.addEventListener("change", redraw);
smoothing.addEventListener("input", redraw);
// a folded group's charts were drawn at no width: fit them once it opens
document.getElementById("group-internal").addEventListener("toggle", fitCharts);

// Zoomed in: the metrics API again for that range, at the resolution the chart can show
// (a series of 100,000 steps arrives downsampled to 2,000 points; a zoom on 1 % of it gets
// every step there).
async function zoomDetail(name, min, max) {
  const chart = charts[name];
  const since = Math.max(0, Math.floor(min) - 1);
  const points = Math.min(100000, Math.ceil(2000 * Math.max(1, lastStep - since) / Math.max(1, max - since)));
  const m = await api(`/v1/jobs/${jobId}/metrics?name=${encodeURIComponent(name)}` +
                      `&since_step=${since}&max_points=${points}`);
  const detail = m.series[name];
  if (!detail) return;
  const rows = (s) => s.steps.map((st, i) => [st, s.values[i], s.times[i]]);
  const keep = rows(chart).filter(([st]) => st <= since || st > max);
  const inside = rows(detail).filter(([st]) => st <= max);
  const merged = [...keep, ...inside].sort((a, b) => a[0] - b[0]);
  chart.steps = merged.map((p) => p[0]);
  chart.values = merged.map((p) => p[1]);
  chart.times = merged.map((p) => p[2]);
  chart.plot.setData(dataOf(chart), false);
  chart.plot.setScale("x", { min, max });
  chart.plot.root.parentNode.dataset.points = chart.steps.length;
  chart.plot.root.parentNode.dataset.zoomStride = m.stride;
}

const CLONABLE = ["pretrain", "evaluate", "sweep"];  // the kinds POST /v1/jobs takes

let missing = false;
async function refresh() {
  if (missing) return;
  const wasFinished = finished;
  let job;
  try {
    job = await api(`/v1/jobs/${jobId}`);
  } catch (e) {
    if (e.status !== 404) throw e;
    missing = true;
    document.getElementById("missing").hidden = false;
    return;
  }
  showJob(job);
  document.getElementById("job-view").hidden = false;
  if (wasFinished) return;
  if (job.kind === "sweep") await showTrials(job);
  else if (job.kind === "pretrain") await loadMetrics(job);
  if (job.kind === "pretrain" && job.status === "succeeded") await showRelated();
}

document.getElementById("cancel").addEventListener("click", async () => {
  if (!window.confirm(`Cancel job ${jobId}?`)) return;
  try { showJob(await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" })); toast("Cancel requested"); }
  catch (e) { toast(e.message, "error"); }
});
document.getElementById("promote").addEventListener("click", async () => {
  try {
    const deploy = await api(`/v1/jobs/${jobId}/promote`, { method: "POST", json: {} });
    window.location = `/ui/jobs/${deploy.id}`;
  } catch (e) { toast(e.message, "error"); }
});
document.getElementById("evaluate").addEventListener("click", async () => {
  try {
    const job = await api("/v1/jobs", { method: "POST",
      json: { kind: "evaluate", name: `knn of ${jobId}`, config: { job_id: jobId, protocol: "knn" } } });
    window.location = `/ui/jobs/${job.id}`;
  } catch (e) { toast(e.message, "error"); }
});
// The Logs tab: the job's lines as Server-Sent Events, followed until the job has ended
// (the browser reconnects after the last line it got, by its Last-Event-ID).
let logStream = null;
const ERROR_LINE = /^(ERROR|CRITICAL|Traceback|[\w.]+(Error|Exception)\b)|^\s/;  // a traceback's frames are indented

function appendLog(line) {
  const box = document.getElementById("log");
  const at = new Date(line.time).toLocaleTimeString();
  box.append(el("span", { class: `line${ERROR_LINE.test(line.line) ? " bad" : ""}`, "data-id": line.id },
                el("span", { class: "meta", text: `${at} [${line.attempt} ${line.source}] ` }),
                line.line, "\n"));
  if (document.getElementById("log-tail").checked) box.scrollTop = box.scrollHeight;
}

function followLogs() {
  if (logStream) return;
  const state = document.getElementById("log-state");
  state.textContent = "following";
  logStream = new EventSource(`/v1/jobs/${jobId}/logs?follow=true`);
  logStream.addEventListener("line", (e) => appendLog(JSON.parse(e.data)));
  logStream.addEventListener("end", (e) => {
    logStream.close();
    const lines = document.querySelectorAll("#log .line").length;
    const status = JSON.parse(e.data).status;
    state.textContent = `${lines} line${lines === 1 ? "" : "s"} · the job ${
      ["succeeded", "failed"].includes(status) ? status : status === "cancelled" ? "was cancelled" : "has finished"}`;
  });
  logStream.onopen = () => { state.textContent = "following"; };
  logStream.onerror = () => { state.textContent = "reconnecting…"; };
}

document.querySelectorAll("#tabs .tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll("#tabs .tab").forEach((t) => t.classList.toggle("active", t === tab));
  document.querySelectorAll(".tab-panel").forEach((p) => { p.hidden = p.id !== tab.dataset.tab; });
  if (tab.dataset.tab === "logs") followLogs();
}));
document.getElementById("clone").addEventListener("click", () => {
  window.location = `/ui/submit?clone=${jobId}`;  // the form filled from this job, to edit
});
every(2000, refresh);
