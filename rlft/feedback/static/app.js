// The rating page. Plain JavaScript, no build step.
// Every piece of data (prompts, completions, rater names, messages) reaches the DOM through textContent,
// never innerHTML: model output is shown as text, whatever markup it contains.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    csrf: null,
    rater: localStorage.getItem("rlft.rater") || "",
    item: null,      // the item on screen
    choice: null,    // 1-5 or "a" | "b" | "tie"
    busy: false,     // a request is in flight: ignore further clicks and keys
  };

  async function api(path, body) {
    const opts = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-Rlft-Csrf"] = state.csrf;
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const err = new Error((data && data.error) || `${r.status} ${r.statusText}`);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function say(text, isError) {
    $("message").textContent = text || "";
    $("message").className = isError ? "error" : "";
  }

  function showOnly(id) {
    for (const s of ["login", "rate", "empty"]) $(s).hidden = s !== id;
  }

  function renderProgress(p) {
    if (!p) return;
    $("progress").textContent = `${p.rated} rated · ${p.pending} pending` + (p.leased ? ` (${p.leased} open now)` : "");
    const rows = $("rater-rows");
    rows.replaceChildren();
    for (const r of p.raters) {
      const tr = document.createElement("tr");
      if (r.name === state.rater) tr.className = "me";
      for (const v of [r.name, r.rated, r.skipped]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
  }

  function select(value) {
    state.choice = value;
    for (const b of document.querySelectorAll(".choices button[data-value]")) {
      const on = b.dataset.value === String(value);
      b.classList.toggle("selected", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  function show(item, previous) {
    state.item = item;
    if (!item) {
      select(null);
      showOnly("empty");  // init's timer asks again every few seconds
      return;
    }
    const pair = item.kind === "pair";
    // What the rater is asked, and the item number the messages ("Saved item 7.") refer to. The run id and
    // step are the trainer's bookkeeping, not something a rater can use (they stay in the API and export).
    $("meta").textContent = `${pair ? "Compare two completions of one prompt" : "Score one completion"} · item ${item.id}`;
    $("prompt").textContent = item.prompt;
    $("completion-a").textContent = item.a.completion;
    $("label-a").textContent = pair ? "A" : "Completion";
    $("panel-b").hidden = !pair;
    $("completion-b").textContent = pair ? item.b.completion : "";
    $("score-buttons").hidden = pair;
    $("pair-buttons").hidden = !pair;
    $("comment").value = previous ? previous.comment || "" : "";
    select(previous ? (pair ? previous.choice : previous.score) : null);
    showOnly("rate");
    $("comment").blur();
  }

  async function run(fn) {
    if (state.busy) return;
    state.busy = true;
    try {
      await fn();
    } catch (e) {
      say(e.message, true);
      if (e.status === 409 || e.status === 404) {  // someone else has it now: move on
        try { await next(true); } catch (e2) { /* the message above says enough */ }
      }
    } finally {
      state.busy = false;
    }
  }

  async function next(keepMessage) {
    const data = await api("/api/next", { rater: state.rater });
    renderProgress(data.progress);
    show(data.item);
    if (!keepMessage && data.item) say("");
  }

  async function submit() {
    const item = state.item;
    if (!item) return;
    if (state.choice === null) {
      say(item.kind === "pair" ? "Pick A, B or tie first." : "Pick a score from 1 to 5 first.", true);
      return;
    }
    const body = { rater: state.rater, item_id: item.id, comment: $("comment").value };
    if (item.kind === "pair") body.choice = state.choice; else body.score = state.choice;
    await api("/api/rate", body);
    say(`Saved item ${item.id}.`);
    await next(true);
  }

  async function skip() {
    if (!state.item) return;
    const id = state.item.id;
    await api("/api/skip", { rater: state.rater, item_id: id });
    say(`Skipped item ${id}.`);
    await next(true);
  }

  async function undo() {
    const data = await api("/api/undo", { rater: state.rater });
    renderProgress(data.progress);
    if (!data.undone) { say("Nothing to undo."); return; }
    const what = data.undone.kind === "skip" ? "skip" : "rating";
    if (data.item) {
      show(data.item, data.undone.kind === "skip" ? null : data.undone);
      say(`Took back your ${what} of item ${data.undone.item_id}.`);
    } else {
      say(`Took back your ${what} of item ${data.undone.item_id}; someone else has it now.`);
      await next(true);
    }
  }

  async function refreshProgress() {
    try { renderProgress(await api("/api/progress")); } catch (e) { /* next tick */ }
  }

  function start() {
    $("rater-name").textContent = state.rater;
    $("who").hidden = false;
    run(next);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    if (!$("login").hidden) return;  // typing a name
    const inComment = e.target === $("comment");
    if (inComment) {
      if (e.key === "Escape") $("comment").blur();
      if (e.key !== "Enter" || e.shiftKey) return;  // Shift+Enter: a new line
    }
    const pair = state.item && state.item.kind === "pair";
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (k === "Enter") {
      if ($("rate").hidden) return;
      run(submit);  // also when a button has focus: Enter always submits (preventDefault below)
    } else if (!$("rate").hidden && !pair && "12345".includes(k) && k.length === 1) {
      select(Number(k));
    } else if (!$("rate").hidden && pair && (k === "a" || k === "b" || k === "t")) {
      select(k === "t" ? "tie" : k);
    } else if (k === "s" && !$("rate").hidden) {
      run(skip);
    } else if (k === "u") {
      run(undo);
    } else {
      return;
    }
    e.preventDefault();
  }

  async function init() {
    for (const b of document.querySelectorAll(".choices button[data-value]")) {
      b.addEventListener("click", () => {
        const v = b.dataset.value;
        select(/^[1-5]$/.test(v) ? Number(v) : v);
      });
    }
    $("submit").addEventListener("click", () => run(submit));
    $("skip").addEventListener("click", () => run(skip));
    $("undo").addEventListener("click", () => run(undo));
    $("undo-empty").addEventListener("click", () => run(undo));
    $("change-rater").addEventListener("click", () => {
      $("rater-input").value = state.rater;
      $("who").hidden = true;
      showOnly("login");
      $("rater-input").focus();
    });
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("rater-input").value.trim();
      if (!name) return;
      state.rater = name;
      localStorage.setItem("rlft.rater", name);
      start();
    });
    document.addEventListener("keydown", onKey);

    try {
      const s = await api("/api/session");
      state.csrf = s.csrf;
      document.title = `rlft rate · ${s.db}`;
      $("comment").maxLength = s.max_comment;
    } catch (e) {
      $("progress").textContent = "";
      say(`Cannot reach the server: ${e.message}`, true);
      return;
    }
    setInterval(refreshProgress, 5000);
    setInterval(() => { if (!$("empty").hidden) run(next); }, 3000);  // wait for a trainer to write samples
    refreshProgress();
    if (state.rater) {
      start();
    } else {
      showOnly("login");
      $("rater-input").focus();
    }
  }

  init();
})();
