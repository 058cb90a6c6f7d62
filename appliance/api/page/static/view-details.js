// A file's details in a dialog over its folder (the address's `file` overlay): its facts,
// download, restore, and its versions in every backup of the host.

import { ApiError, api } from "./api.js";
import { badQ, downloadUrl, href, parentQ, parseHash, snapApi } from "./address.js";
import { $, append, badge, clear, gridTable, h } from "./dom.js";
import { TYPE_LABEL, fmtBytes, fmtNum, fmtTime, pathOf, snapLabel, timeEl } from "./format.js";
import { showError } from "./page.js";
import { state } from "./state.js";
import { openRestore } from "./view-restore.js";

let detailsSeq = 0;

/** The details of entry `q`; `pushed`: opened from its own view, so Back closes it. */
export async function openDetails(host, snap, q, pushed) {
  const dlg = $("details");
  const body = $("details-body");
  const my = ++detailsSeq;
  if (badQ(q)) {
    showError(new ApiError(400, "bad_path", "The address names an invalid path."));
    return;
  }
  if (!dlg.open) state.detailsPushed = pushed;
  $("details-title").textContent = "File details";
  clear(body).append(h("p", { class: "muted" }, "Loading…"));
  if (!dlg.open) dlg.showModal();
  try {
    const res = await api("GET", `${snapApi(host, snap)}/file?path=${q}`);
    if (my !== detailsSeq || !dlg.open) return;
    renderDetails(host, res.snapshot || snap, q, res);
  } catch (e) {
    if (my !== detailsSeq || e.handled) return;
    clear(body).append(h("p", { class: "form-error", role: "alert" }, e.message));
  }
}

function renderDetails(host, snap, q, res) {
  const e = res.entry;
  const body = clear($("details-body"));
  $("details-title").textContent = e.name;
  const dirQ = parentQ(q);
  const isData = e.type === "file" || e.type === "hardlink";
  const rows = [
    ["Type", TYPE_LABEL[e.type] || e.type],
    ["Size", isData ? `${fmtBytes(e.size)} (${fmtNum(e.size)} bytes)` : "–"],
    ["Modified", timeEl(e.mtime, { seconds: true })],
    ["Mode", h("span", { class: "mono" }, `${e.mode_text} (${(e.mode ?? 0).toString(8).padStart(4, "0")})`)],
    ["Owner", `uid ${e.uid}, gid ${e.gid}`],
  ];
  if (e.content_type) rows.push(["Content type", e.content_type]);
  if (e.target !== undefined) rows.push(["Link target", h("span", { class: "mono" }, e.target)]);
  if (e.link_to !== undefined) rows.push(["Hard link to", h("span", { class: "mono" }, `/${e.link_to}`)]);
  rows.push(["Backup", `${host}, ${snapLabel(snap)}`]);
  const dl = h("dl", { class: "facts", id: "details-facts" });
  for (const [k, v] of rows) dl.append(h("dt", {}, k), h("dd", {}, v));

  const actions = h("div", { class: "toolbar" },
    isData ? h("a", { class: "btn btn-primary", id: "details-download", href: downloadUrl(host, snap, q), download: "" },
      `Download (${fmtBytes(e.size)})`) : null,
    h("button", { type: "button", class: "btn", id: "details-restore",
      onclick: () => { closeDetails(); openRestore(host, snap, [{ q, name: e.name }], e.name); } },
    "Restore to a host…"),
    h("a", { class: "btn", id: "details-folder", href: href.dir(host, snap, dirQ) }, "Open its folder"));

  const versions = res.versions || [];
  const vbody = h("tbody");
  for (const v of versions) {
    const here = v.snapshot === snap;
    const vData = v.type === "file" || v.type === "hardlink";
    vbody.append(h("tr", { class: here ? "current" : null, data: { snapshot: v.snapshot } },
      h("th", { scope: "row" }, here
        ? h("span", { "aria-current": "true" }, fmtTime(v.received_at, true), " ", badge("this one", "info"))
        : h("a", { href: href.file(host, v.snapshot, dirQ, q), class: "version-link", data: { snapshot: v.snapshot } },
          fmtTime(v.received_at, true))),
      h("td", { class: "num" }, vData ? fmtBytes(v.size) : TYPE_LABEL[v.type] || v.type),
      h("td", {}, timeEl(v.mtime_ns / 1e9)),
      h("td", {}, v.same ? badge("same content", "muted") : badge("different", "warn")),
      h("td", { class: "actions" }, vData && !here
        ? h("a", { href: downloadUrl(host, v.snapshot, q), download: "", "aria-label": `Download the version of ${fmtTime(v.received_at)}` }, "Download")
        : null, " ",
      h("button", { type: "button", class: "btn btn-small version-restore", data: { snapshot: v.snapshot },
        "aria-label": `Restore the version of ${fmtTime(v.received_at)} to a host`,
        onclick: () => { closeDetails(); openRestore(host, v.snapshot, [{ q, name: e.name }], e.name); } },
      "Restore…"))));
  }
  append(body, [
    h("p", { class: "mono path", id: "details-path" }, res.entry && e.name ? pathOf(q) : ""),
    dl, actions,
    h("h3", {}, `Versions in ${versions.length} ${versions.length === 1 ? "backup" : "backups"}`),
    versions.length ? gridTable({ class: "grid compact", id: "versions" },
      ["Backup", "Size", "Modified", "Content", ""], [1], vbody) : h("p", { class: "muted" }, "No other versions."),
  ]);
  // The dialog opened with focus on Close while loading; the likely next step is Download.
  if (document.activeElement === $("details-close") || !$("details").contains(document.activeElement)) {
    ($("details-download") || $("details-close")).focus();
  }
}



export function closeDetails() {
  const dlg = $("details");
  if (dlg.open) dlg.close(); // the close handler fixes the address
}

export function onDetailsClosed() {
  if (state.quietClose) {
    state.quietClose = false;
    return;
  }
  const { params, key } = parseHash();
  if (params.file === undefined || !state.account) return;
  const q = params.file;
  if (state.detailsPushed) {
    state.detailsPushed = false;
    history.back();
  } else {
    history.replaceState(null, "", `#${key}`);
  }
  // Back on the listing: focus the entry the dialog was about.
  const link = document.querySelector(`#view a.entry-link[data-q="${CSS.escape(q)}"]`);
  if (link) link.focus();
}
