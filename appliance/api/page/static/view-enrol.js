// "Add a host" (#/add-host): the host's name in, its one-time enrolment code and the line to
// paste on the host out; then the host's state, polled until its agent is enrolled and online.
// And a host's report (#/host/NAME/report): what its agent found (OS, kernel, patches, file
// systems, databases, plan size), its restore time objective and the estimate.

import { api } from "./api.js";
import { enc, href } from "./address.js";
import { badge, gridTable, h } from "./dom.js";
import { fmtBytes, fmtDuration, fmtNum, fmtTime, timeEl } from "./format.js";
import { crumbsNav, heading, showError } from "./page.js";
import { reload } from "./router.js";
import { POLL_MS, state, stopPolling } from "./state.js";

function enrolState(e) {
  if (!e.enrolled) return badge("waiting for the host", "muted");
  return e.online ? badge("enrolled · online", "ok") : badge("enrolled · offline", "warn");
}

function commandBox(res) {
  const pre = h("pre", { class: "mono enrol-command", id: "enrol-command" }, res.command);
  const copy = h("button", {
    type: "button", class: "btn btn-small", id: "enrol-copy",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(res.command);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Select the line and copy it";
      }
    },
  }, "Copy");
  return h("div", { class: "enrol-box" },
    h("p", {}, "On the host, as a user who may use sudo, paste this line. It fetches the agent "
      + "from this appliance only (its certificate is pinned in the line), installs it in "
      + "/opt/rdr-agent, enrols the host and starts the rdr-agent service:"),
    pre, copy,
    h("p", { class: "form-note" }, "The code in it works once, until ",
      timeEl(res.expires_at), ". The host's token never appears on the screen or in the "
      + "host's shell history: the agent writes it into /etc/rdr-agent/agent.toml (0600)."),
    h("p", { class: "form-note" }, "Hosts need Python 3.9 or later, curl and sha256sum "
      + "(Debian 11 and later have them). Certificate fingerprint: ",
      h("span", { class: "mono" }, res.fingerprint)));
}

function watchEnrolment(seq, host, out) {
  const tick = async () => {
    if (seq !== state.seq) return;
    try {
      const e = await api("GET", `/hosts/${enc(host)}/enrolment`);
      if (seq !== state.seq) return;
      out.replaceChildren(h("span", {}, "Host ", h("strong", {}, host), ": "), enrolState(e));
      if (e.enrolled && e.online) {
        out.append(" ", h("a", { href: href.hostReport(host) }, "See its report"));
        return; // done: no more polling
      }
    } catch (err) {
      showError(err);
    }
    state.pollTimer = setTimeout(tick, POLL_MS);
  };
  tick();
}

export async function viewAddHost(seq) {
  const result = h("div", { id: "enrol-result", "aria-live": "polite" });
  const error = h("p", { class: "form-error", role: "alert", id: "add-host-error" });
  const name = h("input", { id: "add-host-name", name: "name", required: true,
    autocomplete: "off", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}", maxlength: "63" });
  const kind = h("select", { id: "add-host-kind", name: "kind" },
    h("option", { value: "server" }, "Server"),
    h("option", { value: "pc" }, "PC (30-0-0 retention)"));
  const submit = h("button", { type: "submit", class: "btn btn-primary", id: "add-host-submit" },
    "Add host");
  const form = h("form", {
    id: "add-host-form", class: "enrol-form",
    onsubmit: async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      submit.disabled = true;
      try {
        const res = await api("POST", "/hosts", { name: name.value.trim(), kind: kind.value });
        stopPolling();
        const status = h("p", { class: "status-line", id: "enrol-status" });
        result.replaceChildren(h("h2", {}, `Enrol ${res.host}`), commandBox(res), status);
        watchEnrolment(seq, res.host, status);
      } catch (err) {
        error.textContent = err.message;
      } finally {
        submit.disabled = false;
      }
    },
  },
  h("div", { class: "field" }, h("label", { for: "add-host-name" }, "Host name"),
    name, h("p", { class: "form-note" }, "Letters, digits, '.', '_' or '-', e.g. web01.")),
  h("div", { class: "field" }, h("label", { for: "add-host-kind" }, "Kind"), kind,
    h("p", { class: "form-note" }, "Billed as a server or a PC (the contract's rates).")),
  error, submit);
  return h("section", { id: "add-host-view" },
    crumbsNav([["Overview", href.overview()], ["Add a host", null]]),
    heading("Add a host"),
    h("p", {}, "A server or PC joins the appliance with one line on the host: the appliance "
      + "serves the agent itself, so the host needs no internet access."),
    form, result);
}

function row(label, value) {
  return h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, value));
}

function rtoForm(host, e) {
  const input = h("input", { id: "rto-input", name: "rto", placeholder: "4h",
    value: e.rto.rto_seconds ? `${Math.round(e.rto.rto_seconds / 60)}m` : "" });
  const err = h("p", { class: "form-error", role: "alert", id: "rto-error" });
  return h("form", {
    id: "rto-form",
    onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      try {
        await api("PUT", `/hosts/${enc(host)}/rto`, { rto: input.value.trim() || null });
        reload();
      } catch (ex) {
        err.textContent = ex.message;
      }
    },
  }, h("div", { class: "field" }, h("label", { for: "rto-input" },
    "Restore time objective (4h, 90m, 1d; empty: none)"), input), err,
  h("button", { type: "submit", class: "btn btn-small" }, "Save RTO"));
}

export async function viewHostReport(seq, host) {
  const e = await api("GET", `/hosts/${enc(host)}/enrolment`);
  if (seq !== state.seq) return null;
  const rep = e.report || {};
  const os = rep.os || {};
  const p = rep.patches || {};
  const rto = e.rto;
  const est = rto.estimate_seconds === null ? "not measured yet (no push restore so far)"
    : `${fmtDuration(rto.estimate_seconds)} (${fmtBytes(rto.size_bytes)} at `
      + `${fmtBytes(rto.throughput_bytes_per_second)}/s${rto.throughput_measured_on_host
        ? "" : ", measured on other hosts"})`;
  const facts = h("table", { class: "kv", id: "host-report-facts" }, h("tbody", {},
    row("Enrolment", enrolState(e)),
    row("Enrolled", e.enrolled_at ? fmtTime(e.enrolled_at) : "–"),
    row("Agent", e.agent_version || rep.agent_version || "–"),
    row("Operating system", os.pretty_name || os.name || "–"),
    row("Kernel", `${rep.kernel || "–"} (${rep.arch || "?"})`),
    row("Python", rep.python || "–"),
    row("Pending updates", p.manager ? `${p.pending ?? "?"} (${p.security ?? "?"} security, `
      + `${p.manager})` : "–"),
    row("Plan size", rep.plan ? `${fmtBytes(rep.plan.size_bytes)} in `
      + `${fmtNum(rep.plan.files)} files` : "–"),
    row("RTO", rto.rto_seconds ? fmtDuration(rto.rto_seconds) : "none"),
    row("Full restore estimate", h("span", {}, est, " ",
      rto.at_risk ? badge("cannot meet RTO", "bad") : null)),
    row("Report received", rep.received_at ? fmtTime(rep.received_at) : "none yet")));
  const fsBody = h("tbody");
  for (const f of rep.filesystems || []) {
    fsBody.append(h("tr", {}, h("td", { class: "mono" }, f.mount), h("td", {}, f.type),
      h("td", { class: "mono muted" }, f.device), h("td", { class: "num" }, fmtBytes(f.size)),
      h("td", { class: "num" }, fmtBytes(f.used))));
  }
  const dbBody = h("tbody");
  for (const d of rep.databases || []) {
    dbBody.append(h("tr", {}, h("td", {}, d.kind), h("td", {}, d.found_by),
      h("td", { class: "mono" }, d.where)));
  }
  return h("section", { id: "host-report-view", data: { host } },
    crumbsNav([["Overview", href.overview()], [host, href.host(host)], ["Report", null]]),
    heading(`${host}: host report`, h("div", { class: "head-actions" },
      h("a", { class: "btn", href: `/api/v1/hosts-report?format=csv`, download: "" },
        "All hosts (CSV)"),
      h("a", { class: "btn", href: `/api/v1/hosts-report?format=json` }, "All hosts (JSON)"))),
    facts, rtoForm(host, e),
    h("h2", {}, "File systems"),
    (rep.filesystems || []).length ? gridTable({ id: "host-report-fs" },
      ["Mount", "Type", "Device", "Size", "Used"], [3, 4], fsBody)
      : h("p", { class: "empty" }, "None reported."),
    h("h2", {}, "Databases"),
    (rep.databases || []).length ? gridTable({ id: "host-report-db" },
      ["Kind", "Found by", "Where"], [], dbBody)
      : h("p", { class: "empty" }, "None found."));
}
