// The host page's scheduled backups: the plan form, back up now, pause/resume, the recent
// runs and the files the last backup did not take.

import { api } from "./api.js";
import { enc } from "./address.js";
import { badge, gridTable, h } from "./dom.js";
import { fmtBytes, fmtNum, fmtTime, timeEl } from "./format.js";
import { setStatus, showError } from "./page.js";
import { reload } from "./router.js";

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

export async function scheduleSection(host) {
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
  const runsTable = gridTable({ id: "runs-table", "aria-label": `Backup runs of ${host}` },
    ["Started", "Kind", "State", "In window", "Not backed up", "Message"], [], rbody);
  const gbody = h("tbody");
  for (const f of gaps.files || []) {
    gbody.append(h("tr", {}, h("td", {}, badge(f.reason, f.reason === "excluded" ? "muted" : "warn")),
      h("td", { class: "mono" }, f.path), h("td", { class: "sub" }, f.detail)));
  }
  const gapsBody = gaps.count
    ? gridTable({ id: "gaps-table", "aria-label": "Files not backed up" }, ["Why", "Path", "Detail"], [], gbody)
    : h("p", { class: "empty", id: "gaps-empty" }, gaps.run ? "Every file of the plan is in the last backup." : "No checked backup yet.");
  return h("div", { id: "schedule" },
    h("h2", {}, "Scheduled backups"), status, buttons, form,
    h("h3", {}, "Recent runs"), runsTable,
    h("h3", {}, `Not backed up by the last backup (${fmtNum(gaps.count)})`), gapsBody);
}
