// One device: identity and certificates, presence history, telemetry charts (server-rendered
// SVG, in the viewer's zone), patch status, ingest health, its audit events; and for operators
// rename, labels, move group and revoke, each confirmed first.

import { h, field, select, table, facts, orDash, when, age, yesNo, labelText, parseLabels } from "../dom.js";
import { get, patch, post, withQuery, showStatus, showError, attempt } from "../api.js";
import { confirmAction, confirmedButton } from "../dialogs.js";
import { listGroups } from "../groups.js";
import { mayOperate, mayReadAdmin } from "../session.js";

export const PAGE = "device";

const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
/**
 * The chart families and how a device's series names (from the aggregate route) map to them:
 * CPU and memory are one series each; disks, temperature zones and network interfaces are one
 * series per mount, zone or interface (the first few, loopback left out).
 */
const FAMILIES = [
  { metric: "cpu", title: "CPU usage", fixed: "cpu_usage_percent" },
  { metric: "memory", title: "Memory used", fixed: "memory_used_percent" },
  { metric: "disk", title: "Disk used", prefixes: ["disk_used_percent:"], most: 3 },
  { metric: "temperature", title: "Temperature", prefixes: ["temperature_celsius:"], most: 3 },
  { metric: "network", title: "Network traffic", prefixes: ["net_rx_bytes:", "net_tx_bytes:"], most: 2 },
];
let chosenRange = "24h";

export async function render(main, [id], ctx) {
  if (!id) throw new Error("No device id in the address.");
  main.dataset.id = id;
  const device = await get(`/v1/devices/${encodeURIComponent(id)}`);
  const rerender = () => ctx.navigate(`#/devices/${encodeURIComponent(id)}`);
  const parts = [
    h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")),
    h("h1", {}, `Device ${device.name}`),
    identity(device),
    certificates(device.certificates || []),
  ];
  // append() writes a null as the text "null": leave the controls out instead.
  if (mayOperate()) parts.push(await actions(device, rerender));
  main.append(...parts);
  const sections = [presence(id), telemetry(id), patchStatus(id), ingestHealth(id)];
  if (mayReadAdmin()) sections.push(auditEvents(id));
  // Each widget is one request; they run together and fail on their own.
  for (const section of await Promise.all(sections)) main.append(section);
}

function identity(d) {
  return h("section", { "aria-labelledby": "identity-title" },
    h("h2", { id: "identity-title" }, "Identity"),
    facts("device-identity", [
      ["Id", "id", d.id], ["Name", "name", d.name], ["Group", "group", d.group],
      ["Status", "status", d.status], ["Presence", "online", d.online ? "online" : "offline"],
      ["Labels", "labels", labelText(d.labels)], ["Created", "created_at", when(d.created_at)],
      ["Last seen", "last_seen", when(d.last_seen_at)],
    ]));
}

function certificates(certs) {
  const now = Date.now();
  return h("section", { "aria-labelledby": "certs-title" },
    h("h2", { id: "certs-title" }, "Certificates"),
    table("certificates", "Certificates, newest expiry first", ["Serial", "Valid from", "Expires", "Issued", "Issued through"],
      certs.map((c) => [
        h("code", {}, c.serial), when(c.not_before),
        [when(c.not_after), new Date(c.not_after).getTime() < now ? " (expired)" : ""],
        when(c.issued_at), c.enrollment_token_id ? "enrollment" : "renewal",
      ]), (i) => ({ dataset: { id: certs[i].serial } })));
}

/** A section whose content comes from one request; its failure stays inside it. */
async function section(id, title, load) {
  const body = await load().catch((e) => h("p", { class: "error-text" }, e.status === 404 ? "Nothing reported yet." : e.message));
  return h("section", { id, "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), body);
}

function presence(id) {
  return section("presence-section", "Presence history", async () => {
    const page = await get(withQuery(`/v1/devices/${encodeURIComponent(id)}/presence`, { limit: 50 }));
    const items = page.items || [];
    return table("presence", "Connects and disconnects, newest first", ["When", "Event"],
      items.map((p) => [{ field: "at", value: when(p.at) }, { field: "online", value: p.online ? "connected" : "disconnected" }]));
  });
}

async function telemetry(id) {
  const charts = h("div", { class: "charts" });
  const buttons = Object.keys(RANGES).map((range) => {
    const button = h("button", { type: "button", dataset: { range }, "aria-pressed": String(range === chosenRange) }, range);
    button.addEventListener("click", () => {
      chosenRange = range;
      for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.range === range));
      attempt(() => drawCharts(charts, id));
    });
    return button;
  });
  await drawCharts(charts, id);
  return h("section", { id: "telemetry", "aria-labelledby": "telemetry-title" },
    h("h2", { id: "telemetry-title" }, "Telemetry"),
    h("div", { class: "actions", role: "group", "aria-label": "Time range" }, h("span", {}, "Range:"), buttons),
    charts);
}

/**
 * Charts are SVG drawn by the server, bucketed there, with times in the viewer's zone. One
 * aggregate request over the range (one bucket) names the series the device reported; then one
 * chart per series.
 */
async function drawCharts(charts, id) {
  const rangeName = chosenRange;
  const to = new Date();
  const from = new Date(to.getTime() - RANGES[chosenRange]);
  const range = { from: from.toISOString(), to: to.toISOString() };
  const tz = -to.getTimezoneOffset(); // minutes east of UTC, as the API expects
  const names = await get(withQuery(`/v1/devices/${encodeURIComponent(id)}/telemetry/aggregate`, { ...range, bucket: chosenRange }))
    .then((a) => a.series.map((series) => series.metric))
    .catch(() => []);
  charts.replaceChildren(...FAMILIES.flatMap((family) => {
    const series = family.fixed ? [family.fixed] : seriesOf(family, names);
    if (!series.length) {
      return [h("p", { class: "hint", dataset: { metric: family.metric, empty: "true" } },
        `${family.title}: no data in the last ${chosenRange}.`)];
    }
    return series.map((name) => chart(id, family, name, { ...range, name: rangeName }, tz));
  }));
}

/** "Disk used, /var", "Network traffic, eth0 received". */
function seriesTitle(family, series) {
  if (family.fixed) return family.title;
  const what = series.slice(series.indexOf(":") + 1);
  const direction = { net_rx_bytes: " received", net_tx_bytes: " sent" }[series.split(":")[0]] || "";
  return `${family.title}, ${what}${direction}`;
}

/** The family's series: its first few subjects (mount, zone, interface), each with every prefix. */
function seriesOf(family, names) {
  const [first] = family.prefixes;
  const subjects = names.filter((name) => name.startsWith(first)).map((name) => name.slice(first.length))
    .filter((subject) => subject !== "lo").slice(0, family.most);
  return subjects.flatMap((subject) => family.prefixes.map((prefix) => prefix + subject))
    .filter((name) => names.includes(name));
}

/** One chart over `range` ({from, to, name}); the image says which range it shows (data-range). */
function chart(id, family, series, range, tz) {
  const title = seriesTitle(family, series);
  return h("figure", { class: "chart" },
    h("img", {
      dataset: { metric: family.metric, series, range: range.name },
      alt: `${title} of this device over the last ${range.name}; gaps are periods without data.`,
      src: withQuery(`/v1/devices/${encodeURIComponent(id)}/telemetry/chart.svg`, { metric: series, from: range.from, to: range.to, tz_offset_minutes: tz }),
      width: "640", height: "240",
      onerror: (event) => event.target.replaceWith(h("p", { class: "error-text", dataset: { metric: family.metric, failed: "true" } },
        `The ${title} chart could not be drawn.`)),
    }),
    h("figcaption", {}, title));
}

function patchStatus(id) {
  return section("patch-status", "Patch status", async () => {
    const s = await get(`/v1/devices/${encodeURIComponent(id)}/patch-status`);
    // Only packages with an update are listed: the rest can be thousands of rows.
    const packages = (s.packages || []).filter((p) => p.candidate)
      .sort((a, b) => Number(b.security) - Number(a.security) || a.name.localeCompare(b.name));
    return h("div", {},
      facts("patch-facts", [
        ["Inventory recorded", "recorded_at", when(s.recorded_at)],
        ["Inventory age", "inventory_age", age(s.inventory_age_secs)],
        ["OS", "os", `${orDash(s.os_id)} ${orDash(s.os_version)} (${orDash(s.package_manager)})`],
        ["Reboot required", "reboot_required", yesNo(s.reboot_required)],
        ["Upgradable packages", "upgradable", `${orDash(s.upgradable_count)} of ${orDash(s.package_count)}`],
        ["Security updates", "security_upgradable", orDash(s.security_upgradable_count)],
      ]),
      h("div", { class: "scroll" }, table("patch-packages", "Packages with an update (security first)",
        ["Package", "Installed", "Candidate", "Security"],
        packages.map((p) => [p.name, p.installed, orDash(p.candidate), { field: "security", value: p.security ? "yes" : "no" }]),
        (i) => ({ dataset: { id: packages[i].name }, class: packages[i].security ? "security" : null }))));
  });
}

function ingestHealth(id) {
  return section("ingest-health", "Ingest health", async () => {
    const health = await get(`/v1/devices/${encodeURIComponent(id)}/health`);
    const rejects = Object.entries(health.rejects || {});
    return h("div", {},
      facts("ingest-facts", [
        ["Records committed", "records_committed", orDash(health.records_committed)],
        ["Watermark (sequence)", "watermark", orDash(health.watermark)],
        ["Last error", "last_error", health.last_error ? `${health.last_error} (${orDash(health.last_error_reason)})` : "none"],
        ["Last error at", "last_error_at", when(health.last_error_at)],
      ]),
      table("ingest-rejects", "Refused records by reason", ["Reason", "Count"], rejects.map(([reason, n]) => [reason, String(n)])));
  });
}

function auditEvents(id) {
  return section("device-audit-section", "Audit events", async () => {
    const page = await get(withQuery("/v1/audit-events", { device: id, limit: 50 }));
    const events = page.items || [];
    return table("device-audit", "Audit events about this device", ["When", "Actor", "Action"],
      events.map((e) => [when(e.occurred_at), e.actor, e.action]), (i) => ({ dataset: { id: events[i].seq } }));
  });
}

/** Rename, labels, move, revoke: each form asks in the confirmation dialog first. */
async function actions(device, rerender) {
  const groups = await listGroups().catch(() => []);
  const url = `/v1/devices/${encodeURIComponent(device.id)}`;
  const change = (form, question, body) => form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = body();
    } catch (e) {
      return showError(e);
    }
    if (!(await confirmAction(question(), "Save"))) return;
    if (await attempt(() => patch(url, payload))) {
      showStatus("Device updated.");
      rerender();
    }
  });

  const name = h("input", { name: "name", required: true, value: device.name });
  const rename = h("form", { id: "rename-form" }, field("New name", name),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Rename")));
  change(rename, () => `Rename "${device.name}" to "${name.value.trim()}"?`, () => ({ name: name.value.trim() }));

  const labels = h("textarea", { name: "labels", rows: "3" }, Object.entries(device.labels || {}).map(([k, v]) => `${k}=${v}`).join("\n"));
  const labelForm = h("form", { id: "labels-form" }, field("Labels", labels, "One key=value a line; replaces all labels."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Set labels")));
  change(labelForm, () => `Replace the labels of "${device.name}"?`, () => ({ labels: parseLabels(labels.value) }));

  const group = select("group", groups.map((g) => [g.name, g.name]), { value: device.group });
  const move = h("form", { id: "move-form" }, field("Group", group),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Move")));
  change(move, () => `Move "${device.name}" to group "${group.value}"?`, () => ({ group: group.value }));

  const revoke = confirmedButton({
    text: "Revoke device", action: "revoke-device", okText: "Revoke",
    question: `Revoke "${device.name}"? Its certificate stops working and it is disconnected within seconds. This cannot be undone.`,
    run: () => post(`${url}/revoke`), done: `Device ${device.name} revoked.`, after: rerender,
  });
  revoke.id = "revoke-device";
  revoke.disabled = device.status === "revoked";

  return h("section", { id: "device-actions", "aria-labelledby": "actions-title" },
    h("h2", { id: "actions-title" }, "Change"), h("div", { class: "forms" }, rename, labelForm, move), revoke);
}
