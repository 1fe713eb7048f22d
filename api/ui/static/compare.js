"use strict";
// Several runs: their curves overlaid per metric, the config fields that differ, and the
// final evaluations of their models.

const params = new URLSearchParams(window.location.search);
const ids = (params.get("ids") || "").split(",").map((s) => Number(s.trim())).filter((n) => n > 0);
document.getElementById("ids").value = ids.join(", ");
document.getElementById("pick").addEventListener("submit", (e) => {
  e.preventDefault();
  const picked = document.getElementById("ids").value.split(/[\s,]+/).filter(Boolean);
  window.location = `/ui/compare?ids=${picked.join(",")}`;
});

// Values of every series at the union of their steps (null where one has no point).
function align(seriesList) {
  const steps = [...new Set(seriesList.flatMap((s) => s.steps))].sort((a, b) => a - b);
  const values = seriesList.map((s) => {
    const at = new Map(s.steps.map((st, i) => [st, s.values[i]]));
    return steps.map((st) => (at.has(st) ? at.get(st) : null));
  });
  return { steps, values };
}

async function run() {
  if (ids.length === 0) return;
  document.getElementById("hint").hidden = true;
  const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}`)));
  const metrics = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}/metrics?max_points=1000`)));
  const models = (await api("/v1/models?limit=500")).data;
  const label = (job) => `#${job.id} ${job.name}`;
  document.getElementById("legend").replaceChildren(...jobs.map((job, i) =>
    el("span", { class: "key" }, el("i", { class: `swatch c${i % 8}` }),
       el("a", { href: `/ui/jobs/${job.id}`, text: label(job) }), badge(job.status))));

  const names = metricOrder(new Set(metrics.flatMap((m) => Object.keys(m.series))));
  const box = document.getElementById("charts");
  for (const name of names) {
    const present = metrics.map((m) => m.series[name] || { steps: [], values: [] });
    const { steps, values } = align(present);
    lineChart(box, name, steps, jobs.map((job, i) => ({ label: label(job), values: values[i],
                                                       color: PALETTE[i % PALETTE.length] })));
  }

  const fields = [...new Set(jobs.flatMap((j) => Object.keys(j.config)))].sort();
  const show = (v) => (v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const differ = fields.filter((f) => new Set(jobs.map((j) => show(j.config[f]))).size > 1);
  document.getElementById("diff-title").hidden = false;
  document.querySelector("#diff thead").replaceChildren(
    el("tr", {}, el("th", { text: "field" }), ...jobs.map((j) => el("th", { text: label(j) }))));
  document.querySelector("#diff tbody").replaceChildren(...(differ.length ? differ.map((f) =>
    el("tr", {}, el("th", { text: f }), ...jobs.map((j) => el("td", { text: show(j.config[f]) }))))
    : [el("tr", {}, el("td", { colspan: jobs.length + 1, class: "muted", text: "The configs are the same." }))]));

  const protocols = ["knn", "linear"];
  document.getElementById("eval-title").hidden = false;
  document.querySelector("#evals thead").replaceChildren(
    el("tr", {}, el("th", { text: "evaluation" }), ...jobs.map((j) => el("th", { text: label(j) }))));
  document.querySelector("#evals tbody").replaceChildren(...protocols.map((p) =>
    el("tr", {}, el("th", { text: `${p} top-1` }), ...jobs.map((j) => {
      const model = models.find((m) => m.job_id === j.id);
      const found = model ? model.evaluations.filter((e) => e.protocol === p) : [];
      const best = found.length ? Math.max(...found.map((e) => e.top1)) : undefined;
      return el("td", { class: "num", text: best === undefined ? "—" : pct(best) });
    }))));
}

run().catch((e) => toast(e.message, "error"));
