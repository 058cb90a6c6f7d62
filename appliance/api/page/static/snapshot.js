// Pieces the two views of one backup (a folder's listing, a search's results) share: the
// breadcrumbs, the subtitle, the search form, an entry's name link and its download link.

import { $, h } from "./dom.js";
import { archiveUrl, downloadUrl, href } from "./address.js";
import { TYPE_LABEL, snapDate, snapLabel, timeEl } from "./format.js";

export function snapCrumbs(host, snap) {
  return [["Overview", href.overview()], [host, href.host(host)], [snapLabel(snap), href.dir(host, snap, "")]];
}

export function snapSubtitle(host, snap) {
  return h("p", { class: "subtitle" }, `Backup of ${host} taken `, timeEl(snapDate(snap) || snap, { rel: true }));
}

/** The search form; `text`: the search on screen (none: the listing's empty form). A search
 * remembers the folder `backQ` it was started from. */
export function searchForm(host, snap, backQ, text) {
  return h("form", { class: "search", id: "search-form", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const t = $("search-input").value.trim();
    if (t) location.hash = href.search(host, snap, t, backQ).slice(1);
  } },
  h("label", { for: "search-input", class: "sr-only" }, "Search file names in this backup"),
  h("input", { id: "search-input", type: "search", placeholder: text ? null : "Search file names in this backup",
    value: text || null, maxlength: "200", spellcheck: "false" }),
  h("button", { type: "submit", class: "btn" }, "Search"));
}

/** An entry's name, with its type's icon and (for screen readers) its type, as a link. */
export function entryLink(link, e, title) {
  return h("a", { href: link, class: "entry-link", data: { name: e.name, q: e.q, type: e.type }, title },
    h("span", { class: `ticon t-${e.type}`, "aria-hidden": "true" }), h("span", { class: "entry-name" }, e.name),
    h("span", { class: "sr-only" }, ` (${TYPE_LABEL[e.type] || e.type})`));
}

/** A file's download link, a folder's zip link, nothing for other types; `tagged`: with the
 * classes and data the listing's rows carry. */
export function entryAction(host, snap, e, tagged = false) {
  const tag = (cls) => (tagged ? { class: cls, data: { q: e.q } } : {});
  if (e.type === "file" || e.type === "hardlink") {
    return h("a", { href: downloadUrl(host, snap, e.q), download: "", ...tag("dl-link"),
      "aria-label": `Download ${e.name}` }, "Download");
  }
  if (e.type === "dir") {
    return h("a", { href: archiveUrl(host, snap, "zip", [e.q]), download: "", ...tag("zip-link"),
      "aria-label": `Download folder ${e.name} as zip` }, "zip");
  }
  return null;
}
