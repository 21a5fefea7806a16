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
