"use strict";
// The selected query's detail panels: commit time over time, each
// partition's consumed offset against its log end, the query's recent
// errors and warnings, and its plan's three stages. app.js calls show()
// whenever it renders the query panel (every refresh) and clear() when no
// query is selected; the details are read from GET /queries/{id} and
// GET /queries/{id}/events at most every POLL_MS.
(function () {
  const POLL_MS = 1500;
  const $ = (id) => document.getElementById(id);
  const R = () => window.runnel;
  const STAGES = [
    { key: "Per-batch", title: "1 · Per batch", what: "partial aggregate of each polled batch" },
    { key: "Window-merge", title: "2 · Window merge", what: "partial states of a window merged" },
    { key: "Window-close", title: "3 · Window close", what: "final aggregate, HAVING, ORDER BY, projection" },
  ];
  const state = { name: null, fetchedAt: 0, busy: false, planFor: null };

  function emptyRow(tbody, cols, text) {
    tbody.textContent = "";
    tbody.appendChild(R().el("tr", null, [R().el("td", { class: "empty", colspan: String(cols), text: text })]));
  }

  // The EXPLAIN text: "Window: ...", then "<Stage> plan:" sections of
  // indented operators.
  function parsePlan(text) {
    const stages = [];
    let current = null;
    let window = "";
    for (const line of (text || "").split("\n")) {
      const head = /^(Per-batch|Window-merge|Window-close) plan:\s*$/.exec(line);
      if (head) {
        current = { key: head[1], ops: [] };
        stages.push(current);
      } else if (/^Window: /.test(line)) {
        window = line.slice(8);
      } else if (current && line.trim()) {
        const depth = line.length - line.trimStart().length;
        current.ops.push({ depth: depth, text: line.trim() });
      }
    }
    return { window: window, stages: stages };
  }

  function renderPlan(text) {
    const box = $("plan");
    box.textContent = "";
    const plan = parsePlan(text);
    if (plan.window) $("plan-window").textContent = plan.window;
    STAGES.forEach((st, i) => {
      const found = plan.stages.find((s) => s.key === st.key);
      const ops = (found ? found.ops : []).map((op) => {
        const name = op.text.split(":")[0];
        const li = R().el("li", { text: name, title: op.text });
        li.style.paddingLeft = Math.min(op.depth, 20) * 4 + "px";
        return li;
      });
      box.appendChild(R().el("div", { class: "stage" }, [
        R().el("h4", { text: st.title }),
        R().el("p", { class: "stage-what", text: st.what }),
        R().el("ol", { class: "ops" }, ops),
      ]));
      if (i < STAGES.length - 1) box.appendChild(R().el("div", { class: "stage-arrow", "aria-hidden": "true", text: "→" }));
    });
  }

  function renderPartitions(parts) {
    const tbody = $("partitions").tBodies[0];
    if (!parts || parts.length === 0) {
      emptyRow(tbody, 4, "No partitions assigned yet");
      return;
    }
    tbody.textContent = "";
    const num = (v) => (v === null || v === undefined ? "–" : String(v));
    for (const p of parts) {
      tbody.appendChild(R().el("tr", null, [
        R().el("td", { class: "num", text: String(p.partition) }),
        R().el("td", { class: "num", text: num(p.offset) }),
        R().el("td", { class: "num", text: num(p.log_end) }),
        R().el("td", { class: "num" + (p.lag > 0 ? " behind" : ""), text: num(p.lag) }),
      ]));
    }
  }

  function renderEvents(events) {
    const tbody = $("events").tBodies[0];
    if (!events || events.length === 0) {
      emptyRow(tbody, 6, "No errors or warnings");
      return;
    }
    tbody.textContent = "";
    for (const e of events.slice().reverse()) {
      tbody.appendChild(R().el("tr", { class: "ev-" + e.level }, [
        R().el("td", { text: (e.at || "").slice(11, 19), title: e.count > 1 ? "first at " + e.first_at : e.at }),
        R().el("td", null, [R().el("span", { class: "pill " + e.level, text: e.level })]),
        R().el("td", { text: e.kind }),
        R().el("td", { class: "num", text: R().fmtNum(e.count) }),
        R().el("td", { class: "wrap", text: e.message }),
        R().el("td", { class: "wrap mono", text: e.sample || "" }),
      ]));
    }
  }

  async function fetchDetails(name) {
    state.busy = true;
    try {
      const path = "/queries/" + encodeURIComponent(name);
      const [q, ev] = await Promise.all([R().api(path), R().api(path + "/events")]);
      if (state.name !== name) return;
      if (q.ok && q.body) {
        renderPartitions(q.body.partitions);
        if (state.planFor !== name && q.body.plan) {
          renderPlan(q.body.plan);
          state.planFor = name;
        }
      }
      if (ev.ok && ev.body) renderEvents(ev.body.events);
    } finally {
      state.busy = false;
    }
  }

  // `commit` is the query's commit-time series for the chart.
  function show(q, commit) {
    const points = commit.map((s) => ({ name: s.name, points: s.points.filter((p) => p[1] !== null) }));
    R().lineChart($("commit-chart"), points, "No commits yet");
    if (state.name !== q.name) {
      state.name = q.name;
      state.planFor = null;
      state.fetchedAt = 0;
      $("plan").textContent = "";
      $("plan-window").textContent = "";
      emptyRow($("partitions").tBodies[0], 4, "Loading…");
      emptyRow($("events").tBodies[0], 6, "Loading…");
    }
    if (!state.busy && Date.now() - state.fetchedAt >= POLL_MS) {
      state.fetchedAt = Date.now();
      fetchDetails(q.name);
    }
  }

  function clear() {
    state.name = null;
    state.planFor = null;
    R().lineChart($("commit-chart"), [], "Select a query");
    $("plan").textContent = "";
    $("plan-window").textContent = "";
    emptyRow($("partitions").tBodies[0], 4, "Select a query");
    emptyRow($("events").tBodies[0], 6, "Select a query");
  }

  window.runnelPanels = { show: show, clear: clear };
})();
