// dispatch-dashboard: the only script of our own. No inline scripts anywhere (CSP), no eval.
// When the page's own websocket drops (the dashboard restarted, the network went away), say so in the
// indicator; htmx's ws extension reconnects by itself and the server's first message is a full snapshot.
(function () {
  "use strict";
  function mark(text, status) {
    var el = document.getElementById("conn-status");
    if (!el) { return; }
    el.textContent = text;
    el.dataset.status = status;
    el.className = "conn conn-" + status;
  }
  document.addEventListener("htmx:wsClose", function () {
    mark("dashboard connection lost · reconnecting…", "disconnected");
  });
  document.addEventListener("htmx:wsError", function () {
    mark("dashboard connection lost · reconnecting…", "disconnected");
  });
})();

// Times: the server writes every date and time in UTC (<time data-epoch>), the same for every viewer (rows are
// rendered once for all). Here each viewer sees them in UTC or in local time (the button in the top bar, kept in
// localStorage), with the age of the ones marked data-age ("3 s ago") kept current. Swapped-in fragments are
// caught by a MutationObserver, whatever swapped them (a page load, htmx, the websocket).
(function () {
  "use strict";
  var KEY = "dispatch-dashboard.times";
  var local = false;
  try { local = window.localStorage.getItem(KEY) === "local"; } catch (e) { local = false; }

  function pad(n, width) { var s = String(n); while (s.length < width) { s = "0" + s; } return s; }
  function format(ms, precise) {
    var d = new Date(ms);
    var parts = local
      ? [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds(), d.getMilliseconds()]
      : [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(),
         d.getUTCMilliseconds()];
    var text = pad(parts[0], 4) + "-" + pad(parts[1], 2) + "-" + pad(parts[2], 2) + " " + pad(parts[3], 2) + ":" +
      pad(parts[4], 2) + ":" + pad(parts[5], 2) + (precise ? "." + pad(parts[6], 3) : "");
    return text + (local ? "" : " UTC");
  }
  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) { return s + " s ago"; }
    if (s < 3600) { return Math.floor(s / 60) + " min ago"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h ago"; }
    return Math.floor(s / 86400) + " d ago";
  }
  function show(el) {
    var ms = parseFloat(el.getAttribute("data-epoch")) * 1000;
    if (isNaN(ms)) { return; }
    var text = format(ms, el.getAttribute("data-precise") === "1");
    if (el.getAttribute("data-age") === "1") { text += " · " + ago(ms); }
    if (el.textContent !== text) { el.textContent = text; }
    el.title = format(ms, true) + (local ? " (local time)" : "") + " · " + ago(ms);
  }
  function showAll(root) {
    if (root.nodeType !== 1) { return; }
    if (root.matches("time[data-epoch]")) { show(root); }
    var found = root.querySelectorAll("time[data-epoch]");
    for (var i = 0; i < found.length; i++) { show(found[i]); }
  }
  function label(button) {
    button.textContent = local ? "Times: local" : "Times: UTC";
    button.setAttribute("aria-pressed", local ? "true" : "false");
  }
  document.addEventListener("DOMContentLoaded", function () {
    showAll(document.body);
    new MutationObserver(function (changes) {
      for (var i = 0; i < changes.length; i++) {
        for (var j = 0; j < changes[i].addedNodes.length; j++) { showAll(changes[i].addedNodes[j]); }
      }
    }).observe(document.body, { childList: true, subtree: true });
    window.setInterval(function () {
      var aged = document.querySelectorAll("time[data-age]");
      for (var i = 0; i < aged.length; i++) { show(aged[i]); }
    }, 5000);
    var button = document.getElementById("time-zone");
    if (button) {
      label(button);
      button.addEventListener("click", function () {
        local = !local;
        try { window.localStorage.setItem(KEY, local ? "local" : "utc"); } catch (e) { /* private mode */ }
        label(button);
        showAll(document.body);
      });
    }
  });
})();

// Theme: auto (the system's), dark or light, in turn; the choice is kept (theme.js applies it before paint).
(function () {
  "use strict";
  var KEY = "dispatch-dashboard.theme";
  var ORDER = ["auto", "dark", "light"];
  function current() { return document.documentElement.getAttribute("data-theme") || "auto"; }
  function label(button) {
    button.textContent = "Theme: " + current();
    button.setAttribute("aria-label", "Theme: " + current() + " (switch)");
  }
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme");
    if (!button) { return; }
    label(button);
    button.addEventListener("click", function () {
      var next = ORDER[(ORDER.indexOf(current()) + 1) % ORDER.length];
      if (next === "auto") { document.documentElement.removeAttribute("data-theme"); }
      else { document.documentElement.setAttribute("data-theme", next); }
      try { window.localStorage.setItem(KEY, next); } catch (e) { /* private mode */ }
      label(button);
    });
  });
})();
