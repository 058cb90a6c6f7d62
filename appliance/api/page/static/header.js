// The top bar's appliance summary (its serial, marked when degraded; the zone the page's
// times are shown in), from /overview. The
// answer is remembered: the restore dialog lists its hosts, the host page its status.

import { api } from "./api.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

/** Fetch /overview, remember and show it; returns the answer. */
export async function loadOverview() {
  const ov = await api("GET", "/overview");
  setOverview(ov);
  return ov;
}

/** The header after sign-in: a failure here only leaves the serial blank. */
export async function loadHeader() {
  try {
    await loadOverview();
  } catch (e) {
    if (!e.handled) console.warn("overview", e);
  }
}

export function setOverview(ov) {
  state.overview = ov;
  const a = ov.appliance || {};
  const serial = $("appliance-serial");
  serial.textContent = a.serial ? `Serial ${a.serial}` : "";
  serial.classList.toggle("serial-warn", Boolean(a.degraded && Object.keys(a.degraded).length));
  $("appliance-zone").textContent = a.timezone ? `Times in ${a.timezone}` : "";
}
