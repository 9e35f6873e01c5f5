// Small helpers to build DOM without innerHTML: server data only ever becomes text nodes or
// attribute values, never markup.

/**
 * Creates an element. `attrs` keys: `class`, `dataset` (object), `on<event>` (listener),
 * boolean properties (`disabled`, `hidden`, `checked`, `required`, `multiple`, `selected`),
 * anything else via setAttribute. Children: nodes, strings (text), null/false (skipped), arrays.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "style") throw new Error("inline style is refused by the CSP");
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (BOOLEAN_PROPS.has(key)) el[key] = Boolean(value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

const BOOLEAN_PROPS = new Set(["disabled", "hidden", "checked", "required", "multiple", "selected", "readOnly"]);

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** "—" for a value the API did not give. */
export function orDash(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

/** A timestamp in the viewer's zone, or "—". */
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A number of seconds as "3 d 4 h", "12 min", "40 s". */
export function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Number(seconds);
  if (s >= 86400) return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min`;
  return `${s} s`;
}

export function yesNo(value) {
  if (value === null || value === undefined) return "—";
  return value ? "yes" : "no";
}

/** `key=value` labels as one string. */
export function labelText(labels) {
  const entries = Object.entries(labels || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "—";
}

/** Parses `key=value` lines (or comma-separated) into an object; throws on a bad line. */
export function parseLabels(text) {
  const labels = {};
  for (const raw of text.split(/[\n,]/)) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`"${line}" is not key=value`);
    labels[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return labels;
}

/** Comma- or whitespace-separated list, empties dropped. */
export function parseList(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** A `datetime-local` value (viewer's zone) as RFC 3339 UTC, or undefined when empty. */
export function localToIso(value) {
  if (!value) return undefined;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new Error(`"${value}" is not a date and time`);
  return d.toISOString();
}

/** A labelled form field: `<div class="field"><label for>…</label>control</div>`. */
export function field(labelText, control, hint) {
  if (!control.id) control.id = `f-${control.name || "x"}-${++fieldCount}`;
  const parts = [h("label", { for: control.id }, labelText), control];
  if (hint) {
    const hintId = `${control.id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId, class: "hint" }, hint));
  }
  return h("div", { class: "field" }, parts);
}
let fieldCount = 0;

/** A checkbox with its label after it. */
export function checkbox(name, labelText, attrs = {}) {
  const input = h("input", { type: "checkbox", name, id: attrs.id || `f-${name}-${++fieldCount}`, ...attrs });
  return h("div", { class: "field check" }, input, h("label", { for: input.id }, labelText));
}

/** A `<select>` with `[value, text]` options. */
export function select(name, options, attrs = {}) {
  return h("select", { name, ...attrs },
    options.map(([value, text]) => h("option", { value, selected: attrs.value === value }, text)));
}

/**
 * A table: `columns` are header texts; `rows` are arrays of cells (each a node, a string, or
 * `{field, value}` for a `td[data-field]`); `rowAttrs(i)` gives each row's attributes.
 */
export function table(id, caption, columns, rows, rowAttrs = () => ({})) {
  return h("table", { id },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length
      ? rows.map((cells, i) => h("tr", rowAttrs(i), cells.map(cell)))
      : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, "Nothing here."))));
}

function cell(c) {
  if (c && typeof c === "object" && !(c instanceof Node) && "field" in c) {
    return h("td", { dataset: { field: c.field } }, c.value);
  }
  return h("td", {}, c);
}

/** A description list of `[label, field, value]`. */
export function facts(id, items) {
  return h("dl", { id, class: "facts" },
    items.map(([label, name, value]) => [h("dt", {}, label), h("dd", { dataset: { field: name } }, value)]));
}

/** Form values as an object of strings (checkboxes: booleans; multi-selects: arrays). */
export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") out[el.name] = el.checked;
    else if (el.multiple) out[el.name] = [...el.selectedOptions].map((o) => o.value);
    else out[el.name] = el.value.trim();
  }
  return out;
}
