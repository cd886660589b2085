/* Follow queued and running clustering jobs by polling their JSON until they finish. */
"use strict";
(() => {
  const active = (s) => s === "queued" || s === "running";
  function poll(row) {
    fetch(row.dataset.url, {credentials: "same-origin"}).then((r) => r.json()).then((job) => {
      row.dataset.status = job.status;
      row.querySelector(".status").textContent = job.status;
      row.querySelector("progress").value = job.progress || 0;
      row.querySelector(".done").textContent = job.done + (job.total ? "/" + job.total : "");
      row.querySelector(".msg").textContent = job.error || job.message || "";
      if (active(job.status)) setTimeout(() => poll(row), 1500);
      else if (job.status === "succeeded" && job.result && job.result.run_id) {
        const a = document.createElement("a");
        a.href = "/runs/" + job.result.run_id;
        a.textContent = " → run " + job.result.run_id;
        row.querySelector(".msg").appendChild(a);
      }
    }).catch(() => setTimeout(() => poll(row), 5000));
  }
  document.querySelectorAll("#jobs tr.job").forEach((row) => { if (active(row.dataset.status)) poll(row); });
})();
