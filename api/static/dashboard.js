// Live pages: one EventSource per page on /dashboard/events; each event becomes an
// htmx trigger on <body> (pgwa:campaign, pgwa:inbox, pgwa:notification, pgwa:resync)
// that the page's live parts listen to and re-fetch their fragment on.
(function () {
  "use strict";
  function connect() {
    var url = document.body && document.body.dataset.live;
    if (!url || !window.EventSource) return;
    var source = new EventSource(url);
    ["campaign", "inbox", "notification", "resync"].forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        var detail = {};
        try { detail = JSON.parse(e.data); } catch (err) { /* keep empty */ }
        if (window.htmx) window.htmx.trigger(document.body, "pgwa:" + kind, detail);
      });
    });
    source.addEventListener("open", function () { document.body.dataset.liveState = "open"; });
    source.addEventListener("error", function () { document.body.dataset.liveState = "reconnecting"; });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect);
  else connect();
})();
