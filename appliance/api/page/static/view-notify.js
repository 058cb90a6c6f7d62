// Notifications: the configured targets (name and kind only), "send a test" to each or all,
// and what was sent, to whom, when, and what failed (GET /notify, POST /notify/test).

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
    h("p", { class: "muted" }, "E-mail and webhook targets are set in the appliance's "
      + "configuration ([notify]). Messages that cannot be delivered are retried with "
      + "back-off, then shown here as undeliverable."),
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
