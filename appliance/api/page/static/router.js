// The router: the address's hash names the view on screen; route() renders it.
//
// The views are handed in by app.js (useViews) rather than imported, so that any view can
// import reload() from here without an import cycle.

import { href, parseHash, safeDecode } from "./address.js";
import { ApiError } from "./api.js";
import { $, clear, h } from "./dom.js";
import { heading, setStatus, showError } from "./page.js";
import { state, stopPolling } from "./state.js";

let views = null;

/** The views {overview, jobs, host, browse, search, history}, each (seq, ...) -> node, or null when
 * stale; and openDetails(host, snap, q, pushed) for the `file` overlay. */
export function useViews(v) {
  views = v;
}

export function closeDialogs() {
  quietCloseDetails();
  if ($("restore-dialog").open) $("restore-dialog").close();
}

/** Close the details dialog because the address changed (not by the user). */
function quietCloseDetails() {
  state.detailsPushed = false;
  if ($("details").open) {
    state.quietClose = true;
    $("details").close();
  }
}

function markNav(which) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === which) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

/** Render the view the hash names; `first` = on sign-in or load (keep focus where it is). */
export async function route(first = false) {
  if (!state.account) return;
  const { segs, params, key } = parseHash();
  const fileQ = params.file;
  const sameView = key === state.viewKey;
  if (sameView) {
    // Only the details overlay changed (opened, closed, Back): the listing stays.
    if (fileQ !== undefined) views.openDetails(segs[1], segs[2], fileQ, true);
    else quietCloseDetails();
    return;
  }
  closeDialogs();
  state.viewKey = key;
  const seq = ++state.seq;
  stopPolling();
  if (state.flash) {
    setStatus(state.flash.text, state.flash.kind);
    state.flash = null;
  } else {
    setStatus("");
  }
  const view = $("view");
  view.setAttribute("aria-busy", "true");
  const slow = setTimeout(() => {
    if (seq === state.seq) view.classList.add("loading");
  }, 250);
  let nav = "";
  try {
    let node;
    if (segs.length === 0) {
      nav = "overview";
      node = await views.overview(seq);
    } else if (segs[0] === "search" && segs.length === 1) {
      node = await views.history(seq, params.host ? safeDecode(params.host) : "", safeDecode(params.text || ""));
    } else if (segs[0] === "jobs" && segs.length === 1) {
      nav = "jobs";
      node = await views.jobs(seq, params.host ? safeDecode(params.host) : "");
    } else if (segs[0] === "reports" && segs.length === 1) {
      nav = "reports";
      node = await views.reports(seq, params.month || "");
    } else if (segs[0] === "notify" && segs.length === 1) {
      nav = "notify";
      node = await views.notify(seq);
    } else if (segs[0] === "host" && segs.length === 2) {
      node = await views.host(seq, segs[1]);
    } else if (segs[0] === "add-host" && segs.length === 1) {
      nav = "add-host";
      node = await views.addHost(seq);
    } else if (segs[0] === "host" && segs.length === 3 && segs[2] === "report") {
      node = await views.hostReport(seq, segs[1]);
    } else if (segs[0] === "host" && segs.length === 3) {
      location.replace(href.dir(segs[1], segs[2], ""));
      return;
    } else if (segs[0] === "host" && segs.length === 4 && segs[3] === "dir") {
      node = await views.browse(seq, segs[1], segs[2], params.q || "");
    } else if (segs[0] === "host" && segs.length === 4 && segs[3] === "search") {
      node = await views.search(seq, segs[1], segs[2], safeDecode(params.text || ""),
        params.q || "");
    } else {
      node = viewNotFound();
    }
    if (seq !== state.seq || !node) return; // stale, or redirected
    markNav(nav);
    clear(view).append(node);
    const h1 = view.querySelector("h1");
    if (h1) {
      document.title = `${h1.textContent} – Backup appliance`;
      if (!first) h1.focus();
    }
    window.scrollTo(0, 0);
    if (fileQ !== undefined && segs[0] === "host") views.openDetails(segs[1], segs[2], fileQ, false);
  } catch (e) {
    if (seq !== state.seq || e.handled) return;
    markNav(nav);
    clear(view).append(viewError(e));
    showError(e);
    const h1 = view.querySelector("h1");
    if (h1 && !first) h1.focus();
  } finally {
    clearTimeout(slow);
    if (seq === state.seq) {
      view.classList.remove("loading");
      view.removeAttribute("aria-busy");
    }
  }
}

function viewNotFound() {
  return h("section", {}, heading("Page not found"),
    h("p", {}, "There is nothing at this address. ", h("a", { href: "#/" }, "Go to the overview"),
      "."));
}

function viewError(e) {
  return h("section", { class: "error-view" }, heading("Could not load this page"),
    h("p", { class: "form-error", id: "view-error" }, e instanceof ApiError ? e.message : String(e)),
    h("p", {}, h("a", { href: "#/" }, "Back to the overview"), " · ",
      h("button", { type: "button", class: "btn btn-small", onclick: () => reload() }, "Try again")));
}

export function reload() {
  state.viewKey = null;
  route();
}
