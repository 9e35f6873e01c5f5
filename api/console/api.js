// The management API from the browser: same-origin cookie, JSON bodies, the CSRF header on
// every state-changing request, problem+json turned into readable messages.

import { h } from "./dom.js";

let csrfToken = null;

/** Remembers the token from a sign-in answer or `GET /v1/session`. */
export function setCsrfToken(token) {
  csrfToken = token || null;
}

/** Thrown for every answer that is not 2xx. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(describe(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

function describe(status, problem) {
  if (!problem) return `The server answered ${status}.`;
  const head = [problem.title, problem.detail].filter(Boolean).join(": ") || `The server answered ${status}.`;
  return problem.field ? `${head} (field: ${problem.field})` : head;
}

const MUTATING = new Set(["POST", "PATCH", "PUT", "DELETE"]);

/** Called on 401 (the session is gone): the app sends the person to sign-in. */
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/**
 * One request. `body` is sent as JSON. Returns the parsed JSON (or null for an empty answer).
 * `quiet401`: a 401 is thrown to the caller without leaving the page (sign-in steps, start-up).
 */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (MUTATING.has(method) && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { title: "The server could not be reached", detail: e.message });
  }
  const text = await response.text();
  const data = text ? parse(text) : null;
  if (!response.ok) {
    if (response.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(response.status, data && typeof data === "object" ? data : null);
  }
  return data;
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

/** `path?k=v&…` with empty values left out. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "" || value === false) continue;
    query.append(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** Shows an error in the alert region (and clears the status line). */
export function showError(error) {
  const region = document.getElementById("alert");
  region.replaceChildren(h("strong", {}, "Error: "), error instanceof Error ? error.message : String(error));
  region.hidden = false;
  document.getElementById("status").textContent = "";
}

/** Shows a success message in the polite status region (and clears the alert). */
export function showStatus(message) {
  clearError();
  document.getElementById("status").textContent = message;
}

export function clearError() {
  const region = document.getElementById("alert");
  region.replaceChildren();
  region.hidden = true;
}

/** Runs `action`, showing its error instead of throwing. Returns its result or undefined. */
export async function attempt(action) {
  try {
    return await action();
  } catch (e) {
    showError(e);
    return undefined;
  }
}
