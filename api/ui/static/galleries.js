"use strict";
// Apps' galleries: the list, one gallery's items with their thumbnails, and its search (by
// an uploaded image or an item, with a metadata filter), through the /v1/galleries routes.

const PAGE = 60;
const chosen = new URLSearchParams(window.location.search).get("name");
let shown = 0;

function tile(item, score) {
  const meta = item.metadata ? Object.entries(item.metadata)
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ") : "";
  return el("figure", { class: "tile", "data-id": item.id },
    item.thumbnail ? el("img", { src: `data:image/png;base64,${item.thumbnail}`, alt: item.id })
      : el("div", { class: "no-image", text: "vector" }),
    el("figcaption", {}, el("code", { text: item.id }),
       score === undefined ? null : el("span", { class: "score", text: score.toFixed(4) }),
       el("span", { class: "small muted", text: meta }),
       el("button", { class: "ghost small", text: "similar", type: "button",
                      onclick: () => { document.getElementById("item").value = item.id; search(); } })));
}

async function listGalleries() {
  const found = (await api("/v1/galleries")).data;
  document.getElementById("count").textContent = `${found.length}`;
  document.querySelector("#galleries tbody").replaceChildren(...found.map((g) =>
    el("tr", { "data-name": g.name, class: g.name === chosen ? "best" : null },
      el("td", {}, el("a", { href: `/ui/galleries?name=${encodeURIComponent(g.name)}`, text: g.name })),
      el("td", {}, el("a", { href: "/ui/models", text: `model ${g.model_id}` })),
      el("td", { text: g.model_version ?? "—" }),
      el("td", { class: "num", text: g.dim }), el("td", { class: "num", text: g.items }),
      el("td", { class: "muted small", text: when(g.created_at) }))));
  document.getElementById("empty").hidden = found.length > 0;
}

async function more() {
  const page = await api(`/v1/galleries/${encodeURIComponent(chosen)}/items?offset=${shown}&limit=${PAGE}`);
  document.getElementById("items").append(...page.data.map((item) => tile(item)));
  shown += page.data.length;
  document.getElementById("items-count").textContent = `${page.count} items`;
  document.getElementById("showing").textContent = `Items ${shown ? 1 : 0}–${shown} of ${page.count}, in the order they were added`;
  document.getElementById("more").hidden = shown >= page.count;
}

function showAll() {
  shown = 0;
  document.getElementById("items").replaceChildren();
  document.getElementById("clear").hidden = true;
  return more();
}

const asBase64 = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result.split(",", 2)[1]);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

// The query the form holds; throws the message for the form when it is not one.
async function query() {
  const body = {};
  const k = document.getElementById("k").value.trim() || "10";
  if (!/^\d+$/.test(k)) throw new Error(`neighbours: "${k}" is not a whole number`);
  body.k = Number(k);
  const filter = document.getElementById("filter").value.trim();
  if (filter) {
    try { body.filter = JSON.parse(filter); } catch { throw new Error("filter: not JSON"); }
  }
  const file = document.getElementById("image").files[0];
  const item = document.getElementById("item").value.trim();
  if (file && !item) body.image = await asBase64(file);
  else if (item) body.item_id = item;
  else throw new Error("choose an image, or an item to find the ones like it");
  return body;
}

async function search() {
  const error = document.getElementById("search-error");
  error.textContent = "";
  try {
    const body = await query();
    const name = encodeURIComponent(chosen);
    const hits = (await api(`/v1/galleries/${name}/search`, { method: "POST", json: body })).results;
    const ids = hits.map((h) => `id=${encodeURIComponent(h.id)}`).join("&");
    const items = hits.length ? (await api(`/v1/galleries/${name}/items?${ids}&limit=500`)).data : [];
    const byId = Object.fromEntries(items.map((i) => [i.id, i]));
    document.getElementById("items").replaceChildren(...hits.map((h) =>
      tile({ ...h, thumbnail: (byId[h.id] || {}).thumbnail }, h.score)));
    const what = body.item_id ? `item ${body.item_id}` : "the image";
    document.getElementById("showing").textContent = `The ${hits.length} items nearest to ${what}` +
      (body.filter ? ` among those the filter keeps` : "") + ", most similar first";
    document.getElementById("more").hidden = true;
    document.getElementById("clear").hidden = false;
  } catch (e) {
    error.textContent = e.message;
  }
}

document.getElementById("search").addEventListener("submit", (event) => { event.preventDefault(); search(); });
document.getElementById("image").addEventListener("change", () => { document.getElementById("item").value = ""; });
document.getElementById("more").addEventListener("click", () => more().catch((e) => toast(e.message, "error")));
document.getElementById("clear").addEventListener("click", () => showAll().catch((e) => toast(e.message, "error")));

listGalleries().catch((e) => toast(e.message, "error"));
if (chosen) {
  document.getElementById("gallery").hidden = false;
  document.getElementById("gallery-name").textContent = chosen;
  showAll().catch((e) => toast(e.message, "error"));
}
