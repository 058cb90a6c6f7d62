// Addresses: the page's own (the hash the router reads) and the API's.
//
// Paths: every entry carries `q`, its percent-encoded path. It is passed back verbatim, in
// the address bar's hash as in API calls, and never decoded or re-encoded here.

import { API } from "./api.js";
import { state } from "./state.js";

const Q_RE = /^[A-Za-z0-9_.~/%-]*$/; // what the server's percent-encoding can produce

export const enc = encodeURIComponent;
export const href = {
  overview: () => "#/",
  jobs: (host) => (host ? `#/jobs?host=${enc(host)}` : "#/jobs"),
  host: (host) => `#/host/${enc(host)}`,
  hostReport: (host) => `#/host/${enc(host)}/report`,
  addHost: () => "#/add-host",
  dir: (host, snap, q) => `#/host/${enc(host)}/${enc(snap)}/dir${q ? `?q=${q}` : ""}`,
  file: (host, snap, dirQ, q) =>
    `#/host/${enc(host)}/${enc(snap)}/dir?q=${dirQ || ""}&file=${q}`,
  search: (host, snap, text, q) =>
    `#/host/${enc(host)}/${enc(snap)}/search?text=${enc(text)}${q ? `&q=${q}` : ""}`,
  // every backup of a host, or of every host (host "")
  history: (host, text) => `#/search?text=${enc(text)}${host ? `&host=${enc(host)}` : ""}`,
};

export function snapApi(host, snap) {
  return `/hosts/${enc(host)}/snapshots/${enc(snap)}`;
}

/** `hash` with the details overlay of entry `fileQ` (or as it is without one). */
function withFile(hash, fileQ) {
  if (fileQ === undefined) return hash;
  return `${hash}${hash.includes("?") ? "&" : "?"}file=${fileQ}`;
}

/** Show the resolved snapshot id ("latest" -> its id) in the address, without a new entry. */
export function canonical(hash) {
  history.replaceState(null, "", withFile(hash, parseHash().params.file));
  state.viewKey = parseHash().key;
}

export const parentQ = (q) => (q.includes("/") ? q.slice(0, q.lastIndexOf("/")) : "");

export function downloadUrl(host, snap, q) {
  return `${API}${snapApi(host, snap)}/download?path=${q}`;
}

/** An archive of some paths ([] or [""] = the whole snapshot). */
export function archiveUrl(host, snap, format, qs) {
  const paths = qs.filter((q) => q !== "").map((q) => `&path=${q}`).join("");
  return `${API}${snapApi(host, snap)}/archive?format=${enc(format)}${paths}`;
}

export function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The hash as {segs, params (raw, still percent-encoded), key (without `file`)}. */
export function parseHash() {
  const url = location.href;
  const raw = url.includes("#") ? url.slice(url.indexOf("#") + 1) : "";
  const qi = raw.indexOf("?");
  const path = qi < 0 ? raw : raw.slice(0, qi);
  const query = qi < 0 ? "" : raw.slice(qi + 1);
  const segs = path.split("/").filter(Boolean).map(safeDecode);
  const params = {};
  const keep = [];
  for (const part of query.split("&")) {
    if (!part) continue;
    const i = part.indexOf("=");
    const k = i < 0 ? part : part.slice(0, i);
    params[k] = i < 0 ? "" : part.slice(i + 1);
    if (k !== "file") keep.push(part);
  }
  return { segs, params, key: path + (keep.length ? `?${keep.join("&")}` : "") };
}

/** A q from the address that the server could not have sent. */
export function badQ(q) {
  return !Q_RE.test(q);
}
