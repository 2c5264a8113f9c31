/*
 * The dnsgo dashboard (docs/dashboard.md): plain JavaScript, no library,
 * nothing loaded from anywhere but the API that serves it.
 *
 * The bearer token is asked for once and kept in this tab's sessionStorage;
 * it is only ever sent in the Authorization header, never put in a URL.
 * Every POLL_MS the page reads /api/cache/distributed, /api/workers,
 * /api/upstreams and /api/ha.  Queries per second are derived from two
 * successive stats snapshots of a worker (its total of queries answered,
 * over the time between the snapshots, which the snapshot's uptime
 * measures on the worker's own clock).  The chart's history is kept in the
 * page only, for WINDOW_MS.  A 401 forgets the token and asks again.
 */
"use strict";

(function () {
  const TOKEN_KEY = "dnsgo.dashboard.token";
  const POLL_MS = 2000;
  const WINDOW_MS = 10 * 60 * 1000;
  const READS = {
    distributed: "api/cache/distributed",
    workers: "api/workers",
    upstreams: "api/upstreams",
    ha: "api/ha",
  };
  const FLUSH = "api/cache/distributed";

  /** The API refused the token (HTTP 401); ``reason`` is its stated reason. */
  class Unauthorized extends Error {
    constructor(reason) {
      super(reason);
      this.reason = reason;
    }
  }

  const state = {
    token: null,
    generation: 0, // bumped on sign-in and sign-out: a poll of an older generation stops
    timer: null,
    snapshots: new Map(), // workerId -> {pid, startedAt, uptime, queries, qps}
    lastL1: null, // {hits, misses} summed over the workers at the last poll
    mode: null, // the cache mode (standalone, local-only, hybrid)
    history: [], // [{t, qps, rate}], the last WINDOW_MS
    workerIds: [],
  };

  const $ = (id) => document.getElementById(id);

  // -- formatting -------------------------------------------------------------

  function bytes(n) {
    if (n == null) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
  }

  const percent = (rate) => (rate == null ? "—" : Number(rate).toFixed(2) + " %");
  const rate = (qps) => (qps == null ? "—" : qps < 10 ? qps.toFixed(2) : qps.toFixed(1));
  const count = (n) => (n == null ? "—" : Number(n).toLocaleString("en"));
  const orDash = (v) => (v == null || v === "" ? "—" : String(v));

  function clock(iso) {
    if (!iso) return "—";
    const when = new Date(iso);
    return isNaN(when) ? String(iso) : when.toLocaleTimeString("en-GB");
  }

  function reasonOf(body, status) {
    if (body && typeof body.reason === "string") return body.reason;
    return "HTTP " + status;
  }

  // -- the API ------------------------------------------------------------------

  /** ``path`` with the token; resolves to {status, body}; rejects with Unauthorized on 401. */
  async function call(path, init = {}) {
    const headers = new Headers(init.headers || {});
    headers.set("Authorization", "Bearer " + state.token);
    headers.set("Accept", "application/json");
    const response = await fetch(path, {
      ...init, headers, cache: "no-store", credentials: "omit", redirect: "error",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (response.status === 401) throw new Unauthorized(reasonOf(body, 401));
    return { status: response.status, body };
  }

  // -- signing in and out -------------------------------------------------------

  function showLogin(message) {
    document.body.dataset.state = "login";
    $("board").hidden = true;
    $("forget-token").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("problem").textContent = "";
    $("token-input").focus();
  }

  function signOut(message) {
    state.generation += 1;
    clearTimeout(state.timer);
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  function signIn(token) {
    state.token = token;
    state.generation += 1;
    state.snapshots.clear();
    state.lastL1 = null;
    state.history = [];
    document.body.dataset.state = "connecting";
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget-token").hidden = false;
    poll(state.generation);
  }

  // -- polling ------------------------------------------------------------------

  async function poll(generation) {
    try {
      const names = Object.keys(READS);
      const settled = await Promise.allSettled(names.map((n) => call(READS[n])));
      if (generation !== state.generation) return;
      const refused = settled.find((s) => s.status === "rejected" && s.reason instanceof Unauthorized);
      if (refused) {
        signOut("The API refused the token: " + refused.reason.reason);
        return;
      }
      const got = {};
      const problems = [];
      settled.forEach((s, i) => {
        const name = names[i];
        if (s.status === "rejected") {
          problems.push(READS[name] + ": unreachable");
        } else if (s.value.status !== 200) {
          problems.push(READS[name] + ": " + reasonOf(s.value.body, s.value.status));
        } else {
          got[name] = s.value.body;
        }
      });
      render(got);
      $("problem").textContent = problems.join("; ");
      if (got.distributed && got.workers) {
        $("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
      }
      document.body.dataset.state = problems.length ? "degraded" : "live";
    } catch (error) {
      if (generation === state.generation) $("problem").textContent = "dashboard error: " + error.message;
    } finally {
      if (generation === state.generation) {
        clearTimeout(state.timer);
        state.timer = setTimeout(() => poll(generation), POLL_MS);
      }
    }
  }

  /**
   * A worker's queries per second from its snapshot ``detail`` (/api/workers):
   * (queries now - queries before) / (uptime now - uptime before), between two
   * different snapshots of the same run of the worker; null before there are two.
   */
  function queriesPerSecond(detail) {
    const id = detail.workerId;
    const before = state.snapshots.get(id);
    const now = {
      pid: detail.pid, startedAt: detail.startedAt, uptime: detail.uptimeSeconds, queries: detail.queries, qps: null,
    };
    if (now.uptime == null || now.queries == null) {
      state.snapshots.delete(id);
      return null;
    }
    const sameRun = before && before.pid === now.pid && before.startedAt === now.startedAt;
    if (sameRun && now.uptime === before.uptime) return before.qps; // no new snapshot since
    if (sameRun && now.uptime > before.uptime && now.queries >= before.queries) {
      now.qps = (now.queries - before.queries) / (now.uptime - before.uptime);
    }
    state.snapshots.set(id, now);
    return now.qps;
  }

  // -- rendering ----------------------------------------------------------------

  function cell(field, text, value, className) {
    const td = document.createElement("td");
    td.dataset.field = field;
    if (value !== undefined && value !== null) td.dataset.value = String(value);
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function pairCell(field, hits, misses) {
    const td = document.createElement("td");
    td.dataset.field = field;
    td.className = "num";
    const span = (name, n) => {
      const element = document.createElement("span");
      element.dataset.field = name;
      if (n != null) element.dataset.value = String(n);
      element.textContent = count(n);
      return element;
    };
    td.append(span(field + "Hits", hits), " / ", span(field + "Misses", misses));
    return td;
  }

  function setField(id, text, attributes) {
    const element = $(id);
    element.textContent = text;
    for (const [name, value] of Object.entries(attributes || {})) element.dataset[name] = String(value);
  }

  /** Show what came; a part whose reads failed keeps what it showed (the problem line says why). */
  function render(got) {
    const distributed = got.distributed;
    if (distributed) {
      state.mode = distributed.mode;
      $("mode").textContent = distributed.mode;
      renderShared(distributed.sharedCache);
      setField("total-hit-rate", percent(distributed.aggregated.averageHitRate),
        { value: distributed.aggregated.averageHitRate });
    }
    if (got.upstreams) renderUpstreams(got.upstreams.workers || []);
    if (got.ha) renderHA(got.ha);
    if (distributed && got.workers) {
      const details = new Map((got.workers.workers || []).map((w) => [w.workerId, w]));
      const stats = new Map((distributed.workers || []).map((w) => [w.workerId, w]));
      const ids = [...new Set([...stats.keys(), ...details.keys()])].sort();
      const qps = new Map();
      for (const [id, detail] of details) qps.set(id, queriesPerSecond(detail));
      for (const id of [...state.snapshots.keys()]) if (!details.has(id)) state.snapshots.delete(id);
      renderWorkers(ids, stats, details, qps);
      renderWorkerChoices(ids);
      const known = [...qps.values()].filter((q) => q != null);
      const totalQps = known.length ? known.reduce((a, b) => a + b, 0) : null;
      const healthy = ids.filter((id) => (stats.get(id) || details.get(id)).status === "healthy").length;
      setField("total-workers", ids.length + " (" + healthy + " healthy)", { value: ids.length });
      setField("total-qps", rate(totalQps), { value: totalQps == null ? "" : totalQps });
      record(totalQps, [...stats.values()]);
    }
    drawChart();
  }

  function renderWorkers(ids, stats, details, qps) {
    const body = $("workers-body");
    const rows = ids.map((id) => {
      const s = stats.get(id) || {};
      const d = details.get(id) || {};
      const l1 = s.messageCache || {};
      const l2 = s.rrsetCache || {};
      const tr = document.createElement("tr");
      tr.dataset.workerId = id;
      const status = cell("status", orDash(s.status || d.status));
      status.dataset.status = s.status || d.status || "";
      tr.append(
        cell("workerId", id),
        cell("clusterName", orDash(s.clusterName || d.clusterName)),
        status,
        cell("queries", count(d.queries), d.queries, "num"),
        cell("qps", rate(qps.get(id)), qps.get(id), "num"),
        cell("l1HitRate", percent(l1.hit_rate), l1.hit_rate, "num"),
        pairCell("l1", l1.hits, l1.misses),
        cell("l1Size", bytes(l1.size_bytes) + " / " + bytes(l1.max_size_bytes), l1.size_bytes, "num"),
        cell("l2HitRate", percent(l2.hit_rate), l2.hit_rate, "num"),
        pairCell("l2", l2.hits, l2.misses),
        cell("l2Size", bytes(l2.size_bytes) + " / " + bytes(l2.max_size_bytes), l2.size_bytes, "num"),
        cell("lastUpdated", clock(s.lastUpdated || d.lastUpdated), s.lastUpdated || d.lastUpdated),
      );
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function renderShared(shared) {
    $("shared-none").hidden = shared != null;
    $("shared-fields").hidden = shared == null;
    if (shared == null) return;
    const s = shared.stats || {};
    const reachable = shared.status === "connected";
    setField("shared-reachable", reachable ? "yes" : "no (" + orDash(shared.status) + ")",
      { reachable, value: shared.status });
    setField("shared-type", orDash(shared.type) + (shared.address ? " at " + shared.address : ""),
      { value: shared.type });
    setField("shared-keys", count(s.keys), { value: s.keys == null ? "" : s.keys });
    setField("shared-memory", bytes(s.size_bytes), { value: s.size_bytes });
    setField("shared-hit-rate", percent(s.hit_rate) + " (" + count(s.hits) + " / " + count(s.misses) + ")",
      { value: s.hit_rate });
  }

  function renderUpstreams(workers) {
    const rows = [];
    for (const w of workers) {
      for (const u of w.upstreams || []) {
        const tr = document.createElement("tr");
        tr.dataset.workerId = w.workerId;
        tr.dataset.upstream = u.address;
        const health = cell("health", orDash(u.health), u.health);
        health.dataset.status = u.health || "";
        const success = u.success_rate == null ? null : 100 * u.success_rate;
        tr.append(
          cell("workerId", w.workerId),
          cell("address", u.address),
          health,
          cell("srtt", u.srtt_ms == null ? "—" : u.srtt_ms.toFixed(1) + " ms", u.srtt_ms, "num"),
          cell("consecutiveFailures", count(u.consecutive_failures), u.consecutive_failures, "num"),
          cell("failures", count(u.failures) + " / " + count(u.queries), u.failures, "num"),
          cell("successRate", percent(success), success, "num"),
        );
        rows.push(tr);
      }
    }
    $("upstreams-body").replaceChildren(...rows);
  }

  function renderHA(ha) {
    setField("ha-role", orDash(ha.role), { value: ha.role });
    setField("ha-term", orDash(ha.term), { value: ha.term });
    setField("ha-leader", orDash(ha.leader), { value: ha.leader == null ? "" : ha.leader });
    setField("ha-mode", orDash(ha.mode), { value: ha.mode });
    setField("ha-site", orDash(ha.site), { value: ha.site == null ? "" : ha.site });
  }

  function renderWorkerChoices(ids) {
    if (ids.join("\n") === state.workerIds.join("\n")) return;
    state.workerIds = ids;
    const select = $("flush-worker");
    const chosen = select.value;
    const options = [new Option("every worker", "")].concat(ids.map((id) => new Option(id, id)));
    select.replaceChildren(...options);
    select.value = ids.includes(chosen) ? chosen : "";
  }

  // -- the chart ------------------------------------------------------------------

  /** Add a point: the cluster's queries/s and its L1 hit rate since the last poll (null without lookups). */
  function record(totalQps, workers) {
    const l1 = { hits: 0, misses: 0 };
    for (const w of workers) {
      l1.hits += (w.messageCache || {}).hits || 0;
      l1.misses += (w.messageCache || {}).misses || 0;
    }
    let hitRate = null;
    const before = state.lastL1;
    if (before && l1.hits >= before.hits && l1.misses >= before.misses) {
      const lookups = l1.hits - before.hits + (l1.misses - before.misses);
      if (lookups > 0) hitRate = (100 * (l1.hits - before.hits)) / lookups;
    }
    state.lastL1 = l1;
    const now = Date.now();
    state.history.push({ t: now, qps: totalQps, rate: hitRate });
    while (state.history.length && state.history[0].t < now - WINDOW_MS) state.history.shift();
  }

  function drawChart() {
    const canvas = $("chart");
    const points = state.history;
    const peak = points.reduce((m, p) => (p.qps != null && p.qps > m ? p.qps : m), 0);
    canvas.dataset.points = String(points.length);
    canvas.dataset.peakQps = String(peak);
    const last = points[points.length - 1];
    canvas.dataset.lastQps = last && last.qps != null ? String(last.qps) : "";
    canvas.dataset.lastRate = last && last.rate != null ? String(last.rate) : "";

    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const styles = getComputedStyle(document.documentElement);
    const color = (name) => styles.getPropertyValue(name).trim() || "#000";
    const pad = { left: 48, right: 44, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const now = Date.now();
    const x = (t) => pad.left + plotW * (1 - (now - t) / WINDOW_MS);
    const top = Math.max(1, peak * 1.15);
    const yQps = (v) => pad.top + plotH * (1 - v / top);
    const yRate = (v) => pad.top + plotH * (1 - v / 100);

    g.strokeStyle = color("--line");
    g.fillStyle = color("--muted");
    g.lineWidth = 1;
    g.font = "11px system-ui, sans-serif";
    for (let i = 0; i <= 4; i++) {
      const y = pad.top + (plotH * i) / 4;
      g.beginPath();
      g.moveTo(pad.left, y);
      g.lineTo(pad.left + plotW, y);
      g.stroke();
      g.textAlign = "right";
      g.fillText(rate((top * (4 - i)) / 4), pad.left - 6, y + 4);
      g.textAlign = "left";
      g.fillText(String(100 - 25 * i) + "%", pad.left + plotW + 6, y + 4);
    }
    g.textAlign = "left";
    g.fillText("10 min ago", pad.left, height - 6);
    g.textAlign = "right";
    g.fillText("now", pad.left + plotW, height - 6);

    const line = (value, y, stroke) => {
      g.strokeStyle = stroke;
      g.lineWidth = 2;
      g.beginPath();
      let drawing = false;
      for (const p of points) {
        const v = value(p);
        if (v == null) {
          drawing = false;
          continue;
        }
        if (drawing) g.lineTo(x(p.t), y(v));
        else g.moveTo(x(p.t), y(v));
        drawing = true;
      }
      g.stroke();
    };
    line((p) => p.qps, yQps, color("--qps"));
    line((p) => p.rate, yRate, color("--rate"));
  }

  // -- the flush form -------------------------------------------------------------

  /** The DELETE /api/cache/distributed body the form asks for. */
  function flushRequest() {
    const request = { name: $("flush-name").value.trim() };
    const type = $("flush-type").value.trim();
    if (type) request.type = type;
    if ($("flush-subtree").checked) request.subtree = true;
    const cache = $("flush-cache").value;
    const worker = $("flush-worker").value;
    if (cache === "shared") {
      request.target = "shared";
    } else {
      request.cacheType = cache;
      request.target = worker ? "worker" : "all";
    }
    if (worker) request.workerIds = [worker];
    return request;
  }

  function describeFlush(request, body) {
    const what = request.name + (request.type ? " " + request.type : "") + (request.subtree ? " and below" : "");
    const done = (body.results || []).map((r) =>
      r.workerId + ": " + (r.success ? (r.cleared || []).join(", ") || "nothing" : "failed"));
    const shared = state.mode === "hybrid" ? "; shared cache cleared: " + (body.sharedCleared ? "yes" : "no") : "";
    return "Flushed " + what + " on " + body.clearedCount + " worker(s)" +
      (done.length ? " (" + done.join("; ") + ")" : "") + shared;
  }

  async function submitFlush(event) {
    event.preventDefault();
    const result = $("flush-result");
    const button = $("flush-submit");
    const request = flushRequest();
    if (!request.name) {
      result.dataset.state = "error";
      result.textContent = "A name is needed (a flush of everything is not offered here).";
      return;
    }
    result.dataset.state = "pending";
    result.textContent = "Flushing…";
    button.disabled = true;
    try {
      const answer = await call(FLUSH, {
        method: "DELETE", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      });
      if (answer.status === 200) {
        result.dataset.state = answer.body.success ? "ok" : "partial";
        result.textContent = describeFlush(request, answer.body);
      } else {
        result.dataset.state = "error";
        result.textContent = "Refused (" + answer.status + "): " + reasonOf(answer.body, answer.status);
      }
    } catch (error) {
      if (error instanceof Unauthorized) {
        signOut("The API refused the token: " + error.reason);
        return;
      }
      result.dataset.state = "error";
      result.textContent = "The API could not be reached: " + error.message;
    } finally {
      button.disabled = false;
    }
  }

  // -- start ------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      $("token-input").value = "";
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      signIn(token);
    });
    $("forget-token").addEventListener("click", () => signOut(""));
    $("flush-form").addEventListener("submit", submitFlush);
    window.addEventListener("resize", drawChart);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else showLogin("");
  }

  start();
})();
