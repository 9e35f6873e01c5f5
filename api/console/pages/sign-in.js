// Sign-in: password, then a TOTP or recovery code; or, the first time, TOTP enrolment (secret
// and otpauth URI shown, a code to confirm) followed by the recovery codes, shown once.

import { h, field } from "../dom.js";
import { post, setCsrfToken, showError, clearError } from "../api.js";
import { showSecretOnce } from "../dialogs.js";
import { rememberSignIn } from "../session.js";

export const PAGE = "sign-in";

export async function render(main, _params, { signedIn, query }) {
  const ssoError = query && query.get("sso_error");
  if (ssoError) showError(ssoError); // fleetd's detail, e.g. "single sign-on refused: …"
  main.append(h("h1", {}, "Sign in"), passwordForm(main, signedIn), ssoForm(),
    h("p", {}, h("a", { href: "#/accept-invitation", id: "accept-invitation-link" }, "I have an invitation")));
}

/**
 * Single sign-on: the browser goes to the tenant's provider through
 * `/v1/auth/oidc/{tenant id}/start` and comes back signed in (the session cookie is set).
 */
function ssoForm() {
  const tenantId = h("input", { name: "tenant_id", required: true, autocomplete: "off",
    pattern: "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}" });
  const form = h("form", { id: "sso-form", class: "create" },
    h("h2", {}, "Or single sign-on"),
    field("Tenant id", tenantId, "The tenant's id (a UUID), from your administrator."),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "sso-submit" }, "Continue with single sign-on")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    rememberSignIn(); // back from the provider, the console asks GET /v1/session
    location.assign(`/v1/auth/oidc/${encodeURIComponent(tenantId.value.trim())}/start`);
  });
  return form;
}

/** `#/accept-invitation`: an invited person sets their password, then signs in as usual. */
export const acceptInvitation = {
  PAGE: "accept-invitation",
  async render(main, _params, { signedIn }) {
    const token = h("input", { name: "token", required: true, autocomplete: "off" });
    const password = h("input", { name: "password", type: "password", required: true, autocomplete: "new-password", minlength: "12" });
    const submit = h("button", { type: "submit", id: "accept-invitation-submit" }, "Accept and sign in");
    const form = h("form", { id: "accept-invitation-form" },
      field("Invitation token", token), field("Choose a password", password, "At least 12 characters."),
      h("div", { class: "actions" }, submit));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      step(submit, async () => {
        const answer = await post("/v1/invitations/accept", { token: token.value.trim(), password: password.value }, { quiet401: true });
        await next(main, answer, signedIn);
      });
    });
    main.append(h("h1", {}, "Accept an invitation"), form, h("p", {}, h("a", { href: "#/sign-in" }, "Back to sign-in")));
  },
};

function passwordForm(main, signedIn) {
  const tenant = h("input", { name: "tenant", required: true, autocomplete: "organization" });
  const email = h("input", { name: "email", type: "email", required: true, autocomplete: "username" });
  const password = h("input", { name: "password", type: "password", required: true, autocomplete: "current-password" });
  const submit = h("button", { type: "submit", id: "sign-in-submit" }, "Sign in");
  const form = h("form", { id: "sign-in-form" },
    field("Tenant", tenant), field("Email", email), field("Password", password),
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    step(submit, async () => {
      const answer = await post("/v1/sign-in",
        { tenant: tenant.value.trim(), email: email.value.trim(), password: password.value }, { quiet401: true });
      await next(main, answer, signedIn);
    });
  });
  return form;
}

/** Runs one sign-in step with its button disabled; errors go to the alert region. */
async function step(button, action) {
  button.disabled = true;
  clearError();
  try {
    await action();
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

/** Follows the server's `next` field. */
async function next(main, answer, signedIn) {
  if (answer.next === "done") {
    setCsrfToken(answer.csrf_token);
    rememberSignIn();
    if (answer.recovery_codes && answer.recovery_codes.length) {
      await showSecretOnce("Recovery codes", answer.recovery_codes,
        "Each code signs you in once if you lose your authenticator. They are shown only this once.");
    }
    return signedIn();
  }
  if (answer.next === "second_factor") return replaceForm(main, secondFactorForm(main, answer, signedIn));
  if (answer.next === "enrol_totp") return replaceForm(main, enrolForm(main, answer, signedIn));
  throw new Error(`Unexpected sign-in step "${answer.next}".`);
}

/** The next step replaces everything under the heading (the other ways in included). */
function replaceForm(main, form) {
  main.replaceChildren(main.querySelector("h1"), form);
  const first = form.querySelector("input");
  if (first) first.focus();
}

function secondFactorForm(main, answer, signedIn) {
  const code = h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9 ]*" });
  const recovery = h("input", { name: "recovery_code", autocomplete: "off" });
  const submit = h("button", { type: "submit", id: "second-factor-submit" }, "Continue");
  const form = h("form", { id: "second-factor-form" },
    h("p", {}, "Enter the 6-digit code from your authenticator app, or one of your recovery codes."),
    field("Authenticator code", code), field("Or a recovery code", recovery),
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    step(submit, async () => {
      const body = { challenge: answer.challenge };
      if (recovery.value.trim()) body.recovery_code = recovery.value.trim();
      else body.code = code.value.replace(/\s/g, "");
      await next(main, await post("/v1/sign-in/second-factor", body, { quiet401: true }), signedIn);
    });
  });
  return form;
}

function enrolForm(main, answer, signedIn) {
  const code = h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true });
  const submit = h("button", { type: "submit", id: "enrol-totp-submit" }, "Confirm");
  const form = h("form", { id: "enrol-totp-form" },
    h("p", {}, "Your account needs a second factor. Add this key to an authenticator app, then enter the code it shows."),
    totpFacts(answer.totp_secret, answer.otpauth_uri),
    field("Authenticator code", code),
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    step(submit, async () => {
      const body = { challenge: answer.challenge, code: code.value.replace(/\s/g, "") };
      await next(main, await post("/v1/sign-in/enrol-totp", body, { quiet401: true }), signedIn);
    });
  });
  return form;
}

/** The TOTP secret and its otpauth URI (shared with the profile page). */
export function totpFacts(secret, uri) {
  return h("dl", { class: "facts" },
    h("dt", {}, "Secret key"), h("dd", {}, h("code", { id: "totp-secret" }, secret || "—")),
    h("dt", {}, "otpauth URI"), h("dd", {}, h("code", { id: "totp-uri", class: "wrap" }, uri || "—")));
}
