// The shipped-disks panel of the overview (Rapid Protect / Rapid Recover): each inserted seed
// or recovery disk, what it holds, its export or import started from here and followed by
// polling while the disk is busy.

import { api } from "./api.js";
import { enc } from "./address.js";
import { badge, clear, h } from "./dom.js";
import { fmtBytes, fmtNum } from "./format.js";
import { setStatus } from "./page.js";
import { POLL_MS, state, stopPolling } from "./state.js";

const SEED_KIND = { "rapid-protect": "Rapid Protect (seed to the data center)",
  "rapid-recover": "Rapid Recover (restore from the data center)" };
const SEED_STATE = { running: "info", done: "ok", failed: "bad", interrupted: "warn" };

export async function loadSeeds() {
  try {
    return await api("GET", "/seed-disks");
  } catch (e) {
    if (e.status === 404) return null; // not watched here
    throw e;
  }
}

export function fillSeeds(wrap, res, seq) {
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
