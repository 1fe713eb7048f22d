"use strict";
// Finished encoders: evaluations, artifacts, deployment and its endpoints; deploy / undeploy.

async function act(model, action) {
  try {
    const job = await api(`/v1/models/${model.id}/${action}`, { method: "POST" });
    toast(`${action} job ${job.id} queued`);
    refresh();
  } catch (e) { toast(e.message, "error"); }
}

function row(model) {
  const d = model.deployment || {};
  const serving = d.status === "serving";
  const evals = model.evaluations.map((e) =>
    el("span", { class: "tag", text: `${e.protocol} ${pct(e.top1)}` }));
  const urls = Object.entries(d.urls || {}).map(([task, url]) =>
    el("div", { class: "small" }, el("span", { class: "muted", text: `internal ${task} ` }), el("code", { text: url })));
  if (serving) {
    urls.unshift(el("div", { class: "small" }, el("span", { class: "muted", text: "apps " }),
                    el("code", { text: `POST /v1/models/${model.id}/embed` })));
  }
  return el("tr", { "data-id": model.id },
    el("td", { text: model.id }),
    el("td", { text: model.name }),
    el("td", {}, el("a", { href: `/ui/jobs/${model.job_id}`, text: `job ${model.job_id}` })),
    el("td", { class: "muted", text: `${model.backbone} · ${model.dataset}` }),
    el("td", {}, evals.length ? evals : el("span", { class: "muted", text: "—" }),
       el("div", { class: "small muted", text: Object.keys(model.artifacts || {}).join(" · ") })),
    el("td", {}, d.status ? badge(d.status) : "—",
       d.number && serving ? el("span", { class: "small muted", text: ` deployment ${d.number}` }) : null,
       serving && d.reference_reused_from ? el("div", { class: "small muted" }, "reference set: ",
         el("a", { href: `/ui/jobs/${d.reference_reused_from}`, text: `evaluation job ${d.reference_reused_from}` }),
         "'s features") : null),
    el("td", {}, urls),
    el("td", { class: "actions" },
       el("button", { class: "primary", text: serving ? "Redeploy" : "Deploy", onclick: () => act(model, "deploy") }),
       serving ? el("button", { class: "ghost", text: "Undeploy", onclick: () => act(model, "undeploy") }) : null));
}

async function refresh() {
  const page = await api("/v1/models?limit=100");
  document.getElementById("count").textContent = `${page.data.length} of ${page.count}`;
  document.querySelector("#models tbody").replaceChildren(...page.data.map(row));
  document.getElementById("empty").hidden = page.data.length > 0;
}

every(3000, refresh);
