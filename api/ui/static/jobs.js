"use strict";
// The jobs table: filters, live status and progress, selection for Compare.

const selected = new Set();
const filters = ["f-status", "f-kind", "f-tag"].map((id) => document.getElementById(id));

function query() {
  const [status, kind, tag] = filters.map((f) => f.value.trim());
  const params = new URLSearchParams({ limit: "100" });
  if (status) params.set("status", status);
  if (kind) params.set("kind", kind);
  if (tag) params.set("tag", tag);
  return params;
}

// Why a job failed, was cancelled or waits, under its status.
function reason(job) {
  const why = job.status === "queued" ? job.waiting : job.status !== "succeeded" ? job.error : null;
  return why ? el("div", { class: "reason small muted", title: why, text: why }) : null;
}

function row(job) {
  const c = job.config || {};
  const box = el("input", { type: "checkbox", "aria-label": `select job ${job.id}`,
                            checked: selected.has(job.id) });
  box.addEventListener("change", () => {
    if (box.checked) selected.add(job.id); else selected.delete(job.id);
    document.getElementById("compare").disabled = selected.size < 2;
  });
  const what = job.kind === "pretrain"
    ? [c.method, c.dataset, c.backbone].filter(Boolean).join(" · ") : (c.job_id ? `job ${c.job_id}` : "");
  return el("tr", { "data-id": job.id },
    el("td", {}, box),
    el("td", {}, el("a", { href: `/ui/jobs/${job.id}`, text: job.id })),
    el("td", {}, el("a", { href: `/ui/jobs/${job.id}`, text: job.name || "—" }),
       ...job.tags.map((t) => el("span", { class: "tag", text: t }))),
    el("td", { text: job.kind === "evaluate" ? `evaluate (${c.protocol || "knn"})` : job.kind }),
    el("td", {}, badge(job.status), reason(job)),
    el("td", {}, progressBar(job)),
    el("td", { class: "muted", text: what }),
    el("td", { class: "num", text: num(job.last_metrics && job.last_metrics.loss) }),
    el("td", { class: "num", text: orDash(onlineKnnOf(job)) }),
    el("td", { class: "num", text: orDash(evaluationOf(job)) }),
    el("td", { class: "muted small", text: when(job.created_at) }));
}

async function refresh() {
  const page = await api(`/v1/jobs?${query()}`);
  document.getElementById("count").textContent = `${page.data.length} of ${page.count}`;
  document.querySelector("#jobs tbody").replaceChildren(...page.data.map(row));
  document.getElementById("empty").hidden = page.data.length > 0;
}

filters.forEach((f) => f.addEventListener("input", refresh));
document.getElementById("compare").addEventListener("click", () => {
  window.location = `/ui/compare?ids=${[...selected].join(",")}`;
});
every(2000, refresh);
