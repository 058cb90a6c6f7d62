// DOM helpers. Every piece of data from the appliance (file names above all: they are chosen
// by whoever owns the backed-up machine) reaches the DOM through textContent or attribute
// values only, never through innerHTML: h() has no way to write markup.

export const $ = (id) => document.getElementById(id);

/** Element builder: h("a", {href, class, data: {q}}, "text", child, [more]). Never HTML. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") throw new Error("no style attributes"); // CSP: use classes
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

/** A data table in its scrolling wrapper: `heads` are the column titles, `num` the indexes of
 * the right-aligned number columns, `opt` those a narrow screen leaves out (their cells carry
 * class "opt" too); `attrs` (id, aria-label...) go on the table. */
export function gridTable(attrs, heads, num, tbody, opt = []) {
  return h("div", { class: "table-wrap" }, h("table", { class: "grid", ...attrs },
    h("thead", {}, h("tr", {}, heads.map((t, i) =>
      h("th", { scope: "col", class: [num.includes(i) ? "num" : "", opt.includes(i) ? "opt" : ""].join(" ").trim() || null }, t)))),
    tbody));
}
