// Who is signed in, and what their role may do: the console's copy of the permission table
// (api/src/permissions.rs) so it draws no control the server would refuse. The server decides.

import { get, setCsrfToken } from "./api.js";

let current = null;

/**
 * Whether this browser signed in last (not a secret: the session is an HttpOnly cookie). Asking
 * `GET /v1/session` only then keeps a signed-out visit free of a 401 in the console.
 */
const HINT = "fleetplane.signed-in";

/** Loads `GET /v1/session`; resolves the user or null when signed out. */
export async function loadSession() {
  if (localStorage.getItem(HINT) !== "yes") {
    forgetSession();
    return null;
  }
  try {
    const view = await get("/v1/session", { quiet401: true });
    current = view.user;
    setCsrfToken(view.csrf_token);
    localStorage.setItem(HINT, "yes");
  } catch (e) {
    if (e.status !== 401) throw e;
    forgetSession();
  }
  return current;
}

/** Called once a sign-in step answered `done` (the cookie is set). */
export function rememberSignIn() {
  localStorage.setItem(HINT, "yes");
}

export function forgetSession() {
  current = null;
  setCsrfToken(null);
  localStorage.removeItem(HINT);
}

export const user = () => current;
const role = () => (current ? current.role : null);
/** A group-scoped person sees only their groups; tenant-wide pages are closed to them. */
export const scoped = () => Boolean(current && Array.isArray(current.group_ids));

/** OPERATE: devices and groups may be changed, devices revoked. */
export const mayOperate = () => ["owner", "admin", "operator"].includes(role());
/** ADMINISTER: keys, tokens, people may be changed (never group-scoped: tenant-wide routes). */
export const mayAdminister = () => ["owner", "admin"].includes(role()) && !scoped();
/** ADMINISTER_READ: keys, tokens, people and the audit trail may be read. */
export const mayReadAdmin = () => ["owner", "admin", "auditor"].includes(role()) && !scoped();
/** Roles a person may hand out: at most their own. */
export function grantableRoles() {
  const order = ["auditor", "operator", "admin", "owner"];
  const at = order.indexOf(role());
  return at < 0 ? [] : order.slice(0, at + 1);
}
