/* The cluster page: label picker, keyboard shortcuts, selection, and the decision calls.
 *
 * Every decision is a JSON POST carrying the cluster version this page was rendered with; the
 * server answers 409 with a message naming who changed the cluster when that version is stale.
 * After a decision the page reloads (its state comes from the server, never patched locally). */
"use strict";
(() => {
  const root = document.getElementById("cluster");
  if (!root) return;
  const clusterId = root.dataset.id;
  const version = Number(root.dataset.version);
  let busy = false;

  async function act(action, body) {
    if (busy) return;
    busy = true;
    samx.show("Saving…", "info");
    const payload = Object.assign({}, body || {}, {version: version});
    const res = await samx.postJSON("/api/clusters/" + clusterId + "/" + action, payload);
    if (res.ok) {
      samx.showAfterReload(res.data.message);
      window.location.reload();
      return;
    }
    busy = false;
    samx.show(res.data.error || ("The server answered " + res.status), res.status === 409 ? "conflict" : "error");
  }

  /* ---- label picker: type-ahead, numbers, arrows, Enter ---- */
  const filter = document.getElementById("label-filter");
  const list = document.getElementById("label-list");
  const items = list ? Array.from(list.querySelectorAll("li")) : [];
  let chosen = null;

  function visible() { return items.filter((li) => !li.hidden); }

  function choose(li) {
    chosen = li;
    items.forEach((x) => x.classList.toggle("active", x === li));
    if (li) li.scrollIntoView({block: "nearest"});
  }

  function number() {
    visible().forEach((li, i) => { li.dataset.n = i < 9 ? String(i + 1) : ""; });
  }

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    const ranked = items.map((li, i) => {
      const name = li.dataset.name.toLowerCase();
      const rank = !q ? 0 : name.startsWith(q) ? 0 : name.includes(q) ? 1 : 2;
      return {li: li, rank: rank, i: i};
    }).sort((a, b) => a.rank - b.rank || a.i - b.i);
    ranked.forEach((r) => { r.li.hidden = r.rank === 2; list.appendChild(r.li); });
    number();
    choose(q ? (visible()[0] || null) : null);
  }

  function nameWith(li) {
    if (!li) { samx.show("Choose a region first (type its name or press its number).", "error"); return; }
    act("name", {label_id: Number(li.dataset.id)});
  }

  if (filter) {
    number();
    filter.addEventListener("input", applyFilter);
    filter.addEventListener("keydown", (e) => {
      const vis = visible();
      const at = vis.indexOf(chosen);
      if (e.key === "ArrowDown") { choose(vis[Math.min(vis.length - 1, at + 1)] || null); e.preventDefault(); }
      else if (e.key === "ArrowUp") { choose(vis[Math.max(0, at - 1)] || null); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); nameWith(chosen); }
      else if (e.key === "Escape") { filter.value = ""; applyFilter(); filter.blur(); }
    });
    list.addEventListener("click", (e) => {
      const li = e.target.closest("li");
      if (li) { choose(li); nameWith(li); }
    });
  }

  /* ---- selection ---- */
  const thumbs = Array.from(document.querySelectorAll("#grid .thumb"));
  const count = document.getElementById("sel-count");
  let last = null;

  function selectedIds() {
    return thumbs.filter((t) => { const b = t.querySelector(".sel"); return b && b.checked; })
      .map((t) => Number(t.dataset.imageId));
  }

  function refresh() {
    thumbs.forEach((t) => { const b = t.querySelector(".sel"); t.classList.toggle("selected", !!b && b.checked); });
    if (count) count.textContent = String(selectedIds().length);
  }

  const overlay = document.getElementById("viewer") && thumbs.length ? new SamxViewer.Overlay(thumbs) : null;
  const grid = document.getElementById("grid");
  if (grid) {
    grid.addEventListener("click", (e) => {
      const fig = e.target.closest(".thumb");
      if (!fig) return;
      const idx = Number(fig.dataset.index);
      if (e.target.classList.contains("sel")) {
        if (e.shiftKey && last !== null) {
          const on = e.target.checked;
          for (let i = Math.min(last, idx); i <= Math.max(last, idx); i++) {
            const b = thumbs[i].querySelector(".sel");
            if (b) b.checked = on;
          }
        }
        last = idx;
        refresh();
      } else if (overlay) {
        overlay.open(idx);
      }
    });
  }

  function toggleAll() {
    const boxes = thumbs.map((t) => t.querySelector(".sel")).filter(Boolean);
    const on = boxes.some((b) => !b.checked);
    boxes.forEach((b) => { b.checked = on; });
    refresh();
  }

  /* ---- buttons ---- */
  const byId = (id) => document.getElementById(id);
  const discardBtn = byId("discard-btn"), undoBtn = byId("undo-btn");
  if (discardBtn) discardBtn.addEventListener("click", () => act("discard"));
  if (undoBtn) undoBtn.addEventListener("click", () => act("undo"));
  const moveBtn = byId("move-btn");
  if (moveBtn) moveBtn.addEventListener("click", () => {
    const ids = selectedIds();
    if (!ids.length) { samx.show("Select images first (the box in their corner, shift for a range, a for all).", "error"); return; }
    const raw = byId("move-target").value;
    act("move", {image_ids: ids, target: /^\d+$/.test(raw) ? Number(raw) : raw});
  });
  const splitBtn = byId("split-btn");
  if (splitBtn) splitBtn.addEventListener("click", () => act("split", {k: Number(byId("split-k").value)}));
  const mergeFilter = byId("merge-filter");
  if (mergeFilter) mergeFilter.addEventListener("input", () => {
    const q = mergeFilter.value.trim().toLowerCase();
    document.querySelectorAll(".merge-item").forEach((el) => {
      el.hidden = !!q && !el.dataset.text.toLowerCase().includes(q);
    });
  });
  const mergeBtn = byId("merge-btn");
  if (mergeBtn) mergeBtn.addEventListener("click", () => {
    const picks = Array.from(document.querySelectorAll(".merge-pick:checked"));
    if (!picks.length) { samx.show("Tick the clusters to merge into this one.", "error"); return; }
    const versions = {};
    picks.forEach((p) => { versions[p.value] = Number(p.dataset.version); });
    act("merge", {sources: picks.map((p) => Number(p.value)), source_versions: versions});
  });

  /* ---- keyboard ---- */
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || samx.typing(e)) return;
    const onControl = ["BUTTON", "A"].includes(e.target.tagName);
    if ((e.key === "/" || e.key === "n") && filter) { e.preventDefault(); filter.focus(); filter.select(); }
    else if (/^[1-9]$/.test(e.key) && filter) {
      const li = visible()[Number(e.key) - 1];
      if (li) { choose(li); samx.show("Enter names this cluster '" + li.dataset.name + "'.", "info"); }
    }
    else if (e.key === "Enter" && chosen && !onControl) { e.preventDefault(); nameWith(chosen); }
    else if (e.key === "d" && discardBtn) { e.preventDefault(); act("discard"); }
    else if (e.key === "u" && undoBtn) { e.preventDefault(); act("undo"); }
    else if (e.key === "a" && thumbs.length) { e.preventDefault(); toggleAll(); }
    else if (e.key === "ArrowLeft" && byId("prev-page")) { window.location = byId("prev-page").href; }
    else if (e.key === "ArrowRight" && byId("next-page")) { window.location = byId("next-page").href; }
  });
})();
