// The Reports view (#/reports?month=YYYY-MM): the daily report (each host's backup of the
// day, storage used) and the monthly statement (service levels met or not per host,
// charges, credits), with the charts of charts.js and their numbers.

import { api } from "./api.js";
import { enc } from "./address.js";
import { badge, gridTable, h } from "./dom.js";
import { fmtBytes, fmtTime } from "./format.js";
import { heading } from "./page.js";
import { state } from "./state.js";
import { calendarChart, DAY_TEXT, latencyChart, numbers, usageChart } from "./charts.js";

const MONTH_RE = /^\d{4}-\d{2}$/;

function usd(cents) {
  const sign = cents < 0 ? "-" : "";
  const abs = Math.abs(cents);
  const dollars = Math.floor(abs / 100).toLocaleString("en-US");
  return `${sign}$${dollars}.${String(abs % 100).padStart(2, "0")}`;
}

function thisMonth() {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}`;
}

function met(v) {
  return v == null ? badge("Not applicable", "muted") : v ? badge("Met", "ok") : badge("Not met", "bad");
}

export async function viewReports(seq, monthParam) {
  const month = MONTH_RE.test(monthParam) ? monthParam : thisMonth();
  const rep = await api("GET", `/reports/${enc(month)}`);
  if (seq !== state.seq) return null;
  const st = rep.statement;
  const picker = h("form", { class: "month-form", id: "month-form" },
    h("label", { for: "report-month" }, "Month"),
    h("input", { id: "report-month", type: "month", value: month, required: true }),
    h("button", { type: "submit", class: "btn" }, "Show"));
  picker.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = document.getElementById("report-month").value;
    if (MONTH_RE.test(v)) location.hash = `#/reports?month=${v}`;
  });
  return h("section", { id: "reports" },
    heading(`Reports for ${month}`), picker,
    st ? null : h("p", { class: "notice", id: "no-contract" },
      "No contract is provisioned on this appliance: there is no statement, only the daily figures."),
    dailySection(rep, st),
    usageSection(rep),
    st ? statementSection(st) : null);
}

function dailySection(rep, st) {
  const days = rep.daily.filter((d) => d.day.startsWith(rep.month));
  const withData = days.filter((d) => d.storage_used_bytes != null || d.protected_gb > 0);
  const day = (withData[withData.length - 1] || days[days.length - 1] || {}).day;
  const sample = days.find((d) => d.day === day) || {};
  const rows = (st ? st.hosts : []).map((x) => {
    const d = x.days.find((v) => v.day === day);
    return h("tr", {},
      h("th", { scope: "row" }, x.host),
      h("td", {}, x.kind === "pc" ? "PC" : "server"),
      h("td", {}, d ? DAY_TEXT[d.status] + (d.reason ? ` (${d.reason})` : "") : "no window closed"),
      h("td", {}, d && d.committed_at ? fmtTime(d.committed_at) : "–"),
      h("td", { class: "num" }, String(x.protected_gb)));
  });
  return h("section", { class: "card", id: "daily-report", "aria-labelledby": "daily-title" },
    h("h2", { id: "daily-title" }, `Daily report: ${day || "no day yet"}`),
    h("p", {}, "Storage used: ", h("strong", { id: "daily-storage" },
      sample.storage_used_bytes == null ? "no sample that day" : fmtBytes(sample.storage_used_bytes)),
    `; GB protected: ${sample.protected_gb ?? 0} GB.`),
    st ? gridTable({ id: "daily-hosts", "aria-label": "Backup activity of the day per host" },
      ["Host", "Kind", "Backup", "Completed", "GB protected (month)"], [4], h("tbody", {}, rows)) : null);
}

function usageSection(rep) {
  const rows = rep.daily.map((d) => [d.day, `${d.protected_gb} GB`,
    d.storage_used_bytes == null ? "–" : fmtBytes(d.storage_used_bytes)]);
  return h("section", { class: "card", id: "usage-chart", "aria-labelledby": "usage-title" },
    h("h2", { id: "usage-title" }, "Storage used and GB protected"),
    h("div", { class: "chart-wrap" }, usageChart(rep.daily, rep.floor_gb, rep.tiers, rep.committed_tier)),
    numbers("usage-numbers", "GB protected and storage used per day", ["Day", "GB protected", "Storage used"], rows));
}

function statementSection(st) {
  const ch = st.charges;
  const cr = st.credits;
  const hostRows = st.hosts.map((x) => h("tr", { "data-host": x.host },
    h("th", { scope: "row" }, x.host),
    h("td", {}, x.kind === "pc" ? "PC" : "server"),
    h("td", { class: "num" }, String(x.protected_gb)),
    h("td", { class: "num" }, `${x.backups.in_window} of ${x.backups.scheduled}`),
    h("td", {}, met(x.backups.met)),
    h("td", { class: "num" }, `${x.restores.late} of ${x.restores.counted}`),
    h("td", { class: "num" }, usd(x.credit ? x.credit.total_cents : 0))));
  const restores = st.hosts.flatMap((x) => x.restores.list);
  const calRows = st.hosts.flatMap((x) => x.days.map((d) =>
    [`${x.host} ${d.day}`, DAY_TEXT[d.status] + (d.reason ? ` (${d.reason})` : "")]));
  return h("div", { id: "statement" },
    h("section", { class: "card", id: "statement-levels", "aria-labelledby": "levels-title" },
      h("h2", { id: "levels-title" }, `Monthly statement: service levels ${st.closed ? "(closed)" : "(month in progress)"}`),
      gridTable({ id: "levels-table", "aria-label": "Service levels per host" },
        ["Host", "Kind", "GB", "Backups in window", "Backup level (95 %)", "Restores late", "Credit"],
        [2, 3, 5, 6], h("tbody", {}, hostRows)),
      h("p", {}, "Charges this month: ", h("strong", { id: "charges-total" }, usd(ch.charges_cents)),
        `; credits earned (on the next invoice): `, h("strong", { id: "credits-total" }, usd(cr.total_cents)),
        cr.servers.cap_applied ? ` (capped at 20 %: ${usd(cr.servers.cap_cents)})` : "", ".")),
    h("section", { class: "card", id: "calendar-chart", "aria-labelledby": "calendar-title" },
      h("h2", { id: "calendar-title" }, "Backup windows per host"),
      h("p", { class: "muted" }, "✓ in window · L late · ✗ missed · E excused (paused, host offline, maintenance); shaded: implementation period."),
      h("div", { class: "chart-wrap" }, calendarChart(st.month, st.hosts)),
      numbers("calendar-numbers", "Backup windows per host and day", ["Host and day", "Backup"], calRows)),
    h("section", { class: "card", id: "restore-chart", "aria-labelledby": "restore-title" },
      h("h2", { id: "restore-title" }, "Restore start latencies"),
      restores.length ? h("div", { class: "chart-wrap" }, latencyChart(restores))
        : h("p", { class: "muted", id: "no-restores" }, "No restore was requested through the portal this month."),
      restores.length ? numbers("restore-numbers", "Restore requests", ["Host and request", "Started after"],
        restores.map((r) => [`${r.host} ${r.requested_at.slice(0, 16).replace("T", " ")} UTC`,
          r.start_seconds == null ? "not started" : `${(r.start_seconds / 60).toFixed(1)} min`])) : null));
}
