// dfscan review page: the queue of a scan, decided with the keyboard (f r u e, j k, ?) or the mouse.
// Every path and piece of metadata is put in the page as text (textContent, text nodes), never as HTML:
// file names are chosen by whoever wrote the files.
"use strict";

(() => {
  const scan = document.body.dataset.scan;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const KEYS = { f: "fake", r: "real", u: "unsure", e: "escalate" };
  const state = { items: [], index: 0, cursor: null, params: "", busy: false };

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function say(text) { $("status").textContent = text; }

  function filterParams() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData($("filters"))) if (v !== "") params.set(k, v);
    return params;
  }

  async function load(reset) {
    if (reset) { state.items = []; state.index = 0; state.cursor = null; state.params = filterParams().toString(); }
    const params = new URLSearchParams(state.params);
    params.set("limit", "100");
    if (state.cursor) params.set("cursor", state.cursor);
    const response = await fetch(`/review/api/scans/${scan}/queue?${params}`, { credentials: "same-origin" });
    if (!response.ok) { say(`The queue did not load (${response.status}).`); return; }
    const page = await response.json();
    state.items.push(...page.items);
    state.cursor = page.next_cursor;
    $("more").hidden = !state.cursor;
    renderList();
    show(Math.min(state.index, Math.max(0, state.items.length - 1)));
    if (!state.items.length) say("Nothing to decide with these filters.");
  }

  function mark(item) { return item.decision ? `[${item.decision}] ` : ""; }

  function renderList() {
    const list = $("queue");
    list.replaceChildren(...state.items.map((item, i) => {
      const button = el("button", { type: "button", "data-index": i, class: "pick" });
      button.append(el("span", { class: "mark", text: mark(item) }), el("span", { class: "path", text: item.path }));
      button.addEventListener("click", () => show(i));
      return el("li", { "aria-current": i === state.index ? "true" : null }, button);
    }));
  }

  function score(p) { return p === null || p === undefined ? "—" : Number(p).toFixed(4); }

  function field(dl, name, value) {
    if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
    dl.append(el("dt", { text: name }), el("dd", { text: Array.isArray(value) ? value.join(", ") : value }));
  }

  function picture(url, alt, cls) {
    const img = el("img", { src: url, alt, class: cls, loading: "eager" });
    img.addEventListener("error", () => img.replaceWith(el("p", { class: "muted", text: `no preview: ${alt}` })));
    return img;
  }

  function show(i) {
    const section = $("item");
    if (!state.items.length) { section.replaceChildren(); delete section.dataset.path; return; }
    state.index = Math.max(0, Math.min(i, state.items.length - 1));
    const item = state.items[state.index];
    const q = `scan=${encodeURIComponent(scan)}&path=${encodeURIComponent(item.path)}`;
    const figure = el("figure", { class: `picture ${item.kind}` },
      picture(`/review/thumb?${q}`, `${item.kind} ${item.path}`, "thumb"));
    (item.explanations || []).forEach((e, n) => {
      if (e.overlay) figure.append(picture(`/review/overlay?${q}&n=${n}`, `heatmap of ${item.path}`, "overlay"));
    });
    const facts = el("dl", { class: "facts" });
    field(facts, "p_fake", score(item.p_fake));
    field(facts, "verdict", item.label || item.status);
    field(facts, "error", item.error);
    field(facts, "kind", item.kind);
    field(facts, "faces", item.faces);
    field(facts, "frames", item.frames);
    field(facts, "notes", item.notes);
    field(facts, "decision", item.decision ? `${item.decision} by ${item.reviewer} at ${item.decided_at}` : "undecided");
    field(facts, "declared synthetic", item.synthetic_declared ? "yes" : null);
    const p = item.provenance;
    if (p) {
      field(facts, "C2PA", [p.c2pa, p.c2pa_state, p.c2pa_codes].filter(Boolean).join(" "));
      field(facts, "signer", p.signer);
      field(facts, "generator", p.generator);
      field(facts, "source type", p.source_type);
      field(facts, "watermark", p.watermark);
    }
    field(facts, "bank matches", (item.matched || []).map((m) => `${m.bank} ${m.label || ""} ${m.ref || ""} (distance ${m.distance})`));
    field(facts, "copies", item.copies);
    field(facts, "content hash", item.content_hash);
    section.replaceChildren(
      el("h2", { class: "path", text: item.path }),
      el("p", { class: "position", text: `${state.index + 1} of ${state.items.length}${state.cursor ? "+" : ""}` }),
      figure, facts);
    section.dataset.path = item.path;
    section.dataset.index = String(state.index);
    for (const li of $("queue").children) li.removeAttribute("aria-current");
    const current = $("queue").children[state.index];
    if (current) current.setAttribute("aria-current", "true");
  }

  async function decide(decision) {
    const item = state.items[state.index];
    if (!item || state.busy) return;
    state.busy = true;
    try {
      const body = { path: item.path, decision, copies: $("copies").checked, note: $("note").value || null };
      const response = await fetch(`/review/api/scans/${scan}/reviews`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      if (!response.ok) { say(`Not saved (${response.status}): ${(await response.json()).detail}`); return; }
      const saved = await response.json();
      const decided = new Set(saved.decided);
      for (const other of state.items) {
        if (decided.has(other.path)) Object.assign(other, { decision, reviewer: saved.reviewer, decided_at: new Date().toISOString() });
      }
      $("note").value = "";
      const copies = saved.copies.length ? ` and ${saved.copies.length} copies` : "";
      say(`Saved: ${decision} for ${item.path}${copies}.`);
      renderList();
      if (state.index + 1 < state.items.length) show(state.index + 1);
      else if (state.cursor) { state.index += 1; await load(false); }
      else { show(state.index); say(`Saved: ${decision}. End of the queue.`); }
    } finally {
      state.busy = false;
    }
  }

  function help() {
    const dialog = $("help");
    if (dialog.open) dialog.close(); else dialog.showModal();
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName)) return;
    if (event.key === "?") { event.preventDefault(); help(); return; }
    if ($("help").open) return;
    if (KEYS[event.key]) { event.preventDefault(); decide(KEYS[event.key]); }
    else if (event.key === "j") { event.preventDefault(); show(state.index + 1); }
    else if (event.key === "k") { event.preventDefault(); show(state.index - 1); }
  });
  for (const button of document.querySelectorAll("button.decide")) {
    button.addEventListener("click", () => decide(button.dataset.decision));
  }
  $("next").addEventListener("click", () => show(state.index + 1));
  $("prev").addEventListener("click", () => show(state.index - 1));
  $("help-button").addEventListener("click", help);
  $("more").addEventListener("click", () => load(false));
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); load(true); });
  load(true);
})();
