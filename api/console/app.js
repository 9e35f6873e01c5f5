// The console's entry point: the frame (nav, who is signed in), the hash router, and the
// page modules under pages/. Every page renders one <main id="page-<name>">.

import { h } from "./dom.js";
import { del, clearError, showError, whenUnauthorized, attempt } from "./api.js";
import { loadSession, forgetSession, user, mayReadAdmin } from "./session.js";
import * as signIn from "./pages/sign-in.js";
import * as fleet from "./pages/fleet.js";
import * as device from "./pages/device.js";
import * as patchPage from "./pages/patch.js";
import * as enrollment from "./pages/enrollment.js";
import * as apiKeys from "./pages/api-keys.js";
import * as users from "./pages/users.js";
import * as profile from "./pages/profile.js";
import * as audit from "./pages/audit.js";

/** Route name → page module, nav text, and whether the signed-in person may open it. */
const PAGES = {
  fleet: { module: fleet, nav: "Fleet", allowed: () => true },
  devices: { module: device, allowed: () => true },
  patch: { module: patchPage, nav: "Patch posture", allowed: () => true },
  enrollment: { module: enrollment, nav: "Enrollment", allowed: mayReadAdmin },
  "api-keys": { module: apiKeys, nav: "API keys", allowed: mayReadAdmin },
  users: { module: users, nav: "Users", allowed: mayReadAdmin },
  audit: { module: audit, nav: "Audit", allowed: mayReadAdmin },
  profile: { module: profile, nav: "Profile", allowed: () => true },
};

const app = document.getElementById("app");
let renderCount = 0;

/**
 * `#/devices/abc` → `{name: "devices", params: ["abc"]}`; a query after the path
 * (`#/sign-in?sso_error=…`, where fleetd sends a refused single sign-on) is `query`.
 */
function parseHash() {
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "fleet", params: parts.slice(1), query: new URLSearchParams(search) };
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const { name, params, query } = parseHash();
  const signedIn = Boolean(user());
  if (name === "sign-in" || name === "accept-invitation" || !signedIn) {
    if (signedIn) return navigate("#/fleet");
    if (name === "accept-invitation") return show(signIn.acceptInvitation, "accept-invitation", params);
    if (name !== "sign-in") return navigate("#/sign-in");
    return show(signIn, "sign-in", params, query);
  }
  const page = PAGES[name];
  if (!page || !page.allowed()) return notFound(name);
  return show(page.module, page.module.PAGE || name, params);
}

/** Renders `module` into a fresh <main>; a later navigation wins over a slow earlier one. */
async function show(module, pageName, params, query = new URLSearchParams()) {
  const mine = ++renderCount;
  clearError();
  const main = h("main", { id: `page-${pageName}`, tabindex: "-1", dataset: { loading: "true" } });
  app.replaceChildren(main);
  markNav(pageName);
  try {
    await module.render(main, params, { navigate, signedIn, signedOut, query });
  } catch (e) {
    if (mine === renderCount) showError(e);
  }
  if (mine !== renderCount) return;
  delete main.dataset.loading;
  // After a navigation, keyboard and screen-reader users start at the new page.
  if (renderCount > 1) focusStart(main);
}

/** Signing in starts in the first field; every other page at its <main>. */
function focusStart(main) {
  const signingIn = main.id === "page-sign-in" || main.id === "page-accept-invitation";
  const first = signingIn ? main.querySelector("input") : null;
  (first || main).focus();
}

function notFound(name) {
  const main = h("main", { id: "page-not-found", tabindex: "-1" },
    h("h1", {}, "Not found"),
    h("p", {}, `There is no page "${name}" for you here. `, h("a", { href: "#/fleet" }, "Back to the fleet")));
  app.replaceChildren(main);
}

/** The nav lists the pages this person may open. */
function drawFrame() {
  const person = user();
  const nav = document.getElementById("nav");
  const whoami = document.getElementById("whoami");
  const signOut = document.getElementById("sign-out");
  nav.hidden = !person;
  signOut.hidden = !person;
  whoami.textContent = person ? `${person.email} (${person.role}${person.group_ids ? ", group-scoped" : ""})` : "";
  nav.replaceChildren(...(person
    ? Object.entries(PAGES).filter(([, p]) => p.nav && p.allowed())
      .map(([name, p]) => h("a", { href: `#/${name}`, dataset: { nav: name } }, p.nav))
    : []));
}

function markNav(pageName) {
  const current = pageName === "device" ? "fleet" : pageName;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.nav === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** After a completed sign-in: load the session (role, CSRF token) and open the fleet. */
async function signedIn() {
  await loadSession();
  drawFrame();
  navigate("#/fleet");
}

/** The session ended (signed out, or the server answered 401): back to sign-in. */
function signedOut() {
  forgetSession();
  drawFrame();
  navigate("#/sign-in");
}

function wireFrame() {
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    const main = document.querySelector("main");
    if (main) main.focus();
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await attempt(() => del("/v1/session"));
    signedOut();
  });
  whenUnauthorized(signedOut);
  window.addEventListener("hashchange", route);
}

async function start() {
  wireFrame();
  // fleetd sent the browser back from a refused single sign-on: nobody is signed in.
  if (parseHash().query.has("sso_error")) forgetSession();
  try {
    await loadSession();
  } catch (e) {
    showError(e);
  }
  drawFrame();
  await route();
}

start();
