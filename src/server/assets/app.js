"use strict";
(function () {
  const COLORS = ["#0f766e", "#2563eb", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#65a30d", "#db2777", "#475569", "#ca8a04"];
  const MAX_ROWS = 200;
  const MAX_WINDOWS = 30;
  const $ = (id) => document.getElementById(id);

  const state = {
    streams: [],
    queries: [],
    history: { streams: {}, queries: {} },
    selected: null,
    selectedStream: null,
    source: null,
    cursor: "",
    rows: [],
    windows: new Map(),
    columns: [],
    chartColumn: null,
    renderPending: false,
    online: null,
  };

  function token() {
    try { return localStorage.getItem("runnel-token") || ""; } catch (e) { return ""; }
  }

  async function api(path, opts) {
    const o = Object.assign({ headers: {} }, opts || {});
    const t = token();
    if (t) o.headers.Authorization = "Bearer " + t;
    const r = await fetch(path, o);
    let body = null;
    const text = await r.text();
    if (text) {
      try { body = JSON.parse(text); } catch (e) { body = { raw: text }; }
    }
    if (r.status === 401) $("token-btn").hidden = false;
    return { status: r.status, ok: r.ok, body: body };
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        if (k === "text") e.textContent = attrs[k];
        else if (k === "class") e.className = attrs[k];
        else e.setAttribute(k, attrs[k]);
      }
    }
    for (const c of children || []) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const k of Object.keys(attrs || {})) e.setAttribute(k, attrs[k]);
    return e;
  }

  function fmtNum(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (Number.isInteger(v)) return String(v);
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2);
    return v.toPrecision(2);
  }

  function cell(v) {
    if (v === null || v === undefined) return "NULL";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Math.round(v * 1e4) / 1e4);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function parseTs(s) {
    if (typeof s === "number") return s;
    if (typeof s !== "string") return NaN;
    return Date.parse(s.replace(" ", "T") + (/[zZ]|[+-]\d\d:?\d\d$/.test(s) ? "" : "Z"));
  }

  function clock(ms, withSeconds) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    return p(d.getUTCHours()) + ":" + p(d.getUTCMinutes()) + (withSeconds ? ":" + p(d.getUTCSeconds()) : "");
  }

  function isNumericType(t) {
    return /^(U?Int|Float|Decimal)/.test(t || "");
  }

  // A line chart: series = [{name, points: [[x, y], ...]}], x in epoch ms.
  function lineChart(container, series, emptyText) {
    container.textContent = "";
    const drawn = series.filter((s) => s.points.length > 0);
    if (drawn.length === 0) {
      container.appendChild(el("div", { class: "placeholder", text: emptyText }));
      return;
    }
    const legend = el("div", { class: "legend" });
    drawn.forEach((s, i) => {
      const item = el("span", { text: s.name, title: s.name });
      item.style.setProperty("--c", COLORS[i % COLORS.length]);
      legend.appendChild(item);
    });
    const plot = el("div");
    plot.style.flex = "1 1 auto";
    plot.style.minHeight = "0";
    container.style.display = "flex";
    container.style.flexDirection = "column";
    container.appendChild(plot);
    container.appendChild(legend);
    const W = Math.max(plot.clientWidth, 200);
    const H = Math.max(plot.clientHeight, 80);
    const m = { l: 48, r: 12, t: 8, b: 22 };
    let x0 = Infinity, x1 = -Infinity, y1 = 0;
    for (const s of drawn) {
      for (const [x, y] of s.points) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y !== null && y > y1) y1 = y;
      }
    }
    if (x1 === x0) { x0 -= 1000; x1 += 1000; }
    if (y1 <= 0) y1 = 1;
    const mag = Math.pow(10, Math.floor(Math.log10(y1)));
    const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((k) => y1 / k <= 4) || mag * 10;
    const yMax = Math.ceil(y1 / step) * step;
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - (y / yMax) * (H - m.t - m.b);
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img" });
    const grid = svg("g", { class: "grid" });
    const axis = svg("g", { class: "axis" });
    for (let v = 0; v <= yMax + step / 2; v += step) {
      grid.appendChild(svg("line", { x1: m.l, x2: W - m.r, y1: sy(v), y2: sy(v) }));
      const t = svg("text", { x: m.l - 6, y: sy(v) + 4, "text-anchor": "end" });
      t.textContent = fmtNum(v);
      axis.appendChild(t);
    }
    const span = x1 - x0;
    const ticks = Math.max(2, Math.min(6, Math.floor((W - m.l) / 90)));
    for (let i = 0; i <= ticks; i++) {
      const x = x0 + (span * i) / ticks;
      const t = svg("text", { x: sx(x), y: H - 5, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" });
      t.textContent = clock(x, span < 30 * 60 * 1000);
      axis.appendChild(t);
    }
    root.appendChild(grid);
    root.appendChild(axis);
    drawn.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = s.points.filter((p) => p[1] !== null);
      if (pts.length === 1) {
        root.appendChild(svg("circle", { cx: sx(pts[0][0]), cy: sy(pts[0][1]), r: 3, fill: color }));
      } else if (pts.length > 1) {
        const line = svg("polyline", {
          points: pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
          fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round",
        });
        const title = svg("title");
        const peak = Math.max.apply(null, pts.map((p) => p[1]));
        title.textContent = s.name + ": latest " + fmtNum(pts[pts.length - 1][1]) + ", peak " + fmtNum(peak);
        line.appendChild(title);
        root.appendChild(line);
      }
    });
    plot.appendChild(root);
  }

  function renderLists() {
    const rateOf = (series) => {
      const pts = series || [];
      return pts.length ? pts[pts.length - 1].rate : null;
    };
    const sl = $("streams");
    sl.textContent = "";
    if (state.streams.length === 0) sl.appendChild(el("li", { class: "empty", text: "No streams yet" }));
    for (const s of state.streams) {
      const li = el("li", { "data-stream": s.name }, [
        el("span", { class: "name", text: s.name }),
        el("span", { class: "rate", text: fmtNum(rateOf(state.history.streams[s.name])) + " rec/s" }),
        el("span", { class: "meta", text: "topic " + s.topic + " · " + fmtNum(s.records_in) + " records · " + fmtNum(s.bad_records) + " bad" }),
      ]);
      if (state.selectedStream === s.name) li.classList.add("sel");
      li.addEventListener("click", () => selectStream(s.name));
      sl.appendChild(li);
    }
    const ql = $("queries");
    ql.textContent = "";
    if (state.queries.length === 0) ql.appendChild(el("li", { class: "empty", text: "No queries yet" }));
    for (const q of state.queries) {
      const li = el("li", { "data-query": q.name }, [
        el("span", { class: "name", text: q.name }),
        el("span", { class: "pill " + q.status, text: q.status.replace(/_/g, " ") }),
        el("span", { class: "meta", text: q.stream + " · " + q.window + " · " + fmtNum(rateOf(state.history.queries[q.name])) + " rec/s" }),
      ]);
      if (state.selected === q.name) li.classList.add("sel");
      li.addEventListener("click", () => selectQuery(q.name));
      ql.appendChild(li);
    }
  }

  function renderRateCharts() {
    const span = state.history.rate_span_ms;
    if (span) $("rate-note").textContent = "records/s over " + span / 1000 + " s, per stream";
    const hs = state.history.streams || {};
    const hq = state.history.queries || {};
    // Until the next sample, the history may still name a query just dropped.
    const streams = state.streams.map((s) => s.name).filter((n) => hs[n]);
    const queries = state.queries.map((q) => q.name).filter((n) => hq[n]);
    lineChart($("rate-chart"), streams.map((n) => ({ name: n, points: hs[n].map((p) => [p.t, p.rate]) })), "Collecting samples…");
    lineChart($("proc-chart"), queries.map((n) => ({ name: n, points: hq[n].map((p) => [p.t, p.batch_ms]) })), "Collecting samples…");
  }

  function renderQueryPanel() {
    const q = state.queries.find((x) => x.name === state.selected);
    if (!q) return;
    $("q-title").textContent = q.name;
    const pill = $("q-status");
    pill.hidden = false;
    pill.className = "pill " + q.status;
    pill.textContent = q.status.replace(/_/g, " ");
    $("q-sql").textContent = q.sql;
    const c = q.counters || {};
    const hist = state.history.queries[q.name] || [];
    const last = hist.length ? hist[hist.length - 1] : {};
    const stats = [
      ["Records in", fmtNum(c.records_in)],
      ["Rate", fmtNum(last.rate) + " /s"],
      ["Late", fmtNum(c.late_records)],
      ["Bad", fmtNum(c.bad_records)],
      ["Windows closed", fmtNum(c.windows_closed)],
      ["Rows emitted", fmtNum(c.rows_emitted)],
      ["Lag", last.lag === null || last.lag === undefined ? "–" : fmtNum(last.lag)],
      ["Watermark", q.watermark ? q.watermark.slice(11, 19) : "–"],
      ["Last window end", q.last_window_end ? q.last_window_end.slice(11, 19) : "–"],
    ];
    const dl = $("q-stats");
    dl.textContent = "";
    for (const [k, v] of stats) dl.appendChild(el("div", null, [el("dt", { text: k }), el("dd", { text: v })]));
    if (q.error) dl.appendChild(el("div", { class: "error-box", text: q.error }));
    $("q-reset").hidden = false;
    $("q-stop").hidden = false;
    const points = (key) => [{ name: q.name, points: hist.filter((p) => p[key] !== null && p[key] !== undefined).map((p) => [p.t, p[key]]) }];
    lineChart($("lag-chart"), points("event_lag_s"), "No watermark yet");
    lineChart($("late-chart"), points("late"), "Collecting samples…");
    if (window.runnelPanels) window.runnelPanels.show(q, points("commit_ms"));
  }

  function clearQueryPanel() {
    $("q-title").textContent = "Select a query";
    $("q-status").hidden = true;
    $("q-sql").textContent = "";
    $("q-stats").textContent = "";
    $("q-reset").hidden = true;
    $("q-stop").hidden = true;
    lineChart($("lag-chart"), [], "Select a query");
    lineChart($("late-chart"), [], "Select a query");
    if (window.runnelPanels) window.runnelPanels.clear();
  }

  // Stop drops the query (DELETE /queries/{id}); Reset restarts it from the
  // earliest offsets without its saved state (POST /queries/{id}/reset).
  async function queryAction(kind) {
    const name = state.selected;
    if (!name) return;
    const ask = kind === "stop"
      ? "Stop query " + name + "? It is dropped with its results."
      : "Reset query " + name + "? It restarts from the earliest offsets without its saved state.";
    if (!window.confirm(ask)) return;
    const path = "/queries/" + encodeURIComponent(name) + (kind === "stop" ? "" : "/reset?from=earliest");
    const r = await api(path, { method: kind === "stop" ? "DELETE" : "POST" });
    if (r.ok) {
      if (kind === "reset") selectQuery(name);
      await refresh();
    }
    const out = $("q-action-out");
    out.textContent = "";
    out.appendChild(r.ok
      ? el("div", { class: "ok", text: "Query " + name + (kind === "stop" ? " stopped." : " reset.") })
      : errorNode(r.body, r.status));
  }

  function groupColumns() {
    return state.columns.filter((c) => c.name !== "window_start" && c.name !== "window_end" && c.name !== "final" && !isNumericType(c.type));
  }

  function renderResults() {
    state.renderPending = false;
    const table = $("results");
    const head = table.tHead;
    const body = table.tBodies[0];
    head.textContent = "";
    body.textContent = "";
    const cols = state.columns.map((c) => c.name);
    head.appendChild(el("tr", null, cols.map((c) => el("th", { text: c }))));
    if (state.rows.length === 0) {
      body.appendChild(el("tr", null, [el("td", { class: "empty", colspan: String(Math.max(cols.length, 1)), text: "Waiting for the first window to close…" })]));
    }
    const now = Date.now();
    for (const r of state.rows) {
      const tr = el("tr", null, cols.map((c) => el("td", { class: typeof r.row[c] === "number" ? "num" : "", text: cell(r.row[c]) })));
      // Early rows (EMIT EVERY): an open window's rows are provisional.
      const classes = [];
      if (now - r.at < 2000) classes.push("fresh");
      if (r.row.final === false) classes.push("provisional");
      tr.className = classes.join(" ");
      body.appendChild(tr);
    }
    $("rows-note").textContent = state.rows.length ? "(latest " + state.rows.length + ", newest first)" : "";
    renderGroupChart();
  }

  function renderGroupChart() {
    const colName = state.chartColumn;
    const box = $("group-chart");
    if (!colName) {
      lineChart(box, [], state.selected ? "This query has no numeric column" : "Select a query");
      return;
    }
    const keys = groupColumns().map((c) => c.name);
    const starts = Array.from(state.windows.keys()).sort((a, b) => a - b).slice(-MAX_WINDOWS);
    const groups = new Map();
    for (const w of starts) {
      for (const [g, row] of state.windows.get(w)) {
        const v = row[colName];
        if (typeof v !== "number") continue;
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push([w, v]);
      }
    }
    const ranked = Array.from(groups.entries())
      .map(([g, pts]) => ({ name: g || colName, points: pts, score: pts[pts.length - 1][1] }))
      .sort((a, b) => b.score - a.score)
      .slice(0, 8);
    const title = keys.length ? " (top " + ranked.length + " of " + groups.size + " groups)" : "";
    lineChart(box, ranked, "No closed windows yet");
    box.setAttribute("aria-label", colName + " by window" + title);
  }

  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    setTimeout(renderResults, 250);
  }

  function onRow(ev) {
    let row;
    try { row = JSON.parse(ev.data); } catch (e) { return; }
    if (ev.lastEventId) state.cursor = ev.lastEventId;
    addRow(row, Date.now());
    scheduleRender();
  }

  // `at` is when the row arrived (0 for rows loaded on open: not "fresh").
  function addRow(row, at) {
    // A window's new rows replace its earlier ones (an open window filling
    // in, then its final rows): show only the latest row of each group.
    if ("final" in row) {
      const group = (r) => groupColumns().map((c) => cell(r[c.name])).join("|");
      const g = group(row);
      const start = parseTs(row.window_start), end = parseTs(row.window_end);
      const q = state.queries.find((x) => x.name === state.selected);
      const sessions = !!(q && /^SESSION/i.test(q.window || ""));
      state.rows = state.rows.filter((r) => {
        if (group(r.row) !== g) return true;
        if (r.row.window_start === row.window_start) return false;
        // A session's span moves while it is open: its provisional rows
        // starting inside this row's span are the same session, earlier.
        const s = parseTs(r.row.window_start);
        return !(sessions && r.row.final === false && s >= start && s < end);
      });
    }
    state.rows.unshift({ row: row, at: at });
    if (state.rows.length > MAX_ROWS) state.rows.length = MAX_ROWS;
    // A cumulative query's rows have no window_start: chart them by the
    // time they were computed as of.
    const w = parseTs(row.window_start === null || row.window_start === undefined ? row.window_end : row.window_start);
    if (!Number.isNaN(w)) {
      if (!state.windows.has(w)) state.windows.set(w, new Map());
      const g = groupColumns().map((c) => cell(row[c.name])).join(" · ");
      state.windows.get(w).set(g, row);
      if (state.windows.size > MAX_WINDOWS * 2) {
        const oldest = Array.from(state.windows.keys()).sort((a, b) => a - b).slice(0, state.windows.size - MAX_WINDOWS);
        for (const k of oldest) state.windows.delete(k);
      }
    }
  }

  function closeSource() {
    if (state.source) {
      state.source.close();
      state.source = null;
    }
    $("live").hidden = true;
  }

  // The newest closed windows first, then every row written after them.
  async function openResults(name) {
    const r = await api("/dashboard/latest/" + encodeURIComponent(name));
    if (state.selected !== name) return;
    state.cursor = "";
    if (r.ok && r.body) {
      for (const row of r.body.rows || []) addRow(row, 0);
      state.cursor = r.body.cursor || "";
      renderResults();
    }
    follow(name);
  }

  function follow(name) {
    // A query selected twice in quick succession must not keep two streams.
    if (state.source) state.source.close();
    const after = state.cursor ? "?after=" + encodeURIComponent(state.cursor) : "";
    const src = new EventSource("/queries/" + encodeURIComponent(name) + "/stream" + after);
    src.addEventListener("row", onRow);
    src.addEventListener("open", () => { $("live").hidden = false; });
    src.addEventListener("dropped", () => closeSource());
    src.onerror = () => { $("live").hidden = true; };
    state.source = src;
  }

  function selectQuery(name) {
    const q = state.queries.find((x) => x.name === name);
    if (!q) return;
    closeSource();
    if (state.selected !== name) $("q-action-out").textContent = "";
    state.selected = name;
    state.rows = [];
    state.windows = new Map();
    state.columns = q.columns || [];
    const numeric = state.columns.filter((c) => c.name !== "window_start" && c.name !== "window_end" && isNumericType(c.type));
    const sel = $("col-select");
    sel.textContent = "";
    for (const c of numeric) sel.appendChild(el("option", { value: c.name, text: c.name }));
    sel.disabled = numeric.length === 0;
    state.chartColumn = numeric.length ? numeric[numeric.length - 1].name : null;
    if (state.chartColumn) sel.value = state.chartColumn;
    try { history.replaceState(null, "", "#" + encodeURIComponent(name)); } catch (e) { /* ignore */ }
    renderQueryPanel();
    renderResults();
    openResults(name);
    if (!state.selectedStream || state.selectedStream !== q.stream) selectStream(q.stream);
    renderLists();
  }

  async function loadErrors() {
    const name = state.selectedStream;
    if (!name) return;
    const r = await api("/streams/" + encodeURIComponent(name) + "/errors");
    if (name !== state.selectedStream) return;
    const body = $("errors").tBodies[0];
    body.textContent = "";
    const reasons = $("err-reasons");
    reasons.textContent = "";
    if (!r.ok || !r.body) {
      body.appendChild(el("tr", null, [el("td", { class: "empty", colspan: "6", text: "No error sample for this stream" })]));
      return;
    }
    for (const [k, v] of Object.entries(r.body.by_reason || {})) reasons.appendChild(el("span", { class: "pill", text: k + ": " + fmtNum(v) }));
    const samples = (r.body.samples || []).slice().reverse();
    if (samples.length === 0) body.appendChild(el("tr", null, [el("td", { class: "empty", colspan: "6", text: "No bad records" })]));
    for (const s of samples) {
      body.appendChild(el("tr", null, [
        el("td", { text: (s.seen_at || "").slice(11, 19) }),
        el("td", { class: "num", text: String(s.partition) }),
        el("td", { class: "num", text: String(s.offset) }),
        el("td", { text: s.reason }),
        el("td", { class: "wrap", text: s.detail }),
        el("td", { class: "wrap mono", text: s.payload }),
      ]));
    }
  }

  function selectStream(name) {
    state.selectedStream = name;
    $("err-stream").textContent = "· " + name;
    renderLists();
    loadErrors();
  }

  async function refresh() {
    try {
      const [s, q, h] = await Promise.all([api("/streams"), api("/queries"), api("/dashboard/history")]);
      if (s.ok) state.streams = s.body.streams || [];
      if (q.ok) state.queries = q.body.queries || [];
      if (h.ok) state.history = h.body || state.history;
      setOnline(s.ok && q.ok);
      if (state.selected && !state.queries.some((x) => x.name === state.selected)) {
        closeSource();
        state.selected = null;
        clearQueryPanel();
      }
      if (!state.selected && state.queries.length) {
        const wanted = decodeURIComponent(location.hash.slice(1));
        const pick = state.queries.find((x) => x.name === wanted) || state.queries[0];
        selectQuery(pick.name);
      }
      if (!state.selectedStream && state.streams.length) selectStream(state.streams[0].name);
      renderLists();
      renderRateCharts();
      renderQueryPanel();
    } catch (e) {
      setOnline(false);
    }
  }

  function setOnline(ok) {
    if (state.online === ok) return;
    state.online = ok;
    const c = $("conn");
    c.className = "conn " + (ok ? "ok" : "down");
    c.textContent = ok ? "connected" : "server unreachable";
  }

  function showSqlOutput(nodes) {
    const out = $("sql-out");
    out.textContent = "";
    for (const n of nodes) out.appendChild(n);
  }

  function errorNode(body, status) {
    const e = body && body.error;
    if (!e) return el("div", { class: "error-box", text: "HTTP " + status });
    const where = e.line ? " (line " + e.line + ", column " + e.column + ")" : "";
    return el("div", { class: "error-box", text: e.message + where });
  }

  function rowsTable(result) {
    const cols = (result.columns || []).map((c) => c.name);
    const table = el("table", null, [
      el("thead", null, [el("tr", null, cols.map((c) => el("th", { text: c })))]),
      el("tbody", null, (result.rows || []).slice(0, 500).map((r) => el("tr", null, r.map((v) => el("td", { class: typeof v === "number" ? "num" : "", text: cell(v) }))))),
    ]);
    return el("div", { class: "table-wrap" }, [table]);
  }

  async function register() {
    const sql = $("sql").value.trim();
    if (!sql) return;
    const r = await api("/queries", { method: "POST", headers: { "Content-Type": "text/plain" }, body: sql });
    if (r.status === 201) {
      showSqlOutput([el("div", { class: "ok", text: "Query " + r.body.name + " registered." })]);
      await refresh();
      selectQuery(r.body.name);
    } else {
      showSqlOutput([errorNode(r.body, r.status)]);
    }
  }

  async function run() {
    const sql = $("sql").value.trim();
    if (!sql) return;
    const r = await api("/sql", { method: "POST", headers: { "Content-Type": "text/plain" }, body: sql });
    if (!r.ok) {
      showSqlOutput([errorNode(r.body, r.status)]);
      return;
    }
    const nodes = [];
    for (const res of r.body.results || []) {
      if (res.kind === "rows") nodes.push(rowsTable(res));
      else nodes.push(el("div", { class: "ok", text: res.message || res.kind }));
    }
    showSqlOutput(nodes);
    refresh();
  }

  function init() {
    $("register").addEventListener("click", register);
    $("q-stop").addEventListener("click", () => queryAction("stop"));
    $("q-reset").addEventListener("click", () => queryAction("reset"));
    $("run").addEventListener("click", run);
    $("sql").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        run();
      }
    });
    $("col-select").addEventListener("change", (e) => {
      state.chartColumn = e.target.value;
      renderGroupChart();
    });
    $("token-btn").addEventListener("click", () => {
      const t = window.prompt("Bearer token for this Runnel server", token());
      if (t !== null) {
        try { localStorage.setItem("runnel-token", t); } catch (e) { /* ignore */ }
        refresh();
      }
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { renderRateCharts(); renderGroupChart(); renderQueryPanel(); }, 150);
    });
    refresh();
    setInterval(refresh, 2000);
    setInterval(loadErrors, 5000);
  }

  // Shared with the query's detail panels (panels.js).
  window.runnel = { api: api, el: el, fmtNum: fmtNum, lineChart: lineChart, errorNode: errorNode };
  init();
})();
