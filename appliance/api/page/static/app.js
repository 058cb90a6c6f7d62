// The LAN restore page: sign in, see every host's backups, browse a snapshot, download files
// and folders, push a restore to a host, follow restore jobs.
//
// Plain ES2020 modules, no framework, no build step: this one starts the page, wires the
// static markup's controls and hands the views to the router. The others, one per view
// (view-*.js) and a few shared ones:
//   state.js    what the page remembers: session, view on screen, poll timer
//   api.js      the API client (JSON, CSRF token, one message per failure)
//   address.js  the page's hash addresses and the API's URLs
//   dom.js      element builder (never HTML), badges, data tables
//   format.js   bytes, numbers, times, snapshot ids, paths for people
//   page.js     status line, headings, breadcrumbs
//   header.js   the top bar's appliance summary
//   router.js   the hash -> the view on screen
//   snapshot.js pieces shared by the folder and search views of a backup

import { api, whenSessionEnds } from "./api.js";
import { parseHash } from "./address.js";
import { $ } from "./dom.js";
import { reload, route, useViews } from "./router.js";
import { viewBrowse } from "./view-browse.js";
import { closeDetails, onDetailsClosed, openDetails } from "./view-details.js";
import { viewAddHost, viewHostReport } from "./view-enrol.js";
import { viewHost } from "./view-host.js";
import { viewJobs } from "./view-jobs.js";
import { viewNotify } from "./view-notify.js";
import { viewOverview } from "./view-overview.js";
import { viewReports } from "./view-reports.js";
import { onRestoreSubmit } from "./view-restore.js";
import { viewHistorySearch, viewSearch } from "./view-search.js";
import { onLogin, onLogout, showLogin, startSession } from "./view-signin.js";

function wire() {
  useViews({ overview: viewOverview, jobs: viewJobs, host: viewHost, browse: viewBrowse,
    search: viewSearch, history: viewHistorySearch, reports: viewReports, notify: viewNotify,
    openDetails, addHost: viewAddHost, hostReport: viewHostReport });
  whenSessionEnds(() => showLogin("Your session has ended. Please sign in again."));
  $("login-form").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", onLogout);
  $("skip-link").addEventListener("click", (ev) => {
    ev.preventDefault(); // the hash is the router's: move focus instead
    $("main").focus();
    const h1 = $("view").querySelector("h1");
    if (h1 && !$("view").hidden) h1.focus();
  });
  $("details-close").addEventListener("click", closeDetails);
  $("details").addEventListener("close", onDetailsClosed);
  $("details").addEventListener("click", (ev) => {
    if (ev.target === $("details")) closeDetails(); // a click on the backdrop
  });
  $("restore-form").addEventListener("submit", onRestoreSubmit);
  $("restore-cancel").addEventListener("click", () => $("restore-dialog").close());
  window.addEventListener("hashchange", () => route());
  // The current page's own nav link reloads it (no hashchange would fire).
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.addEventListener("click", () => {
      if (a.getAttribute("href") === `#${parseHash().key}`) reload();
    });
  }
}

async function boot() {
  wire();
  try {
    const res = await api("GET", "/auth/session");
    startSession(res);
  } catch (e) {
    showLogin(e.status === 401 ? "" : e.message);
  }
}

boot();
