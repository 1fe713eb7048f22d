"use strict";
// Upload an image, see its nearest neighbours in a deployed model's reference set.

const pick = document.getElementById("model");

async function models() {
  const served = (await api("/v1/models?limit=500")).data
    .filter((m) => m.deployment && m.deployment.status === "serving");
  pick.replaceChildren(...served.map((m) =>
    el("option", { value: m.id, text: `#${m.id} ${m.name} (${m.backbone} · ${m.dataset})` })));
  document.getElementById("no-models").hidden = served.length > 0;
}

function similarity(score) {
  const outer = el("div", { class: "progress" });
  const inner = el("div", { class: "succeeded" });
  inner.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
  outer.append(inner);
  return el("div", { class: "progress-cell" }, outer, el("span", { class: "small muted", text: score.toFixed(4) }));
}

document.getElementById("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("image").files[0];
  if (!file || !pick.value) return;
  const k = document.getElementById("k").value || "10";
  try {
    const found = await api(`/v1/models/${pick.value}/search?k=${encodeURIComponent(k)}&vote=true`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
    const preview = document.getElementById("preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    document.getElementById("vote").textContent = `majority label: ${found.vote[0]}`;
    document.querySelector("#neighbours tbody").replaceChildren(...found.neighbours[0].map((n, i) =>
      el("tr", {}, el("td", { text: i + 1 }),
         el("td", {}, el("img", { class: "thumb", alt: n.id, loading: "lazy",
                                  src: `/v1/models/${pick.value}/references/${n.id}/image` })),
         el("td", {}, el("code", { text: n.id })),
         el("td", {}, el("strong", { text: n.label })), el("td", {}, similarity(n.score)))));
    document.getElementById("result").hidden = false;
  } catch (e) { toast(e.message, "error"); }
});

models().catch((e) => toast(e.message, "error"));
