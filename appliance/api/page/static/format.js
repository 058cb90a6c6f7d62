// How figures, times and paths read on the page: decimal byte units, the browser's locale for
// dates and numbers, snapshot ids as dates.
//
// Times: an instant is shown in the zone it belongs to, and always says which. By default
// that is the appliance's configured zone (its retention days, reports and windows count
// there; the header names it), a window's opening the zone of its plan; the browser's own
// zone is named as such wherever it is used (tooltips, "your time").

import { h } from "./dom.js";
import { state } from "./state.js";

const numFmt = new Intl.NumberFormat();
const fmts = new Map();

/** The browser's own zone (what "local time" would silently mean). */
export const browserZone = () => Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

/** The appliance's configured zone, from /overview; the browser's until it is known. */
export function applianceZone() {
  const a = state.overview && state.overview.appliance;
  return (a && a.timezone) || browserZone();
}

function formatter(zone, seconds) {
  const key = `${zone}|${seconds}`;
  let f = fmts.get(key);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: seconds ? "long" : "short", timeZone: zone });
    } catch {
      f = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: seconds ? "long" : "short", timeZone: "UTC" });
    }
    // timeStyle "short" has no zone: add its short name, so every time says its zone
    if (!seconds) {
      const base = f;
      const name = zoneName(zone);
      f = { format: (d) => `${base.format(d)} ${name(d)}` };
    }
    fmts.set(key, f);
  }
  return f;
}

/** A zone's short name at an instant ("CET", "GMT+1", "UTC"). */
function zoneName(zone) {
  let f;
  try {
    f = new Intl.DateTimeFormat("en-US", { timeZone: zone, timeZoneName: "short" });
  } catch {
    return () => zone;
  }
  return (d) => (f.formatToParts(d).find((p) => p.type === "timeZoneName") || { value: zone }).value;
}

/** Decimal units, as the contract and the appliance's console count (1 GB = 10^9 bytes). */
export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  let v = Number(n);
  for (const unit of ["B", "KB", "MB", "GB", "TB"]) {
    if (Math.abs(v) < 1000 || unit === "TB") {
      return unit === "B" ? `${Math.round(v)} B` : `${v.toFixed(1)} ${unit}`;
    }
    v /= 1000;
  }
  return `${v.toFixed(1)} PB`;
}

export const fmtNum = (n) => (n === null || n === undefined ? "–" : numFmt.format(n));

function toDate(v) {
  if (v === null || v === undefined || v === "") return null;
  const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** An instant in `zone` (the appliance's by default), with the zone's name. */
export function fmtTime(v, seconds = false, zone = null) {
  const d = toDate(v);
  return d ? formatter(zone || applianceZone(), seconds).format(d) : "–";
}

export function fmtDuration(sec) {
  const s = Math.abs(sec);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${(s / 3600).toFixed(s < 10 * 3600 ? 1 : 0)} h`;
  return `${Math.round(s / 86400)} d`;
}

export function ago(v) {
  const d = toDate(v);
  if (!d) return "";
  const sec = (Date.now() - d.getTime()) / 1000;
  if (Math.abs(sec) < 45) return "just now";
  return sec > 0 ? `${fmtDuration(sec)} ago` : `in ${fmtDuration(sec)}`;
}

/** A <time> in `zone` (the appliance's by default), labelled with the zone; its tooltip
 * names the zone and gives the same instant on the browser's clock. */
export function timeEl(v, { rel = false, seconds = false, zone = null } = {}) {
  const d = toDate(v);
  if (!d) return h("span", { class: "muted" }, "–");
  const z = zone || applianceZone();
  const title = `${fmtTime(d, true, z)} (${z})` +
    (z === browserZone() ? "" : ` = ${fmtTime(d, true, browserZone())} on this browser's clock (${browserZone()})`);
  return h("time", { datetime: d.toISOString(), title }, fmtTime(d, seconds, z),
    rel ? h("span", { class: "muted rel" }, ` (${ago(d)})`) : null);
}

/** "2026-11-22T17-03-12Z" (a snapshot id) as a Date. */
export function snapDate(id) {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d)-(\d\d)-(\d\d)Z$/.exec(id || "");
  return m ? new Date(Date.UTC(+m[1], m[2] - 1, +m[3], +m[4], +m[5], +m[6])) : null;
}

export function snapLabel(id) {
  const d = snapDate(id);
  return d ? fmtTime(d) : id;
}

export const TYPE_LABEL = {
  file: "file", dir: "folder", symlink: "symbolic link", hardlink: "hard link", fifo: "pipe",
  chardev: "character device", blockdev: "block device",
};

/** A path for people from a q: percent-escapes decoded where they form UTF-8. */
export function pathOf(q) {
  return "/" + q.split("/").map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part.replace(/%[0-9A-Fa-f]{2}/g, "\ufffd");
    }
  }).join("/");
}
