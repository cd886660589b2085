/* The run's UMAP map on a canvas: one dot per image, coloured by its current cluster; hover
 * names the cluster, click opens the image. Points come as integers 0..4095 from the server. */
"use strict";
(() => {
  const canvas = document.getElementById("umap");
  if (!canvas) return;
  const tip = document.getElementById("umap-tip");
  const ctx = canvas.getContext("2d");
  const pad = 8;
  let data = null, px = null, py = null;

  function colour(pos) {
    return pos < 0 ? "#666" : "hsl(" + ((pos * 137.508) % 360).toFixed(1) + ", 70%, 55%)";
  }

  function draw() {
    const w = canvas.width, h = canvas.height, n = data.n;
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, w, h);
    px = new Float32Array(n);
    py = new Float32Array(n);
    const groups = new Map();
    for (let i = 0; i < n; i++) {
      px[i] = pad + data.x[i] / 4095 * (w - 2 * pad);
      py[i] = h - pad - data.y[i] / 4095 * (h - 2 * pad);
      const c = data.c[i];
      if (!groups.has(c)) groups.set(c, []);
      groups.get(c).push(i);
    }
    const r = n > 20000 ? 1 : n > 2000 ? 2 : 4;
    groups.forEach((idx, c) => {
      ctx.fillStyle = colour(c);
      for (const i of idx) ctx.fillRect(px[i] - r / 2, py[i] - r / 2, r, r);
    });
  }

  function nearest(e) {
    if (!data) return -1;
    const rect = canvas.getBoundingClientRect();
    const x = (e.clientX - rect.left) * canvas.width / rect.width;
    const y = (e.clientY - rect.top) * canvas.height / rect.height;
    let best = -1, bestD = 64;  // within 8 canvas pixels
    for (let i = 0; i < data.n; i++) {
      const d = (px[i] - x) ** 2 + (py[i] - y) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }

  fetch(canvas.dataset.src, {credentials: "same-origin"})
    .then((r) => { if (!r.ok) throw new Error("no map for this run (" + r.status + ")"); return r.json(); })
    .then((d) => { data = d; draw(); canvas.dataset.points = String(d.n); })
    .catch((err) => {
      ctx.fillStyle = "#999";
      ctx.fillText(err.message, 12, 24);
    });

  canvas.addEventListener("click", (e) => {
    const i = nearest(e);
    if (i >= 0) window.location = canvas.dataset.imageUrl.replace(/\/0$/, "/" + data.ids[i]);
  });
  let pendingMove = null;
  canvas.addEventListener("mousemove", (e) => {
    if (pendingMove) return;
    pendingMove = requestAnimationFrame(() => {
      pendingMove = null;
      const i = nearest(e);
      if (i < 0) { tip.hidden = true; return; }
      const c = data.clusters[data.c[i]];
      tip.textContent = c ? "#" + c[1] + " " + (c[3] || c[2]) + " · image " + data.ids[i] : "image " + data.ids[i];
      tip.style.left = (e.pageX + 12) + "px";
      tip.style.top = (e.pageY + 12) + "px";
      tip.hidden = false;
    });
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
})();
