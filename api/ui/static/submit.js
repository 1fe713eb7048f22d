"use strict";
// The pretraining form, generated from the API's own schema of the job spec (TrainConfig
// in /openapi.json); the API's 422 messages are shown next to their fields.

const form = document.getElementById("submit");
const inputs = {};  // config field -> input

function resolve(schema, spec) {
  if (spec.$ref) return resolve(schema, schema.components.schemas[spec.$ref.split("/").pop()]);
  if (spec.anyOf) {
    const real = spec.anyOf.find((s) => s.type !== "null");
    return { ...resolve(schema, real), nullable: true };
  }
  return spec;
}

function input(name, spec) {
  const hint = spec.description || "";
  let control;
  if (spec.enum) {
    control = el("select", { name, "data-field": name },
      el("option", { value: "", text: spec.default === undefined || spec.default === null ? "default" : `default (${spec.default})` }),
      ...spec.enum.map((v) => el("option", { value: v, text: v })));
  } else if (spec.type === "boolean") {
    control = el("select", { name, "data-field": name },
      el("option", { value: "", text: `default (${spec.default})` }),
      el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" }));
  } else {
    const numeric = spec.type === "integer" || spec.type === "number";
    control = el("input", { name, "data-field": name, type: numeric ? "number" : "text",
      step: spec.type === "integer" ? "1" : "any",
      placeholder: spec.default === undefined || spec.default === null ? "auto" : String(spec.default) });
  }
  control.dataset.kind = spec.enum ? "enum" : spec.type;
  inputs[name] = control;
  return el("label", { class: "field", title: hint },
    el("span", { class: "label", text: name.replaceAll("_", " ") }), control,
    el("span", { class: "hint", text: hint }),
    el("span", { class: "field-error", "data-for": `config.${name}` }));
}

function value(control) {
  const raw = control.value.trim();
  if (raw === "") return undefined;
  if (control.dataset.kind === "boolean") return raw === "true";
  if (control.dataset.kind === "integer" || control.dataset.kind === "number") return Number(raw);
  return raw;
}

async function build() {
  const schema = await (await fetch("/openapi.json")).json();
  const config = schema.components.schemas.TrainConfig;
  document.getElementById("fields").replaceChildren(...Object.entries(config.properties)
    .map(([name, spec]) => input(name, { ...resolve(schema, spec), description: spec.description,
                                          default: spec.default })));
}

function clearErrors() {
  form.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  document.getElementById("form-error").hidden = true;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const config = {};
  for (const [name, control] of Object.entries(inputs)) {
    const v = value(control);
    if (v !== undefined) config[name] = v;
  }
  const spec = { kind: "pretrain", config };
  const name = document.getElementById("job-name").value.trim();
  const tags = document.getElementById("job-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  const priority = document.getElementById("job-priority").value;
  if (name) spec.name = name;
  if (tags.length) spec.tags = tags;
  if (priority !== "") spec.priority = Number(priority);
  try {
    const job = await api("/v1/jobs", { method: "POST", json: spec });
    window.location = `/ui/jobs/${job.id}`;
  } catch (e) {
    const errors = (e.body && e.body.errors) || [];
    let placed = 0;
    for (const err of errors) {
      const slot = form.querySelector(`.field-error[data-for="${err.field}"]`);
      if (!slot) continue;
      slot.textContent = err.message;
      const control = inputs[err.field.replace(/^config\./, "")];
      if (control) control.classList.add("invalid");
      placed += 1;
    }
    if (placed < errors.length || errors.length === 0) {
      const box = document.getElementById("form-error");
      box.textContent = e.message;
      box.hidden = false;
    }
    const first = form.querySelector(".invalid");
    if (first) first.scrollIntoView({ block: "center" });
  }
});

build().catch((e) => toast(e.message, "error"));
