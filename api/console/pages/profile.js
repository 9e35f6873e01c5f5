// The signed-in person's own profile: password, TOTP (enrol or replace, recovery codes shown
// once), their sessions, and signing out everywhere.

import { h, field, table, orDash, when } from "../dom.js";
import { get, post, showStatus, attempt } from "../api.js";
import { confirmAction, showSecretOnce } from "../dialogs.js";
import { user } from "../session.js";
import { totpFacts } from "./sign-in.js";

export const PAGE = "profile";

export async function render(main, _params, ctx) {
  const me = user();
  const sessions = await get("/v1/sessions");
  main.append(
    h("h1", {}, "Your profile"),
    h("p", {}, `${me.email}, ${me.role}. Authenticator: ${me.totp_enrolled ? "enrolled" : "not enrolled"}.`),
    passwordForm(),
    totpSection(),
    sessionSection(sessions, ctx));
}

function passwordForm() {
  const current = h("input", { name: "current_password", type: "password", required: true, autocomplete: "current-password" });
  const next = h("input", { name: "new_password", type: "password", required: true, autocomplete: "new-password", minlength: "12" });
  const form = h("form", { id: "password-form", class: "create" },
    h("h2", {}, "Change password"),
    // For password managers: which account this password belongs to.
    h("input", { type: "text", name: "username", autocomplete: "username", value: user().email, hidden: true }),
    field("Current password", current), field("New password", next),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "password-submit" }, "Change password")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const done = await attempt(() => post("/v1/session/password", { current_password: current.value, new_password: next.value }));
    if (done !== undefined) {
      form.reset();
      showStatus("Password changed.");
    }
  });
  return form;
}

function totpSection() {
  const start = h("button", { type: "button", id: "totp-start" }, "Set up a new authenticator");
  const area = h("div", {});
  start.addEventListener("click", async () => {
    const enrolment = await attempt(() => post("/v1/session/totp"));
    if (enrolment) area.replaceChildren(confirmForm(enrolment, area));
  });
  return h("section", { "aria-labelledby": "totp-title" },
    h("h2", { id: "totp-title" }, "Authenticator (TOTP)"),
    h("p", {}, "A new authenticator replaces the current one once you confirm a code from it."),
    start, area);
}

function confirmForm(enrolment, area) {
  const code = h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true });
  const form = h("form", { id: "totp-confirm-form" },
    totpFacts(enrolment.totp_secret, enrolment.otpauth_uri),
    field("Code from the new authenticator", code),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "totp-confirm-submit" }, "Confirm")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await attempt(() => post("/v1/session/totp/confirm", { code: code.value.replace(/\s/g, "") }));
    if (!answer) return;
    area.replaceChildren(); // the secret leaves the page
    await showSecretOnce("Recovery codes", answer.recovery_codes,
      "Each code signs you in once if you lose your authenticator. They are shown only this once.");
    showStatus("Authenticator confirmed.");
  });
  return form;
}

function sessionSection(sessions, ctx) {
  const everywhere = h("button", { type: "button", id: "sign-out-everywhere", class: "danger" }, "Sign out everywhere");
  everywhere.addEventListener("click", async () => {
    if (!(await confirmAction("End every session of yours, this one included?", "Sign out everywhere"))) return;
    if (await attempt(() => post("/v1/session/sign-out-everywhere"))) {
      ctx.signedOut();
    }
  });
  return h("section", { "aria-labelledby": "sessions-title" },
    h("h2", { id: "sessions-title" }, "Your sessions"),
    sessionTable("session-table", "Signed-in sessions", sessions),
    everywhere);
}

/** Sessions as `/v1/sessions` and `/v1/users/{id}/sessions` give them (never an id). */
export function sessionTable(id, caption, sessions) {
  return table(id, caption, ["Started", "Last used", "Address", "Browser", "This one"],
    sessions.map((s) => [when(s.created_at), when(s.last_used_at), orDash(s.address), orDash(s.user_agent), s.current ? "yes" : ""]),
    (i) => ({ dataset: { id: sessions[i].handle, current: String(sessions[i].current) } }));
}
