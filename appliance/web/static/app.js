// The LAN restore page: sign in, see every host's backups, browse a snapshot, download files
// and folders, push a restore to a host, follow restore jobs.
//
// Plain ES2020 module, no framework, no build step. Every piece of data from the appliance
// (file names above all: they are chosen by whoever owns the backed-up machine) reaches the
// DOM through textContent or attribute values only, never through innerHTML.
//
// Paths: every entry carries `q`, its percent-encoded path. It is passed back verbatim, in
// the address bar's hash as in API calls, and never decoded or re-encoded here.

const API = "/api/v1";
const PAGE = 1000; // directory entries per request
const POLL_MS = 2000;
const SEARCH_LIMIT = 500;
const Q_RE = /^[A-Za-z0-9_.~/%-]*$/; // what the server's percent-encoding can produce
const MAX_URL = 7500; // the appliance refuses request lines over 8 KB

const state = {
  account: null,
  csrf: "",
  overview: null, // last /overview answer: the header's serial, the restore host list
  viewKey: null, // the hash without its `file` overlay: which view is on screen
  seq: 0, // render generation; a stale render drops its result
  pollTimer: null,
  listing: null, // the browse view on screen: {host, snap, q, entries, next}
  selection: new Map(), // q -> {name, type} in the listing on screen
  detailsPushed: false, // the details dialog was opened by a navigation from its view
  quietClose: false, // the router closes the details dialog: leave the address alone
  flash: null, // a message to show after the next navigation
};

// --- small DOM helpers --------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** Element builder: h("a", {href, class, data: {q}}, "text", child, [more]). Never HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") throw new Error("no style attributes"); // CSP: use classes
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// --- formatting ---------------------------------------------------------------------------

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dateSecFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const numFmt = new Intl.NumberFormat();

/** Decimal units, as the contract and the appliance's console count (1 GB = 10^9 bytes). */
function fmtBytes(n) {
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

const fmtNum = (n) => (n === null || n === undefined ? "–" : numFmt.format(n));

function toDate(v) {
  if (v === null || v === undefined || v === "") return null;
  const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

function fmtTime(v, seconds = false) {
  const d = toDate(v);
  return d ? (seconds ? dateSecFmt : dateFmt).format(d) : "–";
}

function fmtDuration(sec) {
  const s = Math.abs(sec);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${(s / 3600).toFixed(s < 10 * 3600 ? 1 : 0)} h`;
  return `${Math.round(s / 86400)} d`;
}

function ago(v) {
  const d = toDate(v);
  if (!d) return "";
  const sec = (Date.now() - d.getTime()) / 1000;
  if (Math.abs(sec) < 45) return "just now";
  return sec > 0 ? `${fmtDuration(sec)} ago` : `in ${fmtDuration(sec)}`;
}

/** A <time> with the local time, and the exact instant in its tooltip. */
function timeEl(v, { rel = false, seconds = false } = {}) {
  const d = toDate(v);
  if (!d) return h("span", { class: "muted" }, "–");
  return h("time", { datetime: d.toISOString(), title: d.toString() }, fmtTime(d, seconds),
    rel ? h("span", { class: "muted rel" }, ` (${ago(d)})`) : null);
}

/** "2026-11-22T17-03-12Z" (a snapshot id) as a Date. */
function snapDate(id) {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d)-(\d\d)-(\d\d)Z$/.exec(id || "");
  return m ? new Date(Date.UTC(+m[1], m[2] - 1, +m[3], +m[4], +m[5], +m[6])) : null;
}

function snapLabel(id) {
  const d = snapDate(id);
  return d ? dateFmt.format(d) : id;
}

function badge(text, kind) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

const RESULT_KIND = { ok: "ok", partial: "warn", failed: "bad", running: "info", never: "muted" };
const JOB_KIND = { queued: "info", running: "info", done: "ok", failed: "bad", cancelled: "muted" };
const TYPE_LABEL = {
  file: "file", dir: "folder", symlink: "symbolic link", hardlink: "hard link", fifo: "pipe",
  chardev: "character device", blockdev: "block device",
};

// --- addresses ----------------------------------------------------------------------------

const enc = encodeURIComponent;
const href = {
  overview: () => "#/",
  jobs: (host) => (host ? `#/jobs?host=${enc(host)}` : "#/jobs"),
  host: (host) => `#/host/${enc(host)}`,
  dir: (host, snap, q) => `#/host/${enc(host)}/${enc(snap)}/dir${q ? `?q=${q}` : ""}`,
  file: (host, snap, dirQ, q) =>
    `#/host/${enc(host)}/${enc(snap)}/dir?q=${dirQ || ""}&file=${q}`,
  search: (host, snap, text, q) =>
    `#/host/${enc(host)}/${enc(snap)}/search?text=${enc(text)}${q ? `&q=${q}` : ""}`,
};

function snapApi(host, snap) {
  return `/hosts/${enc(host)}/snapshots/${enc(snap)}`;
}

/** `hash` with the details overlay of entry `fileQ` (or as it is without one). */
function withFile(hash, fileQ) {
  if (fileQ === undefined) return hash;
  return `${hash}${hash.includes("?") ? "&" : "?"}file=${fileQ}`;
}

/** Show the resolved snapshot id ("latest" -> its id) in the address, without a new entry. */
function canonical(hash) {
  history.replaceState(null, "", withFile(hash, parseHash().params.file));
  state.viewKey = parseHash().key;
}

const parentQ = (q) => (q.includes("/") ? q.slice(0, q.lastIndexOf("/")) : "");

function downloadUrl(host, snap, q) {
  return `${API}${snapApi(host, snap)}/download?path=${q}`;
}

/** An archive of some paths ([] or [""] = the whole snapshot). */
function archiveUrl(host, snap, format, qs) {
  const paths = qs.filter((q) => q !== "").map((q) => `&path=${q}`).join("");
  return `${API}${snapApi(host, snap)}/archive?format=${enc(format)}${paths}`;
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The hash as {segs, params (raw, still percent-encoded), key (without `file`)}. */
function parseHash() {
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

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let resp;
  try {
    resp = await fetch(API + path, init);
  } catch {
    throw new ApiError(0, "network", "Cannot reach the appliance. Check the network and try again.");
  }
  if (resp.status === 204) return null;
  let data = null;
  if ((resp.headers.get("Content-Type") || "").includes("application/json")) {
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const msg = data && typeof data.message === "string" && data.message
      ? data.message : `The appliance answered with an error (HTTP ${resp.status}).`;
    const err = new ApiError(resp.status, (data && data.error) || "http_error", msg, data);
    if (resp.status === 401 && path !== "/auth/login" && path !== "/auth/session") {
      showLogin("Your session has ended. Please sign in again.");
      err.handled = true;
    }
    throw err;
  }
  if (data === null || typeof data !== "object") {
    throw new ApiError(resp.status, "bad_response", "The appliance sent an unexpected answer.");
  }
  return data;
}

// --- status line --------------------------------------------------------------------------

let statusTimer = null;

function setStatus(text, kind = "info") {
  const el = $("status");
  clearTimeout(statusTimer);
  clear(el);
  el.className = `statusbar status-${kind}`;
  if (text) {
    el.append(h("span", { class: "status-text", id: "status-text" }, text));
    el.append(h("button", {
      type: "button", class: "status-close", "aria-label": "Dismiss message",
      onclick: () => setStatus(""),
    }, "×"));
  }
}

function showError(err) {
  if (err && err.handled) return;
  setStatus(err instanceof ApiError ? err.message : `Something went wrong: ${err}`, "error");
  if (!(err instanceof ApiError)) console.error(err);
}

// --- sign-in ------------------------------------------------------------------------------

let throttleTimer = null;

function showLogin(message) {
  state.account = null;
  state.csrf = "";
  state.overview = null;
  state.viewKey = null;
  state.seq++;
  stopPolling();
  closeDialogs();
  clear($("view")).hidden = true;
  $("mainnav").hidden = true;
  $("account-box").hidden = true;
  $("appliance-serial").textContent = "";
  $("login-view").hidden = false;
  document.body.classList.add("signed-out");
  setStatus("");
  $("login-error").textContent = message || "";
  $("login-error").classList.toggle("form-note", Boolean(message));
  $("login-password").value = "";
  ($("login-name").value ? $("login-password") : $("login-name")).focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const name = $("login-name").value.trim();
  const password = $("login-password").value;
  const err = $("login-error");
  err.classList.remove("form-note");
  if (!name || !password) {
    err.textContent = "Enter your account name and password.";
    (name ? $("login-password") : $("login-name")).focus();
    return;
  }
  const btn = $("login-submit");
  btn.disabled = true;
  err.textContent = "";
  try {
    const res = await api("POST", "/auth/login", { name, password });
    $("login-password").value = "";
    startSession(res, true);
  } catch (e) {
    $("login-password").value = "";
    $("login-password").focus();
    if (e.status === 429) {
      const wait = Number(e.body.retry_after) || 30;
      throttle(wait, e.message);
      return;
    }
    err.textContent = e.message;
  } finally {
    if (!throttleTimer) btn.disabled = false;
  }
}

/** Locked out for `seconds`: say so once (the error is a live region), count down on the
 * button, which stays disabled until the lock ends. */
function throttle(seconds, message) {
  const btn = $("login-submit");
  const until = Date.now() + seconds * 1000;
  btn.disabled = true;
  $("login-error").textContent = message;
  clearInterval(throttleTimer);
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left > 0) {
      btn.textContent = `Sign in (wait ${left} s)`;
      return;
    }
    clearInterval(throttleTimer);
    throttleTimer = null;
    btn.disabled = false;
    btn.textContent = "Sign in";
    $("login-error").textContent = "You can try again now.";
  };
  tick();
  throttleTimer = setInterval(tick, 1000);
}

function startSession(res, fromForm = false) {
  state.account = res.account;
  state.csrf = res.csrf;
  $("login-view").hidden = true;
  $("login-error").textContent = "";
  document.body.classList.remove("signed-out");
  $("mainnav").hidden = false;
  $("account-box").hidden = false;
  $("account-name").textContent = res.account;
  $("view").hidden = false;
  loadHeader();
  route(!fromForm);
}

async function loadHeader() {
  try {
    setOverview(await api("GET", "/overview"));
  } catch (e) {
    if (!e.handled) console.warn("overview", e);
  }
}

function setOverview(ov) {
  state.overview = ov;
  const a = ov.appliance || {};
  const serial = $("appliance-serial");
  serial.textContent = a.serial ? `Serial ${a.serial}` : "";
  serial.classList.toggle("serial-warn", Boolean(a.degraded && Object.keys(a.degraded).length));
}

async function onLogout() {
  try {
    await api("POST", "/auth/logout");
  } catch (e) {
    if (e.handled) return;
    if (e.status !== 401) {
      showError(e);
      return;
    }
  }
  showLogin("You have signed out.");
}

// --- routing ------------------------------------------------------------------------------

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

function closeDialogs() {
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
async function route(first = false) {
  if (!state.account) return;
  const { segs, params, key } = parseHash();
  const fileQ = params.file;
  const sameView = key === state.viewKey;
  if (sameView) {
    // Only the details overlay changed (opened, closed, Back): the listing stays.
    if (fileQ !== undefined) openDetails(segs[1], segs[2], fileQ, true);
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
      node = await viewOverview(seq);
    } else if (segs[0] === "jobs" && segs.length === 1) {
      nav = "jobs";
      node = await viewJobs(seq, params.host ? safeDecode(params.host) : "");
    } else if (segs[0] === "host" && segs.length === 2) {
      node = await viewHost(seq, segs[1]);
    } else if (segs[0] === "host" && segs.length === 3) {
      location.replace(href.dir(segs[1], segs[2], ""));
      return;
    } else if (segs[0] === "host" && segs.length === 4 && segs[3] === "dir") {
      node = await viewBrowse(seq, segs[1], segs[2], params.q || "");
    } else if (segs[0] === "host" && segs.length === 4 && segs[3] === "search") {
      node = await viewSearch(seq, segs[1], segs[2], safeDecode(params.text || ""),
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
    if (fileQ !== undefined && segs[0] === "host") openDetails(segs[1], segs[2], fileQ, false);
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

function heading(text, ...extra) {
  return h("div", { class: "page-head" },
    h("h1", { tabindex: "-1", id: "page-title" }, text), ...extra);
}

function crumbsNav(items) {
  // items: [[label, href|null], ...]; the last one is the current page
  const ol = h("ol");
  items.forEach(([label, link], i) => {
    const last = i === items.length - 1;
    ol.append(h("li", {},
      link && !last ? h("a", { href: link }, label)
        : h("span", { "aria-current": last ? "page" : null }, label)));
  });
  return h("nav", { class: "crumbs", "aria-label": "Breadcrumb", id: "crumbs" }, ol);
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

function reload() {
  state.viewKey = null;
  route();
}

// --- overview -----------------------------------------------------------------------------

async function viewOverview(seq) {
  const ov = await api("GET", "/overview");
  if (seq !== state.seq) return null;
  setOverview(ov);
  const a = ov.appliance || {};
  const degraded = Object.entries(a.degraded || {});
  const hosts = ov.hosts || [];
  const attention = hosts.filter(needsAttention);

  const statusLine = h("p", { class: "status-line", id: "appliance-status" },
    h("span", {}, "Serial ", h("strong", {}, a.serial || "–")),
    h("span", {}, `Version ${a.version || "–"}`),
    h("span", {}, `Time zone ${a.timezone || "–"}`),
    h("span", {}, "Appliance time ", timeEl(a.time, { seconds: true })),
    degraded.length ? badge("Degraded", "bad") : badge("Healthy", "ok"));

  const alerts = [];
  if (degraded.length) {
    alerts.push(h("div", { class: "alert alert-bad", id: "degraded" },
      h("strong", {}, "The appliance is degraded:"),
      h("ul", {}, degraded.map(([k, v]) => h("li", {}, h("code", {}, k), ": ", String(v))))));
  }
  if (attention.length) {
    alerts.push(h("div", { class: "alert alert-warn", id: "attention" },
      `${attention.length} of ${hosts.length} ${hosts.length === 1 ? "host needs" : "hosts need"} attention: `,
      attention.map((x, i) => [i ? ", " : "", h("a", { href: href.host(x.name) }, x.name)])));
  }

  const seedWrap = h("div", { id: "seed-wrap" });
  const seeds = await loadSeeds();
  if (seq !== state.seq) return null;
  fillSeeds(seedWrap, seeds, seq);

  return h("section", { id: "overview" },
    heading("Overview"), statusLine, alerts,
    h("div", { class: "cards" }, capacityCard(ov.capacity || {}),
      replicationCard(ov.replication || { enabled: false })),
    seedWrap,
    h("h2", { id: "hosts-title" }, "Hosts"),
    hostsTable(hosts));
}

// --- Rapid Protect / Rapid Recover disks ------------------------------------------------

const SEED_KIND = { "rapid-protect": "Rapid Protect (seed to the data center)",
  "rapid-recover": "Rapid Recover (restore from the data center)" };
const SEED_STATE = { running: "info", done: "ok", failed: "bad", interrupted: "warn" };

async function loadSeeds() {
  try {
    return await api("GET", "/seed-disks");
  } catch (e) {
    if (e.status === 404) return null; // not watched here
    throw e;
  }
}

function fillSeeds(wrap, res, seq) {
  clear(wrap);
  if (!res) return;
  const disks = res.disks || [];
  const pending = res.pending_seed;
  const last = res.last_operation;
  if (!disks.length && !pending && !last) return;
  const items = disks.map((d) => seedDiskItem(d, wrap, seq));
  wrap.append(h("section", { class: "card", id: "seed-disks", "aria-labelledby": "seed-title" },
    h("h2", { id: "seed-title" }, "Shipped disks"),
    disks.length ? h("ul", { class: "seed-list" }, items)
      : h("p", { class: "muted", id: "seed-none" }, "No seed or recovery disk is inserted."),
    !disks.length && last ? h("p", { class: "muted", id: "seed-last" },
      `Last operation on ${last.device}: ${last.op} ${last.state}. ${last.message || ""}`) : null,
    pending ? h("p", { id: "seed-pending" }, badge("Seed pending", "info"), " ",
      `${pending.hosts.join(", ")}: ${pending.state === "shipped"
        ? "on its way to the data center; replication holds these hosts until it is imported."
        : "export in progress."}`) : null));
  if (disks.some((d) => d.state === "busy")) {
    stopPolling();
    state.pollTimer = setTimeout(async () => {
      if (seq !== state.seq) return;
      try {
        const again = await loadSeeds();
        if (seq === state.seq) fillSeeds(wrap, again, seq);
      } catch (e) {
        if (!e.handled) setStatus(`Could not refresh the disks: ${e.message}`, "error");
      }
    }, POLL_MS);
  }
}

function seedDiskItem(d, wrap, seq) {
  const p = d.progress;
  const info = d.disk || {};
  const op = d.kind === "rapid-protect" ? "export" : "import";
  const pct = p && p.total_objects ? Math.min(100, (100 * p.done_objects) / p.total_objects) : 0;
  const fill = h("div", { class: "bar-fill" });
  fill.style.width = `${pct}%`;
  const button = h("button", {
    type: "button", class: "btn btn-primary", "data-arm": d.device,
    disabled: d.state !== "ready" || (op === "export" && info.state === "complete"),
  }, op === "export" ? (info.state === "writing" ? "Resume the seed export" : "Write the seed")
    : "Check and import");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("POST", `/seed-disks/${enc(d.device)}/arm`, { operation: op });
      fillSeeds(wrap, await loadSeeds(), seq);
    } catch (e) {
      if (!e.handled) setStatus(e.message, "error");
      button.disabled = false;
    }
  });
  return h("li", { class: "seed-disk", "data-device": d.device },
    h("p", {}, h("strong", {}, d.device), " · ", SEED_KIND[d.kind] || d.kind, " ",
      badge(d.state === "busy" ? "Working" : info.state === "complete" ? "Complete"
        : info.state === "writing" ? "Unfinished" : "Empty",
      d.state === "busy" ? "info" : info.state === "complete" ? "ok" : "muted")),
    info.hosts && info.hosts.length ? h("p", { class: "muted" },
      `Holds ${info.snapshots.length} snapshots of ${info.hosts.join(", ")}` +
      (info.objects ? `, ${fmtNum(info.objects)} objects` : "") +
      (info.bytes ? ` (${fmtBytes(info.bytes)})` : "")) : null,
    p ? h("div", {
      class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": pct.toFixed(0), "aria-label": `${p.op} progress`,
    }, fill) : null,
    p ? h("p", { class: "seed-progress" }, badge(p.state, SEED_STATE[p.state] || "muted"), " ",
      `${p.op}: ${fmtNum(p.done_objects)} / ${fmtNum(p.total_objects)} objects, ` +
      `${fmtBytes(p.done_bytes)}${p.message ? ` — ${p.message}` : ""}`) : null,
    p && p.damaged && p.damaged.length ? h("ul", { class: "path-list", id: "seed-damaged" },
      p.damaged.slice(0, 20).map(([n, why]) => h("li", {}, h("code", {}, n), `: ${why}`))) : null,
    d.error && (!p || p.state !== "failed") ? h("p", { class: "warn-text" }, d.error) : null,
    h("p", {}, button));
}

function needsAttention(x) {
  return x.missed_window || x.last_result === "failed" || x.last_result === "partial";
}

function capacityCard(c) {
  const pct = Math.max(0, Math.min(100, Number(c.used_percent) || 0));
  const level = c.level || "ok";
  const warn = level !== "ok";
  const fill = h("div", { class: `bar-fill${warn ? " bar-warn" : ""}${level === "hard" ? " bar-bad" : ""}` });
  fill.style.width = `${pct}%`;
  return h("section", { class: `card${warn ? " card-warn" : ""}`, id: "capacity", "aria-labelledby": "cap-title" },
    h("h2", { id: "cap-title" }, "Capacity ", warn
      ? badge(level === "hard" ? "Full: new backups refused" : `Level: ${level}`, level === "hard" ? "bad" : "warn")
      : badge("OK", "ok")),
    h("div", {
      class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": pct.toFixed(1), "aria-label": "Data disk used",
    }, fill),
    h("p", { class: "card-figures" },
      h("strong", { id: "capacity-used" }, `${pct.toFixed(1)} % used`),
      ` · ${fmtBytes(c.disk_free_bytes)} free of ${fmtBytes(c.disk_total_bytes)}`),
    c.capacity_gb ? h("p", { class: "muted" }, `Contracted capacity ${fmtNum(Math.round(c.capacity_gb))} GB`) : null);
}

function replicationCard(r) {
  if (!r.enabled) {
    return h("section", { class: "card", id: "replication", "aria-labelledby": "rep-title" },
      h("h2", { id: "rep-title" }, "Replication ", badge("Off", "muted")),
      h("p", { class: "muted" }, "Backups are not copied to the data center."));
  }
  const lag = r.lag || {};
  const tunnel = r.tunnel || "unknown";
  const tunnelKind = tunnel === "up" ? "ok" : tunnel === "down" ? "bad" : "muted";
  const behind = lag.snapshots
    ? `${fmtNum(lag.snapshots)} snapshots (${fmtBytes(lag.bytes)}) waiting` +
      (lag.seconds !== null && lag.seconds !== undefined ? `, oldest ${fmtDuration(lag.seconds)}` : "")
    : "Up to date";
  const warn = tunnel === "down" || Boolean(r.last_error);
  return h("section", { class: `card${warn ? " card-warn" : ""}`, id: "replication", "aria-labelledby": "rep-title" },
    h("h2", { id: "rep-title" }, "Replication ", badge(`Tunnel ${tunnel}`, tunnelKind)),
    h("p", { class: "card-figures" }, behind),
    r.last_pass ? h("p", { class: "muted" }, "Last pass ", timeEl(r.last_pass.at, { rel: true })) : null,
    r.last_error ? h("p", { class: "warn-text" }, "Last error ", timeEl(r.last_error.at, { rel: true }),
      ": ", String(r.last_error.error || "")) : null);
}

function hostsTable(hosts) {
  if (!hosts.length) {
    return h("p", { class: "empty", id: "hosts-empty" },
      "No hosts yet. Add one on the appliance console with ", h("code", {}, "rdr hosts add NAME"), ".");
  }
  const tbody = h("tbody");
  for (const x of hosts) {
    const warn = needsAttention(x);
    const result = h("span", {}, badge(x.last_result, RESULT_KIND[x.last_result] || "muted"));
    if (x.missed_window) result.append(" ", badge("missed window", "warn"));
    if (x.backup) result.append(" ", badge(`backup ${x.backup.state}`, x.backup.state === "paused" ? "warn" : "info"));
    if (x.scheduled && x.agent && !x.agent.online) result.append(" ", badge("agent offline", "warn"));
    tbody.append(h("tr", { class: warn ? "row-warn" : null, data: { host: x.name } },
      h("th", { scope: "row" }, h("a", { href: href.host(x.name), class: "host-link", data: { host: x.name } }, x.name)),
      h("td", {}, x.last_success
        ? [timeEl(x.last_success), h("div", { class: "sub" }, ago(x.last_success))]
        : h("span", { class: "muted" }, "never")),
      h("td", { title: x.last_result_detail || "", class: "nowrap" }, result),
      h("td", {}, timeEl(x.next_window),
        h("div", { class: "sub", title: "The backup window opens daily at this time on the appliance's clock" },
          `daily at ${x.window_start} appliance time`)),
      h("td", { class: "num" }, fmtBytes(x.size)),
      h("td", { class: "num" }, fmtNum(x.files)),
      h("td", { class: "num" }, fmtNum(x.snapshots)),
      h("td", {}, x.snapshots ? (x.replicated ? "yes" : "no") : "–"),
      h("td", { class: "actions" }, x.last_snapshot
        ? h("a", { href: href.dir(x.name, x.last_snapshot, ""), "aria-label": `Browse the latest backup of ${x.name}` }, "Browse latest")
        : null)));
    if (warn) {
      const text = x.warning || x.last_result_detail || "";
      tbody.append(h("tr", { class: "warn-row" },
        h("td", { colspan: "9" }, h("span", { class: "warn-mark", "aria-hidden": "true" }, "!"), " ",
          h("strong", {}, `${x.name}: `), text)));
    }
  }
  return h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "hosts-table", "aria-labelledby": "hosts-title" },
    h("thead", {}, h("tr", {}, ["Host", "Last success", "Last result", "Next window", "Size",
      "Files", "Snapshots", "Replicated", ""].map((t, i) =>
      h("th", { scope: "col", class: [4, 5, 6].includes(i) ? "num" : null }, t)))),
    tbody));
}

// --- host ---------------------------------------------------------------------------------

async function viewHost(seq, host) {
  const res = await api("GET", `/hosts/${enc(host)}/snapshots`);
  if (seq !== state.seq) return null;
  const info = ((state.overview && state.overview.hosts) || []).find((x) => x.name === host);
  const snaps = res.snapshots || [];
  const summary = info ? h("p", { class: "status-line" },
    h("span", {}, "Last result ", badge(info.last_result, RESULT_KIND[info.last_result] || "muted")),
    h("span", {}, "Next window ", timeEl(info.next_window)),
    info.missed_window ? badge("missed window", "warn") : null) : null;
  const warn = info && needsAttention(info) && (info.warning || info.last_result_detail)
    ? h("div", { class: "alert alert-warn" }, info.warning || info.last_result_detail) : null;
  let body;
  if (!snaps.length) {
    body = h("p", { class: "empty" }, "This host has no backups yet.");
  } else {
    const tbody = h("tbody");
    for (const s of snaps) {
      tbody.append(h("tr", { data: { snapshot: s.snapshot } },
        h("th", { scope: "row" }, h("a", {
          href: href.dir(host, s.snapshot, ""), class: "snap-link", data: { snapshot: s.snapshot },
        }, fmtTime(s.received_at)), h("span", { class: "muted rel" }, ` ${ago(s.received_at)}`)),
        h("td", { class: "num" }, fmtBytes(s.logical_size)),
        h("td", { class: "num" }, fmtBytes(s.new_bytes)),
        h("td", { class: "num" }, fmtNum(s.file_count)),
        h("td", { class: "num" }, fmtNum(s.dir_count)),
        h("td", { class: "num" }, s.unreadable_count
          ? h("span", { class: "warn-text" }, fmtNum(s.unreadable_count)) : "0"),
        h("td", {}, s.replicated ? "yes" : "no"),
        h("td", {}, s.protected ? badge("protected", "info") : "no"),
        h("td", { class: "mono muted" }, s.snapshot)));
    }
    body = h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "snapshots-table", "aria-label": `Backups of ${host}` },
      h("thead", {}, h("tr", {}, ["Taken", "Size", "New data", "Files", "Folders", "Unreadable",
        "Replicated", "Protected", "Snapshot id"].map((t, i) =>
        h("th", { scope: "col", class: i >= 1 && i <= 5 ? "num" : null }, t)))),
      tbody));
  }
  const schedule = await scheduleSection(host);
  if (seq !== state.seq) return null;
  return h("section", { id: "host-view", data: { host } },
    crumbsNav([["Overview", href.overview()], [host, null]]),
    heading(host, h("div", { class: "head-actions" },
      snaps.length ? h("a", { class: "btn", href: href.dir(host, snaps[0].snapshot, "") }, "Browse latest") : null,
      h("a", { class: "btn", href: href.jobs(host) }, "Restore jobs"))),
    summary, warn, schedule,
    h("h2", {}, `Backups (${snaps.length})`), body);
}

// --- scheduled backups: plan, back up now, pause/resume, runs, files not backed up ----------

const POLICY_LABEL = {
  "8-5-4": "8-5-4: 8 daily, 5 weekly, 4 monthly",
  "30-0-0": "30-0-0: 30 daily",
  "7-0-0": "7-0-0: 7 daily",
};

const RUN_KIND = { done: "ok", partial: "warn", failed: "bad", missed: "bad", running: "info", queued: "muted", paused: "warn" };

function lines(text) {
  return text.split("\n").map((x) => x.trim()).filter((x) => x);
}

// The dump command runs on the host (as root where its owner allowed it): its changes are
// audited on the appliance, and the latest ones are shown under the field.
function dumpAudit(rows) {
  if (!rows.length) return null;
  return h("ul", { class: "sub", id: "dump-audit", "aria-label": "Changes of the dump command" },
    rows.slice(0, 5).map((a) => h("li", {}, "Dump command changed ", timeEl(a.at), ` by ${a.who}: `,
      h("code", {}, a.old || "(none)"), " → ", h("code", {}, a.new || "(none)"))));
}

async function scheduleSection(host) {
  const [pv, runs, gaps] = await Promise.all([
    api("GET", `/hosts/${enc(host)}/plan`),
    api("GET", `/hosts/${enc(host)}/runs?limit=10`),
    api("GET", `/hosts/${enc(host)}/not-backed-up`)]);
  const plan = pv.plan;
  const agent = pv.agent;
  const act = async (path, done) => {
    try {
      await api("POST", `/hosts/${enc(host)}/${path}`);
      setStatus(done, "ok");
      reload();
    } catch (e) {
      showError(e);
    }
  };
  const field = (label, input, hint) => h("label", { class: "field" }, h("span", {}, label), input,
    hint ? h("span", { class: "hint" }, hint) : null);
  const paths = h("textarea", { id: "plan-paths", rows: "3", spellcheck: "false" }, plan.paths.join("\n"));
  const excludes = h("textarea", { id: "plan-excludes", rows: "3", spellcheck: "false" }, plan.excludes.join("\n"));
  const windowStart = h("input", { id: "plan-window", type: "text", value: pv.window_start, size: "5" });
  const zone = h("input", { id: "plan-timezone", type: "text", spellcheck: "false", value: plan.timezone || "",
    placeholder: pv.timezone_default, autocomplete: "off" });
  // The three policies of the service description, the appliance's own, and a host's custom one.
  const policies = [...new Set(["8-5-4", "30-0-0", "7-0-0", pv.policy_default, pv.policy].filter((x) => x))];
  const policy = h("select", { id: "plan-policy" },
    h("option", { value: "" }, `Appliance default (${pv.policy_default})`),
    policies.map((p) => h("option", { value: p }, POLICY_LABEL[p] || `${p} (daily-weekly-monthly)`)));
  policy.value = pv.policy || "";
  const oneFs = h("input", { id: "plan-one-fs", type: "checkbox" });
  oneFs.checked = !!plan.one_file_system;
  const bandwidth = h("input", { id: "plan-bandwidth", type: "number", min: "0", value: String(plan.bandwidth_kbps) });
  const dump = h("input", { id: "plan-dump", type: "text", spellcheck: "false", value: plan.dump_command || "" });
  const dumpName = h("input", { id: "plan-dump-name", type: "text", value: plan.dump_name || "" });
  const error = h("p", { class: "form-error", id: "plan-error", role: "alert" });
  const form = h("form", { id: "plan-form", class: "card plan-form" },
    field("Paths (one per line)", paths),
    field("Excludes (one per line)", excludes, "a name pattern, or an absolute path pattern"),
    field(`Window start (${pv.timezone})`, windowStart, "12 hours from this time, daily"),
    field("Time zone of the window", zone, `e.g. Europe/Paris; empty = the appliance's (${pv.timezone_default})`),
    field("Keep", policy, "restore points kept by prune"),
    h("label", { class: "field field-check" }, oneFs, h("span", {}, "Stay on each path's file system"),
      h("span", { class: "hint" }, "mounted file systems below a path are not backed up")),
    field("LAN limit (kbit/s, 0 = none)", bandwidth),
    field("Before each backup, run", dump, "e.g. pg_dump mydb; its output is backed up"),
    field("Dump file name", dumpName),
    dumpAudit(pv.plan_audit || []),
    error,
    h("button", { type: "submit", class: "btn btn-primary", id: "plan-save" }, "Save plan"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      await api("PUT", `/hosts/${enc(host)}/plan`, {
        paths: lines(paths.value), excludes: lines(excludes.value),
        window_start: windowStart.value.trim(), bandwidth_kbps: Number(bandwidth.value || 0),
        timezone: zone.value.trim() || null, policy: policy.value, one_file_system: oneFs.checked,
        dump_command: dump.value.trim() || null, dump_name: dumpName.value.trim() || null,
      });
      setStatus("Backup plan saved.", "ok");
      reload();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  const active = (runs.runs || []).find((r) => ["queued", "running", "paused"].includes(r.state));
  const status = h("p", { class: "status-line", id: "schedule-status" },
    h("span", {}, "Agent ", agent
      ? [badge(Date.now() / 1000 - agent.last_seen < 120 ? "online" : "offline",
        Date.now() / 1000 - agent.last_seen < 120 ? "ok" : "warn"), " last seen ", timeEl(agent.last_seen, { rel: true })]
      : badge("never seen", "warn")),
    plan.paused ? badge("paused", "warn") : null,
    active ? h("span", {}, "Backup ", badge(active.state, RUN_KIND[active.state]),
      active.state === "running" ? ` ${fmtNum(active.files)} files, ${fmtBytes(active.bytes)}` : "") : null);
  const buttons = h("div", { class: "head-actions" },
    h("button", { type: "button", class: "btn", id: "backup-now", onclick: () => act("backup-now", "Backup queued; the agent starts it at its next poll.") }, "Back up now"),
    plan.paused
      ? h("button", { type: "button", class: "btn", id: "resume-backups", onclick: () => act("resume", "Backups resumed.") }, "Resume")
      : h("button", { type: "button", class: "btn", id: "pause-backups", onclick: () => act("pause", "Backups paused.") }, "Pause"));
  const rbody = h("tbody");
  for (const r of runs.runs || []) {
    rbody.append(h("tr", { data: { run: String(r.id) } },
      h("td", {}, fmtTime(r.started_at || r.due_at)),
      h("td", {}, r.kind),
      h("td", {}, badge(r.state, RUN_KIND[r.state] || "muted"),
        r.missed_window ? [" ", badge("missed window", "warn")] : null),
      h("td", {}, r.in_window === null ? "–" : (r.in_window ? "yes" : "no")),
      h("td", { class: "num" }, fmtNum(r.not_backed_up)),
      h("td", { class: "sub" }, r.message)));
  }
  const runsTable = h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "runs-table", "aria-label": `Backup runs of ${host}` },
    h("thead", {}, h("tr", {}, ["Started", "Kind", "State", "In window", "Not backed up", "Message"].map((t) => h("th", { scope: "col" }, t)))),
    rbody));
  const gbody = h("tbody");
  for (const f of gaps.files || []) {
    gbody.append(h("tr", {}, h("td", {}, badge(f.reason, f.reason === "excluded" ? "muted" : "warn")),
      h("td", { class: "mono" }, f.path), h("td", { class: "sub" }, f.detail)));
  }
  const gapsBody = gaps.count
    ? h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "gaps-table", "aria-label": "Files not backed up" },
      h("thead", {}, h("tr", {}, ["Why", "Path", "Detail"].map((t) => h("th", { scope: "col" }, t)))), gbody))
    : h("p", { class: "empty", id: "gaps-empty" }, gaps.run ? "Every file of the plan is in the last backup." : "No checked backup yet.");
  return h("div", { id: "schedule" },
    h("h2", {}, "Scheduled backups"), status, buttons, form,
    h("h3", {}, "Recent runs"), runsTable,
    h("h3", {}, `Not backed up by the last backup (${fmtNum(gaps.count)})`), gapsBody);
}

// --- browse -------------------------------------------------------------------------------

function badQ(q) {
  return !Q_RE.test(q);
}

function snapCrumbs(host, snap) {
  return [["Overview", href.overview()], [host, href.host(host)], [snapLabel(snap), href.dir(host, snap, "")]];
}

async function viewBrowse(seq, host, snap, q) {
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

  const searchForm = h("form", { class: "search", id: "search-form", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const text = $("search-input").value.trim();
    if (text) location.hash = href.search(host, snap, text, L.q).slice(1);
  } },
  h("label", { for: "search-input", class: "sr-only" }, "Search file names in this backup"),
  h("input", { id: "search-input", type: "search", placeholder: "Search file names in this backup", maxlength: "200", spellcheck: "false" }),
  h("button", { type: "submit", class: "btn" }, "Search"));

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
      h("th", { scope: "col" }, "Modified"),
      h("th", { scope: "col" }, "Mode"),
      h("th", { scope: "col", class: "actions" }, h("span", { class: "sr-only" }, "Actions")))),
    tbody);

  const more = h("div", { class: "more", id: "more-box" });
  const count = h("p", { class: "muted count", id: "listing-count" });

  const section = h("section", { id: "browse", data: { host, snapshot: snap, q: L.q } },
    crumbsNav(trail),
    heading(title, h("p", { class: "subtitle" }, `Backup of ${host} taken `, timeEl(snapDate(snap) || snap, { rel: true }))),
    h("div", { class: "browse-bar" }, searchForm, folderBar),
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
  let nameCell;
  const icon = h("span", { class: `ticon t-${type}`, "aria-hidden": "true" });
  const label = h("span", { class: "sr-only" }, ` (${TYPE_LABEL[type] || type})`);
  if (type === "dir") {
    nameCell = h("a", { href: href.dir(host, snap, e.q), class: "entry-link", data: { name: e.name, q: e.q, type } },
      icon, h("span", { class: "entry-name" }, e.name), label);
  } else {
    nameCell = h("a", {
      href: href.file(host, snap, dirQ, e.q), class: "entry-link", data: { name: e.name, q: e.q, type },
      title: "Show details and other versions",
    }, icon, h("span", { class: "entry-name" }, e.name), label);
  }
  const extra = type === "symlink" && e.target !== undefined
    ? h("span", { class: "muted link-target" }, " → ", e.target) : null;
  let action = null;
  if (type === "file" || type === "hardlink") {
    action = h("a", { href: downloadUrl(host, snap, e.q), download: "", class: "dl-link", data: { q: e.q },
      "aria-label": `Download ${e.name}` }, "Download");
  } else if (type === "dir") {
    action = h("a", { href: archiveUrl(host, snap, "zip", [e.q]), download: "", class: "zip-link", data: { q: e.q },
      "aria-label": `Download folder ${e.name} as zip` }, "zip");
  }
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
    h("td", {}, timeEl(e.mtime)),
    h("td", { class: "mono" }, e.mode_text || ""),
    h("td", { class: "actions" }, action));
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

// --- search -------------------------------------------------------------------------------

async function viewSearch(seq, host, snap, text, backQ) {
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
  const searchForm = h("form", { class: "search", id: "search-form", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const t = $("search-input").value.trim();
    if (t) location.hash = href.search(host, snap, t, backQ).slice(1);
  } },
  h("label", { for: "search-input", class: "sr-only" }, "Search file names in this backup"),
  h("input", { id: "search-input", type: "search", value: text, maxlength: "200", spellcheck: "false" }),
  h("button", { type: "submit", class: "btn" }, "Search"));
  let body;
  if (!matches.length) {
    body = h("p", { class: "empty", id: "search-empty" }, `No names contain “${text}”.`);
  } else {
    const tbody = h("tbody");
    for (const m of matches) {
      const isDir = m.type === "dir";
      tbody.append(h("tr", { data: { name: m.name, q: m.q, type: m.type } },
        h("td", { class: "name" }, h("a", {
          href: isDir ? href.dir(host, snap, m.q) : href.file(host, snap, m.dir_q, m.q),
          class: "entry-link", data: { name: m.name, q: m.q, type: m.type },
        }, h("span", { class: `ticon t-${m.type}`, "aria-hidden": "true" }), h("span", { class: "entry-name" }, m.name),
        h("span", { class: "sr-only" }, ` (${TYPE_LABEL[m.type] || m.type})`))),
        h("td", {}, h("a", { href: href.dir(host, snap, m.dir_q), class: "dir-link" },
          m.dir.startsWith("/") ? m.dir : `/${m.dir}`)),
        h("td", { class: "num" }, m.size === null || m.size === undefined ? "" : fmtBytes(m.size)),
        h("td", {}, timeEl(m.mtime)),
        h("td", { class: "actions" }, m.type === "file" || m.type === "hardlink"
          ? h("a", { href: downloadUrl(host, snap, m.q), download: "", "aria-label": `Download ${m.name}` }, "Download")
          : isDir ? h("a", { href: archiveUrl(host, snap, "zip", [m.q]), download: "", "aria-label": `Download folder ${m.name} as zip` }, "zip") : null)));
    }
    body = h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "search-results", "aria-label": "Search results" },
      h("thead", {}, h("tr", {}, ["Name", "Folder", "Size", "Modified", ""].map((t, i) =>
        h("th", { scope: "col", class: i === 2 ? "num" : null }, t)))),
      tbody));
  }
  const note = `${fmtNum(matches.length)} ${matches.length === 1 ? "match" : "matches"} among ${fmtNum(res.scanned)} entries` +
    (res.truncated ? ` — only the first ${fmtNum(matches.length)} are shown; make the search more specific.` : ".");
  return h("section", { id: "search-view", data: { host, snapshot: snap } },
    crumbsNav([...snapCrumbs(host, snap), [`Search “${text}”`, null]]),
    heading(`Search: ${text}`, h("p", { class: "subtitle" }, `Backup of ${host} taken `, timeEl(snapDate(snap) || snap, { rel: true }))),
    h("div", { class: "browse-bar" }, searchForm,
      h("a", { href: href.dir(host, snap, backQ), class: "btn btn-small" }, "Back to the folder")),
    h("p", { class: res.truncated ? "warn-text" : "muted", id: "search-note" }, note),
    body);
}

// --- file details -------------------------------------------------------------------------

let detailsSeq = 0;

/** The details of entry `q`; `pushed`: opened from its own view, so Back closes it. */
async function openDetails(host, snap, q, pushed) {
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
        : null)));
  }
  append(body, [
    h("p", { class: "mono path", id: "details-path" }, res.entry && e.name ? pathOf(q) : ""),
    dl, actions,
    h("h3", {}, `Versions in ${versions.length} ${versions.length === 1 ? "backup" : "backups"}`),
    versions.length ? h("div", { class: "table-wrap" }, h("table", { class: "grid compact", id: "versions" },
      h("thead", {}, h("tr", {}, ["Backup", "Size", "Modified", "Content", ""].map((t, i) =>
        h("th", { scope: "col", class: i === 1 ? "num" : null }, t)))),
      vbody)) : h("p", { class: "muted" }, "No other versions."),
  ]);
  // The dialog opened with focus on Close while loading; the likely next step is Download.
  if (document.activeElement === $("details-close") || !$("details").contains(document.activeElement)) {
    ($("details-download") || $("details-close")).focus();
  }
}

/** A path for people from a q: percent-escapes decoded where they form UTF-8. */
function pathOf(q) {
  return "/" + q.split("/").map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part.replace(/%[0-9A-Fa-f]{2}/g, "\ufffd");
    }
  }).join("/");
}

function closeDetails() {
  const dlg = $("details");
  if (dlg.open) dlg.close(); // the close handler fixes the address
}

function onDetailsClosed() {
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

// --- push restores ------------------------------------------------------------------------

let restoreCtx = null;

async function openRestore(host, snap, items, what) {
  restoreCtx = { host, snap, items };
  const dlg = $("restore-dialog");
  $("restore-error").textContent = "";
  const n = items.length;
  $("restore-summary").textContent = n === 0
    ? `Restore the whole backup of ${host} taken ${snapLabel(snap)}.`
    : `Restore ${n === 1 ? `“${items[0].name}”` : `${fmtNum(n)} selected entries`} from the backup of ${host} taken ${snapLabel(snap)}.`;
  const list = clear($("restore-paths"));
  for (const it of items.slice(0, 8)) list.append(h("li", { class: "mono" }, pathOf(it.q)));
  if (n > 8) list.append(h("li", { class: "muted" }, `… and ${fmtNum(n - 8)} more`));
  list.hidden = n === 0;
  const sel = clear($("restore-host"));
  let hosts = state.overview && state.overview.hosts;
  if (!hosts) {
    try {
      setOverview(await api("GET", "/overview"));
      hosts = state.overview.hosts;
    } catch (e) {
      if (e.handled) return;
      hosts = [];
    }
  }
  const names = hosts.map((x) => x.name);
  if (!names.includes(host)) names.unshift(host);
  for (const name of names) {
    sel.append(h("option", { value: name, selected: name === host }, name === host ? `${name} (its own host)` : name));
  }
  sel.value = host;
  $("restore-special").checked = false;
  $("restore-submit").disabled = false;
  dlg.dataset.what = what || "";
  if (!dlg.open) dlg.showModal();
  $("restore-dir").focus();
}

async function onRestoreSubmit(ev) {
  ev.preventDefault();
  const err = $("restore-error");
  const dir = $("restore-dir").value.trim();
  if (!dir.startsWith("/")) {
    err.textContent = "Enter an absolute directory path on the target host, starting with /.";
    $("restore-dir").focus();
    return;
  }
  const ctx = restoreCtx;
  const target = $("restore-host").value;
  const btn = $("restore-submit");
  btn.disabled = true;
  err.textContent = "";
  try {
    const res = await api("POST", `${snapApi(ctx.host, ctx.snap)}/restore-jobs`, {
      paths: ctx.items.map((it) => it.q), target_host: target, target_dir: dir,
      allow_special: $("restore-special").checked,
    });
    $("restore-dialog").close();
    const job = res.job || {};
    state.flash = { text: `Restore job ${job.id ?? ""} queued: ${target} restores into ${dir} on its next poll.`, kind: "ok" };
    if (location.hash === "#/jobs") reload();
    else location.hash = "#/jobs";
  } catch (e) {
    if (e.handled) return;
    err.textContent = e.message;
    btn.disabled = false;
  }
}

// --- restore jobs -------------------------------------------------------------------------

async function viewJobs(seq, host) {
  const res = await api("GET", `/restore-jobs?limit=100${host ? `&host=${enc(host)}` : ""}`);
  if (seq !== state.seq) return null;
  const wrap = h("div", { id: "jobs-wrap" });
  fillJobs(wrap, res.jobs || []);
  const section = h("section", { id: "jobs-view" },
    crumbsNav([["Overview", href.overview()], [host ? `Restore jobs of ${host}` : "Restore jobs", null]]),
    heading(host ? `Restore jobs: ${host}` : "Restore jobs",
      host ? h("div", { class: "head-actions" }, h("a", { class: "btn", href: href.jobs("") }, "All hosts")) : null),
    h("p", { class: "muted" }, "Jobs run on the target host's agent, which polls the appliance. This list refreshes by itself while jobs are queued or running."),
    wrap);
  schedulePoll(seq, host, res.jobs || []);
  return section;
}

function schedulePoll(seq, host, jobs) {
  stopPolling();
  if (!jobs.some((j) => j.state === "queued" || j.state === "running")) return;
  state.pollTimer = setTimeout(async () => {
    if (seq !== state.seq) return;
    try {
      const res = await api("GET", `/restore-jobs?limit=100${host ? `&host=${enc(host)}` : ""}`);
      if (seq !== state.seq) return;
      const wrap = $("jobs-wrap");
      if (!wrap) return;
      const focused = document.activeElement && document.activeElement.dataset
        ? document.activeElement.dataset.cancel : undefined;
      fillJobs(wrap, res.jobs || []);
      if (focused) {
        const again = wrap.querySelector(`button[data-cancel="${CSS.escape(focused)}"]`);
        if (again) again.focus();
      }
      schedulePoll(seq, host, res.jobs || []);
    } catch (e) {
      if (e.handled || seq !== state.seq) return;
      setStatus(`Could not refresh the jobs: ${e.message} Retrying…`, "error");
      state.pollTimer = setTimeout(() => schedulePoll(seq, host, jobs), POLL_MS * 2);
    }
  }, POLL_MS);
}

function fillJobs(wrap, jobs) {
  clear(wrap);
  if (!jobs.length) {
    wrap.append(h("p", { class: "empty", id: "jobs-empty" },
      "No restore jobs yet. Open a backup, select files and choose “Restore to a host…”."));
    return;
  }
  const tbody = h("tbody");
  for (const j of jobs) {
    const paths = j.paths || [];
    const what = paths.length === 0 ? "whole backup"
      : paths.length === 1 ? `/${paths[0]}` : `${fmtNum(paths.length)} items`;
    let progress;
    if (j.total_bytes) {
      const pct = Math.max(0, Math.min(100, (100 * j.bytes) / j.total_bytes));
      const bar = h("progress", { max: "100", value: pct.toFixed(1), "aria-label": `Job ${j.id} progress` });
      progress = h("div", { class: "progress" }, bar,
        h("span", { class: "muted" }, `${pct.toFixed(0)} % · ${fmtBytes(j.bytes)} of ${fmtBytes(j.total_bytes)} · ${fmtNum(j.files)} files`));
    } else if (j.state === "running") {
      progress = h("div", { class: "progress" }, h("progress", { "aria-label": `Job ${j.id} progress` }),
        h("span", { class: "muted" }, `${fmtBytes(j.bytes)} · ${fmtNum(j.files)} files`));
    } else {
      progress = h("span", { class: "muted" }, j.state === "queued" ? "waiting for the agent"
        : `${fmtBytes(j.bytes)} · ${fmtNum(j.files)} files`);
    }
    const result = [];
    if (j.errors) result.push(h("span", { class: "warn-text" }, `${fmtNum(j.errors)} errors. `));
    if (j.message) result.push(h("span", { class: j.state === "failed" ? "warn-text" : null }, j.message));
    if (j.finished_at) result.push(h("div", { class: "sub" }, "finished ", timeEl(j.finished_at)));
    if (j.start_latency_seconds !== null && j.start_latency_seconds !== undefined) {
      result.push(h("div", { class: "sub" }, `started ${fmtDuration(j.start_latency_seconds)} after the request`));
    }
    tbody.append(h("tr", { class: `job job-${j.state}`, data: { job: String(j.id), state: j.state } },
      h("th", { scope: "row", class: "num" }, String(j.id)),
      h("td", {}, h("a", { href: href.host(j.source_host) }, j.source_host),
        h("div", { class: "sub" }, h("a", { href: href.dir(j.source_host, j.snapshot, "") }, snapLabel(j.snapshot))),
        h("div", { class: "mono small path-cell", title: paths.map((p) => `/${p}`).join("\n") }, what)),
      h("td", {}, j.target_host, h("div", { class: "mono small path-cell" }, j.target_dir)),
      h("td", {}, badge(j.state, JOB_KIND[j.state] || "muted")),
      h("td", { class: "col-progress" }, progress),
      h("td", {}, timeEl(j.requested_at), h("div", { class: "sub" }, `by ${j.requested_by}, ${ago(j.requested_at)}`)),
      h("td", { class: "col-result" }, result),
      h("td", { class: "actions" }, j.state === "queued"
        ? h("button", { type: "button", class: "btn btn-small", data: { cancel: String(j.id) },
          "aria-label": `Cancel job ${j.id}`, onclick: (ev) => cancelJob(ev, j.id) }, "Cancel")
        : null)));
  }
  wrap.append(h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "jobs-table", "aria-label": "Restore jobs" },
    h("thead", {}, h("tr", {}, ["#", "From", "To", "State", "Progress", "Requested", "Result", ""].map((t, i) =>
      h("th", { scope: "col", class: i === 0 ? "num" : null }, t)))),
    tbody)));
}

async function cancelJob(ev, id) {
  const btn = ev.currentTarget;
  btn.disabled = true;
  try {
    const res = await api("POST", `/restore-jobs/${enc(String(id))}/cancel`);
    setStatus(`Restore job ${id} is ${(res.job && res.job.state) || "cancelled"}.`, "ok");
  } catch (e) {
    showError(e);
  }
  const seq = state.seq;
  try {
    const host = parseHash().params.host;
    const res = await api("GET", `/restore-jobs?limit=100${host ? `&host=${host}` : ""}`);
    if (seq !== state.seq) return;
    fillJobs($("jobs-wrap"), res.jobs || []);
    schedulePoll(seq, host ? safeDecode(host) : "", res.jobs || []);
  } catch (e) {
    showError(e);
  }
}

// --- start --------------------------------------------------------------------------------

function wire() {
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
