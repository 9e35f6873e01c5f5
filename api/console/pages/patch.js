// Patch posture: the fleet's totals, security updates pending and reboots by group, stale
// inventories, and the packages most often pending (the server's top 20, security first).

import { h, field, select, table, facts, orDash } from "../dom.js";
import { get, withQuery } from "../api.js";
import { filterToGroup } from "./fleet.js";

export const PAGE = "patch";

const STALE_CHOICES = [["36h", "36 hours"], ["7d", "7 days"], ["30d", "30 days"]];
let staleAfter = "7d";

export async function render(main, _params, ctx) {
  const s = await get(withQuery("/v1/patch-summary", { stale_after: staleAfter }));
  const groups = s.by_group || [];
  const packages = s.most_pending_packages || [];
  main.append(
    h("h1", {}, "Patch posture"),
    staleForm(ctx),
    h("section", { "aria-labelledby": "totals-title" }, h("h2", { id: "totals-title" }, "Whole fleet"), totals(s)),
    h("section", { "aria-labelledby": "by-group-title" }, h("h2", { id: "by-group-title" }, "By group"),
      table("patch-by-group", "Devices needing attention, by group",
        ["Group", "Devices", "Pending security updates", "Reboot required", "Stale inventory", "Never reported"],
        groups.map((g) => [h("a", { href: "#/fleet", onclick: () => filterToGroup(g.group) }, g.group), orDash(g.devices), orDash(g.pending_security_updates),
          orDash(g.reboot_required), orDash(g.stale_inventories), orDash(g.never_reported)]),
        (i) => ({ dataset: { id: groups[i].group } }))),
    h("section", { "aria-labelledby": "packages-title" }, h("h2", { id: "packages-title" }, "Packages most often pending"),
      pendingPackages(packages)));
}

/** How old an inventory may be before it counts as stale (the server's `stale_after`). */
function staleForm(ctx) {
  const choice = select("stale_after", STALE_CHOICES, { value: staleAfter });
  const form = h("form", { id: "stale-form", class: "filters", role: "search" }, field("Inventory is stale after", choice),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "stale-apply" }, "Apply")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    staleAfter = choice.value;
    ctx.navigate("#/patch");
  });
  return form;
}

/** The server's most pending packages: security updates first, then by devices. */
function pendingPackages(packages) {
  return table("pending-packages", "Packages with an update pending, security updates first, then by number of devices",
    ["Package", "Devices with an update pending", "Of which a security update"],
    packages.map((p) => [{ field: "name", value: p.name }, { field: "devices", value: orDash(p.devices) },
      { field: "security_devices", value: orDash(p.security_devices) }]),
    (i) => ({ dataset: { id: packages[i].name } }));
}

function totals(s) {
  return facts("patch-totals", [
    ["Devices", "devices", orDash(s.devices)],
    ["With pending security updates", "pending_security_updates", orDash(s.pending_security_updates)],
    ["Reboot required", "reboot_required", orDash(s.reboot_required)],
    ["Stale inventory", "stale_inventories", orDash(s.stale_inventories)],
    ["Never reported", "never_reported", orDash(s.never_reported)],
  ]);
}
