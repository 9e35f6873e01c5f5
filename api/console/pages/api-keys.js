// API keys: role, scope, expiry, networks, CORS origins, last use; create (the key shown
// once) and revoke.

import { h, field, select, table, orDash, when, parseList, localToIso } from "../dom.js";
import { get, del, withQuery } from "../api.js";
import { confirmedButton, createsSecret } from "../dialogs.js";
import { listGroups } from "../groups.js";
import { mayAdminister, grantableRoles } from "../session.js";

export const PAGE = "api-keys";

export async function render(main, _params, ctx) {
  const reload = () => ctx.navigate("#/api-keys");
  const [page, groups] = await Promise.all([get(withQuery("/v1/api-keys", { limit: 100 })), listGroups()]);
  const groupName = new Map(groups.map((g) => [g.id, g.name]));
  main.append(h("h1", {}, "API keys"), keyTable(page.items, groupName, reload));
  if (mayAdminister()) main.append(createForm(groups, reload));
}

/** A multi-select of groups, by id, for scoping keys and people. */
export function groupPicker(groups) {
  return field("Limit to groups", h("select", { name: "group_ids", multiple: true, size: String(Math.min(6, Math.max(2, groups.length))) },
    groups.map((g) => h("option", { value: g.id }, g.name))), "None selected: every group.");
}

function createForm(groups, reload) {
  const roles = grantableRoles().map((r) => [r, r]);
  const form = h("form", { id: "key-create-form", class: "create" },
    h("h2", {}, "New API key"),
    field("Name", h("input", { name: "name", required: true })),
    field("Role", select("role", roles, { value: "auditor" })),
    groupPicker(groups),
    field("Expires", h("input", { name: "expires_at", type: "datetime-local" }), "In your time zone; empty: never."),
    field("Allowed networks", h("input", { name: "allowed_cidrs" }), "Comma-separated CIDRs; empty: anywhere."),
    field("CORS origins", h("input", { name: "cors_origins" }), "Comma-separated, e.g. https://console.example.com."),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "key-create" }, "Create key")));
  return createsSecret(form, {
    url: "/v1/api-keys",
    body: (v) => {
      const body = { name: v.name, role: v.role };
      if (v.group_ids.length) body.group_ids = v.group_ids;
      if (v.expires_at) body.expires_at = localToIso(v.expires_at);
      if (v.allowed_cidrs) body.allowed_cidrs = parseList(v.allowed_cidrs);
      if (v.cors_origins) body.cors_origins = parseList(v.cors_origins);
      return body;
    },
    reveal: (created) => ({
      title: `API key "${created.name}"`, secret: created.key,
      explanation: "Send it as Authorization: Bearer <key>. It is shown only once: store it now.",
    }),
    after: reload,
  });
}

function keyTable(keys, groupName, reload) {
  const columns = ["Name", "Id", "Role", "Scope", "State", "Expires", "Networks", "CORS origins", "Last used"];
  if (mayAdminister()) columns.push("Actions");
  return h("div", { class: "scroll" }, table("key-table", "API keys", columns, keys.map((k) => {
    const cells = [k.name, h("code", {}, k.id), k.role,
      k.group_ids ? k.group_ids.map((id) => groupName.get(id) || id).join(", ") : "all groups",
      { field: "state", value: k.state }, k.expires_at ? when(k.expires_at) : "never",
      orDash((k.allowed_cidrs || []).join(", ")), orDash((k.cors_origins || []).join(", ")),
      k.last_used_at ? `${when(k.last_used_at)} from ${orDash(k.last_used_ip)}` : "never"];
    if (mayAdminister()) cells.push(k.state === "active" ? revokeButton(k, reload) : "—");
    return cells;
  }), (i) => ({ dataset: { id: keys[i].id } })));
}

function revokeButton(key, reload) {
  return confirmedButton({
    text: `Revoke ${key.name}`, action: "revoke-key", okText: "Revoke",
    question: `Revoke the API key "${key.name}"? Scripts using it stop working at once.`,
    run: () => del(`/v1/api-keys/${encodeURIComponent(key.id)}`),
    done: `Key ${key.name} revoked.`, after: reload,
  });
}
