// Applied before the page paints (loaded without defer): the theme the viewer picked, if any; else the system's.
(function () {
  "use strict";
  try {
    var theme = window.localStorage.getItem("dispatch-dashboard.theme");
    if (theme === "dark" || theme === "light") { document.documentElement.setAttribute("data-theme", theme); }
  } catch (e) { /* storage unavailable: follow the system */ }
})();
