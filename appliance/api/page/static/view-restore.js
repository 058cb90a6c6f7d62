// The restore dialog: a push restore of entries of a backup to a host (its own or another),
// queued as a job that the host's agent picks up on its next poll; the dialog warns when the
// target's agent is not online (the job would wait for it).

import { api } from "./api.js";
import { snapApi } from "./address.js";
import { $, clear, h } from "./dom.js";
import { fmtNum, pathOf, snapLabel, timeEl } from "./format.js";
import { loadOverview } from "./header.js";
import { reload } from "./router.js";
import { state } from "./state.js";

let restoreCtx = null;

/** The snapshot's row (with the appliance's ransomware marks: suspicious, clean,
 * confirm_restore) and the newest clean snapshot of its source, from the snapshots API. */
async function cleanPoint(host, snap) {
  const rows = (await api("GET", `/hosts/${encodeURIComponent(host)}/snapshots`)).snapshots || [];
  const row = rows.find((r) => r.snapshot === snap) || null;
  const clean = row && rows.find((r) => r.clean && r.source === row.source) || null;
  return { row, clean };
}

export async function openRestore(host, snap, items, what) {
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
  try {
    restoreCtx.marks = await cleanPoint(host, snap);
  } catch (e) {
    restoreCtx.marks = { row: null, clean: null };
  }
  const { row, clean } = restoreCtx.marks;
  if (row && row.confirm_restore) {
    $("restore-summary").textContent += row.suspicious
      ? " This backup shows signs of ransomware."
      : " This backup follows one that shows signs of ransomware.";
    if (clean) $("restore-summary").textContent += ` The last clean backup of its source was taken ${snapLabel(clean.snapshot)} (${clean.snapshot}).`;
  }
  const sel = clear($("restore-host"));
  let hosts;
  try {
    hosts = (await loadOverview()).hosts; // fresh: whether each agent polls now
  } catch (e) {
    if (e.handled) return;
    hosts = (state.overview && state.overview.hosts) || [];
  }
  const names = hosts.map((x) => x.name);
  if (!names.includes(host)) names.unshift(host);
  for (const name of names) {
    sel.append(h("option", { value: name, selected: name === host }, name === host ? `${name} (its own host)` : name));
  }
  sel.value = host;
  sel.onchange = () => offlineWarning(hosts, sel.value);
  offlineWarning(hosts, host);
  $("restore-special").checked = false;
  $("restore-submit").disabled = false;
  dlg.dataset.what = what || "";
  if (!dlg.open) dlg.showModal();
  $("restore-dir").focus();
}

/** Warn when the target's agent is not polling: the job would wait, perhaps for ever. */
function offlineWarning(hosts, target) {
  const box = clear($("restore-offline"));
  const info = hosts.find((x) => x.name === target);
  const agent = info && info.agent;
  const online = agent && (agent.online === true || agent.state === "online");
  if (online) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const lead = h("strong", {}, `The agent of ${target} is not online. `);
  if (!info) {
    box.append(lead, "The appliance knows nothing of this host's agent; the restore starts only when an agent (rdr-agent run) polls from it.");
  } else if (!agent || !agent.last_seen) {
    box.append(lead, "It has never connected to the appliance: the restore waits until the agent service (rdr-agent run) is started on that host.");
  } else {
    box.append(lead, "It was last seen ", timeEl(agent.last_seen, { rel: true }),
      ": the restore starts when it polls again.");
  }
}

export async function onRestoreSubmit(ev) {
  ev.preventDefault();
  const err = $("restore-error");
  const dir = $("restore-dir").value.trim();
  if (!dir.startsWith("/")) {
    err.textContent = "Enter an absolute directory path on the target host, starting with /.";
    $("restore-dir").focus();
    return;
  }
  const ctx = restoreCtx;
  const row = ctx.marks && ctx.marks.row;
  if (row && row.confirm_restore && !confirm(`This backup of ${ctx.host} ${row.suspicious ? "shows" : "follows one that shows"} signs of ransomware: its files may be encrypted. Restore it anyway?`)) return;
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
