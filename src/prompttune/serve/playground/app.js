// prompttune playground: one card per served task, using only the server's own JSON routes.
// Every server or user string is placed with textContent (never as HTML).
"use strict";

const KEY = "prompttune-api-key";
const $ = (sel) => document.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// An error's detail: a sentence, or (422) a list of {loc, msg}, shown as "loc: msg; ...".
function detailText(detail) {
  if (!Array.isArray(detail)) return detail == null ? "" : String(detail);
  return detail.map((e) => [(e.loc || []).filter((p) => p !== "body").join("."), e.msg].filter(Boolean).join(": ")).join("; ");
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { method: body ? "POST" : "GET", headers, body: body ? JSON.stringify(body) : undefined });
  if (response.status === 401) {
    $("#key-form").hidden = false;
    throw new Error(key ? "the API key was refused" : "this server needs an API key");
  }
  const data = await response.json();
  if (!response.ok) throw new Error([detailText(data.detail), data.where && "(" + data.where + ")", data.fix && "Fix: " + data.fix].filter(Boolean).join(" "));
  return data;
}

function fmtMetric(name, value) {
  if (typeof value !== "number") return null;
  return name === "n" ? `${value} test examples` : `${name} ${value < 1.5 ? value.toFixed(3) : value.toFixed(1)}`;
}

function facts(task) {
  const items = [task.kind, task.method && task.method.name, task.trainable_parameters != null && `${task.trainable_parameters.toLocaleString("en")} trainable parameters`];
  if (task.labels) items.push(`labels: ${task.labels.join(", ")}`);
  for (const [k, v] of Object.entries(task.metrics || {})) items.push(fmtMetric(k, v));
  return el("div", { class: "facts" }, ...items.filter(Boolean).map((t) => el("span", { class: "fact", text: String(t) })));
}

function bars(probabilities) {
  const entries = Object.entries(probabilities);
  const best = Math.max(...entries.map(([, p]) => p));
  return entries.map(([label, p]) => {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(2)}%`;  // CSSOM, which the page's Content-Security-Policy allows (a style attribute it would not)
    return el("div", { class: p === best ? "bar top" : "bar", dataset: { label, p: String(p) } },
      el("span", { text: label }), el("span", { class: "track" }, fill), el("span", { class: "pct", text: `${(100 * p).toFixed(1)}%` }));
  });
}

// A text box's text, or a chosen sound file as a data: URL.
function fieldValue(input) {
  if (input.type !== "file") return Promise.resolve(input.value);
  const file = input.files[0];
  if (!file) return Promise.reject(new Error(`choose a sound file (WAV, FLAC or OGG) for ${input.name}`));
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function card(task) {
  const generates = task.operations.includes("generate");
  const fields = task.fields || ["text"];
  // the field a speech task hears takes a sound file, sent as a data: URL (the server decodes it; it never reads a path)
  const inputs = fields.map((f) => f === task.audio_field
    ? el("input", { type: "file", name: f, "aria-label": f, accept: ".wav,.flac,.ogg,audio/wav,audio/flac,audio/ogg" })
    : el("textarea", { name: f, "aria-label": f, placeholder: fields.length > 1 ? f : "type a text" }));
  const decoding = {};
  let decodingRow = null;
  if (generates) {
    const g = task.generation || {};
    for (const [name, min, max] of [["max_new_tokens", 1, 512], ["num_beams", 1, 8]]) {
      decoding[name] = el("input", { type: "number", name, min: String(min), max: String(max), value: String(g[name] ?? 1) });
    }
    decodingRow = el("div", { class: "decoding" }, ...Object.entries(decoding).map(([n, i]) => el("label", { text: n + " " }, i)));
  }
  const result = el("div", { class: "result", "aria-live": "polite" });
  const button = el("button", { type: "button", text: generates ? "Generate" : "Predict" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.replaceChildren(el("span", { class: "muted", text: "working\u2026" }));
    try {
      const values = Object.fromEntries(await Promise.all(fields.map(async (f, i) => [f, await fieldValue(inputs[i])])));
      const input = fields.length === 1 ? values[fields[0]] : values;
      if (generates) {
        const body = { input };
        for (const [n, i] of Object.entries(decoding)) body[n] = Number(i.value);
        const data = await api(`/v1/tasks/${encodeURIComponent(task.name)}/generate`, body);
        const settings = Object.entries(body).filter(([k]) => k !== "input").map(([k, v]) => `${k}=${v}`).join(", ");
        result.replaceChildren(el("div", { class: "output", text: data.outputs[0].text }), el("div", { class: "muted", text: `decoding: ${settings}` }));
      } else {
        const data = await api(`/v1/tasks/${encodeURIComponent(task.name)}/predict`, { input });
        const p = data.predictions[0];
        result.replaceChildren(el("div", { class: "label", text: p.label }), ...bars(p.probabilities));
      }
      showError("");
    } catch (e) {
      result.replaceChildren();
      showError(`${task.name}: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });
  const fieldNodes = inputs.map((input, i) => fields.length > 1 ? [el("label", { class: "field", text: fields[i] }), input] : [input]).flat();
  return el("section", { class: "task", dataset: { task: task.name } },
    el("header", {}, el("h2", { text: task.name }), el("span", { class: "muted", text: generates ? `generates ${task.target}` : "classifies" })),
    facts(task),
    task.template ? el("code", { class: "template", text: task.template }) : null,
    ...fieldNodes, decodingRow, button, result);
}

async function load() {
  try {
    const data = await api("/v1/tasks");
    $("#key-form").hidden = true;
    $("#backbone").textContent = `${data.tasks.length} task(s) on ${data.backbone.name} (${data.backbone.family})`;
    $("#tasks").replaceChildren(...data.tasks.map(card));
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

$("#api-key-save").addEventListener("click", () => {
  sessionStorage.setItem(KEY, $("#api-key").value);
  load();
});
load();
