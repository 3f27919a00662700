// fedcare console: refresh a running run's figures in place (no framework, no CDN).
"use strict";
(function () {
  function every(seconds, fn) { return window.setInterval(fn, Math.max(1, seconds) * 1000); }

  var live = document.querySelector("[data-live]");
  if (live && live.dataset.finished !== "1") {
    var timer = every(Number(live.dataset.every || 3), function () {
      fetch(live.dataset.live, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
        .then(function (html) {
          live.innerHTML = html;
          var state = live.querySelector(".live-state");
          if (state && (state.dataset.status === "finished" || state.dataset.status === "refused")) {
            window.clearInterval(timer);
          }
        })
        .catch(function () { /* keep the last figures; try again on the next tick */ });
    });
  }

  var list = document.querySelector("[data-refresh]");
  if (list) {
    every(Number(list.dataset.every || 3), function () {
      fetch(list.dataset.refresh, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.querySelector("main"), here = document.querySelector("main");
          if (fresh && here) { here.innerHTML = fresh.innerHTML; }
        })
        .catch(function () {});
    });
  }
})();
