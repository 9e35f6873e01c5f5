// Enrollment tokens: limits and use counts; create one (its text shown once), revoke.

import { h, field, select, table, orDash, when, labelText, parseLabels, parseList, localToIso } from "../dom.js";
import { get, del, withQuery } from "../api.js";
import { confirmedButton, createsSecret } from "../dialogs.js";
import { listGroups } from "../groups.js";
import { mayAdminister } from "../session.js";

export const PAGE = "enrollment";

export async function render(main, _params, ctx) {
  const reload = () => ctx.navigate("#/enrollment");
  const page = await get(withQuery("/v1/enrollment-tokens", { limit: 100 }));
  // The list first: it is what most visits are for.
  main.append(h("h1", {}, "Enrollment tokens"), tokenTable(page.items, reload));
  if (mayAdminister()) main.append(createForm(await listGroups(), reload));
}

function inAWeek() {
  const d = new Date(Date.now() + 7 * 86400e3);
  d.setSeconds(0, 0);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
}

function createForm(groups, reload) {
  const form = h("form", { id: "token-create-form", class: "create" },
    h("h2", {}, "New token"),
    field("Name", h("input", { name: "name", required: true })),
    field("Allowed networks", h("input", { name: "allowed_cidrs", value: "0.0.0.0/0, ::/0", required: true }), "Comma-separated CIDRs."),
    field("Enrollments per day", h("input", { name: "daily_limit", type: "number", min: "1", value: "100", required: true })),
    field("Enrollments in total", h("input", { name: "max_uses", type: "number", min: "1" }), "Empty: unlimited until expiry."),
    field("Expires", h("input", { name: "expires_at", type: "datetime-local", value: inAWeek(), required: true }), "In your time zone."),
    field("Devices join group", select("device_group", groups.map((g) => [g.name, g.name]), { value: "default" })),
    field("Devices get labels", h("textarea", { name: "device_labels", rows: "2" }), "One key=value a line."),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "token-create" }, "Create token")));
  return createsSecret(form, {
    url: "/v1/enrollment-tokens",
    body: (v) => {
      const body = {
        name: v.name, allowed_cidrs: parseList(v.allowed_cidrs), daily_limit: Number(v.daily_limit),
        expires_at: localToIso(v.expires_at), device_group: v.device_group || undefined,
        device_labels: parseLabels(v.device_labels),
      };
      if (v.max_uses) body.max_uses = Number(v.max_uses);
      return body;
    },
    reveal: (created) => ({
      title: `Enrollment token "${created.name}"`, secret: created.token,
      explanation: "Devices enroll with this token. It is shown only once: store it now (a secret store, your provisioning tool).",
    }),
    after: reload,
  });
}

function tokenTable(tokens, reload) {
  const columns = ["Name", "State", "Used today / daily limit", "Uses / max", "Networks", "Group", "Labels", "Expires", "Last used"];
  if (mayAdminister()) columns.push("Actions");
  return h("div", { class: "scroll" }, table("token-table", "Enrollment tokens", columns, tokens.map((t) => {
    const cells = [t.name, { field: "state", value: t.state }, `${t.used_today} / ${t.daily_limit}`,
      `${t.uses} / ${t.max_uses ?? "∞"}`, (t.allowed_cidrs || []).join(", "), t.device_group,
      labelText(t.device_labels), when(t.expires_at), when(t.last_used_at)];
    if (mayAdminister()) cells.push(t.state === "active" ? revokeButton(t, reload) : orDash(t.revoked_by && `revoked by ${t.revoked_by}`));
    return cells;
  }), (i) => ({ dataset: { id: tokens[i].id } })));
}

function revokeButton(token, reload) {
  return confirmedButton({
    text: `Revoke ${token.name}`, action: "revoke-token", okText: "Revoke",
    question: `Revoke the enrollment token "${token.name}"? Devices can no longer enroll with it.`,
    run: () => del(`/v1/enrollment-tokens/${encodeURIComponent(token.id)}`),
    done: `Token ${token.name} revoked.`, after: reload,
  });
}
