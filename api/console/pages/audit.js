// The audit trail: filters, the chain's verify result, a CSV export of the same range, and
// paging by cursor (oldest first, as the API lists it).

import { h, field, table, when, localToIso, formValues } from "../dom.js";
import { get, withQuery, attempt, showError } from "../api.js";

export const PAGE = "audit";
const PAGE_SIZE = 100;
let filters = {};

export async function render(main) {
  const verdict = h("p", { id: "audit-verify", role: "status" }, "Verifying the chain…");
  const csv = h("a", { id: "audit-csv", download: "", href: "/v1/audit-events.csv" }, "Export CSV");
  const results = h("div", { id: "audit-results" });
  main.append(h("h1", {}, "Audit trail"), verdict, filterForm(results, csv), h("p", {}, csv), results);
  await Promise.all([verify(verdict), attempt(() => draw(results, csv, null))]);
}

async function verify(verdict) {
  try {
    const v = await get("/v1/audit-events/verify");
    verdict.dataset.status = v.status;
    verdict.className = v.status === "intact" ? "ok-text" : "error-text";
    verdict.textContent = v.status === "intact"
      ? `Chain intact: ${v.events} events verified.`
      : `Chain broken at event ${v.seq}: ${v.description} (${v.reason}).`;
  } catch (e) {
    verdict.textContent = `Could not verify: ${e.message}`;
  }
}

function filterForm(results, csv) {
  const input = (name, attrs = {}) => h("input", { name, value: filters[name] || "", ...attrs });
  const form = h("form", { id: "audit-filters", class: "filters", role: "search" },
    field("Actor", input("actor"), "Exactly, e.g. user:… or api-key:…"),
    field("Action", input("action"), "Exactly, e.g. device.revoke"),
    field("Target", input("target"), "Exactly, e.g. device:<id>"),
    field("Device id", input("device")),
    field("Since", input("since", { type: "datetime-local" }), "Your time zone."),
    field("Until", input("until", { type: "datetime-local" })),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "audit-apply" }, "Apply filters")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    filters = formValues(form);
    attempt(() => draw(results, csv, null));
  });
  return form;
}

/** The API's query for the current filters (times converted from the viewer's zone). */
function query() {
  return {
    actor: filters.actor, action: filters.action, target: filters.target, device: filters.device,
    since: localToIso(filters.since), until: localToIso(filters.until),
  };
}

async function draw(results, csv, cursor) {
  let q;
  try {
    q = query();
  } catch (e) {
    return showError(e);
  }
  // The export takes the time range (the rest narrows the view only).
  csv.href = withQuery("/v1/audit-events.csv", { since: q.since, until: q.until });
  const page = await get(withQuery("/v1/audit-events", { ...q, limit: PAGE_SIZE, cursor }));
  const events = page.items;
  const next = h("button", { type: "button", id: "audit-next", disabled: !page.next_cursor }, "Next page");
  next.addEventListener("click", () => attempt(() => draw(results, csv, page.next_cursor)));
  results.replaceChildren(
    h("div", { class: "scroll" }, table("audit-table", "Audit events, oldest first", ["Seq", "When", "Actor", "Action", "Target", "Details"],
      events.map((e) => [String(e.seq), { field: "occurred_at", value: when(e.occurred_at) }, { field: "actor", value: e.actor },
        { field: "action", value: e.action }, { field: "target", value: e.target },
        { field: "details", value: h("code", { class: "wrap" }, JSON.stringify(e.details)) }]),
      (i) => ({ dataset: { id: events[i].seq } }))),
    h("div", { class: "pager" }, next));
}
