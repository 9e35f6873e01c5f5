// Modal dialogs: a confirmation before every change, and the display-once dialog for secrets
// (enrollment tokens, API keys, invitations, recovery codes), which is removed from the DOM
// once the person says they stored the secret.

import { h, formValues } from "./dom.js";
import { post, showStatus, showError, attempt } from "./api.js";

/** Asks `message`; resolves true on confirm, false on cancel or Escape. */
export function confirmAction(message, okText = "Confirm") {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const ok = h("button", { type: "button", id: "confirm-ok", class: "danger" }, okText);
    const cancel = h("button", { type: "button", id: "confirm-cancel" }, "Cancel");
    const dialog = h("dialog", { id: "confirm-dialog", "aria-labelledby": "confirm-message" },
      h("p", { id: "confirm-message" }, message),
      h("div", { class: "actions" }, cancel, ok));
    let answer = false;
    ok.addEventListener("click", () => { answer = true; dialog.close(); });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/**
 * Shows `secret` once. `title` says what it is; `lines`: an array shown one per line
 * (recovery codes). Resolves when the person ticked "I have stored it" and closed the dialog;
 * the dialog and the secret's text are then gone from the page.
 */
export function showSecretOnce(title, secret, explanation) {
  return new Promise((resolve) => {
    const text = Array.isArray(secret) ? secret.join("\n") : secret;
    const value = h("pre", { id: "secret-value", class: "secret", tabindex: "0", "aria-label": title }, text);
    const copy = h("button", { type: "button", id: "secret-copy" }, "Copy");
    const stored = h("input", { type: "checkbox", id: "secret-stored" });
    const close = h("button", { type: "button", id: "secret-close", disabled: true }, "Close");
    const copied = h("p", { class: "hint", role: "status" });
    const dialog = h("dialog", { id: "secret-dialog", "aria-labelledby": "secret-title" },
      h("h2", { id: "secret-title" }, title),
      h("p", {}, explanation || "This is shown only once. Store it now: it cannot be shown again."),
      value,
      h("div", { class: "actions" }, copy, copied),
      h("div", { class: "field check" }, stored, h("label", { for: "secret-stored" }, "I have stored it")),
      h("div", { class: "actions" }, close));

    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(text);
        copied.textContent = "Copied to the clipboard.";
      } catch {
        selectText(value);
        copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
      }
    });
    stored.addEventListener("change", () => { close.disabled = !stored.checked; });
    // Escape must not dismiss an unacknowledged secret.
    dialog.addEventListener("cancel", (event) => { if (!stored.checked) event.preventDefault(); });
    close.addEventListener("click", () => { if (stored.checked) dialog.close(); });
    dialog.addEventListener("close", () => {
      if (!stored.checked) {
        dialog.showModal(); // closed some other way (a second Escape): not acknowledged yet
        return;
      }
      value.textContent = "";
      dialog.remove();
      showStatus(`${title}: stored, and no longer shown.`);
      resolve();
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    value.focus();
  });
}

function selectText(node) {
  const range = document.createRange();
  range.selectNodeContents(node);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

/**
 * A button that asks `question` first, then runs `run` (a request); on success it shows
 * `done` in the status region and calls `after` (usually a reload of the page).
 */
export function confirmedButton({ text, action, question, okText, run, done, after, danger = true }) {
  const button = h("button", { type: "button", class: danger ? "danger" : null, dataset: { action } }, text);
  button.addEventListener("click", async () => {
    if (!(await confirmAction(question, okText))) return;
    if ((await attempt(run)) === undefined) return; // the error is in the alert region
    showStatus(done);
    after();
  });
  return button;
}

/**
 * A create form whose answer holds a secret: on submit, `body(values)` (which may throw a
 * readable error) is POSTed to `url`; the secret `reveal(created)` names is shown once; then
 * `after()`.
 */
export function createsSecret(form, { url, body, reveal, after }) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = body(formValues(form));
    } catch (e) {
      return showError(e);
    }
    const created = await attempt(() => post(url, payload));
    if (!created) return;
    const { title, secret, explanation } = reveal(created);
    await showSecretOnce(title, secret, explanation);
    after();
  });
  return form;
}
