/* Shared by every page: JSON POSTs with the CSRF token, and the message bar. No dependencies. */
"use strict";
window.samx = (() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const token = meta ? meta.content : "";

  async function postJSON(url, body) {
    let res;
    try {
      res = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": token},
        body: JSON.stringify(body),
      });
    } catch (err) {
      return {ok: false, status: 0, data: {error: "The server cannot be reached: " + err.message}};
    }
    let data;
    try {
      data = await res.json();
    } catch (err) {
      data = {error: "The server answered " + res.status + " without an explanation."};
    }
    return {ok: res.ok, status: res.status, data: data};
  }

  function show(text, kind) {
    const el = document.getElementById("message");
    if (!el) return;
    el.textContent = text;
    el.className = "message " + (kind || "info");
    el.hidden = false;
  }

  /* A message to show after the reload that follows a successful decision. */
  function showAfterReload(text) {
    try { sessionStorage.setItem("samx-message", text); } catch (err) { /* private mode */ }
  }

  function typing(event) {
    const t = event.target;
    return !!t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  }

  try {
    const pending = sessionStorage.getItem("samx-message");
    if (pending) {
      sessionStorage.removeItem("samx-message");
      show(pending, "ok");
    }
  } catch (err) { /* private mode */ }

  return {postJSON: postJSON, show: show, showAfterReload: showAfterReload, typing: typing};
})();
