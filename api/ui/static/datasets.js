"use strict";
// The project's datasets: the list, one dataset's versions (counts per class and split,
// common sizes, a thumbnail per class, the dataset:// string a job names it by), a new
// dataset, an archive uploaded with its progress, and deleting, through /v1/datasets.

const chosen = new URLSearchParams(window.location.search).get("name");
const MAX_CLASSES = 100;  // rows shown of a version's classes

const size = (bytes) => (bytes < 2 ** 20 ? `${Math.round(bytes / 2 ** 10)} KiB`
  : bytes < 2 ** 30 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 2 ** 30).toFixed(2)} GiB`);
const detail = (e) => (typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail));

async function listDatasets() {
  const found = (await api("/v1/datasets")).data;
  document.getElementById("count").textContent = `${found.length}`;
  document.querySelector("#datasets tbody").replaceChildren(...found.map((d) => {
    const latest = d.versions[d.versions.length - 1];
    return el("tr", { "data-name": d.name, class: d.name === chosen ? "best" : null },
      el("td", {}, el("a", { href: `/ui/datasets?name=${encodeURIComponent(d.name)}`, text: d.name })),
      el("td", { class: "muted", text: d.description || "—" }),
      el("td", { class: "num", text: d.versions.length }),
      el("td", { class: "num", text: latest ? latest.images : "—" }),
      el("td", { class: "num", text: latest ? Object.keys(latest.classes).length : "—" }),
      el("td", {}, latest ? el("code", { text: latest.uri }) : el("span", { class: "muted", text: "no version yet" })),
      el("td", { class: "muted small", text: when(d.created_at) }));
  }));
  document.getElementById("empty").hidden = found.length > 0;
}

function copyButton(uri) {
  const code = el("code", { class: "uri", text: uri });
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(uri);
      toast(`Copied ${uri}: paste it into the submit form's data_dir`);
    } catch {  // no clipboard for this page: select it for Ctrl+C
      window.getSelection().selectAllChildren(code);
      toast("Selected: press Ctrl+C to copy");
    }
  };
  return el("span", { class: "copy" }, code,
    el("button", { type: "button", class: "ghost small", text: "Copy", onclick: copy }));
}

function splitText(split) {
  if (split.given) return "the archive's own train/ and test/";
  return `${(split.test_fraction * 100).toFixed(0)} % of each class held out, seed ${split.seed}`;
}

function classRows(version) {
  const thumbs = Object.fromEntries(version.thumbnails.map((t) => [t.class, t.png]));
  const classes = Object.entries(version.classes);
  const most = Math.max(1, ...classes.map(([, c]) => c.train + c.test));
  const rows = classes.slice(0, MAX_CLASSES).map(([name, c]) => {
    const train = el("span", { class: "train" });
    const test = el("span", { class: "test" });
    train.style.width = `${(100 * c.train) / most}%`;
    test.style.width = `${(100 * c.test) / most}%`;
    return el("tr", { "data-class": name },
      el("td", {}, el("code", { text: name })),
      el("td", {}, thumbs[name] ? el("img", { class: "thumb", alt: name,
        src: `data:image/png;base64,${thumbs[name]}` }) : el("span", { class: "muted", text: "—" })),
      el("td", { class: "num", text: c.train }), el("td", { class: "num", text: c.test }),
      el("td", { class: "hist-cell" }, el("div", { class: "hist" }, train, test)));
  });
  if (classes.length > MAX_CLASSES) {
    rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted small",
      text: `and ${classes.length - MAX_CLASSES} more classes` })));
  }
  return rows;
}

function versionCard(version, latest) {
  const sizes = Object.entries(version.sizes).map(([size, n]) =>
    el("span", { class: "tag", text: `${size} × ${n}` }));
  const tests = Object.values(version.classes).reduce((n, c) => n + c.test, 0);
  const fact = (label, value) => el("div", { class: "fact" },
    el("span", { class: "small muted", text: label }), el("strong", { text: value }));
  return el("article", { class: "card version", "data-number": version.number },
    el("div", { class: "bar" },
      el("h3", {}, `Version ${version.number}`, latest ? el("span", { class: "tag", text: "latest" }) : null),
      copyButton(version.uri)),
    el("div", { class: "facts" },
      fact("images", `${version.images} (${version.images - tests} train · ${tests} test)`),
      fact("classes", Object.keys(version.classes).length),
      fact("split", splitText(version.split)),
      fact("created", when(version.created_at))),
    el("p", { class: "small muted" }, "digest ", el("code", { title: version.digest, text: version.digest.slice(0, 16) }),
       ` · ${version.source} · common sizes`, sizes),
    el("table", { class: "grid classes" },
      el("thead", {}, el("tr", {}, el("th", { text: "class" }), el("th", { text: "sample" }),
        el("th", { class: "num", text: "train" }), el("th", { class: "num", text: "test" }),
        el("th", {}, "images per class ", el("span", { class: "swatch train" }), " train ",
          el("span", { class: "swatch test" }), " test"))),
      el("tbody", {}, classRows(version))));
}

async function showDataset() {
  const dataset = await api(`/v1/datasets/${encodeURIComponent(chosen)}`);
  document.getElementById("dataset-description").textContent = dataset.description;
  const versions = [...dataset.versions].reverse();
  document.getElementById("versions").replaceChildren(...(versions.length
    ? versions.map((v) => versionCard(v, v.number === dataset.latest))
    : [el("p", { class: "muted", id: "no-versions", text: "No version yet: upload an archive above." })]));
}

async function create(event) {
  event.preventDefault();
  const error = document.getElementById("create-error");
  error.textContent = "";
  const name = document.getElementById("new-name").value.trim();
  try {
    await api("/v1/datasets", { method: "POST", json: {
      name, description: document.getElementById("new-description").value.trim() } });
    window.location = `/ui/datasets?name=${encodeURIComponent(name)}`;
  } catch (e) {
    error.textContent = e.message;
  }
}

// The archive goes as the raw body (streamed to disk by the API); XMLHttpRequest, unlike
// fetch, tells how much of it has been sent.
function upload(event) {
  event.preventDefault();
  const file = document.getElementById("archive").files[0];
  const error = document.getElementById("upload-error");
  const state = document.getElementById("upload-state");
  const bar = document.getElementById("upload-progress");
  const send = document.getElementById("send");
  error.textContent = "";
  if (!file) { error.textContent = "archive: choose a .tar, .tar.gz or .zip file"; return; }
  const query = new URLSearchParams({
    test_fraction: document.getElementById("test-fraction").value.trim(),
    seed: document.getElementById("seed").value.trim() });
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/v1/datasets/${encodeURIComponent(chosen)}/versions?${query}`);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.setRequestHeader("Accept", "application/json");
  xhr.setRequestHeader("X-CSRF-Token", cookie("mec_csrf"));
  xhr.responseType = "json";
  const moved = (sent) => {
    const percent = (100 * sent) / Math.max(1, file.size);
    bar.firstElementChild.style.width = `${percent}%`;
    state.textContent = sent < file.size
      ? `Sending ${size(sent)} of ${size(file.size)} (${percent.toFixed(0)} %)`
      : "Sent; the API is checking every image…";
  };
  xhr.upload.onprogress = (e) => moved(e.loaded);
  xhr.upload.onload = () => moved(file.size);
  const done = () => { send.disabled = false; bar.hidden = true; };
  xhr.onload = () => {
    done();
    const body = xhr.response || {};
    if (xhr.status === 201) {
      state.textContent = `Version ${body.number}: ${body.images} images (${body.uri})`;
      document.getElementById("archive").value = "";
      showDataset().then(listDatasets).catch((e) => toast(e.message, "error"));
    } else {
      state.textContent = "";
      error.textContent = detail(body) || `HTTP ${xhr.status}`;
    }
  };
  xhr.onerror = () => {
    done();
    state.textContent = "";
    error.textContent = "The upload was cut off before the API answered (over the size limit, or the connection dropped)";
  };
  send.disabled = true;
  bar.hidden = false;
  moved(0);
  xhr.send(file);
}

async function remove() {
  if (!window.confirm(`Delete dataset ${chosen} and every version of it? Jobs that name it and have not started will fail.`)) return;
  try {
    await api(`/v1/datasets/${encodeURIComponent(chosen)}`, { method: "DELETE" });
    window.location = "/ui/datasets";
  } catch (e) { toast(e.message, "error"); }
}

document.getElementById("create").addEventListener("submit", create);
listDatasets().catch((e) => toast(e.message, "error"));
if (chosen) {
  document.getElementById("dataset").hidden = false;
  document.getElementById("create").hidden = true;  // on the list's page only
  document.getElementById("dataset-name").textContent = chosen;
  document.getElementById("upload").addEventListener("submit", upload);
  document.getElementById("delete").addEventListener("click", remove);
  showDataset().catch((e) => {
    if (e.status === 404) {  // deleted since, or an old link: the list and the create form
      document.getElementById("dataset").hidden = true;
      document.getElementById("create").hidden = false;
    }
    toast(e.message, "error");
  });
}
