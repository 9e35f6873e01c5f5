// Users (owner and admin change, auditor reads): invite, change roles, disable and enable;
// pending invitations; a user's sessions (`#/users/<id>/sessions`), which owners and admins may
// end all at once. The invitation's token is shown once.

import { h, field, select, table, orDash, when } from "../dom.js";
import { get, post, patch, del, showStatus, attempt } from "../api.js";
import { confirmAction, confirmedButton, createsSecret } from "../dialogs.js";
import { listGroups } from "../groups.js";
import { mayAdminister, grantableRoles, user as me } from "../session.js";
import { groupPicker } from "./api-keys.js";
import { sessionTable } from "./profile.js";

export const PAGE = "users";

export async function render(main, params, ctx) {
  if (params[0] && params[1] === "sessions") return renderSessions(main, params[0], ctx);
  const reload = () => ctx.navigate("#/users");
  const [people, invitations, groups] = await Promise.all([get("/v1/users"), get("/v1/invitations"), listGroups()]);
  const groupName = new Map(groups.map((g) => [g.id, g.name]));
  const scope = (ids) => (ids ? ids.map((id) => groupName.get(id) || id).join(", ") : "all groups");
  main.append(h("h1", {}, "Users"), userTable(people, scope, reload), invitationTable(invitations, scope));
  if (mayAdminister()) main.append(inviteForm(groups, reload));
}

function inviteForm(groups, reload) {
  const form = h("form", { id: "invite-form", class: "create" },
    h("h2", {}, "Invite someone"),
    field("Email", h("input", { name: "email", type: "email", required: true })),
    field("Role", select("role", grantableRoles().map((r) => [r, r]), { value: "auditor" })),
    groupPicker(groups),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "invite-submit" }, "Invite")));
  return createsSecret(form, {
    url: "/v1/invitations",
    body: (v) => {
      const body = { email: v.email, role: v.role };
      if (v.group_ids.length) body.group_ids = v.group_ids;
      return body;
    },
    reveal: (created) => ({
      title: `Invitation for ${created.email}`, secret: created.token,
      explanation: "Send this token to the person over a channel you trust; they accept it at #/accept-invitation with a password of their own. It is shown only once.",
    }),
    after: reload,
  });
}

function userTable(people, scope, reload) {
  const columns = ["Email", "Role", "Scope", "TOTP", "State", "Created", "Sessions"];
  const admin = mayAdminister();
  if (admin) columns.push("Actions");
  return h("div", { class: "scroll" }, table("user-table", "People", columns, people.map((u) => {
    const cells = [u.email, { field: "role", value: u.role }, scope(u.group_ids), u.totp_enrolled ? "enrolled" : "not enrolled",
      { field: "state", value: u.disabled_at ? `disabled ${when(u.disabled_at)}` : "active" }, when(u.created_at),
      h("a", { href: sessionsHash(u), dataset: { action: "sessions" }, "aria-label": `Sessions of ${u.email}` }, "Sessions")];
    if (admin) cells.push(me() && me().id === u.id ? "you" : userActions(u, reload));
    return cells;
  }), (i) => ({ dataset: { id: people[i].id } })));
}

function userActions(u, reload) {
  const role = select("role", grantableRoles().map((r) => [r, r]), { value: u.role, "aria-label": `Role of ${u.email}` });
  const change = h("button", { type: "button", dataset: { action: "change-role" } }, "Change role");
  change.addEventListener("click", async () => {
    if (!(await confirmAction(`Make ${u.email} ${role.value}?`, "Change role"))) return;
    const body = { role: role.value };
    if (u.group_ids) body.group_ids = u.group_ids;
    if (await attempt(() => patch(`/v1/users/${encodeURIComponent(u.id)}`, body))) {
      showStatus(`${u.email} is now ${role.value}.`);
      reload();
    }
  });
  const action = u.disabled_at ? "enable" : "disable";
  const toggle = confirmedButton({
    text: action === "disable" ? "Disable" : "Enable", action, danger: action === "disable",
    okText: action === "disable" ? "Disable" : "Enable",
    question: action === "disable" ? `Disable ${u.email}? Their sessions end and they cannot sign in.` : `Enable ${u.email} again?`,
    run: () => post(`/v1/users/${encodeURIComponent(u.id)}/${action}`),
    done: `${u.email} ${action}d.`, after: reload,
  });
  return h("div", { class: "row-actions" }, role, change, toggle);
}

const sessionsHash = (u) => `#/users/${encodeURIComponent(u.id)}/sessions`;

/** Whether this person may end `u`'s sessions: the server's rule for disabling (not oneself,
 * not a higher role). */
function mayEndSessionsOf(u) {
  return mayAdminister() && !(me() && me().id === u.id) && grantableRoles().includes(u.role);
}

/** One user's signed-in sessions, and for owners and admins a button that ends them all. */
async function renderSessions(main, id, ctx) {
  const path = `/v1/users/${encodeURIComponent(id)}`;
  const [u, sessions] = await Promise.all([get(path), get(`${path}/sessions`)]);
  main.append(h("h1", {}, `Sessions of ${u.email}`),
    h("p", {}, h("a", { href: "#/users", id: "back-to-users" }, "All users")),
    sessionTable("user-session-table", `Signed-in sessions of ${u.email}, most recently used first`, sessions));
  if (mayEndSessionsOf(u) && sessions.length) {
    main.append(h("div", { class: "actions" }, confirmedButton({
      text: "End all sessions", action: "end-sessions", okText: "End all sessions",
      question: `End every session of ${u.email}? They are signed out everywhere at once.`,
      run: () => del(`${path}/sessions`),
      done: `Every session of ${u.email} ended.`, after: () => ctx.navigate(sessionsHash(u)),
    })));
  }
}

function invitationTable(invitations, scope) {
  return h("section", { "aria-labelledby": "invitations-title" },
    h("h2", { id: "invitations-title" }, "Invitations"),
    table("invitation-table", "Invitations", ["Email", "Role", "Scope", "Invited by", "Expires", "Accepted"],
      invitations.map((i) => [i.email, i.role, scope(i.group_ids), i.created_by, when(i.expires_at), orDash(i.accepted_at && when(i.accepted_at))]),
      (n) => ({ dataset: { id: invitations[n].id } })));
}
