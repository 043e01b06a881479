// Live refresh of the Overview: re-fetch the server-rendered (escaped) status fragment every
// few seconds. No data is turned into HTML here; a lost session reloads to the login page.
"use strict";
(function () {
  var box = document.getElementById("live");
  if (!box) { return; }
  var url = box.getAttribute("data-refresh");
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) { box.innerHTML = html; } })
      .catch(function () { /* gateway restarting: try again next time */ });
  }
  window.setInterval(refresh, 5000);
})();
