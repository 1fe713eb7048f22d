"use strict";
// One job: facts, live progress, a chart per metric series (appended as the job logs),
// cancel and evaluate.

const jobId = Number(document.body.dataset.job);
const charts = {};      // metric name -> {plot, steps, values}
let lastStep = 0;
let finished = false;

function fact(label, value) {
  return el("div", { class: "fact" }, el("span", { class: "muted small", text: label }),
            el("strong", { text: value === null || value === undefined || value === "" ? "—" : value }));
}

function showJob(job) {
  document.getElementById("name").textContent = job.name;
  document.getElementById("status").replaceChildren(badge(job.status));
  const bar = document.getElementById("bar");
  bar.className = job.status;
  bar.style.width = `${Math.min(100, job.progress.percent)}%`;
  const p = job.progress;
  document.getElementById("progress-text").textContent =
    `step ${p.step} of ${p.total_steps ?? "?"} (${p.percent.toFixed(1)} %)` +
    (job.eta_seconds ? ` · about ${duration(job.eta_seconds)} left` : "");
  const error = document.getElementById("error");
  error.hidden = !job.error;
  error.textContent = job.error ? `Failed: ${job.error}` : "";
  document.getElementById("facts").replaceChildren(
    fact("kind", job.kind), fact("queue", `${job.queue} · priority ${job.priority}`),
    fact("worker", [job.worker_host, job.device].filter(Boolean).join(" · ")),
    fact("attempts", `${job.attempts}${job.resumes ? ` (${job.resumes} resumed)` : ""}`),
    fact("created", when(job.created_at)), fact("started", when(job.started_at)),
    fact("finished", when(job.finished_at)),
    fact("kNN top-1", knnOf(job) === undefined ? "" : pct(knnOf(job))));
  const running = job.status === "queued" || job.status === "running";
  document.getElementById("cancel").hidden = !running || job.cancel_requested;
  document.getElementById("evaluate").hidden = !(job.kind === "pretrain" && job.status === "succeeded");
  const rows = Object.entries(job.config).map(([k, v]) =>
    el("tr", {}, el("th", { text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })));
  document.querySelector("#config tbody").replaceChildren(...rows);
  finished = !running;
}

async function loadMetrics() {
  const m = await api(`/v1/jobs/${jobId}/metrics?since_step=${lastStep}&max_points=2000`);
  const box = document.getElementById("charts");
  for (const name of metricOrder(Object.keys(m.series))) {
    const s = m.series[name];
    let chart = charts[name];
    if (!chart) {
      chart = charts[name] = { steps: [], values: [] };
      chart.plot = lineChart(box, name, [], [{ label: name, values: [] }]);
    }
    chart.steps.push(...s.steps);
    chart.values.push(...s.values);
    chart.plot.setData([chart.steps, chart.values]);
    chart.plot.root.parentNode.dataset.points = chart.steps.length;
  }
  lastStep = m.last_step;
  document.getElementById("no-metrics").hidden = Object.keys(charts).length > 0;
}

async function refresh() {
  const wasFinished = finished;
  showJob(await api(`/v1/jobs/${jobId}`));
  if (!wasFinished) await loadMetrics();
}

document.getElementById("cancel").addEventListener("click", async () => {
  if (!window.confirm(`Cancel job ${jobId}?`)) return;
  try { showJob(await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" })); toast("Cancel requested"); }
  catch (e) { toast(e.message, "error"); }
});
document.getElementById("evaluate").addEventListener("click", async () => {
  try {
    const job = await api("/v1/jobs", { method: "POST",
      json: { kind: "evaluate", name: `knn of ${jobId}`, config: { job_id: jobId, protocol: "knn" } } });
    window.location = `/ui/jobs/${job.id}`;
  } catch (e) { toast(e.message, "error"); }
});
every(2000, refresh);
