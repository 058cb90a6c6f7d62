// A search for file names in one backup, or in every backup of a host (or of every host:
// the history search), and its results.

import { api } from "./api.js";
import { badQ, canonical, enc, href, snapApi } from "./address.js";
import { $, gridTable, h } from "./dom.js";
import { fmtBytes, fmtNum, fmtTime, timeEl } from "./format.js";
import { crumbsNav, heading } from "./page.js";
import { entryAction, entryLink, searchForm, snapCrumbs, snapSubtitle } from "./snapshot.js";
import { state } from "./state.js";
import { openRestore } from "./view-restore.js";

const SEARCH_LIMIT = 500;

export async function viewSearch(seq, host, snap, text, backQ) {
  if (badQ(backQ)) backQ = "";
  if (!text) {
    location.replace(href.dir(host, snap, backQ));
    return null;
  }
  const res = await api("GET", `${snapApi(host, snap)}/search?q=${enc(text)}&limit=${SEARCH_LIMIT}`);
  if (seq !== state.seq) return null;
  if (res.snapshot && res.snapshot !== snap) canonical(href.search(host, res.snapshot, text, backQ));
  snap = res.snapshot || snap;
  const matches = res.matches || [];
  let body;
  if (!matches.length) {
    body = h("p", { class: "empty", id: "search-empty" }, `No names contain “${text}”.`);
  } else {
    const tbody = h("tbody");
    for (const m of matches) {
      const isDir = m.type === "dir";
      tbody.append(h("tr", { data: { name: m.name, q: m.q, type: m.type } },
        h("td", { class: "name" },
          entryLink(isDir ? href.dir(host, snap, m.q) : href.file(host, snap, m.dir_q, m.q), m)),
        h("td", {}, h("a", { href: href.dir(host, snap, m.dir_q), class: "dir-link" },
          m.dir.startsWith("/") ? m.dir : `/${m.dir}`)),
        h("td", { class: "num" }, m.size === null || m.size === undefined ? "" : fmtBytes(m.size)),
        h("td", {}, timeEl(m.mtime)),
        h("td", { class: "actions" }, entryAction(host, snap, m))));
    }
    body = gridTable({ id: "search-results", "aria-label": "Search results" },
      ["Name", "Folder", "Size", "Modified", ""], [2], tbody);
  }
  const note = `${fmtNum(matches.length)} ${matches.length === 1 ? "match" : "matches"} among ${fmtNum(res.scanned)} entries` +
    (res.truncated ? ` — only the first ${fmtNum(matches.length)} are shown; make the search more specific.` : ".");
  return h("section", { id: "search-view", data: { host, snapshot: snap } },
    crumbsNav([...snapCrumbs(host, snap), [`Search “${text}”`, null]]),
    heading(`Search: ${text}`, snapSubtitle(host, snap)),
    h("div", { class: "browse-bar" }, searchForm(host, snap, backQ, text),
      h("a", { href: href.dir(host, snap, backQ), class: "btn btn-small" }, "Back to the folder")),
    h("p", { class: res.truncated ? "warn-text" : "muted", id: "search-note" }, note,
      " ", h("a", { href: href.history(host, text), id: "search-history-link" }, `Search every backup of ${host}`)),
    body);
}

/** Names containing `text` in every backup of `host` (every host when ""), each path once,
 * from the newest backup holding it. */
export async function viewHistorySearch(seq, host, text) {
  const scope = host ? `every backup of ${host}` : "every backup of every host";
  const form = h("form", { class: "search", id: "history-form", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const t = $("history-input").value.trim();
    if (t) location.hash = href.history(host, t).slice(1);
  } },
  h("label", { for: "history-input", class: "sr-only" }, `Search file names in ${scope}`),
  h("input", { id: "history-input", type: "search", value: text || null, maxlength: "200", spellcheck: "false",
    placeholder: `Search file names in ${scope}` }),
  h("button", { type: "submit", class: "btn" }, "Search"));
  const crumbs = host ? [["Overview", href.overview()], [host, href.host(host)], [`Search “${text}”`, null]]
    : [["Overview", href.overview()], [`Search “${text}”`, null]];
  if (!text) {
    return h("section", { id: "history-view" }, crumbsNav(crumbs.slice(0, -1)),
      heading(`Search ${scope}`), h("div", { class: "browse-bar" }, form));
  }
  const path = host ? `/hosts/${enc(host)}/search` : "/search";
  const res = await api("GET", `${path}?q=${enc(text)}&limit=${SEARCH_LIMIT}`);
  if (seq !== state.seq) return null;
  const matches = res.matches || [];
  let body;
  if (!matches.length) {
    body = h("p", { class: "empty", id: "search-empty" }, `No names contain “${text}” in ${scope}.`);
  } else {
    const tbody = h("tbody");
    for (const m of matches) {
      const isDir = m.type === "dir";
      const isData = m.type === "file" || m.type === "hardlink";
      tbody.append(h("tr", { data: { name: m.name, q: m.q, type: m.type, host: m.host, snapshot: m.snapshot } },
        h("td", { class: "name" },
          entryLink(isDir ? href.dir(m.host, m.snapshot, m.q) : href.file(m.host, m.snapshot, m.dir_q, m.q), m,
            "Show details and every version")),
        host ? null : h("td", {}, h("a", { href: href.host(m.host) }, m.host)),
        h("td", { class: "wrap" }, h("a", { href: href.dir(m.host, m.snapshot, m.dir_q), class: "dir-link" },
          m.dir.startsWith("/") ? m.dir : `/${m.dir}`)),
        h("td", {}, h("a", { href: href.dir(m.host, m.snapshot, ""), title: "The newest backup holding it" }, fmtTime(m.received_at))),
        h("td", { class: "num opt" }, m.size === null || m.size === undefined ? "" : fmtBytes(m.size)),
        h("td", { class: "opt" }, timeEl(m.mtime)),
        h("td", { class: "actions" }, entryAction(m.host, m.snapshot, m), isData || isDir ? [" ",
          h("button", { type: "button", class: "btn btn-small", "aria-label": `Restore ${m.name} to a host`,
            onclick: () => openRestore(m.host, m.snapshot, [{ q: m.q, name: m.name }], m.name) }, "Restore…")] : null)));
    }
    const heads = host ? ["Name", "Folder", "Newest backup", "Size", "Modified", ""]
      : ["Name", "Host", "Folder", "Newest backup", "Size", "Modified", ""];
    const off = host ? 0 : 1;
    body = gridTable({ id: "history-results", "aria-label": "Search results" }, heads, [3 + off], tbody, [3 + off, 4 + off]);
  }
  const note = `${fmtNum(matches.length)} ${matches.length === 1 ? "match" : "matches"} in ${fmtNum(res.snapshots_searched)} of ${fmtNum(res.snapshots_total)} backups` +
    (res.truncated ? " — not every match is shown; make the search more specific." : ".");
  return h("section", { id: "history-view", data: { host } },
    crumbsNav(crumbs), heading(`Search: ${text}`, h("p", { class: "subtitle" }, `In ${scope}, newest backup first; each file once`)),
    h("div", { class: "browse-bar" }, form),
    h("p", { class: res.truncated ? "warn-text" : "muted", id: "search-note" }, note), body);
}
