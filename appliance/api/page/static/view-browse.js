// A folder of one backup: its listing (paged), downloads of an entry, the folder or a
// selection (zip, tar.zst), and restores of them to a host.

import { ApiError, api } from "./api.js";
import { archiveUrl, badQ, canonical, href, snapApi } from "./address.js";
import { append, clear, h } from "./dom.js";
import { fmtBytes, fmtNum, snapLabel, timeEl } from "./format.js";
import { crumbsNav, heading, showError } from "./page.js";
import { entryAction, entryLink, searchForm, snapCrumbs, snapSubtitle } from "./snapshot.js";
import { state } from "./state.js";
import { openRestore } from "./view-restore.js";

const PAGE = 1000; // directory entries per request
const MAX_URL = 7500; // the appliance refuses request lines over 8 KB

export async function viewBrowse(seq, host, snap, q) {
  if (badQ(q)) throw new ApiError(400, "bad_path", "The address names an invalid path.");
  const res = await api("GET", `${snapApi(host, snap)}/dir?path=${q}&limit=${PAGE}`);
  if (seq !== state.seq) return null;
  const L = state.listing = { host, snap: res.snapshot || snap, q: res.q ?? q, entries: [], next: null, res };
  state.selection = new Map();
  if (L.snap !== snap) canonical(href.dir(host, L.snap, q));
  snap = L.snap;

  const crumbs = res.crumbs || [];
  const trail = snapCrumbs(host, snap).slice(0, 2);
  crumbs.forEach((c, i) => {
    trail.push([i === 0 ? `${snapLabel(snap)}` : c.name, href.dir(host, snap, c.q)]);
  });
  const atRoot = !res.q;
  const title = atRoot ? "/" : `/${res.path}`;

  const folderQs = atRoot ? [] : [L.q];
  const folderName = atRoot ? "whole backup" : "this folder";
  const folderBar = h("div", { class: "toolbar", id: "folder-actions" },
    h("span", { class: "toolbar-label" }, atRoot ? "Whole backup:" : "This folder:"),
    h("a", { class: "btn btn-small", id: "folder-zip", href: archiveUrl(host, snap, "zip", folderQs), download: "" }, "Download folder (zip)"),
    h("a", { class: "btn btn-small", id: "folder-tar", href: archiveUrl(host, snap, "tar.zst", folderQs), download: "" }, "tar.zst"),
    h("button", { type: "button", class: "btn btn-small", id: "folder-restore",
      onclick: () => openRestore(host, snap, folderQs.length ? [{ q: L.q, name: title }] : [], folderName) },
    "Restore folder to a host…"));

  const selBar = h("div", { class: "toolbar selbar", id: "selection-actions", "aria-label": "Selection" },
    h("span", { class: "toolbar-label", id: "selection-count", "aria-live": "polite" }, "No selection"),
    h("a", { class: "btn btn-small", id: "sel-zip", download: "" }, "Download selection as zip"),
    h("a", { class: "btn btn-small", id: "sel-tar", download: "" }, "tar.zst"),
    h("span", { class: "muted small", id: "selection-note" }),
    h("button", { type: "button", class: "btn btn-small", id: "sel-restore",
      onclick: () => {
        const sel = selected();
        openRestore(host, snap, sel.whole
          ? (L.q ? [{ q: L.q, name: title }] : [])
          : sel.items, sel.whole ? folderName : "selection");
      } },
    "Restore selection to a host…"),
    h("button", { type: "button", class: "btn btn-small btn-quiet", id: "sel-clear", onclick: () => setAll(false) }, "Clear"));

  const selectAll = h("input", { type: "checkbox", id: "select-all", "aria-label": "Select all shown entries",
    onchange: (ev) => setAll(ev.target.checked) });
  const tbody = h("tbody", { id: "listing-body" });
  const table = h("table", { class: "grid listing", id: "listing", "aria-label": `Contents of ${title}` },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "col-check" }, selectAll),
      h("th", { scope: "col" }, "Name"),
      h("th", { scope: "col", class: "num" }, "Size"),
      h("th", { scope: "col", class: "opt" }, "Modified"),
      h("th", { scope: "col", class: "opt" }, "Mode"),
      h("th", { scope: "col", class: "actions" }, h("span", { class: "sr-only" }, "Actions")))),
    tbody);

  const more = h("div", { class: "more", id: "more-box" });
  const count = h("p", { class: "muted count", id: "listing-count" });

  const section = h("section", { id: "browse", data: { host, snapshot: snap, q: L.q } },
    crumbsNav(trail),
    heading(title, snapSubtitle(host, snap)),
    h("div", { class: "browse-bar" }, searchForm(host, snap, L.q), folderBar),
    selBar, h("div", { class: "table-wrap" }, table), count, more);

  L.section = section;
  if (!atRoot && res.parent !== null && res.parent !== undefined) {
    tbody.append(h("tr", { class: "up-row" }, h("td", {}),
      h("td", { colspan: "5" }, h("a", { href: href.dir(host, snap, res.parent), class: "entry-link up-link", id: "up-link" },
        h("span", { class: "ticon t-up", "aria-hidden": "true" }), "Parent folder"))));
  }
  addEntries(res);
  if (!res.total) tbody.append(h("tr", {}, h("td", { colspan: "6", class: "empty" }, "This folder is empty.")));
  updateSelection();
  return section;
}

function addEntries(res, focusFirst = false) {
  const L = state.listing;
  const rows = res.entries.map((e) => entryRow(L.host, L.snap, L.q, e));
  L.entries.push(...res.entries);
  L.next = res.next_offset;
  append(L.section.querySelector("#listing-body"), rows);
  if (focusFirst && rows[0]) rows[0].querySelector("a.entry-link").focus();
  renderMore(res.total);
}

function renderMore(total) {
  const L = state.listing;
  const more = clear(L.section.querySelector("#more-box"));
  L.section.querySelector("#listing-count").textContent =
    total ? `${fmtNum(L.entries.length)} of ${fmtNum(total)} entries shown` : "";
  if (L.next !== null && L.next !== undefined) {
    more.append(h("button", { type: "button", class: "btn", id: "load-more", onclick: loadMore },
      `Show ${fmtNum(Math.min(PAGE, total - L.next))} more`));
  }
}

async function loadMore(ev) {
  const L = state.listing;
  const btn = ev.currentTarget;
  btn.disabled = true;
  const seq = state.seq;
  try {
    const res = await api("GET", `${snapApi(L.host, L.snap)}/dir?path=${L.q}&offset=${L.next}&limit=${PAGE}`);
    if (seq !== state.seq) return;
    addEntries(res, true);
    updateSelection();
  } catch (e) {
    btn.disabled = false;
    showError(e);
  }
}

function entryRow(host, snap, dirQ, e) {
  const type = e.type;
  const nameCell = type === "dir" ? entryLink(href.dir(host, snap, e.q), e)
    : entryLink(href.file(host, snap, dirQ, e.q), e, "Show details and other versions");
  const extra = type === "symlink" && e.target !== undefined
    ? h("span", { class: "muted link-target" }, " → ", e.target) : null;
  const check = h("input", { type: "checkbox", class: "sel", data: { q: e.q }, "aria-label": `Select ${e.name}`,
    onchange: (ev) => {
      if (ev.target.checked) state.selection.set(e.q, { name: e.name, type });
      else state.selection.delete(e.q);
      updateSelection();
    } });
  return h("tr", { data: { name: e.name, type, q: e.q }, class: `entry t-row-${type}` },
    h("td", { class: "col-check" }, check),
    h("td", { class: "name" }, nameCell, extra),
    h("td", { class: "num" }, e.size === null || e.size === undefined ? "" : fmtBytes(e.size)),
    h("td", { class: "opt" }, timeEl(e.mtime)),
    h("td", { class: "mono opt" }, e.mode_text || ""),
    h("td", { class: "actions" }, entryAction(host, snap, e, true)));
}

function setAll(on) {
  const scope = state.listing && state.listing.section;
  if (!scope) return;
  for (const box of scope.querySelectorAll("input.sel")) {
    box.checked = on;
    const row = box.closest("tr");
    if (on) state.selection.set(box.dataset.q, { name: row.dataset.name, type: row.dataset.type });
  }
  if (!on) state.selection.clear();
  updateSelection();
}

/** The selection; `whole`: every entry of a fully loaded folder, i.e. the folder itself. */
function selected() {
  const L = state.listing;
  const items = [...state.selection].map(([q, v]) => ({ q, name: v.name }));
  const whole = items.length > 1 && items.length === L.entries.length && L.next === null;
  return { items, whole };
}

function updateSelection() {
  const L = state.listing;
  const scope = L && L.section;
  if (!scope) return;
  const n = state.selection.size;
  const sel = selected();
  const qs = sel.whole ? [L.q] : sel.items.map((it) => it.q);
  let tooLong = false;
  const bar = scope.querySelector("#selection-actions");
  bar.classList.toggle("selbar-empty", n === 0);
  scope.querySelector("#selection-count").textContent = n
    ? `${fmtNum(n)} selected` : "Select entries with the check boxes to download or restore several at once.";
  for (const [id, fmt] of [["#sel-zip", "zip"], ["#sel-tar", "tar.zst"]]) {
    const a = scope.querySelector(id);
    const url = archiveUrl(L.host, L.snap, fmt, qs);
    tooLong = url.length > MAX_URL;
    if (n && !tooLong) {
      a.setAttribute("href", url);
      a.removeAttribute("aria-disabled");
      a.hidden = false;
    } else {
      a.removeAttribute("href"); // an <a> without href is out of the tab order
      a.setAttribute("aria-disabled", "true");
      a.hidden = true;
    }
  }
  scope.querySelector("#selection-note").textContent = tooLong
    ? "Too many entries for one download link: download the whole folder, or select fewer." : "";
  scope.querySelector("#sel-restore").hidden = n === 0;
  scope.querySelector("#sel-clear").hidden = n === 0;
  for (const tr of scope.querySelectorAll("tr.entry")) tr.classList.toggle("selected", state.selection.has(tr.dataset.q));
  const all = scope.querySelector("#select-all");
  const boxes = scope.querySelectorAll("input.sel").length;
  all.checked = n > 0 && n === boxes;
  all.indeterminate = n > 0 && n < boxes;
}
