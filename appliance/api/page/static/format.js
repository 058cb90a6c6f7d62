// How figures, times and paths read on the page: decimal byte units, the browser's locale for
// dates and numbers, snapshot ids as dates.

import { h } from "./dom.js";

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dateSecFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const numFmt = new Intl.NumberFormat();

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

export function fmtTime(v, seconds = false) {
  const d = toDate(v);
  return d ? (seconds ? dateSecFmt : dateFmt).format(d) : "–";
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

/** A <time> with the local time, and the exact instant in its tooltip. */
export function timeEl(v, { rel = false, seconds = false } = {}) {
  const d = toDate(v);
  if (!d) return h("span", { class: "muted" }, "–");
  return h("time", { datetime: d.toISOString(), title: d.toString() }, fmtTime(d, seconds),
    rel ? h("span", { class: "muted rel" }, ` (${ago(d)})`) : null);
}

/** "2026-11-22T17-03-12Z" (a snapshot id) as a Date. */
export function snapDate(id) {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d)-(\d\d)-(\d\d)Z$/.exec(id || "");
  return m ? new Date(Date.UTC(+m[1], m[2] - 1, +m[3], +m[4], +m[5], +m[6])) : null;
}

export function snapLabel(id) {
  const d = snapDate(id);
  return d ? dateFmt.format(d) : id;
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
