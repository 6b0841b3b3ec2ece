// Lazarus Pit console: the countdowns of pending approvals tick between two refreshes of the page.
(function () {
  function fmt(s) {
    if (s < 120) return Math.max(0, Math.round(s)) + "s";
    if (s < 7200) return Math.round(s / 60) + "m";
    return Math.round(s / 3600) + "h";
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      var left = parseFloat(el.dataset.deadline) - now;
      el.textContent = fmt(left) + " left before " + el.dataset.then;
    });
    document.querySelectorAll("img[data-refresh]").forEach(function (img) {
      var every = parseFloat(img.dataset.refresh) * 1000;
      var last = parseFloat(img.dataset.loaded || "0");
      if (Date.now() - last >= every) {
        img.dataset.loaded = String(Date.now());
        img.src = img.src.split("?")[0] + "?t=" + Date.now();
      }
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", tick);
})();
