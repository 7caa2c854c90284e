/* CoachForge console: the little script the pages need (no inline script anywhere).
 * - sends the CSRF token with every htmx request (from <meta name="csrf-token">)
 * - draws the charts (uPlot) from JSON data blocks and keeps live ones up to date
 * - keyboard voting in the arena (1 = left, 2 = right, 0 = tie)
 * - asks before dangerous buttons (data-confirm)
 */
(function () {
  "use strict";

  var PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                 "#475569", "#ea580c"];

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  function readBlock(id) {
    var el = document.getElementById(id);
    if (!el) { return null; }
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function widthOf(el) {
    return Math.max(280, Math.min(el.clientWidth || 800, 1200));
  }

  function heightFor(el) {
    return window.innerWidth < 640 ? 220 : 300;
  }

  function keepResized(plot, el) {
    var pending = null;
    window.addEventListener("resize", function () {
      if (pending) { clearTimeout(pending); }
      pending = setTimeout(function () { plot.setSize({width: widthOf(el), height: heightFor(el)}); }, 100);
    });
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || isNaN(v)) { return "-"; }
    return Number(v).toPrecision(digits || 4);
  }

  /* -- loss curves of a job: x = step, training and validation loss; polled until the job ends -- */
  function lossChart(el) {
    var initial = readBlock(el.getAttribute("data-data")) || {points: [], since: null, final: true};
    var bySteps = {};
    var since = initial.since;
    var empty = document.querySelector('[data-chart-empty="loss"]');

    var lastValid = null;
    /* A report repeats the latest validation loss until the next evaluation: a validation point is
       drawn only where the value is new (the step it was measured at). */
    function merge(points) {
      points.forEach(function (p) {
        var row = bySteps[p.step] || {step: p.step, train: null, valid: null};
        if (p.train_loss !== null && p.train_loss !== undefined) { row.train = p.train_loss; }
        if (p.valid_loss !== null && p.valid_loss !== undefined && p.valid_loss !== lastValid) {
          row.valid = p.valid_loss;
          lastValid = p.valid_loss;
        }
        bySteps[p.step] = row;
      });
    }

    function columns() {
      var steps = Object.keys(bySteps).map(Number).sort(function (a, b) { return a - b; });
      return [steps, steps.map(function (s) { return bySteps[s].train; }),
              steps.map(function (s) { return bySteps[s].valid; })];
    }

    merge(initial.points || []);
    var opts = {
      width: widthOf(el), height: heightFor(el),
      scales: {x: {time: false}},
      axes: [{label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]},
             {label: "loss"}],
      series: [
        {label: "step"},
        {label: "training loss", stroke: PALETTE[0], width: 2, spanGaps: true, points: {show: true},
         value: function (u, v) { return fmt(v); }},
        {label: "validation loss", stroke: PALETTE[1], width: 2, spanGaps: true, points: {show: true},
         value: function (u, v) { return fmt(v); }}
      ]
    };
    var plot = new uPlot(opts, columns(), el);
    el.setAttribute("data-points", String(Object.keys(bySteps).length));
    keepResized(plot, el);

    function redraw() {
      var cols = columns();
      plot.setData(cols);
      el.setAttribute("data-points", String(cols[0].length));
      if (empty) { empty.hidden = cols[0].length > 0; }
    }

    var src = el.getAttribute("data-src");
    var every = parseInt(el.getAttribute("data-poll") || "2000", 10);
    if (!src || initial.final) { return; }
    function poll() {
      var url = src + (since ? "?since=" + encodeURIComponent(since) : "");
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
        .then(function (body) {
          if (body.reset) { bySteps = {}; lastValid = null; }
          merge(body.points || []);
          since = body.since || since;
          redraw();
          if (!body.final) { setTimeout(poll, every); }
        })
        .catch(function () { setTimeout(poll, every * 2); });
    }
    setTimeout(poll, every);
  }

  function axisValues(u, ticks) {
    return ticks.map(function (v) {
      if (v === 0) { return "0"; }
      var a = Math.abs(v);
      if (a >= 1e6) { return (v / 1e6).toPrecision(3) + "M"; }
      if (a >= 1e3) { return (v / 1e3).toPrecision(3) + "k"; }
      return a >= 1 ? String(Math.round(v * 100) / 100) : Number(v.toPrecision(2)).toString();
    });
  }

  /* -- stacked bars per day: {x: [unix seconds], series: [{label, values}], unit} -- */
  function stackedChart(el) {
    var block = readBlock(el.getAttribute("data-data"));
    if (!block || !block.x || !block.x.length) { return; }
    var raw = block.series;
    var cumulative = [];
    var running = block.x.map(function () { return 0; });
    raw.forEach(function (s) {
      running = running.map(function (v, i) { return v + (s.values[i] || 0); });
      cumulative.push(running.slice());
    });
    var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({size: [0.6, 64]}) : null;
    var data = [block.x];
    var series = [{label: "day"}];
    for (var i = raw.length - 1; i >= 0; i--) {  /* tallest first, so each lower part is drawn over it */
      (function (index) {
        data.push(cumulative[index].map(function (v) { return v > 0 ? v : null; }));
        var color = PALETTE[index % PALETTE.length];
        series.push({label: raw[index].label, stroke: color, fill: color + "cc", width: 1, paths: bars,
                     points: {show: false},
                     value: function (u, v, si, idx) {
                       return idx === null ? "-" : fmt(raw[index].values[idx], 4) + (block.unit ? " " + block.unit : "");
                     }});
      })(i);
    }
    var plot = new uPlot({width: widthOf(el), height: heightFor(el), series: series,
                          scales: {x: {time: true},
                                   y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.05 : 1]; }}},
                          axes: [{}, {label: block.unit || "", size: 70, values: axisValues}]}, data, el);
    keepResized(plot, el);
  }

  /* -- lines over days: {x: [unix seconds], series: [{label, values}]} -- */
  function linesChart(el) {
    var block = readBlock(el.getAttribute("data-data"));
    if (!block || !block.x || !block.x.length) { return; }
    var data = [block.x];
    var series = [{label: "day"}];
    block.series.forEach(function (s, i) {
      data.push(s.values);
      series.push({label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true,
                   value: function (u, v) { return fmt(v, 3); }});
    });
    var plot = new uPlot({width: widthOf(el), height: heightFor(el), series: series, scales: {x: {time: true}}},
                         data, el);
    keepResized(plot, el);
  }

  var CHARTS = {loss: lossChart, stacked: stackedChart, lines: linesChart};

  function drawCharts(root) {
    if (typeof uPlot === "undefined") { return; }
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.getAttribute("data-drawn")) { return; }
      var draw = CHARTS[el.getAttribute("data-chart")];
      if (draw) { el.setAttribute("data-drawn", "1"); draw(el); }
    });
  }

  /* -- arena: 1 / 2 / 0 vote left / right / tie -- */
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
                   target.isContentEditable)) { return; }
    var button = document.querySelector('[data-vote-key="' + event.key + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });

  /* -- confirmation of dangerous actions -- */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form && form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  }, true);

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function (event) { drawCharts(event.target); });
})();
