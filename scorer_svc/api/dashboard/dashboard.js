// The scorer's dashboard: runs, their checkpoints, the loss reduction (δ) by rank at a scored
// step, and one sample's loss across checkpoints. It reads the REST API of the server that
// served it (relative URLs, so it also works behind a path prefix) and draws its charts as
// inline SVG; nothing is loaded from elsewhere.
"use strict";

(() => {
  const TOKEN_KEY = "delta-loss-scorer.token"; // sessionStorage: kept for this tab only
  const PAGE_SIZE = 10000; // the most /deltas gives in one page
  const MAX_POINTS = 50000; // more ranked samples than this: the server's PNG instead
  const DRAWN_POINTS = 2000; // up to this many samples, each is a point of its own
  const LIST_PAGES = 50; // at most this many pages of runs or checkpoints are read
  const EXTREMES = 10; // rows of the top / bottom by δ tables
  const SAMPLE_ROUTE = /^\/v1\/runs\/\{[^}]+\}\/samples\/\{[^}]+\}$/; // the sample's text
  // An XML namespace name: it identifies SVG elements, nothing is fetched from it.
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // What is shown: the run, the step and the sample chosen (mirrored in the URL's #).
  const chosen = { run: null, step: null, sample: null };
  let deltaItems = []; // the ranked samples of the chosen step, rank order
  let deltaChart = null; // the δ chart's svg and scales: {root, x, y}
  let sampleRouteKnown = null; // a promise: does this scorer serve a sample's text?

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // --- talking to the API -------------------------------------------------------------

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function detailOf(body, response) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (detail !== undefined) return JSON.stringify(detail);
    return `${response.status} ${response.statusText}`;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  // GET a path of the API: {status, body, response} for 200 and 202; an ApiError otherwise
  // (a 401 also asks for the token).
  async function api(path) {
    let response;
    try {
      response = await fetch(path, { headers: authHeaders() });
    } catch (exc) {
      throw new ApiError(0, `cannot reach the scorer (${exc.message})`);
    }
    const body = await readJson(response);
    if (response.status === 401) {
      askForToken(detailOf(body, response));
      throw new ApiError(401, detailOf(body, response));
    }
    if (response.status !== 200 && response.status !== 202) {
      throw new ApiError(response.status, detailOf(body, response));
    }
    return { status: response.status, body, response };
  }

  // Every item of a paged list (a bare list from older scorers), up to LIST_PAGES pages.
  async function listAll(path, key) {
    const items = [];
    let token = null;
    for (let page = 0; page < LIST_PAGES; page += 1) {
      const sep = path.includes("?") ? "&" : "?";
      const url = token ? `${path}${sep}page_token=${encodeURIComponent(token)}` : path;
      const { body } = await api(url);
      if (Array.isArray(body)) return body;
      items.push(...(body[key] || []));
      token = body.next_page_token;
      if (!token) break;
    }
    return items;
  }

  function runPath(run) {
    return `v1/runs/${encodeURIComponent(run)}`;
  }

  // --- messages, token ----------------------------------------------------------------

  function showError(message) {
    const el = $("error");
    el.textContent = message;
    el.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function report(exc) {
    if (exc instanceof ApiError && exc.status === 401) return; // the token form says it
    showError(exc instanceof ApiError ? exc.message : `error: ${exc}`);
  }

  function askForToken(detail) {
    const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-form").hidden = false;
    showError(refused ? `the token was refused: ${detail}` : detail);
    $("token-input").focus();
  }

  function useToken(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    $("token-form").hidden = true;
    clearError();
    restore().catch(report);
  }

  // --- formatting and DOM helpers -----------------------------------------------------

  function two(n) {
    return String(n).padStart(2, "0");
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const t = new Date(iso);
    if (Number.isNaN(t.getTime())) return iso;
    const day = `${t.getFullYear()}-${two(t.getMonth() + 1)}-${two(t.getDate())}`;
    return `${day} ${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
  }

  function fmtNumber(x, digits) {
    return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
  }

  function fmtDelta(x) {
    return x === null || x === undefined ? "—" : Number(x).toPrecision(4);
  }

  function orDash(x) {
    return x === null || x === undefined ? "—" : String(x);
  }

  function cell(text, title) {
    const td = document.createElement("td");
    td.textContent = text;
    if (title) td.title = title;
    return td;
  }

  // A table row that acts as a button (mouse and keyboard).
  function clickableRow(cells, onChoose) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    tr.classList.add("clickable");
    tr.tabIndex = 0;
    tr.addEventListener("click", onChoose);
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        onChoose();
      }
    });
    return tr;
  }

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
    if (parent) parent.appendChild(el);
    return el;
  }

  function svgText(parent, x, y, text, cls) {
    const el = svg("text", { x, y, class: cls || "label" }, parent);
    el.textContent = text;
    return el;
  }

  function markSelected(tbody, attr, value) {
    for (const tr of tbody.rows) tr.classList.toggle("selected", tr.dataset[attr] === value);
  }

  function saveHash() {
    const params = new URLSearchParams();
    if (chosen.run !== null) params.set("run", chosen.run);
    if (chosen.step !== null) params.set("step", chosen.step);
    if (chosen.sample !== null) params.set("sample", chosen.sample);
    history.replaceState(null, "", `#${params}`);
  }

  // --- health -------------------------------------------------------------------------

  async function loadHealth() {
    const el = $("health");
    let response;
    try {
      response = await fetch("healthz", { headers: authHeaders() });
    } catch (exc) {
      el.textContent = "health: scorer unreachable";
      el.className = "health bad";
      return;
    }
    const body = (await readJson(response)) || {};
    const ranks = body.ranks ? `, ranks ${body.ranks}${body.ranks_alive === false ? " (one lost)" : ""}` : "";
    const instance = body.instance ? `, instance ${body.instance}` : "";
    const detail = response.ok ? "" : ` — ${detailOf(body, response)}`;
    el.textContent = `health: ${body.status || response.status}${ranks}${instance}${detail}`;
    el.className = response.ok ? "health ok" : "health bad";
  }

  // --- runs ---------------------------------------------------------------------------

  // GET /v1/runs with the search form's filters and order.
  function runsQuery() {
    const params = new URLSearchParams({ max_results: "100", order_by: $("runs-order").value });
    const name = $("runs-name").value.trim();
    const status = $("runs-status").value;
    const tag = $("runs-tag").value.trim();
    if (name) params.set("name", name);
    if (status) params.set("status", status);
    if (tag) params.set("tag", tag);
    return `v1/runs?${params}`;
  }

  function tagsText(tags) {
    const pairs = Object.entries(tags || {}).map(([key, value]) => (value ? `${key}=${value}` : key));
    return pairs.length ? pairs.join(", ") : "—";
  }

  async function loadRuns() {
    const runs = await listAll(runsQuery(), "runs");
    const tbody = $("runs").tBodies[0];
    tbody.replaceChildren(
      ...runs.map((run) => {
        const tr = clickableRow(
          [
            cell(run.run_id),
            cell(orDash(run.run_name)),
            cell(tagsText(run.tags)),
            cell(orDash(run.status)),
            cell(run.base_model, `${run.finetuning_type}, fingerprint ${run.fingerprint}`),
            cell(String(run.n_samples)),
            cell(String(run.update_times)),
            cell(orDash(run.last_step)),
            cell(fmtTime(run.created_at), run.created_at),
          ],
          () => chooseRun(run.run_id).catch(report),
        );
        tr.dataset.runId = run.run_id;
        return tr;
      }),
    );
    $("runs-empty").hidden = runs.length > 0;
    markSelected(tbody, "runId", chosen.run);
    return runs;
  }

  async function chooseRun(run) {
    clearError();
    chosen.run = run;
    chosen.step = null;
    chosen.sample = null;
    saveHash();
    markSelected($("runs").tBodies[0], "runId", run);
    $("deltas-section").hidden = true;
    $("sample-section").hidden = true;
    $("checkpoints").tBodies[0].replaceChildren(); // the previous run's rows are not clickable
    $("checkpoints-run").textContent = run;
    await loadCheckpoints();
  }

  // --- checkpoints --------------------------------------------------------------------

  async function loadCheckpoints() {
    const run = chosen.run;
    const checkpoints = await listAll(`${runPath(run)}/checkpoints?max_results=500`, "checkpoints");
    if (chosen.run !== run) return [];
    $("checkpoints-run").textContent = run;
    $("checkpoints").tBodies[0].replaceChildren(...checkpoints.map(checkpointRow));
    $("checkpoints-section").hidden = false;
    markSelected($("checkpoints").tBodies[0], "step", String(chosen.step));
    loadTraining(run, checkpoints).catch(report);
    return checkpoints;
  }

  // --- the training curves: what the trainer logged, beside its updates -----------------

  async function loadTraining(run, checkpoints) {
    const history = (key) =>
      listAll(`${runPath(run)}/metrics/history?key=${encodeURIComponent(key)}&max_results=10000`, "history");
    const [train, evals] = await Promise.all([history("loss"), history("eval_loss")]);
    if (chosen.run !== run) return;
    drawTraining(train, evals, checkpoints.map((c) => c.step));
  }

  function drawTraining(train, evals, updates) {
    const box = $("training-chart");
    const note = $("training-note");
    if (!train.length && !evals.length) {
      box.replaceChildren();
      note.textContent = "No loss logged for this run yet (its trainer sends what it logs as it trains).";
      return;
    }
    // loops, not Math.min(...a): a spread of a long run's points overflows the call stack
    let first = Infinity;
    let last = -Infinity;
    for (const step of [...train.map((p) => p.step), ...evals.map((p) => p.step), ...updates]) {
      if (step < first) first = step;
      if (step > last) last = step;
    }
    const pad = Math.max((last - first) * 0.02, 0.5);
    const values = [...train, ...evals].map((p) => p.value);
    const { root, x, y } = frame("training-svg", [first - pad, last + pad], extent(values), "step", "loss", true);
    const marks = svg("g", { class: "updates" }, root);
    for (const step of updates) {
      const line = svg("line", { class: "update-marker", x1: x(step), x2: x(step), y1: M.top, y2: H - M.bottom, "data-step": step }, marks);
      svg("title", {}, line).textContent = `checkpoint at step ${step}`;
    }
    if (train.length) {
      svg("path", { class: "curve train", d: curvePath(train.map((p) => p.step), train.map((p) => p.value), x, y) }, root);
    }
    if (evals.length) {
      svg("path", { class: "curve eval", d: curvePath(evals.map((p) => p.step), evals.map((p) => p.value), x, y) }, root);
      const points = svg("g", { class: "eval-points" }, root);
      for (const p of evals) {
        const dot = svg("circle", { class: "eval-point", cx: x(p.step), cy: y(p.value), r: 4, "data-step": p.step }, points);
        svg("title", {}, dot).textContent = `step ${p.step}: eval loss ${fmtDelta(p.value)}`;
      }
    }
    box.replaceChildren(root);
    note.textContent =
      `training loss (${train.length} points, blue), eval loss (${evals.length}, orange); ` +
      `dashed lines: the ${updates.length} checkpoints sent for scoring`;
  }

  function checkpointRow(c) {
    const cells = [
      cell(String(c.step)),
      cell(String(c.update_index)),
      cell(c.kind),
      cell(c.status),
      cell(fmtTime(c.received_at), c.received_at),
      cell(fmtTime(c.started_at), c.started_at),
      cell(fmtTime(c.finished_at), c.finished_at),
      cell(fmtNumber(c.score_seconds, 2)),
      cell(fmtNumber(c.samples_per_second, 1)),
      cell(measuredText(c)),
      cell(orDash(c.error)),
    ];
    let tr;
    if (c.status === "failed" || c.status === "superseded") {
      tr = document.createElement("tr"); // nothing to show beyond its error
      tr.append(...cells);
    } else {
      tr = clickableRow(cells, () => chooseStep(c.step).catch(report));
    }
    tr.dataset.step = String(c.step);
    tr.classList.add(`status-${c.status}`);
    return tr;
  }

  // How much of a scored checkpoint's ranking was measured there: all, or under a scoring
  // budget how many samples and the mean age of the others' estimates.
  function measuredText(c) {
    if (c.status !== "scored") return "—";
    if (c.n_measured === null || c.n_measured === undefined) return "all";
    return `${c.n_measured}, rest ${fmtNumber(c.mean_age, 1)} old`;
  }

  async function chooseStep(step) {
    clearError();
    chosen.step = step;
    chosen.sample = null;
    saveHash();
    markSelected($("checkpoints").tBodies[0], "step", String(step));
    $("sample-section").hidden = true;
    await loadDeltas();
  }

  // --- deltas -------------------------------------------------------------------------

  function deltasUrl(run, step, order, maxResults, token) {
    let url = `${runPath(run)}/deltas?step=${step}&order=${order}&max_results=${maxResults}`;
    if (token) url += `&page_token=${encodeURIComponent(token)}`;
    return url;
  }

  async function loadDeltas() {
    const { run, step } = chosen;
    const section = $("deltas-section");
    $("deltas-step").textContent = String(step);
    $("deltas-summary").textContent = "loading…";
    $("deltas-chart").replaceChildren();
    for (const id of ["top-deltas", "bottom-deltas"]) $(id).tBodies[0].replaceChildren();
    section.hidden = false;
    const first = await api(deltasUrl(run, step, "desc", PAGE_SIZE));
    if (chosen.run !== run || chosen.step !== step) return;
    if (first.status === 202) {
      showPending(first);
      return;
    }
    $("deltas-progress").hidden = true;
    const page = first.body;
    if (page.n_ranked > MAX_POINTS) {
      await showLargeRanking(page);
      return;
    }
    const items = [...page.items];
    let token = page.next_page_token;
    while (token && items.length < MAX_POINTS) {
      const next = await api(deltasUrl(run, step, "desc", PAGE_SIZE, token));
      if (chosen.run !== run || chosen.step !== step) return;
      items.push(...next.body.items);
      token = next.body.next_page_token;
    }
    deltaItems = items;
    describeDeltas(page);
    drawDeltaChart(items, page.window);
    // the bottom table lists only samples the top one does not
    const top = items.slice(0, EXTREMES);
    fillExtremes(top, items.slice(Math.max(top.length, items.length - EXTREMES)).reverse());
  }

  // A checkpoint still queued or being scored: its progress, and another try later.
  function showPending({ body, response }) {
    const { run, step } = chosen;
    const el = $("deltas-progress");
    el.replaceChildren();
    const p = body.progress;
    if (p) {
      const bar = document.createElement("progress");
      bar.max = p.total;
      bar.value = p.scored;
      const eta = p.eta_seconds === null ? "" : `, about ${Math.round(p.eta_seconds)} s left`;
      el.append(bar, ` scoring: ${p.scored} of ${p.total} samples${eta}`);
    } else {
      el.textContent = body.detail || `step ${step} is ${body.status}`;
    }
    el.hidden = false;
    $("deltas-summary").textContent = "";
    const seconds = Number(response.headers.get("Retry-After")) || 5;
    setTimeout(() => {
      if (chosen.run === run && chosen.step === step && chosen.sample === null) {
        loadDeltas()
          .then(() => loadCheckpoints())
          .catch(report);
      }
    }, seconds * 1000);
  }

  function describeDeltas(page, pictured) {
    const w = page.window;
    let text = `${page.n_ranked} samples ranked (update ${page.update_index})`;
    if (w) {
      text += `; window: ranks ${w.start} to ${w.end - 1} (${w.end - w.start} samples)`;
      if (w.truncated_at !== null) text += `, truncated at rank ${w.truncated_at}`;
    } else {
      text += "; no window (the run's first checkpoint: uniform weights)";
    }
    if (page.n_measured !== null && page.n_measured !== undefined) {
      const age = page.mean_age === null ? "" : `, the others estimated from measurements ${fmtNumber(page.mean_age, 1)} scored checkpoints old on average`;
      text += `; scoring budget: ${page.n_measured} of ${page.n_ranked} measured here${age}`;
    }
    const how = pictured
      ? `More than ${MAX_POINTS} to draw here: the server's picture. Click a row`
      : "Click a point or a row";
    $("deltas-summary").textContent = `${text}. ${how} to see that sample.`;
  }

  // More ranked samples than the page draws: the server's PNG of the whole ranking (fetched
  // with the token, shown from a blob) and the extremes from one short page each way.
  async function showLargeRanking(page) {
    const { run, step } = chosen;
    describeDeltas(page, true);
    const response = await fetch(`${runPath(run)}/plots/deltas?step=${step}`, {
      headers: authHeaders(),
    });
    if (!response.ok) throw new ApiError(response.status, detailOf(await readJson(response), response));
    const img = document.createElement("img");
    img.alt = `loss reduction by rank at step ${step}`;
    img.src = URL.createObjectURL(await response.blob());
    img.addEventListener("load", () => URL.revokeObjectURL(img.src));
    const bottom = await api(deltasUrl(run, step, "asc", EXTREMES));
    if (chosen.run !== run || chosen.step !== step) return;
    $("deltas-chart").replaceChildren(img);
    deltaItems = [];
    fillExtremes(page.items.slice(0, EXTREMES), bottom.body.items);
  }

  function fillExtremes(top, bottom) {
    const rows = (items) =>
      items.map((item) => {
        const tr = clickableRow(
          [
            cell(String(item.rank)),
            cell(String(item.sample_index)),
            cell(fmtDelta(item.delta)),
            cell(fmtDelta(item.loss)),
            cell(item.in_window ? "in" : ""),
          ],
          () => chooseSample(item.sample_index).catch(report),
        );
        tr.dataset.sample = String(item.sample_index);
        return tr;
      });
    $("top-deltas").tBodies[0].replaceChildren(...rows(top));
    $("bottom-deltas").tBodies[0].replaceChildren(...rows(bottom));
    $("bottom-deltas").parentElement.hidden = bottom.length === 0;
  }

  // --- charts -------------------------------------------------------------------------

  const W = 800;
  const H = 320;
  const M = { left: 64, right: 16, top: 16, bottom: 40 };

  function linear(d0, d1, r0, r1) {
    const span = d1 - d0 || 1;
    return (v) => r0 + ((v - d0) / span) * (r1 - r0);
  }

  function extent(values) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === Infinity) return [0, 1];
    if (lo === hi) return [lo - 1, hi + 1];
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  // About n round values between lo and hi, for an axis.
  function ticks(lo, hi, n) {
    const raw = (hi - lo) / n;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => raw <= s) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out;
  }

  function fmtTick(v) {
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1) : String(+v.toPrecision(4));
  }

  // The frame of a chart: axes with ticks and their names; returns the svg and the scales.
  function frame(id, xDomain, yDomain, xName, yName, integerX) {
    const root = svg("svg", { id, viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
    const x = linear(xDomain[0], xDomain[1], M.left, W - M.right);
    const y = linear(yDomain[0], yDomain[1], H - M.bottom, M.top);
    const axes = svg("g", { class: "axes" }, root);
    svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }, axes);
    svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }, axes);
    for (const v of ticks(yDomain[0], yDomain[1], 5)) {
      svg("line", { x1: M.left - 4, x2: M.left, y1: y(v), y2: y(v) }, axes);
      svgText(axes, M.left - 6, y(v) + 4, fmtTick(v), "tick y");
    }
    for (const v of ticks(xDomain[0], xDomain[1], 8)) {
      if (integerX && !Number.isInteger(v)) continue;
      svg("line", { x1: x(v), x2: x(v), y1: H - M.bottom, y2: H - M.bottom + 4 }, axes);
      svgText(axes, x(v), H - M.bottom + 16, fmtTick(v), "tick x");
    }
    svgText(axes, (M.left + W - M.right) / 2, H - 6, xName, "axis-name");
    const yLabel = svgText(axes, 14, (M.top + H - M.bottom) / 2, yName, "axis-name");
    yLabel.setAttribute("transform", `rotate(-90 14 ${(M.top + H - M.bottom) / 2})`);
    return { root, x, y };
  }

  // The path through the points; with more points than pixels, each pixel column keeps its
  // lowest and highest value, which draws the same picture.
  function curvePath(xs, ys, x, y) {
    const columns = W - M.left - M.right;
    const parts = [];
    if (xs.length <= 2 * columns) {
      xs.forEach((xv, i) => parts.push(`${i ? "L" : "M"}${x(xv).toFixed(1)},${y(ys[i]).toFixed(1)}`));
      return parts.join("");
    }
    const per = xs.length / columns;
    for (let c = 0; c < columns; c += 1) {
      const from = Math.floor(c * per);
      const to = Math.min(xs.length, Math.floor((c + 1) * per));
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = from; i < to; i += 1) {
        lo = Math.min(lo, ys[i]);
        hi = Math.max(hi, ys[i]);
      }
      const px = x(xs[from]).toFixed(1);
      parts.push(`${c ? "L" : "M"}${px},${y(hi).toFixed(1)}L${px},${y(lo).toFixed(1)}`);
    }
    return parts.join("");
  }

  function drawDeltaChart(items, window) {
    const n = items.length;
    const deltas = items.map((item) => item.delta);
    const [lo, hi] = extent([...deltas, 0]);
    const { root, x, y } = frame("delta-svg", [-0.5, Math.max(n - 0.5, 0.5)], [lo, hi], "rank", "δ (initial − current loss)", true);
    if (window) {
      const shade = svg("rect", {
        class: "window-shade",
        x: x(window.start - 0.5),
        y: M.top,
        width: Math.max(x(window.end - 0.5) - x(window.start - 0.5), 1),
        height: H - M.top - M.bottom,
        "data-start": window.start,
        "data-end": window.end,
      });
      root.insertBefore(shade, root.firstChild);
      svg("title", {}, shade).textContent = `window: ranks ${window.start} to ${window.end - 1}`;
      if (window.truncated_at !== null) {
        const tx = x(window.truncated_at - 0.5);
        svg("line", { class: "truncation", x1: tx, x2: tx, y1: M.top, y2: H - M.bottom, "data-rank": window.truncated_at }, root);
        svgText(root, tx + 4, M.top + 12, `truncated at ${window.truncated_at}`, "marker-label");
      }
    }
    svg("line", { class: "zero", x1: M.left, x2: W - M.right, y1: y(0), y2: y(0) }, root);
    svg("path", { class: "curve", d: curvePath(items.map((it) => it.rank), deltas, x, y) }, root);
    if (n <= DRAWN_POINTS) drawDeltaPoints(root, items, x, y);
    root.addEventListener("click", (event) => {
      const item = nearestRank(root, event, x, items);
      if (item) chooseSample(item.sample_index).catch(report);
    });
    $("deltas-chart").replaceChildren(root);
    deltaChart = { root, x, y };
  }

  function drawDeltaPoints(root, items, x, y) {
    const points = svg("g", { class: "points" }, root);
    for (const item of items) {
      const dot = svg("circle", {
        class: item.in_window ? "point in-window" : "point",
        cx: x(item.rank),
        cy: y(item.delta),
        r: items.length > 200 ? 2.5 : 5,
        "data-rank": item.rank,
        "data-sample": item.sample_index,
      }, points);
      svg("title", {}, dot).textContent =
        `rank ${item.rank}, sample ${item.sample_index}: δ ${fmtDelta(item.delta)}, ` +
        `loss ${fmtDelta(item.initial_loss)} → ${fmtDelta(item.loss)}${item.in_window ? ", in the window" : ""}`;
    }
  }

  // The ranked sample under a click anywhere on the chart (points may be too small to hit).
  function nearestRank(root, event, x, items) {
    if (!items.length) return null;
    const matrix = root.getScreenCTM();
    if (!matrix) return null;
    const pt = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    const left = x(0);
    const unit = x(1) - left;
    const rank = Math.round((pt.x - left) / unit);
    return items[Math.min(items.length - 1, Math.max(0, rank))];
  }

  // A ring round the chosen sample on the δ chart (drawn or not as a point of its own).
  function markChosenPoint() {
    const chart = deltaChart;
    for (const old of document.querySelectorAll("#delta-svg .chosen-marker")) old.remove();
    const item = deltaItems.find((it) => it.sample_index === chosen.sample);
    if (chart && item && chart.root.isConnected) {
      svg("circle", { class: "chosen-marker", cx: chart.x(item.rank), cy: chart.y(item.delta), r: 7 }, chart.root);
    }
    for (const id of ["top-deltas", "bottom-deltas"]) {
      markSelected($(id).tBodies[0], "sample", String(chosen.sample));
    }
  }

  // --- one sample ---------------------------------------------------------------------

  async function chooseSample(index) {
    clearError();
    chosen.sample = index;
    saveHash();
    markChosenPoint();
    const run = chosen.run;
    const { body } = await api(`${runPath(run)}/samples/${index}/losses`);
    if (chosen.run !== run || chosen.sample !== index) return;
    $("sample-index").textContent = String(index);
    drawHistory(body.history);
    $("sample-section").hidden = false;
    await showSampleText(run, index);
  }

  function drawHistory(history) {
    const known = history.filter((p) => p.loss !== null);
    const steps = history.map((p) => p.step);
    const first = steps.length ? Math.min(...steps) : 0;
    const last = steps.length ? Math.max(...steps) : 1;
    const pad = Math.max((last - first) * 0.04, 0.5); // keeps the end points off the axes
    const xDomain = [first - pad, last + pad];
    const { root, x, y } = frame("history-svg", xDomain, extent(known.map((p) => p.loss)), "step", "loss", true);
    svg("path", { class: "curve", d: curvePath(known.map((p) => p.step), known.map((p) => p.loss), x, y) }, root);
    const points = svg("g", { class: "points" }, root);
    for (const p of known) {
      const dot = svg("circle", { class: "point", cx: x(p.step), cy: y(p.loss), r: 5, "data-step": p.step }, points);
      svg("title", {}, dot).textContent =
        `step ${p.step} (update ${p.update_index}): loss ${fmtDelta(p.loss)}, δ ${fmtDelta(p.delta)}`;
    }
    const missing = history.filter((p) => p.loss === null).map((p) => p.step);
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = missing.length ? `no finite loss at step ${missing.join(", ")}` : "";
    $("history-chart").replaceChildren(root, note);
  }

  // Whether this scorer serves GET /v1/runs/{run_id}/samples/{index}, from its OpenAPI
  // description (open, like this page): asked once, so older scorers get no 404s.
  function sampleRouteServed() {
    if (sampleRouteKnown === null) {
      sampleRouteKnown = fetch("openapi.json")
        .then((response) => (response.ok ? response.json() : { paths: {} }))
        .then((spec) => Object.keys(spec.paths || {}).some((p) => SAMPLE_ROUTE.test(p)))
        .catch(() => false);
    }
    return sampleRouteKnown;
  }

  // The sample's text under its history; #sample-text's data-state ends as "shown", "none"
  // (no such route or sample) or "unavailable" (the reason shown instead).
  async function showSampleText(run, index) {
    const target = $("sample-text");
    target.replaceChildren();
    target.dataset.state = "loading";
    const settle = (state, ...nodes) => {
      if (chosen.run !== run || chosen.sample !== index) return;
      target.replaceChildren(...nodes);
      target.dataset.state = state;
    };
    if (!(await sampleRouteServed())) {
      settle("none");
      return;
    }
    let body;
    try {
      ({ body } = await api(`${runPath(run)}/samples/${index}`));
    } catch (exc) {
      if (!(exc instanceof ApiError)) throw exc;
      if (exc.status === 401 || exc.status === 404) {
        settle("none");
        return;
      }
      // the dataset moved or changed since the run started: say so next to the history
      const note = document.createElement("p");
      note.className = "text-unavailable";
      note.textContent = `text not available: ${exc.message}`;
      settle("unavailable", note);
      return;
    }
    settle("shown", ...sampleTextNodes(body));
  }

  function block(label, text) {
    const div = document.createElement("div");
    div.className = "message";
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = label;
    const pre = document.createElement("pre");
    pre.textContent = text;
    div.append(name, pre);
    return div;
  }

  function sampleTextNodes(body) {
    const nodes = [];
    if (body.system) nodes.push(block("system", body.system));
    for (const turn of body.turns || []) {
      nodes.push(block("user", turn.user ?? ""), block("assistant", turn.assistant ?? ""));
    }
    const fields = Object.entries(body.fields || {});
    if (fields.length) {
      const dl = document.createElement("dl");
      for (const [key, value] of fields) {
        const dt = document.createElement("dt");
        dt.textContent = key;
        const dd = document.createElement("dd");
        dd.textContent = typeof value === "string" ? value : JSON.stringify(value);
        dl.append(dt, dd);
      }
      nodes.push(dl);
    }
    return nodes;
  }

  // --- start --------------------------------------------------------------------------

  // Load everything, then show again what the URL's # names (run, step, sample).
  async function restore() {
    const wanted = new URLSearchParams(location.hash.slice(1));
    loadHealth().catch(report);
    const runs = await loadRuns();
    const run = wanted.get("run") ?? chosen.run;
    if (run === null || !runs.some((r) => r.run_id === run)) return;
    await chooseRun(run);
    const step = wanted.get("step");
    if (step === null) return;
    await chooseStep(Number(step));
    const sample = wanted.get("sample");
    if (sample !== null && /^\d+$/.test(sample)) await chooseSample(Number(sample));
  }

  function refresh() {
    clearError();
    loadHealth().catch(report);
    loadRuns()
      .then(() => (chosen.run === null ? null : loadCheckpoints()))
      .catch(report);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", useToken);
    $("runs-search").addEventListener("submit", (event) => {
      event.preventDefault();
      clearError();
      loadRuns().catch(report);
    });
    $("refresh").addEventListener("click", refresh);
    // a # typed or pasted (the page's own changes replace the state: no event)
    window.addEventListener("hashchange", () => restore().catch(report));
    restore().catch(report);
  });
})();
