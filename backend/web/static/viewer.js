/* Full-resolution viewer with server-side windowing.
 *
 * The server maps a window (centre/width, in stored 16-bit units) of the full dynamic range to
 * 8 bits. Dragging left/right changes the width (contrast), up/down the centre (brightness);
 * double-click or "r" asks the server for an automatic window. While one image is loading,
 * further drags only remember the latest window: at most one request in flight. */
"use strict";
window.SamxViewer = (() => {
  function Windowed(img, label) {
    this.img = img;
    this.label = label;
    this.imageId = null;
    this.c = null;
    this.w = null;
    this.inflight = false;
    this.pending = false;
    this.url = null;
    this.size = Math.min(2048, Math.max(512, Math.round(Math.max(window.innerWidth, window.innerHeight) * (window.devicePixelRatio || 1))));
    const self = this;
    let drag = null;
    img.addEventListener("mousedown", (e) => {
      if (self.c === null) return;
      e.preventDefault();
      drag = {x: e.clientX, y: e.clientY, c: self.c, w: self.w};
    });
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      self.w = Math.max(1, Math.min(131072, drag.w * Math.exp(dx / 200)));
      self.c = Math.max(-32768, Math.min(98304, drag.c + dy * drag.w / 400));
      self.load();
    });
    window.addEventListener("mouseup", () => { drag = null; });
    img.addEventListener("dblclick", () => self.auto());
  }

  Windowed.prototype.show = function (imageId) {
    this.imageId = imageId;
    this.c = null;
    this.w = null;
    this.load();
  };

  Windowed.prototype.auto = function () {
    this.c = null;
    this.w = null;
    this.load();
  };

  Windowed.prototype.load = function () {
    if (this.imageId === null) return;
    if (this.inflight) { this.pending = true; return; }
    this.inflight = true;
    const q = this.c === null ? "auto=1" : "c=" + this.c.toFixed(1) + "&w=" + this.w.toFixed(1);
    const url = "/images/" + this.imageId + "/window?" + q + "&size=" + this.size;
    const self = this;
    const forId = this.imageId;
    fetch(url, {credentials: "same-origin"}).then((res) => {
      if (!res.ok) throw new Error("the server answered " + res.status);
      if (self.c === null && forId === self.imageId) {
        self.c = parseFloat(res.headers.get("X-Window-Center"));
        self.w = parseFloat(res.headers.get("X-Window-Width"));
      }
      return res.blob();
    }).then((blob) => {
      if (forId !== self.imageId) return;
      const old = self.url;
      self.url = URL.createObjectURL(blob);
      self.img.src = self.url;
      if (old) URL.revokeObjectURL(old);
      if (self.label) self.label.textContent = "centre " + Math.round(self.c) + ", width " + Math.round(self.w);
    }).catch((err) => {
      if (window.samx) samx.show("Could not load the image: " + err.message, "error");
    }).finally(() => {
      self.inflight = false;
      if (self.pending) { self.pending = false; self.load(); }
    });
  };

  /* Overlay over a grid of thumbnails (cluster page). */
  function Overlay(thumbs) {
    this.thumbs = thumbs;
    this.index = -1;
    this.el = document.getElementById("viewer");
    this.caption = document.getElementById("viewer-caption");
    this.link = document.getElementById("viewer-link");
    this.view = new Windowed(document.getElementById("viewer-img"), document.getElementById("viewer-window"));
    const self = this;
    this.el.addEventListener("click", (e) => { if (e.target === self.el) self.close(); });
    document.addEventListener("keydown", (e) => {
      if (!self.isOpen()) return;
      if (e.key === "Escape") { self.close(); e.preventDefault(); }
      else if (e.key === "ArrowRight") { self.open(Math.min(self.thumbs.length - 1, self.index + 1)); e.preventDefault(); }
      else if (e.key === "ArrowLeft") { self.open(Math.max(0, self.index - 1)); e.preventDefault(); }
      else if (e.key === "r") { self.view.auto(); e.preventDefault(); }
      e.stopImmediatePropagation();
    }, true);
  }
  Overlay.prototype.isOpen = function () { return !this.el.hidden; };
  Overlay.prototype.open = function (index) {
    this.index = index;
    const id = Number(this.thumbs[index].dataset.imageId);
    this.el.hidden = false;
    this.caption.textContent = "image " + id + " (" + (index + 1) + " of " + this.thumbs.length + " on this page)";
    this.link.href = "/images/" + id;
    this.view.show(id);
  };
  Overlay.prototype.close = function () { this.el.hidden = true; };

  const inline = document.getElementById("inline-viewer");
  if (inline) {
    const v = new Windowed(document.getElementById("viewer-img"), document.getElementById("viewer-window"));
    v.show(Number(inline.dataset.imageId));
    document.addEventListener("keydown", (e) => { if (e.key === "r" && !samx.typing(e)) v.auto(); });
  }
  return {Windowed: Windowed, Overlay: Overlay};
})();
