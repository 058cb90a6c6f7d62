// The API client: JSON in and out, the session's CSRF token on every change, one readable
// message for every failure (the server's own, or what went wrong on the way).

import { state } from "./state.js";

export const API = "/api/v1";

let onSessionEnded = () => {};

/** What to do when a call finds the session gone (401): the sign-in view registers itself
 * here, so that this module needs none of the views. */
export function whenSessionEnds(fn) {
  onSessionEnded = fn;
}

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body || {};
  }
}

export async function api(method, path, body) {
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
      onSessionEnded();
      err.handled = true;
    }
    throw err;
  }
  if (data === null || typeof data !== "object") {
    throw new ApiError(resp.status, "bad_response", "The appliance sent an unexpected answer.");
  }
  return data;
}
