// Live pages: one EventSource per page on /dashboard/events; each event becomes an
// htmx trigger on <body> (pgwa:campaign, pgwa:inbox, pgwa:notification, pgwa:resync)
// that the page's live parts listen to and re-fetch their fragment on.
(function () {
  "use strict";
  function connect() {
    var url = document.body && document.body.dataset.live;
    if (!url || !window.EventSource) return;
    var source = new EventSource(url);
    // At most one trigger per kind every GAP_MS, and always one after the last event of a
    // burst, carrying the ids of every event it stands for (htmx's own throttle modifier
    // drops the trailing event, so a page could stop one update short of the truth).
    var GAP_MS = 400, last = {}, pending = {};
    function fire(kind) {
      var ids = pending[kind].ids;
      delete pending[kind];
      last[kind] = Date.now();
      if (window.htmx) window.htmx.trigger(document.body, "pgwa:" + kind, {ids: ids});
    }
    ["campaign", "inbox", "notification", "resync"].forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        var detail = {};
        try { detail = JSON.parse(e.data); } catch (err) { /* keep empty */ }
        var p = pending[kind];
        if (!p) p = pending[kind] = {ids: []};
        (detail.ids || []).forEach(function (id) { if (p.ids.indexOf(id) < 0) p.ids.push(id); });
        if (p.timer) return;
        var wait = Math.max(0, (last[kind] || 0) + GAP_MS - Date.now());
        p.timer = setTimeout(function () { fire(kind); }, wait);
      });
    });
    source.addEventListener("open", function () { document.body.dataset.liveState = "open"; });
    source.addEventListener("error", function () { document.body.dataset.liveState = "reconnecting"; });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect);
  else connect();
})();

// A form with data-confirm asks before it submits. The question is an attribute the page
// escapes like any text, never JavaScript built from data (a key's name, an e-mail).
document.addEventListener("submit", function (e) {
  var form = e.target;
  if (form && form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) e.preventDefault();
}, true);
