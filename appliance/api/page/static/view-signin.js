// Sign-in and sign-out: the form (with the server's lock-out counted down on its button), the
// session's start (header, navigation, the first view) and its end.

import { api } from "./api.js";
import { $, clear } from "./dom.js";
import { loadHeader } from "./header.js";
import { setStatus, showError } from "./page.js";
import { closeDialogs, route } from "./router.js";
import { state, stopPolling } from "./state.js";

let throttleTimer = null;

export function showLogin(message) {
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

export async function onLogin(ev) {
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

export function startSession(res, fromForm = false) {
  state.account = res.account;
  state.csrf = res.csrf;
  $("login-view").hidden = true;
  $("login-error").textContent = "";
  document.body.classList.remove("signed-out");
  $("mainnav").hidden = false;
  $("account-box").hidden = false;
  $("account-name").textContent = res.account;
  $("view").hidden = false;
  // The views show times in the appliance's zone, which /overview names: header first.
  loadHeader().then(() => route(!fromForm));
}

export async function onLogout() {
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
