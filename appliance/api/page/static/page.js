// Page furniture every view shares: the status line, a view's heading, its breadcrumbs.

import { ApiError } from "./api.js";
import { $, clear, h } from "./dom.js";

export function setStatus(text, kind = "info") {
  const el = $("status");
  clear(el);
  el.className = `statusbar status-${kind}`;
  if (text) {
    el.append(h("span", { class: "status-text", id: "status-text" }, text));
    el.append(h("button", {
      type: "button", class: "status-close", "aria-label": "Dismiss message",
      onclick: () => setStatus(""),
    }, "×"));
  }
}

export function showError(err) {
  if (err && err.handled) return;
  setStatus(err instanceof ApiError ? err.message : `Something went wrong: ${err}`, "error");
  if (!(err instanceof ApiError)) console.error(err);
}

export function heading(text, ...extra) {
  return h("div", { class: "page-head" },
    h("h1", { tabindex: "-1", id: "page-title" }, text), ...extra);
}

export function crumbsNav(items) {
  // items: [[label, href|null], ...]; the last one is the current page
  const ol = h("ol");
  items.forEach(([label, link], i) => {
    const last = i === items.length - 1;
    ol.append(h("li", {},
      link && !last ? h("a", { href: link }, label)
        : h("span", { "aria-current": last ? "page" : null }, label)));
  });
  return h("nav", { class: "crumbs", "aria-label": "Breadcrumb", id: "crumbs" }, ol);
}
