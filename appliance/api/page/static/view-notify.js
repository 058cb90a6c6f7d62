// Notifications: the targets (the TOML's, listed; the page's, added, changed and removed
// here), "send a test" to each or all, and what was sent, to whom, when, and what failed
// (GET /notify, POST /notify/test, POST/PUT/DELETE /notify/targets). A password or HMAC key
// is write-only: the form sends it, the page never gets it back (only whether one is set).

import { api } from "./api.js";
import { href } from "./address.js";
import { badge, clear, gridTable, h } from "./dom.js";
import { fmtNum, timeEl } from "./format.js";
import { crumbsNav, heading, setStatus, showError } from "./page.js";
import { state } from "./state.js";

const STATE_KIND = { sent: "ok", queued: "warn", sending: "info", undeliverable: "bad" };

export async function viewNotify(seq) {
  const res = await api("GET", "/notify?limit=100");
  if (seq !== state.seq) return null;
  const wrap = h("div", { id: "notify-wrap" });
  fill(wrap, res);
  return h("section", { id: "notify-view" },
    crumbsNav([["Overview", href.overview()], ["Notifications", null]]),
    heading("Notifications"),
    h("p", { class: "muted" }, "E-mail and webhook targets come from the appliance's "
      + "configuration ([notify], listed here, changed there) and from this page. Messages "
      + "that cannot be delivered are retried with back-off, then shown here as undeliverable."),
    wrap);
}

function fill(wrap, res) {
  clear(wrap);
  const c = res.counts || {};
  wrap.append(h("p", { id: "notify-counts" },
    `${fmtNum(c.sent_total)} sent, ${fmtNum(c.waiting)} waiting, `
    + `${fmtNum(c.undeliverable_total)} undeliverable, `
    + `${fmtNum(c.failed_attempts_total)} failed attempts.`));
  const targets = res.targets || [];
  if (!targets.length) {
    wrap.append(h("p", { class: "muted", id: "notify-none" }, "No notification target is configured."));
  } else {
    wrap.append(h("div", { class: "head-actions", id: "notify-targets" },
      h("button", { type: "button", class: "btn", id: "notify-test-all",
        onclick: (ev) => sendTest(wrap, null, ev.currentTarget) }, "Send a test to every target"),
      targets.map((t) => h("button", { type: "button", class: "btn",
        data: { target: t.name },
        onclick: (ev) => sendTest(wrap, t.name, ev.currentTarget) },
      `Send a test to ${t.name} (${t.kind})`))));
    wrap.append(gridTable({ id: "notify-target-list", "aria-label": "Notification targets" },
      ["Name", "Kind", "From", "Where", "Secret", ""], [],
      h("tbody", {}, targets.map((t) => h("tr", { data: { target: t.name } },
        h("td", {}, t.name),
        h("td", {}, t.kind),
        h("td", {}, t.source === "page" ? "this page" : "configuration"),
        h("td", {}, where(t)),
        h("td", {}, (t.password_set || t.secret_set) ? "set" : "none"),
        h("td", {}, t.source === "page" ? [
          h("button", { type: "button", class: "btn", data: { edit: t.name },
            onclick: () => showForm(wrap, t) }, "Change"), " ",
          h("button", { type: "button", class: "btn", data: { remove: t.name },
            onclick: (ev) => removeTarget(wrap, t.name, ev.currentTarget) }, "Remove"),
        ] : null))))));
  }
  if (res.editable) {
    wrap.append(h("div", { id: "notify-form-wrap" },
      h("button", { type: "button", class: "btn", id: "notify-add",
        onclick: () => showForm(wrap, null) }, "Add a target")));
  }
  const rows = (res.messages || []).map((m) => h("tr", {},
    h("td", {}, timeEl(m.created_at, { rel: true })),
    h("td", {}, m.target),
    h("td", {}, m.class),
    h("td", {}, m.subject),
    h("td", {}, (m.recipients || []).join(", ")),
    h("td", {}, badge(m.state, STATE_KIND[m.state] || "muted"),
      m.sent_at ? h("span", { class: "muted" }, " ", timeEl(m.sent_at)) : null),
    h("td", { class: "num" }, fmtNum(m.attempts)),
    h("td", {}, m.last_error || "")));
  wrap.append(rows.length
    ? gridTable({ id: "notify-log", "aria-label": "Notifications sent" },
      ["Made", "Target", "Class", "Subject", "To", "State", "Attempts", "Last error"], [6],
      h("tbody", {}, rows))
    : h("p", { class: "muted", id: "notify-empty" }, "Nothing was sent yet."));
}

async function sendTest(wrap, target, button) {
  button.disabled = true;
  try {
    const res = await api("POST", "/notify/test", target ? { target } : {});
    const bad = res.messages.filter((m) => !m.delivered);
    if (bad.length) setStatus(bad.map((m) => `${m.target}: ${m.error}`).join("; "), "error");
    else setStatus(`Test delivered to ${res.messages.map((m) => m.target).join(", ")}.`, "ok");
    fill(wrap, await api("GET", "/notify?limit=100"));
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

function where(t) {
  if (t.kind === "webhook") return `${t.url}${t.classes.length ? ` (${t.classes.join(", ")})` : ""}`;
  const to = Object.entries(t.recipients || {}).map(([c, a]) => `${c}: ${a.join(", ")}`).join("; ");
  return `${t.host}:${t.port} (${t.security}) to ${to}`;
}

// Recipients as lines: "addr, addr" for every class, "class: addr, addr" for one.
function recipientsText(r) {
  return Object.entries(r || {}).map(([c, a]) => (c === "all" ? a.join(", ") : `${c}: ${a.join(", ")}`)).join("\n");
}

function parseRecipients(text) {
  const out = {};
  for (const line of text.split("\n").map((x) => x.trim()).filter((x) => x)) {
    const m = /^([a-z]+)\s*:\s*(.*)$/.exec(line);
    const cls = m ? m[1] : "all";
    const addrs = (m ? m[2] : line).split(/[,\s]+/).filter((x) => x);
    out[cls] = [...(out[cls] || []), ...addrs];
  }
  return out;
}

/** The add/change form in place of the "Add a target" button; T: the page's target to
 * change (null: a new one). Every wrong field is marked at once, as the plan form does. */
function showForm(wrap, t) {
  const holder = wrap.querySelector("#notify-form-wrap");
  if (!holder) return;
  clear(holder);
  const errors = {};
  const inputs = {};
  const field = (name, label, input, hint) => {
    inputs[name] = input;
    errors[name] = h("span", { class: "field-error", id: `err-notify-${name}`, role: "alert" });
    input.setAttribute("aria-describedby", `err-notify-${name}`);
    return h("label", { class: "field", data: { field: name } }, h("span", {}, label), input,
      hint ? h("span", { class: "hint" }, hint) : null, errors[name]);
  };
  const v = t || { kind: "smtp", security: "starttls", port: 587, classes: [], recipients: {} };
  const kind = h("select", { id: "notify-kind", disabled: t ? true : null },
    h("option", { value: "smtp", selected: v.kind === "smtp" ? true : null }, "E-mail (SMTP)"),
    h("option", { value: "webhook", selected: v.kind === "webhook" ? true : null }, "Webhook (HTTPS)"));
  const text = (id, value, type = "text") => h("input", { id, type, spellcheck: "false", value: value == null ? "" : String(value) });
  const name = text("notify-name", v.name);
  if (t) name.disabled = true;
  const host = text("notify-host", v.host);
  const port = text("notify-port", v.port, "number");
  const security = h("select", { id: "notify-security" },
    ["starttls", "tls", "none"].map((x) => h("option", { value: x, selected: v.security === x ? true : null }, x)));
  const from = text("notify-from", v.from);
  const recipients = h("textarea", { id: "notify-recipients", rows: "3", spellcheck: "false" }, recipientsText(v.recipients));
  const username = text("notify-username", v.username);
  const password = h("input", { id: "notify-password", type: "password", autocomplete: "new-password" });
  // the page gets a webhook's URL by scheme and host only: empty keeps the stored one
  const url = text("notify-url", t ? "" : v.url);
  if (t && t.url) url.placeholder = t.url;
  const secret = h("input", { id: "notify-secret", type: "password", autocomplete: "new-password" });
  const classes = text("notify-classes", (v.classes || []).join(", "));
  const caFile = text("notify-ca-file", v.ca_file);
  const keep = t ? "empty: keep the one that is set" : "";
  const smtpPart = h("div", { id: "notify-smtp-fields" },
    field("host", "Mail server", host),
    field("port", "Port", port, "587 for STARTTLS, 465 for TLS"),
    field("security", "Security", security),
    field("from", "From", from),
    field("recipients", "Recipients (one line each)", recipients, "addresses for every class; or \"premier: boss@example.com\" for one class"),
    field("username", "User name", username, "empty: no sign-in"),
    field("password", "Password", password, keep));
  const hookPart = h("div", { id: "notify-webhook-fields" },
    field("url", "URL (HTTPS only)", url, keep),
    field("secret", "HMAC key", secret, keep || "the receiver checks the X-RDR-Signature header with it"),
    field("classes", "Classes", classes, "comma-separated; empty: every class"));
  const showKind = () => {
    smtpPart.hidden = kind.value !== "smtp";
    hookPart.hidden = kind.value !== "webhook";
  };
  kind.addEventListener("change", showKind);
  showKind();
  const error = h("p", { class: "form-error", id: "notify-form-error", role: "alert" });
  const form = h("form", { id: "notify-form", class: "plan-form", novalidate: true }, error,
    field("kind", "Kind", kind),
    field("name", "Name", name, "a-z, 0-9, - and _"),
    smtpPart, hookPart,
    field("ca_file", "CA certificate file on the appliance", caFile, "empty: the system's CAs"),
    h("button", { type: "submit", class: "btn btn-primary", id: "notify-save" }, t ? "Save target" : "Add target"), " ",
    h("button", { type: "button", class: "btn", id: "notify-cancel",
      onclick: async () => fill(wrap, await api("GET", "/notify?limit=100")) }, "Cancel"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    for (const [n, el] of Object.entries(errors)) {
      el.textContent = "";
      inputs[n].removeAttribute("aria-invalid");
    }
    const body = kind.value === "smtp"
      ? { host: host.value.trim(), port: Number(port.value || 0), security: security.value,
        from: from.value.trim(), recipients: parseRecipients(recipients.value),
        username: username.value.trim() }
      : { classes: classes.value.split(/[,\s]+/).filter((x) => x) };
    if (kind.value === "webhook" && (url.value.trim() || !t)) body.url = url.value.trim();
    if (kind.value === "smtp" && password.value) body.password = password.value;
    if (kind.value === "webhook" && secret.value) body.secret = secret.value;
    body.ca_file = caFile.value.trim();
    try {
      if (t) await api("PUT", `/notify/targets/${encodeURIComponent(t.name)}`, body);
      else await api("POST", "/notify/targets", { kind: kind.value, name: name.value.trim(), ...body });
      setStatus(`Target ${t ? t.name : name.value.trim()} saved.`, "ok");
      fill(wrap, await api("GET", "/notify?limit=100"));
    } catch (e) {
      if (e.handled) return;
      const fields = (e.body && e.body.fields) || [];
      const key = (f) => f.field.split(".")[0];
      const marked = fields.filter((f) => errors[key(f)]);
      for (const f of marked) {
        errors[key(f)].textContent = errors[key(f)].textContent ? `${errors[key(f)].textContent}; ${f.message}` : f.message;
        inputs[key(f)].setAttribute("aria-invalid", "true");
      }
      const other = fields.filter((f) => !errors[key(f)]).map((f) => `${f.field}: ${f.message}`);
      error.textContent = marked.length
        ? [`Not saved: ${marked.length === 1 ? "1 field needs" : `${marked.length} fields need`} a change (marked below).`, ...other].join(" ")
        : e.message;
    }
  });
  holder.append(form);
  (t ? host : name).focus?.();
}

async function removeTarget(wrap, name, button) {
  if (!window.confirm(`Remove the notification target ${name}?`)) return;
  button.disabled = true;
  try {
    await api("DELETE", `/notify/targets/${encodeURIComponent(name)}`);
    setStatus(`Target ${name} removed.`, "ok");
    fill(wrap, await api("GET", "/notify?limit=100"));
  } catch (e) {
    showError(e);
    button.disabled = false;
  }
}
