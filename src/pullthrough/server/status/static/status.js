// Draws the status page's charts from /ui/api/history with uPlot. Everything else on the
// page is rendered by the server; this script only adds pictures, and builds no HTML from
// data (numbers go through uPlot's canvas, never innerHTML).
"use strict";

(function () {
  const charts = {};
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];

  function bytes(n) {
    if (n == null) return "";
    let v = n, i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + " " + units[i];
  }

  function width(el) { return Math.max(300, el.clientWidth - 16); }

  // The x axis always spans the whole range, so one bucket is not stretched over years.
  const spans = { hour: 3600, day: 86400, week: 604800 };
  let span = spans.hour;

  function draw(id, data, series, axes) {
    const el = document.getElementById(id);
    if (charts[id]) { charts[id].destroy(); }
    const now = Date.now() / 1000;
    charts[id] = new uPlot({
      width: width(el), height: 190, series: [{}].concat(series), axes: [{}].concat(axes),
      scales: { x: { time: true, range: () => [now - span, now] } },
      legend: { live: false },
    }, data, el);
  }

  function show(doc) {
    span = spans[doc.range] || spans.hour;
    const p = doc.points;
    const t = p.map(x => x.start);
    draw("chart-requests", [t, p.map(x => x.requests), p.map(x => x.hit_ratio == null ? null : x.hit_ratio * 100)], [
      { label: "requests", stroke: "#2563eb", fill: "rgba(37,99,235,.08)" },
      { label: "hit ratio %", stroke: "#15803d", scale: "%" },
    ], [{}, { scale: "%", side: 1, grid: { show: false } }]);
    draw("chart-bytes", [t, p.map(x => x.served), p.map(x => x.fetched)], [
      { label: "served", stroke: "#2563eb", fill: "rgba(37,99,235,.08)", value: (u, v) => bytes(v) },
      { label: "fetched", stroke: "#b45309", value: (u, v) => bytes(v) },
    ], [{ values: (u, vals) => vals.map(bytes), size: 70 }]);
    draw("chart-store", [t, p.map(x => x.store_bytes)], [
      { label: "store", stroke: "#7c3aed", fill: "rgba(124,58,237,.08)", value: (u, v) => bytes(v) },
    ], [{ values: (u, vals) => vals.map(bytes), size: 70 }]);
  }

  function load(range) {
    fetch("/ui/api/history?range=" + encodeURIComponent(range), { credentials: "same-origin" })
      .then(r => r.ok ? r.json() : Promise.reject(r.status))
      .then(show)
      .catch(err => console.warn("history unavailable:", err));
  }

  document.addEventListener("DOMContentLoaded", function () {
    for (const b of document.querySelectorAll("#charts button[data-range]")) {
      b.addEventListener("click", function () {
        for (const o of document.querySelectorAll("#charts button")) o.classList.remove("on");
        b.classList.add("on");
        load(b.dataset.range);
      });
    }
    load("hour");
  });
})();
