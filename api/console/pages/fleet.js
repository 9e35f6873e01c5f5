// The fleet: devices with status, presence, group, labels, last seen, patch flags; filtered
// and paged on the server (50 a page, by cursor), with device counts per group.

import { h, field, checkbox, select, table, orDash, when, yesNo, labelText, formValues } from "../dom.js";
import { get, withQuery, attempt } from "../api.js";
import { listGroups } from "../groups.js";

export const PAGE = "fleet";
const PAGE_SIZE = 50;

/** Filters and the cursors of the pages before this one survive a visit to a device. */
const state = { filters: {}, cursors: [null] };

/** Opens the fleet filtered to one group (links from other pages). */
export function filterToGroup(group) {
  state.filters = { group };
  state.cursors = [null];
}

export async function render(main) {
  const groups = await listGroups();
  const results = h("div", { id: "fleet-results" });
  main.append(h("h1", {}, "Fleet"), groupCounts(groups), filterForm(groups, results), results);
  await drawPage(results);
}

function groupCounts(groups) {
  return h("section", { "aria-labelledby": "group-counts-title" },
    h("h2", { id: "group-counts-title" }, "Devices per group"),
    h("ul", { id: "group-counts", class: "counts" },
      groups.map((g) => h("li", { dataset: { group: g.name } },
        h("span", { class: "count" }, orDash(g.device_count)), " ", g.name,
        h("span", { class: "hint" }, ` (${orDash(g.online_count)} online, ${orDash(g.pending_security_count)} with security updates)`)))));
}

function filterForm(groups, results) {
  const f = state.filters;
  const form = h("form", { id: "fleet-filters", class: "filters", role: "search" },
    field("Search", h("input", { name: "search", type: "search", value: f.search || "" }), "Name contains, or the exact id."),
    field("Name starts with", h("input", { name: "name_prefix", value: f.name_prefix || "" })),
    field("Label", h("input", { name: "label", value: f.label || "", placeholder: "key=value" })),
    field("Group", select("group", [["", "any"], ...groups.map((g) => [g.name, g.name])], { value: f.group || "" })),
    field("Status", select("status", [["", "any"], ["active", "active"], ["revoked", "revoked"]], { value: f.status || "" })),
    field("Presence", select("online", [["", "any"], ["true", "online"], ["false", "offline"]], { value: f.online || "" })),
    checkbox("pending_security_updates", "Pending security updates", { checked: f.pending_security_updates }),
    checkbox("reboot_required", "Reboot required", { checked: f.reboot_required }),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "fleet-apply" }, "Apply filters")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = formValues(form);
    state.cursors = [null];
    attempt(() => drawPage(results));
  });
  return form;
}

/** Fetches and draws the page at the top of the cursor stack. */
async function drawPage(results) {
  const cursor = state.cursors[state.cursors.length - 1];
  const f = state.filters;
  const page = await get(withQuery("/v1/devices", {
    limit: PAGE_SIZE, cursor, search: f.search, name_prefix: f.name_prefix, label: f.label, group: f.group, status: f.status, online: f.online,
    pending_security_updates: f.pending_security_updates ? "true" : undefined,
    reboot_required: f.reboot_required ? "true" : undefined,
  }));
  const prev = h("button", { type: "button", id: "fleet-prev", disabled: state.cursors.length < 2 }, "Previous page");
  const next = h("button", { type: "button", id: "fleet-next", disabled: !page.next_cursor }, "Next page");
  prev.addEventListener("click", () => { state.cursors.pop(); attempt(() => drawPage(results)).then(() => focusPager("fleet-prev")); });
  next.addEventListener("click", () => { state.cursors.push(page.next_cursor); attempt(() => drawPage(results)).then(() => focusPager("fleet-next")); });
  results.replaceChildren(
    deviceTable(page.items),
    h("div", { class: "pager" }, prev, h("span", {}, `Page ${state.cursors.length}`), next));
}

function focusPager(id) {
  const button = document.getElementById(id);
  if (button && !button.disabled) button.focus();
  else document.getElementById("device-table")?.focus();
}

function deviceTable(devices) {
  const columns = ["Name", "Status", "Presence", "Group", "Labels", "Last seen", "Security updates", "Reboot required"];
  return h("div", { class: "scroll" }, table("device-table", "Devices", columns, devices.map((d) => [
    { field: "name", value: h("a", { href: `#/devices/${encodeURIComponent(d.id)}` }, d.name) },
    { field: "status", value: h("span", { class: `badge ${d.status}` }, d.status) },
    { field: "online", value: h("span", { class: `badge ${d.online ? "online" : "offline"}` }, d.online ? "online" : "offline") },
    { field: "group", value: d.group },
    { field: "labels", value: labelText(d.labels) },
    { field: "last_seen", value: when(d.last_seen_at) },
    { field: "pending_security_updates", value: countOrFlag(d.pending_security_updates) },
    { field: "reboot_required", value: yesNo(d.reboot_required) },
  ]), (i) => ({ dataset: { id: devices[i].id } })));
}

/** The API may give a count or a flag; "—" when it gives neither. */
export function countOrFlag(value) {
  return typeof value === "boolean" ? yesNo(value) : orDash(value);
}
