// The overview: the appliance's status, capacity and replication, the shipped-disk panel, and
// every host with its last backup.

import { api } from "./api.js";
import { href } from "./address.js";
import { badge, gridTable, h } from "./dom.js";
import { ago, fmtBytes, fmtDuration, fmtNum, timeEl } from "./format.js";
import { setOverview } from "./header.js";
import { heading } from "./page.js";
import { state } from "./state.js";
import { fillSeeds, loadSeeds } from "./view-seed.js";

export const RESULT_KIND = { ok: "ok", partial: "warn", failed: "bad", running: "info", never: "muted" };

export async function viewOverview(seq) {
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

export function needsAttention(x) {
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
    r.immutable === false
      ? h("p", { class: "warn-text", id: "rep-not-immutable" },
        "The off-site copy is not immutable: the data center's bucket has no Object Lock, " +
        "so it can be deleted with the appliance's credentials.")
      : r.immutable ? h("p", { class: "muted", id: "rep-immutable" }, "Off-site copy locked (Object Lock)") : null,
    r.last_pass ? h("p", { class: "muted" }, "Last pass ", timeEl(r.last_pass.at, { rel: true })) : null,
    r.last_error ? h("p", { class: "warn-text" }, "Last error ", timeEl(r.last_error.at, { rel: true }),
      ": ", String(r.last_error.error || "")) : null);
}

// What each agent state shows; the state's sentence (agent.describe) is its title.
const AGENT_LABEL = {
  never: ["never used", "muted"], cli: ["command line only", "info"],
  online: ["service online", "ok"], offline: ["service offline", "warn"],
};

function agentCell(a) {
  const [label, kind] = AGENT_LABEL[a.state] || [a.state || "unknown", "muted"];
  const when = a.state === "cli" ? a.last_backup : a.last_seen;
  return h("td", { title: a.describe || "", class: "nowrap", data: { agent: a.state || "" } },
    badge(label, kind),
    when ? h("div", { class: "sub" }, a.state === "cli" ? "last backup " : "last poll ", ago(when)) : null);
}

function resultCell(x) {
  const result = h("span", {}, badge(x.last_result, RESULT_KIND[x.last_result] || "muted"));
  if (x.missed_window) result.append(" ", badge("missed window", "warn"));
  if (x.backup) result.append(" ", badge(`backup ${x.backup.state}`, x.backup.state === "paused" ? "warn" : "info"));
  const runs = (x.last_window && x.last_window.outcomes) || [];
  // The worst of the last window's runs, with its reason on the page, not only in a tooltip.
  const sub = runs.length > 1
    ? h("div", { class: "sub result-detail" }, `worst of ${runs.length} in the last window`) : null;
  return h("td", { title: x.last_result_detail || "", class: "nowrap" }, result, sub);
}

// Three sizes, each saying what it is: the latest backup (the newest snapshot of each
// source), what the host's snapshots hold on the data disk, and this month's GB protected.
function sizeCell(x) {
  const stored = x.stored_bytes === null || x.stored_bytes === undefined
    ? h("span", { title: "measured by the daily usage sample; none yet" }, "stored –")
    : h("span", { title: `chunk files its snapshots reference (shared ones counted for each host), measured ${x.stored_measured}` },
      `stored ${fmtBytes(x.stored_bytes)}`);
  const protectedGb = x.protected_gb === null || x.protected_gb === undefined ? "–" : `${x.protected_gb.toFixed(x.protected_gb < 1 ? 3 : 2)} GB`;
  return h("td", { class: "num nowrap", data: { sizes: x.name } },
    h("span", { title: `the newest snapshot of each of ${x.sources} backup source(s): ${fmtNum(x.latest_files)} files` },
      `latest ${fmtBytes(x.latest_bytes)}`),
    h("div", { class: "sub" }, stored),
    h("div", { class: "sub", title: "this month's largest backup, as billed" }, `protected ${protectedGb}`));
}

function hostsTable(hosts) {
  if (!hosts.length) {
    return h("p", { class: "empty", id: "hosts-empty" },
      "No hosts yet. Add one on the appliance console with ", h("code", {}, "rdr hosts add NAME"), ".");
  }
  const tbody = h("tbody");
  for (const x of hosts) {
    const warn = needsAttention(x);
    tbody.append(h("tr", { class: warn ? "row-warn" : null, data: { host: x.name } },
      h("th", { scope: "row" }, h("a", { href: href.host(x.name), class: "host-link", data: { host: x.name } }, x.name)),
      h("td", {}, x.last_success
        ? [timeEl(x.last_success), h("div", { class: "sub" }, ago(x.last_success))]
        : h("span", { class: "muted" }, "never")),
      resultCell(x),
      agentCell(x.agent || {}),
      h("td", {}, timeEl(x.next_window, { zone: x.timezone }),
        h("div", { class: "sub", title: "The backup window opens daily at this time in this zone (the plan's, or the appliance's)" },
          `daily at ${x.window_start} ${x.timezone || ""}`)),
      sizeCell(x),
      h("td", { class: "num" }, fmtNum(x.snapshots)),
      h("td", {}, x.snapshots ? (x.replicated ? "yes" : "no") : "–"),
      h("td", { class: "actions" }, x.last_snapshot
        ? h("a", { href: href.dir(x.name, x.last_snapshot, ""), "aria-label": `Browse the latest backup of ${x.name}` }, "Browse latest")
        : null)));
    if (warn) {
      const text = x.warning || x.last_result_detail || "";
      const more = x.warning && x.last_result_detail && (x.last_result === "partial" || x.last_result === "failed")
        ? `; last result ${x.last_result}: ${x.last_result_detail}` : "";
      tbody.append(h("tr", { class: "warn-row" },
        h("td", { colspan: "9" }, h("span", { class: "warn-mark", "aria-hidden": "true" }, "!"), " ",
          h("strong", {}, `${x.name}: `), text + more)));
    }
  }
  return gridTable({ id: "hosts-table", "aria-labelledby": "hosts-title" },
    ["Host", "Last success", "Last result", "Agent", "Next window", "Size", "Snapshots",
      "Replicated", ""], [5, 6], tbody);
}
