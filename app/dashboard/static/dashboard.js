// Live refresh without a framework: a container with data-refresh="URL" is re-fetched every
// data-interval ms (only while the tab is visible) and its HTML replaced by the server's fragment.
(function () {
  "use strict";
  function poll(el) {
    var url = el.getAttribute("data-refresh");
    var every = parseInt(el.getAttribute("data-interval") || "15000", 10);
    var timer = setInterval(function () {
      if (document.visibilityState !== "visible") return;
      fetch(url + (url.indexOf("?") < 0 ? "?" : "&") + location.search.slice(1), {
        headers: { "X-Dashboard-Partial": "1" },
        credentials: "same-origin",
        redirect: "manual"
      }).then(function (response) {
        // A redirect means the session expired: stop polling and leave the page as it is.
        if (!response.ok) { clearInterval(timer); return null; }
        return response.text();
      }).then(function (html) {
        if (html !== null && html !== undefined) el.innerHTML = html;
      }).catch(function () { /* offline for a moment: try again next tick */ });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(poll);
  });
})();
