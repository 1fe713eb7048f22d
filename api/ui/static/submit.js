"use strict";
// The pretraining form, generated from the API's own schema of the job spec (TrainConfig
// in /openapi.json). Empty fields show what the job would run with for what is filled in
// so far (the chosen dataset's recipe), as POST /v1/jobs/validate resolves it; a value that
// is not of its field's type is refused at the field before anything is sent; the API's 422
// messages are shown next to their fields. `?clone=<job id>` fills the form from that job's
// spec (an evaluation or a sweep: its config as JSON), to edit before submitting.

const form = document.getElementById("submit");
const inputs = {};  // config field -> input
let kind = "pretrain";
let queue = null;  // a clone's queue, kept

function resolve(schema, spec) {
  if (spec.$ref) return resolve(schema, schema.components.schemas[spec.$ref.split("/").pop()]);
  if (spec.anyOf) {
    const real = spec.anyOf.find((s) => s.type !== "null");
    return { ...resolve(schema, real), nullable: true };
  }
  return spec;
}

function input(name, spec) {
  let control;
  if (spec.enum || spec.type === "boolean") {
    const choices = spec.enum || ["true", "false"];
    control = el("select", { name, "data-field": name }, el("option", { value: "", text: "default" }),
      ...choices.map((v) => el("option", { value: v, text: v })));
  } else {
    const numeric = spec.type === "integer" || spec.type === "number";
    control = el("input", { name, "data-field": name, type: "text",
      inputmode: numeric ? (spec.type === "integer" ? "numeric" : "decimal") : null });
  }
  control.dataset.kind = spec.enum ? "enum" : spec.type;
  // empty and resolved to null: "auto" where the field leaves it to the run, "null" where
  // a recipe chose null (order: the exact log-det)
  control.dataset.none = spec.default === null || spec.default === undefined ? "auto" : "null";
  if (spec.nullable) control.dataset.nullable = "true";
  inputs[name] = control;
  return el("label", { class: "field" },
    el("span", { class: "label", text: name.replaceAll("_", " ") }), control,
    el("span", { class: "hint", text: spec.description || "" }),
    el("span", { class: "field-error", "data-for": `config.${name}` }));
}

const INTEGER = /^[+-]?\d+$/;
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

// The field's value for the JSON body, undefined when empty; throws the message for the
// field when the text is not of its type.
function value(control) {
  const raw = control.value.trim();
  if (raw === "") return undefined;
  const kind = control.dataset.kind;
  if (control.dataset.nullable && ["null", "none"].includes(raw.toLowerCase()) && kind !== "string") {
    return null;
  }
  if (kind === "boolean") return raw === "true";
  if (kind === "integer" && !INTEGER.test(raw)) throw new Error(`"${raw}" is not a whole number`);
  if (kind === "number" && !NUMBER.test(raw)) throw new Error(`"${raw}" is not a number`);
  return kind === "integer" || kind === "number" ? Number(raw) : raw;
}

function clearErrors() {
  form.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  document.getElementById("form-error").hidden = true;
}

function fieldError(field, message) {
  const slot = form.querySelector(`.field-error[data-for="${field}"]`);
  if (!slot) return false;
  slot.textContent = message;
  const control = inputs[field.replace(/^config\./, "")];
  if (control) control.classList.add("invalid");
  return true;
}

// The spec the form holds, or null when a field is not of its type (marked at the field).
function spec() {
  clearErrors();
  let config = {};
  let ok = true;
  if (kind !== "pretrain") {
    try { config = JSON.parse(document.getElementById("raw-config").value); } catch (e) {
      fieldError("config", `not JSON: ${e.message}`);
      ok = false;
    }
  }
  for (const [name, control] of Object.entries(kind === "pretrain" ? inputs : {})) {
    try {
      const v = value(control);
      if (v !== undefined) config[name] = v;
    } catch (e) {
      fieldError(`config.${name}`, e.message);
      ok = false;
    }
  }
  const priority = document.getElementById("job-priority").value.trim();
  if (priority !== "" && !INTEGER.test(priority)) {
    fieldError("priority", `"${priority}" is not a whole number`);
    ok = false;
  }
  if (!ok) return null;
  const body = { kind, config };
  if (queue) body.queue = queue;
  const name = document.getElementById("job-name").value.trim();
  const tags = document.getElementById("job-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (name) body.name = name;
  if (tags.length) body.tags = tags;
  if (priority !== "") body.priority = Number(priority);
  return body;
}

function showErrors(e) {
  const errors = (e.body && e.body.errors) || [];
  const placed = errors.filter((err) => fieldError(err.field, err.message)).length;
  // a 422 without a per-field list names its field at the start of `detail`
  const named = errors.length === 0 && /^([\w.]+): (.*)$/s.exec(e.message || "");
  if ((placed < errors.length || errors.length === 0) && !(named && fieldError(named[1], named[2]))) {
    const box = document.getElementById("form-error");
    box.textContent = e.message;
    box.hidden = false;
  }
}

// Empty fields show the resolved config's values.
function showResolved(config) {
  for (const [name, control] of Object.entries(inputs)) {
    const v = config[name];
    const shown = v === null || v === undefined ? null : String(v);
    if (control.tagName === "SELECT") control.options[0].text = shown === null ? "default" : `default (${shown})`;
    else control.placeholder = shown ?? control.dataset.none;
  }
}

let checking = null;
async function check() {
  const body = spec();
  if (!body) return;
  const asked = checking = body;
  try {
    const answer = await api("/v1/jobs/validate", { method: "POST", json: body });
    if (asked !== checking) return;  // a newer check is on its way
    showResolved(answer.config);
    const waiting = document.getElementById("would-wait");
    waiting.hidden = !answer.waiting;
    waiting.textContent = answer.waiting ? `It would wait: ${answer.waiting}` : "";
  } catch (e) {
    if (asked === checking && e.status !== 401) showErrors(e);
  }
}

// The form holds a copy of `job`'s spec; nothing is sent until Submit.
function fillFrom(job) {
  kind = job.kind;
  queue = job.queue;
  document.getElementById("heading").textContent =
    `New ${kind === "pretrain" ? "pretraining" : kind} job, a copy of job ${job.id}`;
  document.getElementById("job-name").value = job.name || "";
  document.getElementById("job-tags").value = job.tags.join(", ");
  document.getElementById("job-priority").value = job.priority;
  if (kind === "pretrain") {
    for (const [name, control] of Object.entries(inputs)) {
      const v = job.config[name];
      if (v !== null && v !== undefined) control.value = String(v);
    }
    return;
  }
  document.getElementById("intro").hidden = true;
  document.getElementById("fields").hidden = true;
  document.getElementById("raw").hidden = false;
  document.getElementById("raw-config").value =  // unset (null) fields are left to their defaults
    JSON.stringify(job.config, (k, v) => (v === null ? undefined : v), 2);
}

async function build() {
  const schema = await (await fetch("/openapi.json")).json();
  const config = schema.components.schemas.TrainConfig;
  document.getElementById("fields").replaceChildren(...Object.entries(config.properties)
    .map(([name, spec]) => input(name, { ...resolve(schema, spec), description: spec.description,
                                          default: spec.default })));
  const source = new URLSearchParams(window.location.search).get("clone");
  if (source) fillFrom(await api(`/v1/jobs/${Number(source)}`));
  await check();
}

let pending = null;
const later = () => { clearTimeout(pending); pending = setTimeout(check, 400); };
form.addEventListener("input", later);
form.addEventListener("change", later);  // a select changed by a script fires only this

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearTimeout(pending);
  const body = spec();
  if (!body) {
    form.querySelector(".invalid").scrollIntoView({ block: "center" });
    return;
  }
  try {
    const job = await api("/v1/jobs", { method: "POST", json: body });
    window.location = `/ui/jobs/${job.id}`;
  } catch (e) {
    showErrors(e);
    const first = form.querySelector(".invalid");
    if (first) first.scrollIntoView({ block: "center" });
  }
});

build().catch((e) => toast(e.message, "error"));
