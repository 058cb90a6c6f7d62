// The host page's scheduled backups: the recent runs with "back up now" and pause/resume, the
// files the last backup did not take, and the plan form, collapsed below them (a host page
// is for restoring first). A refused plan marks every wrong field at once beside it; a saved
// one says so, and the audit lists each edit's changes, from what to what.

import { api } from "./api.js";
import { enc } from "./address.js";
import { badge, gridTable, h } from "./dom.js";
import { fmtBytes, fmtNum, fmtTime, timeEl } from "./format.js";
import { setStatus, showError } from "./page.js";
import { reload } from "./router.js";
import { state } from "./state.js";

const POLICY_LABEL = {
  "8-5-4": "8-5-4: 8 daily, 5 weekly, 4 monthly",
  "30-0-0": "30-0-0: 30 daily",
  "7-0-0": "7-0-0: 7 daily",
};

const FIELD_LABEL = {
  paths: "paths", excludes: "excludes", window_start: "window start", timezone: "time zone",
  policy: "keep", one_file_system: "one file system", bandwidth_kbps: "LAN limit",
  dump_command: "dump command", dump_name: "dump file name",
};

// Fields whose empty value means "the appliance's default".
const DEFAULTED = new Set(["window_start", "timezone", "policy"]);

const RUN_KIND = { done: "ok", partial: "warn", failed: "bad", missed: "bad", running: "info", queued: "muted", paused: "warn" };

function lines(text) {
  return text.split("\n").map((x) => x.trim()).filter((x) => x);
}

/** The plan view, the recent runs and the premier check's gaps of `host`. */
export async function loadSchedule(host) {
  const [pv, runs, gaps] = await Promise.all([
    api("GET", `/hosts/${enc(host)}/plan`),
    api("GET", `/hosts/${enc(host)}/runs?limit=10`),
    api("GET", `/hosts/${enc(host)}/not-backed-up`)]);
  return { pv, runs: runs.runs || [], gaps };
}

// The agent's state as the appliance judges it (plans.repository.agent_status): a host
// whose backups all came from its command line is "command line only", not "never seen".
const AGENT_BADGE = {
  online: ["online", "ok"], offline: ["offline", "warn"],
  cli: ["command line only", "muted"], never: ["never used", "warn"],
};

function agentLine(st) {
  const [text, kind] = AGENT_BADGE[st.state] || [st.state, "warn"];
  return h("span", { title: st.describe || "" }, "Agent ", badge(text, kind),
    st.last_seen ? [" last seen ", timeEl(st.last_seen, { rel: true })] : null);
}

export function runsSection(host, { pv, runs }) {
  const plan = pv.plan;
  const act = async (path, done) => {
    try {
      await api("POST", `/hosts/${enc(host)}/${path}`);
      setStatus(done, "ok");
      reload();
    } catch (e) {
      showError(e);
    }
  };
  const active = runs.find((r) => ["queued", "running", "paused"].includes(r.state));
  const status = h("p", { class: "status-line", id: "schedule-status" },
    agentLine(pv.agent_status || {}),
    plan.paused ? badge("paused", "warn") : null,
    active ? h("span", {}, "Backup ", badge(active.state, RUN_KIND[active.state]),
      active.state === "running" ? ` ${fmtNum(active.files)} files, ${fmtBytes(active.bytes)}` : "") : null);
  const buttons = h("div", { class: "head-actions" },
    h("button", { type: "button", class: "btn", id: "backup-now", onclick: () => act("backup-now", "Backup queued; the agent starts it at its next poll.") }, "Back up now"),
    plan.paused
      ? h("button", { type: "button", class: "btn", id: "resume-backups", onclick: () => act("resume", "Backups resumed.") }, "Resume")
      : h("button", { type: "button", class: "btn", id: "pause-backups", onclick: () => act("pause", "Backups paused.") }, "Pause"));
  const rbody = h("tbody");
  for (const r of runs) {
    rbody.append(h("tr", { data: { run: String(r.id) } },
      h("td", {}, fmtTime(r.started_at || r.due_at)),
      h("td", {}, r.kind),
      h("td", {}, badge(r.state, RUN_KIND[r.state] || "muted"),
        r.missed_window ? [" ", badge("missed window", "warn")] : null),
      h("td", { class: "opt" }, r.in_window === null ? "–" : (r.in_window ? "yes" : "no")),
      h("td", { class: "num opt" }, fmtNum(r.not_backed_up)),
      h("td", { class: "msg" }, r.message)));
  }
  const table = runs.length
    ? gridTable({ id: "runs-table", "aria-label": `Backup runs of ${host}` },
      ["Started", "Kind", "State", "In window", "Not backed up", "Message"], [4], rbody, [3, 4])
    : h("p", { class: "empty", id: "runs-empty" }, "No scheduled or requested backup has run yet.");
  return h("section", { id: "schedule", "aria-labelledby": "runs-title" },
    h("div", { class: "section-head" }, h("h2", { id: "runs-title" }, "Recent runs"), buttons),
    status, table);
}

export function gapsSection({ gaps }) {
  const gbody = h("tbody");
  for (const f of gaps.files || []) {
    gbody.append(h("tr", {}, h("td", {}, badge(f.reason, f.reason === "excluded" ? "muted" : "warn")),
      h("td", { class: "mono wrap" }, f.path), h("td", { class: "msg" }, f.detail)));
  }
  const body = gaps.count
    ? gridTable({ id: "gaps-table", "aria-label": "Files not backed up" }, ["Why", "Path", "Detail"], [], gbody)
    : h("p", { class: "empty", id: "gaps-empty" }, gaps.run ? "Every file of the plan is in the last backup." : "No checked backup yet.");
  return h("section", { id: "gaps" },
    h("h2", {}, `Not backed up by the last backup (${fmtNum(gaps.count)})`), body);
}

/** An audited value for people: lists as lists, flags as yes/no, empty as what it means. */
function shown(field, v) {
  if (v === null || v === undefined || v === "") return DEFAULTED.has(field) ? "(appliance default)" : "(none)";
  if (v === "true" || v === "false") return v === "true" ? "yes" : "no";
  if (v.startsWith("[")) {
    try {
      const list = JSON.parse(v);
      return list.length ? list.join(", ") : "(none)";
    } catch {
      return v;
    }
  }
  return v;
}

function changeList(changes) {
  return changes.map((c, i) => [i ? "; " : "", `${FIELD_LABEL[c.field] || c.field} `,
    h("code", {}, shown(c.field, c.old)), " → ", h("code", {}, shown(c.field, c.new))]);
}

/** The latest edits, each with what it changed from what to what. */
function auditList(rows) {
  const edits = [];
  for (const r of rows) {
    const last = edits[edits.length - 1];
    if (last && last.at === r.at && last.who === r.who) last.changes.push(r);
    else edits.push({ at: r.at, who: r.who, changes: [r] });
  }
  if (!edits.length) return null;
  return h("div", { class: "audit" }, h("h3", {}, "Changes"),
    h("ul", { id: "plan-audit", "aria-label": "Changes of the plan" },
      edits.slice(0, 5).map((e) => h("li", {}, timeEl(e.at), ` by ${e.who}: `,
        changeList(e.changes)))));
}

function planSummary(pv) {
  const plan = pv.plan;
  const what = plan.paths.length ? `${fmtNum(plan.paths.length)} ${plan.paths.length === 1 ? "path" : "paths"}` : "nothing scheduled";
  return `Backup plan: daily at ${pv.window_start} ${pv.timezone}, ${what}, keep ${pv.policy || pv.policy_default}`;
}

export function planSection(host, { pv }) {
  const plan = pv.plan;
  const saved = state.planSaved && state.planSaved.host === host ? state.planSaved : null;
  state.planSaved = null;
  const errors = {};
  const field = (name, label, input, hint) => {
    errors[name] = h("span", { class: "field-error", id: `err-${name}`, role: "alert" });
    input.setAttribute("aria-describedby", `err-${name}`);
    return h("label", { class: "field", data: { field: name } }, h("span", {}, label), input,
      hint ? h("span", { class: "hint" }, hint) : null, errors[name]);
  };
  const paths = h("textarea", { id: "plan-paths", rows: "3", spellcheck: "false" }, plan.paths.join("\n"));
  const excludes = h("textarea", { id: "plan-excludes", rows: "3", spellcheck: "false" }, plan.excludes.join("\n"));
  // Empty follows the appliance's default window (shown as the placeholder), so saving an
  // untouched form does not pin today's default to the host.
  const windowStart = h("input", { id: "plan-window", type: "text", size: "5",
    value: pv.window_start_default ? "" : pv.window_start, placeholder: pv.window_start });
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
  const inputs = { paths, excludes, window_start: windowStart, timezone: zone, policy, one_file_system: oneFs,
    bandwidth_kbps: bandwidth, dump_command: dump, dump_name: dumpName };
  const error = h("p", { class: "form-error", id: "plan-error", role: "alert" });
  const savedNote = h("p", { class: "form-saved", id: "plan-saved", role: "status" }, saved
    ? ["Saved ", timeEl(saved.at, { seconds: true }), saved.changed.length ? [": ", changeList(saved.changed)] : ": nothing changed."]
    : null);
  const oneFsErr = h("span", { class: "field-error", id: "err-one_file_system", role: "alert" });
  errors.one_file_system = oneFsErr;
  const form = h("form", { id: "plan-form", class: "plan-form", novalidate: true },
    savedNote, error,
    field("paths", "Paths (one per line)", paths),
    field("excludes", "Excludes (one per line)", excludes, "a name pattern, or an absolute path pattern"),
    field("window_start", `Window start (${pv.timezone})`, windowStart, `12 hours from this time, daily, in ${pv.timezone}; empty = the appliance's default${pv.window_start_default ? ` (${pv.window_start})` : ""}`),
    field("timezone", "Time zone of the window", zone, `e.g. Europe/Paris; empty = the appliance's (${pv.timezone_default})`),
    field("policy", "Keep", policy, "restore points kept by prune, per backup source"),
    h("label", { class: "field field-check", data: { field: "one_file_system" } }, oneFs, h("span", {}, "Stay on each path's file system"),
      h("span", { class: "hint" }, "mounted file systems below a path are not backed up"), oneFsErr),
    field("bandwidth_kbps", "LAN limit (kbit/s, 0 = none)", bandwidth),
    field("dump_command", "Before each backup, run", dump, "e.g. pg_dump mydb; its output is backed up"),
    field("dump_name", "Dump file name", dumpName),
    h("button", { type: "submit", class: "btn btn-primary", id: "plan-save" }, "Save plan"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    for (const [name, el] of Object.entries(errors)) {
      el.textContent = "";
      inputs[name].removeAttribute("aria-invalid");
    }
    try {
      const res = await api("PUT", `/hosts/${enc(host)}/plan`, {
        paths: lines(paths.value), excludes: lines(excludes.value),
        window_start: windowStart.value.trim(), bandwidth_kbps: Number(bandwidth.value || 0),
        timezone: zone.value.trim() || null, policy: policy.value, one_file_system: oneFs.checked,
        dump_command: dump.value.trim() || null, dump_name: dumpName.value.trim() || null,
      });
      state.planSaved = { host, at: Date.now() / 1000, changed: res.changed || [] };
      setStatus("Backup plan saved.", "ok");
      reload();
    } catch (e) {
      if (e.handled) return;
      const fields = (e.body && e.body.fields) || [];
      const marked = fields.filter((f) => errors[f.field]);
      for (const f of marked) {
        errors[f.field].textContent = f.message;
        inputs[f.field].setAttribute("aria-invalid", "true");
      }
      const other = fields.filter((f) => !errors[f.field]).map((f) => `${f.field}: ${f.message}`);
      error.textContent = marked.length
        ? [`Not saved: ${marked.length === 1 ? "1 field needs" : `${marked.length} fields need`} a change (marked below).`, ...other].join(" ")
        : e.message;
      (marked.length ? inputs[marked[0].field] : error).focus?.();
    }
  });
  return h("details", { id: "plan", class: "card plan-card", open: saved ? true : null },
    h("summary", { id: "plan-summary" }, h("h2", {}, planSummary(pv)), plan.paused ? [" ", badge("paused", "warn")] : null),
    form, auditList(pv.plan_audit || []));
}
