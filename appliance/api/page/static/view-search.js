// A search for file names in one backup, and its results.

import { api } from "./api.js";
import { badQ, canonical, enc, href, snapApi } from "./address.js";
import { gridTable, h } from "./dom.js";
import { fmtBytes, fmtNum, timeEl } from "./format.js";
import { crumbsNav, heading } from "./page.js";
import { entryAction, entryLink, searchForm, snapCrumbs, snapSubtitle } from "./snapshot.js";
import { state } from "./state.js";

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
    h("p", { class: res.truncated ? "warn-text" : "muted", id: "search-note" }, note),
    body);
}
