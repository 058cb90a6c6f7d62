// A host's page: its status, its scheduled backups (view-plan.js) and the list of its backups.

import { api } from "./api.js";
import { enc, href } from "./address.js";
import { badge, gridTable, h } from "./dom.js";
import { ago, fmtBytes, fmtNum, fmtTime, timeEl } from "./format.js";
import { crumbsNav, heading } from "./page.js";
import { state } from "./state.js";
import { RESULT_KIND, needsAttention } from "./view-overview.js";
import { scheduleSection } from "./view-plan.js";

export async function viewHost(seq, host) {
  const res = await api("GET", `/hosts/${enc(host)}/snapshots`);
  if (seq !== state.seq) return null;
  const info = ((state.overview && state.overview.hosts) || []).find((x) => x.name === host);
  const snaps = res.snapshots || [];
  const summary = info ? h("p", { class: "status-line" },
    h("span", {}, "Last result ", badge(info.last_result, RESULT_KIND[info.last_result] || "muted")),
    h("span", {}, "Next window ", timeEl(info.next_window)),
    info.missed_window ? badge("missed window", "warn") : null) : null;
  const warn = info && needsAttention(info) && (info.warning || info.last_result_detail)
    ? h("div", { class: "alert alert-warn" }, info.warning || info.last_result_detail) : null;
  let body;
  if (!snaps.length) {
    body = h("p", { class: "empty" }, "This host has no backups yet.");
  } else {
    const tbody = h("tbody");
    for (const s of snaps) {
      tbody.append(h("tr", { data: { snapshot: s.snapshot } },
        h("th", { scope: "row" }, h("a", {
          href: href.dir(host, s.snapshot, ""), class: "snap-link", data: { snapshot: s.snapshot },
        }, fmtTime(s.received_at)), h("span", { class: "muted rel" }, ` ${ago(s.received_at)}`)),
        h("td", { class: "mono" }, s.source || "–"),
        h("td", { class: "num" }, fmtBytes(s.logical_size)),
        h("td", { class: "num" }, fmtBytes(s.new_bytes)),
        h("td", { class: "num" }, fmtNum(s.file_count)),
        h("td", { class: "num" }, fmtNum(s.dir_count)),
        h("td", { class: "num" }, s.unreadable_count
          ? h("span", { class: "warn-text" }, fmtNum(s.unreadable_count)) : "0"),
        h("td", {}, s.replicated ? "yes" : "no"),
        h("td", {}, s.protected ? badge("protected", "info") : "no"),
        h("td", { class: "mono muted" }, s.snapshot)));
    }
    body = gridTable({ id: "snapshots-table", "aria-label": `Backups of ${host}` },
      ["Taken", "Source", "Size", "New data", "Files", "Folders", "Unreadable", "Replicated",
        "Protected", "Snapshot id"], [2, 3, 4, 5, 6], tbody);
  }
  const schedule = await scheduleSection(host);
  if (seq !== state.seq) return null;
  return h("section", { id: "host-view", data: { host } },
    crumbsNav([["Overview", href.overview()], [host, null]]),
    heading(host, h("div", { class: "head-actions" },
      snaps.length ? h("a", { class: "btn", href: href.dir(host, snaps[0].snapshot, "") }, "Browse latest") : null,
      h("a", { class: "btn", href: href.jobs(host) }, "Restore jobs"),
      h("a", { class: "btn", href: href.hostReport(host), id: "host-report-link" }, "Host report"))),
    summary, warn, schedule,
    h("h2", {}, `Backups (${snaps.length})`), body);
}
