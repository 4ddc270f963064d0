// The dashboard's only script besides htmx. The Content-Security-Policy runs no inline
// script, event handler or eval (api/dashboard/security.py), so the pages' behaviour is
// declared in data- attributes and wired here.
//
// Live pages: one EventSource per page on /dashboard/events; each event becomes an
// htmx trigger on <body> (pgwa:campaign, pgwa:inbox, pgwa:notification, pgwa:resync)
// that the page's live parts listen to and re-fetch their fragment on. An element with
// data-live-<kind>="<id>" also gets pgwa:<kind>-refresh when an event of that kind names
// its id (or any event of the kind, when the attribute is empty): htmx's own trigger
// filters would need eval. A live part swaps its content, never itself (no outerHTML): an
// event that arrives while its refresh is on the way queues one more request, and htmx
// drops the queued request of an element that a swap has taken out of the page.
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
      if (!window.htmx) return;
      window.htmx.trigger(document.body, "pgwa:" + kind, {ids: ids});
      var attr = "data-live-" + kind;
      Array.prototype.forEach.call(document.querySelectorAll("[" + attr + "]"), function (el) {
        var want = el.getAttribute(attr);
        if (!want || ids.some(function (id) { return String(id) === want; })) {
          window.htmx.trigger(el, "pgwa:" + kind + "-refresh", {ids: ids});
        }
      });
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
    // A page left for another closes its stream: kept open (the back-forward cache), each
    // would hold one of the browser's six connections to the server until the server
    // noticed, and the sixth page would wait for a free one.
    window.addEventListener("pagehide", function () { source.close(); }, {once: true});
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect);
  else connect();
  // Back to a page from the back-forward cache: a new stream, and one refresh of everything.
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted) return;
    connect();
    if (window.htmx) window.htmx.trigger(document.body, "pgwa:resync", {ids: []});
  });
})();

// A form with data-confirm asks before it submits. The question is an attribute the page
// escapes like any text, never JavaScript built from data (a key's name, an e-mail).
document.addEventListener("submit", function (e) {
  var form = e.target;
  if (form && form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) e.preventDefault();
}, true);

document.addEventListener("change", function (e) {
  var el = e.target;
  if (!el || !el.dataset) return;
  // A select with data-autosubmit submits its form when it changes (a number picker).
  if (el.dataset.autosubmit !== undefined && el.form) { el.form.submit(); return; }
  // A select with data-fill="/path/{id}/fill" swaps the fragment of its chosen value into
  // data-fill-target (a canned reply into the reply box).
  if (el.dataset.fill && el.value && window.htmx) {
    window.htmx.ajax("GET", el.dataset.fill.replace("{id}", encodeURIComponent(el.value)),
                     {target: el.dataset.fillTarget, swap: "outerHTML"});
    return;
  }
  // A CSV file input with data-csv-columns offers the file's header names in that
  // datalist (the columns a template parameter may take) and picks data-csv-choose.
  if (el.dataset.csvColumns && el.files && el.files[0]) {
    var choose = document.getElementById(el.dataset.csvChoose || "");
    if (choose) choose.checked = true;
    var list = document.getElementById(el.dataset.csvColumns);
    if (!list) return;
    el.files[0].slice(0, 65536).text().then(function (text) {
      var have = new Set(Array.from(list.options, function (o) { return o.value; }));
      text.split(/\r?\n/)[0].split(",").forEach(function (name) {
        var col = name.trim().replace(/^"|"$/g, "").toLowerCase();
        if (col && !have.has(col)) {
          var o = document.createElement("option");
          o.value = col;
          list.appendChild(o);
          have.add(col);
        }
      });
    });
  }
});
