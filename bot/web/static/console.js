// Live updates for the overview from the console's event stream (server-sent events). The
// pages work without this script; it only keeps them current.
(function () {
  "use strict";
  function text(id, value) {
    var el = document.getElementById(id);
    if (el) { el.textContent = value; }
  }
  function refreshLive() {
    var form = document.getElementById("kill-form");
    if (form && form.contains(document.activeElement)) { return; }  // never under the cursor
    fetch("/", { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live"), live = document.getElementById("live");
        if (fresh && live) { live.innerHTML = fresh.innerHTML; }
      });
  }
  function onState(ev) {
    var s = JSON.parse(ev.data);
    var banner = document.getElementById("state-banner");
    if (!banner) { return; }
    banner.className = "banner state-" + s.state;
    banner.dataset.state = s.state;
    text("state", s.state);
    text("state-reason", s.reason);
    refreshLive();
  }
  function verify() {
    var chain = document.getElementById("chain");
    fetch(chain.dataset.verify, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (j) { chain.textContent = j.summary; chain.className = j.ok ? "" : "error"; });
  }
  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("state-banner") && window.EventSource) {
      var es = new EventSource("/api/v1/events");
      es.addEventListener("state", onState);
    }
    var button = document.getElementById("verify");
    if (button) { button.addEventListener("click", verify); }
  });
})();
