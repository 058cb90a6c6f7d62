// Restore jobs: every push restore (or one host's) with its progress, refreshed by polling
// while any is queued or running; a queued job can be cancelled.

import { api } from "./api.js";
import { enc, href, parseHash, safeDecode } from "./address.js";
import { $, badge, clear, gridTable, h } from "./dom.js";
import { ago, fmtBytes, fmtDuration, fmtNum, snapLabel, timeEl } from "./format.js";
import { crumbsNav, heading, setStatus, showError } from "./page.js";
import { POLL_MS, state, stopPolling } from "./state.js";

const JOB_KIND = { queued: "info", running: "info", done: "ok", failed: "bad", cancelled: "muted" };

/** The latest 100 jobs, of `host` only if given. */
async function fetchJobs(host) {
  const res = await api("GET", `/restore-jobs?limit=100${host ? `&host=${enc(host)}` : ""}`);
  return res.jobs || [];
}

export async function viewJobs(seq, host) {
  const jobs = await fetchJobs(host);
  if (seq !== state.seq) return null;
  const wrap = h("div", { id: "jobs-wrap" });
  fillJobs(wrap, jobs);
  const section = h("section", { id: "jobs-view" },
    crumbsNav([["Overview", href.overview()], [host ? `Restore jobs of ${host}` : "Restore jobs", null]]),
    heading(host ? `Restore jobs: ${host}` : "Restore jobs",
      host ? h("div", { class: "head-actions" }, h("a", { class: "btn", href: href.jobs("") }, "All hosts")) : null),
    h("p", { class: "muted" }, "Jobs run on the target host's agent, which polls the appliance. This list refreshes by itself while jobs are queued or running."),
    wrap);
  schedulePoll(seq, host, jobs);
  return section;
}

function schedulePoll(seq, host, jobs) {
  stopPolling();
  if (!jobs.some((j) => j.state === "queued" || j.state === "running")) return;
  state.pollTimer = setTimeout(async () => {
    if (seq !== state.seq) return;
    try {
      const fresh = await fetchJobs(host);
      if (seq !== state.seq) return;
      const wrap = $("jobs-wrap");
      if (!wrap) return;
      const focused = document.activeElement && document.activeElement.dataset
        ? document.activeElement.dataset.cancel : undefined;
      fillJobs(wrap, fresh);
      if (focused) {
        const again = wrap.querySelector(`button[data-cancel="${CSS.escape(focused)}"]`);
        if (again) again.focus();
      }
      schedulePoll(seq, host, fresh);
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
  wrap.append(gridTable({ id: "jobs-table", "aria-label": "Restore jobs" },
    ["#", "From", "To", "State", "Progress", "Requested", "Result", ""], [0], tbody));
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
    const host = safeDecode(parseHash().params.host || "");
    const jobs = await fetchJobs(host);
    if (seq !== state.seq) return;
    fillJobs($("jobs-wrap"), jobs);
    schedulePoll(seq, host, jobs);
  } catch (e) {
    showError(e);
  }
}
