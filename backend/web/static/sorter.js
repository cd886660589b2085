/* The review queue (decide on a row; it disappears once saved) and the image page's similar cases. */
"use strict";
(() => {
  const table = document.getElementById("review");
  if (table) {
    async function decide(row, labelId, accept) {
      row.querySelectorAll("button, select").forEach((el) => { el.disabled = true; });
      const res = await samx.postJSON("/api/images/" + row.dataset.imageId + "/label", {
        label_id: labelId, seen_label_id: Number(row.dataset.seenLabelId), accept_prediction: accept,
      });
      if (res.ok) {
        let text = res.data.message;
        if (res.data.retrain_job) text += " Enough labels changed: retraining queued (job " + res.data.retrain_job + ").";
        samx.show(text, "ok");
        row.remove();
        // A decided image leaves its queue: count it out here rather than make the radiologist reload.
        for (const el of [document.getElementById("queue-total"), document.querySelector("#queue-tabs a.active .count")]) {
          if (el) el.textContent = Math.max(0, Number(el.textContent) - 1);
        }
        if (!table.querySelector("tr.review-row")) {
          const tr = table.insertRow();
          tr.innerHTML = '<td colspan="4" id="queue-empty">Nothing left on this page — reload for more.</td>';
        }
      } else {
        row.classList.add("failed");
        samx.show(res.data.error || "failed", res.status === 409 ? "conflict" : "error");
        if (res.status !== 409) row.querySelectorAll("button, select").forEach((el) => { el.disabled = false; });
      }
    }
    table.addEventListener("click", (e) => {
      const btn = e.target.closest("button");
      const row = btn && btn.closest("tr.review-row");
      if (!row) return;
      if (btn.classList.contains("use-pred")) decide(row, Number(btn.dataset.labelId), true);
      else if (btn.classList.contains("keep")) decide(row, Number(btn.dataset.labelId), false);
      else if (btn.classList.contains("set-region")) {
        const value = row.querySelector(".region-select").value;
        if (!value) { samx.show("Choose a region (or Not MSK) first.", "error"); return; }
        decide(row, value === "discard" ? null : Number(value), false);
      }
    });
  }

  const card = document.getElementById("sorter-card");
  if (card) {
    const grid = document.getElementById("similar");
    const note = document.getElementById("similar-suggestion");
    fetch(card.dataset.similarUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then((r) => r.json().then((data) => ({ok: r.ok, data: data})))
      .then(({ok, data}) => {
        if (!ok) { note.textContent = data.error || "no similar cases"; return; }
        const s = data.suggestion;
        note.textContent = s.label ? "Suggestion: " + s.label + " (" + s.votes + " of " + s.k + " nearest)"
                                   : "No labelled images to compare with yet.";
        for (const n of data.neighbours) {
          const fig = document.createElement("figure");
          fig.className = "thumb";
          const a = document.createElement("a");
          a.href = n.url;
          const img = document.createElement("img");
          img.src = n.thumbnail;
          img.alt = "image " + n.image_id;
          a.appendChild(img);
          const cap = document.createElement("figcaption");
          cap.textContent = n.label + " · " + n.similarity.toFixed(2);
          fig.append(a, cap);
          grid.appendChild(fig);
        }
      })
      .catch((err) => { note.textContent = "Similar cases unavailable: " + err.message; });
  }
})();
