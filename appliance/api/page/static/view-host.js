// A host's page, restore first: its backups (by source), a search of all of them, then its
// runs and the files its last backup did not take, then its plan, collapsed (view-plan.js).

import { api } from "./api.js";
import { enc, href } from "./address.js";
import { $, badge, gridTable, h } from "./dom.js";
import { ago, fmtBytes, fmtNum, fmtTime, timeEl } from "./format.js";
import { loadOverview } from "./header.js";
import { crumbsNav, heading } from "./page.js";
import { state } from "./state.js";
import { RESULT_KIND, needsAttention } from "./view-overview.js";
import { gapsSection, loadSchedule, planSection, runsSection } from "./view-plan.js";

export async function viewHost(seq, host) {
  const [res, sched] = await Promise.all([
    api("GET", `/hosts/${enc(host)}/snapshots`), loadSchedule(host),
    loadOverview().catch((e) => { if (e.handled) throw e; })]); // fresh agent and window
  if (seq !== state.seq) return null;
  const info = ((state.overview && state.overview.hosts) || []).find((x) => x.name === host);
  const snaps = res.snapshots || [];
  const summary = info ? h("p", { class: "status-line" },
    h("span", {}, "Last result ", badge(info.last_result, RESULT_KIND[info.last_result] || "muted")),
    h("span", {}, "Next window ", timeEl(info.next_window, { zone: info.timezone }),
      h("span", { class: "muted" }, ` (daily at ${info.window_start} ${info.timezone || ""})`)),
    info.missed_window ? badge("missed window", "warn") : null) : null;
  const warn = info && needsAttention(info) && (info.warning || info.last_result_detail)
    ? h("div", { class: "alert alert-warn" }, info.warning || info.last_result_detail) : null;
  return h("section", { id: "host-view", data: { host } },
    crumbsNav([["Overview", href.overview()], [host, null]]),
    heading(host, h("div", { class: "head-actions" },
      snaps.length ? h("a", { class: "btn", href: href.dir(host, snaps[0].snapshot, "") }, "Browse latest") : null,
      h("a", { class: "btn", href: href.jobs(host) }, "Restore jobs"),
      h("a", { class: "btn", href: href.hostReport(host), id: "host-report-link" }, "Host report"))),
    summary, warn,
    backupsSection(host, snaps),
    runsSection(host, sched),
    gapsSection(sched),
    planSection(host, sched));
}

/** Search every backup of the host, or (checked) of every host. */
function historyForm(host) {
  return h("form", { class: "search", id: "history-search", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const t = $("history-search-input").value.trim();
    if (t) location.hash = href.history($("history-all").checked ? "" : host, t).slice(1);
  } },
  h("label", { for: "history-search-input", class: "sr-only" }, `Search file names in every backup of ${host}`),
  h("input", { id: "history-search-input", type: "search", placeholder: "Find a file in every backup",
    maxlength: "200", spellcheck: "false" }),
  h("label", { class: "check-label" }, h("input", { id: "history-all", type: "checkbox" }), " all hosts"),
  h("button", { type: "submit", class: "btn" }, "Search"));
}

function backupsSection(host, snaps) {
  const sources = new Map(); // source -> newest first
  for (const s of snaps) {
    const key = s.source || "";
    if (!sources.has(key)) sources.set(key, []);
    sources.get(key).push(s);
  }
  let body;
  let bySource = null;
  if (!snaps.length) {
    body = h("p", { class: "empty" }, "This host has no backups yet.");
  } else {
    bySource = h("ul", { class: "sources", id: "sources", "aria-label": "Backup sources" },
      [...sources].map(([src, list]) => h("li", { data: { source: src } },
        h("span", { class: "mono source-name" }, src || "(no source)"),
        h("span", { class: "muted" }, ` ${fmtNum(list.length)} ${list.length === 1 ? "backup" : "backups"}, latest `),
        timeEl(list[0].received_at), " ",
        h("a", { href: href.dir(host, list[0].snapshot, ""), class: "btn btn-small" }, "Browse"))));
    const tbody = h("tbody");
    for (const s of snaps) {
      tbody.append(h("tr", { data: { snapshot: s.snapshot, source: s.source || "" } },
        h("th", { scope: "row" }, h("a", {
          href: href.dir(host, s.snapshot, ""), class: "snap-link", data: { snapshot: s.snapshot },
        }, fmtTime(s.received_at)), h("span", { class: "muted rel" }, ` ${ago(s.received_at)}`)),
        h("td", { class: "mono wrap" }, s.source || "–"),
        h("td", { class: "num" }, fmtBytes(s.logical_size)),
        h("td", { class: "num opt" }, fmtBytes(s.new_bytes)),
        h("td", { class: "num" }, fmtNum(s.file_count)),
        h("td", { class: "num opt" }, fmtNum(s.dir_count)),
        h("td", { class: "num opt" }, s.unreadable_count
          ? h("span", { class: "warn-text" }, fmtNum(s.unreadable_count)) : "0"),
        h("td", { class: "opt" }, s.replicated ? "yes" : "no"),
        h("td", { class: "opt" }, s.protected ? badge("protected", "info") : "no"),
        h("td", { class: "mono muted opt" }, s.snapshot)));
    }
    body = gridTable({ id: "snapshots-table", "aria-label": `Backups of ${host}` },
      ["Taken", "Source", "Size", "New data", "Files", "Folders", "Unreadable", "Replicated",
        "Protected", "Snapshot id"], [2, 3, 4, 5, 6], tbody, [3, 5, 6, 7, 8, 9]);
  }
  const filter = sources.size > 1 ? h("label", { class: "inline-field" }, "Show ",
    h("select", { id: "source-filter", onchange: (ev) => {
      const want = ev.target.value;
      for (const tr of document.querySelectorAll("#snapshots-table tbody tr")) {
        tr.hidden = want !== "*" && tr.dataset.source !== want;
      }
    } },
    h("option", { value: "*" }, `every source (${fmtNum(snaps.length)})`),
    [...sources].map(([src, list]) => h("option", { value: src }, `${src || "(no source)"} (${fmtNum(list.length)})`)))) : null;
  return h("section", { id: "backups", "aria-labelledby": "backups-title" },
    h("div", { class: "section-head" }, h("h2", { id: "backups-title" }, `Backups (${snaps.length})`), historyForm(host)),
    bySource, filter, body);
}
