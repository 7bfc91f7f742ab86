// The tidal page: renders the plugin's JSON routes (relative to <base>, so it works under any URL prefix).
// No library, nothing from a CDN. Every request carries the Airflow session cookie (same origin).
"use strict";

const main = document.getElementById("tidal");

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function num(value, digits = 4) {
  return typeof value === "number" ? value.toFixed(digits) : "-";
}

async function getJSON(path) {
  const reply = await fetch(path, {credentials: "same-origin"});
  if (!reply.ok) throw new Error(`${path}: ${reply.status} ${await reply.text()}`);
  return reply.json();
}

async function postJSON(path, body) {
  const reply = await fetch(path, {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const answer = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(`${reply.status}: ${JSON.stringify(answer.detail ?? answer)}`);
  return answer;
}

// A link into the Airflow UI itself. The UI shows this page in a sandboxed iframe that may not navigate the top
// window, so the click moves the UI's own router (same origin); opened on its own, the link is a plain link.
function airflowLink(run) {
  if (!run) return '<span class="muted">-</span>';
  return `<a class="airflow-run" href="../${esc(run.href)}" data-airflow-path="/${esc(run.href)}">${esc(run.dag_id)}</a>`;
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-airflow-path]");
  if (!link || window.parent === window) return;
  try {
    window.parent.history.pushState({}, "", link.dataset.airflowPath);
    window.parent.dispatchEvent(new PopStateEvent("popstate"));
    event.preventDefault();
  } catch (err) { /* not the Airflow UI around us: follow the link */ }
});

function table(headers, rows) {
  return `<table><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>${rows.join("")}</table>`;
}

function seconds(value) {
  return value == null ? "unknown" : `${num(value, 0)} s`;
}

function servingSection(s) {
  const probe = s.serving || {};
  const said = probe.running
    ? `serving at ${esc(probe.url)}: ${probe.ready ? "ready" : "not ready"}, loaded version <b id="serving-reported-version">${esc(probe.version ?? "unknown")}</b>, newest event ${seconds(probe.model_age_seconds)} ago, servable for ${seconds(probe.servable_age_seconds)}`
    : `<span id="serving-reported-version" class="muted">serving not running</span> (${esc(probe.url)})`;
  if (!s.version) return `<h2>Serving now</h2><p id="serving-version">no version in production yet</p><p>${said}</p>`;
  const m = s.metrics || {};
  return `<h2>Serving now</h2>` + table(["production", "since", "how", "kind", "anchor", "Recall@10", "NDCG@10",
    "newest event trained on", "servable since"], [`<tr><td id="serving-version">${esc(s.version)}</td><td>${esc(s.since)}</td>
    <td>${esc(s.how)}${s.by ? " by " + esc(s.by) : ""}: ${esc(s.reason)}</td><td>${esc(s.kind)}</td><td>${esc(s.anchor)}</td>
    <td>${num(m.recall_at_10)}</td><td>${num(m.ndcg_at_10)}</td><td>${esc(s.newest_event_time ?? "unknown")}</td>
    <td>${esc(s.servable_since)}</td></tr>`]) + `<p>${said}</p>`;
}

function chainRow(r) {
  const m = r.metrics || {};
  const gate = r.gate || {};
  const served = r.serving ? "serving" : (r.retired_at ? `retired ${esc(r.retired_at)}` : (r.row === "version" ? "never served" : "-"));
  const cls = r.row === "rejected" ? "rejected" : (r.serving ? "serving" : "");
  return `<tr class="${cls}" data-version="${esc(r.version ?? "")}" data-run="${esc(r.run_id)}" data-decision="${esc(r.decision)}">
    <td>${esc(r.version ?? "(candidate)")}</td><td>${esc(r.decision)}</td><td>${esc(r.kind ?? "-")}</td>
    <td>${esc(r.parent ?? "-")}</td><td>${esc(r.anchor ?? "-")}</td><td>${r.batches ? esc(r.batches.join("-")) : "-"}</td>
    <td>${num(m.recall_at_10)}</td><td>${num(m.ndcg_at_10)}</td><td>${esc(gate.reason ?? "-")} <span class="muted">${esc(gate.margin ?? "")}</span></td>
    <td>${esc(r.promoted_at ?? r.at ?? "-")}</td><td>${served}</td><td>${airflowLink(r.airflow_run)}</td></tr>`;
}

function chainSection(rows) {
  return `<h2>The chain</h2>` + table(["version", "decision", "kind", "parent", "anchor", "batches", "Recall@10",
    "NDCG@10", "gate", "promoted / decided", "served", "Airflow run"], rows.map(chainRow)).replace("<table>", '<table id="chain">');
}

function plotsSection() {
  const names = {quality: "Recall@10 and NDCG@10 over versions", freshness: "freshness over versions",
    rows: "rows landed / accepted / quarantined per cycle", drift: "drift statistics per feature with thresholds"};
  return `<h2>Plots</h2><div class="plots">${Object.entries(names).map(([n, title]) =>
    `<a id="plot-${n}" href="api/plots/${n}.png" title="${esc(title)}"><img alt="${esc(title)}" src="api/plots/${n}.png"></a>`).join("")}</div>`;
}

function runsSection(runs) {
  const label = {"drift.html": "drift report", "drift.png": "drift plot", "data_docs/index.html": "Data Docs"};
  return `<h2>Reports</h2>` + table(["run", "steps", "reports", "Airflow run"], runs.map((r) =>
    `<tr data-run="${esc(r.folder)}"><td><a class="run-page" href="runs/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td>
     <td>${esc(r.steps.join(", "))}</td><td>${Object.entries(r.report_urls).map(([name, url]) =>
       `<a class="report" data-report="${esc(name)}" href="${esc(url)}">${esc(label[name] ?? name)}</a>`).join(" | ") || "-"}</td>
     <td>${airflowLink(r.airflow_run)}</td></tr>`));
}

function quarantineSection(q) {
  const rows = Object.entries(q.reasons).map(([reason, n]) => `<tr><td>${esc(reason)}</td><td data-reason="${esc(reason)}">${n}</td></tr>`);
  return `<h2>Quarantine</h2><p>${q.open} open record(s)</p>` + table(["reason", "open"], rows) + `<p class="muted">${esc(q.replay)}</p>`;
}

function paramInput(name, p) {
  const schema = p.schema || {};
  const types = [].concat(schema.type || "string");
  const value = p.value ?? "";
  if (schema.enum) {
    return `<select name="${esc(name)}">${schema.enum.map((o) => `<option${o === value ? " selected" : ""}>${esc(o)}</option>`).join("")}</select>`;
  }
  const kind = types.includes("integer") && !types.includes("string") ? "number" : "text";
  return `<input type="${kind}" name="${esc(name)}" value="${esc(value)}">`;
}

function actionsSection(versions, form) {
  const options = versions.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("");
  const retrain = form ? Object.entries(form.params).map(([name, p]) =>
    `<label>${esc(p.schema?.title ?? name)} ${paramInput(name, p)} <span class="muted">${esc(p.description ?? "")}</span></label>`).join("")
    : '<p class="muted">the tidal_full_retrain form is not available</p>';
  return `<h2>Actions</h2><p class="muted">Each action triggers a DAG run through Airflow, as you.</p>
    <form id="rollback-form"><b>Roll back</b> (tidal_rollback)
      <label>to version <select name="to"><option value="">the version that served before</option>${options}</select></label>
      <label>reason (required) <input type="text" name="reason" required></label>
      <button type="submit" id="rollback-submit">Roll back</button><div id="rollback-result"></div></form>
    <form id="retrain-form"><b>Full retrain</b> (tidal_full_retrain)${retrain}
      <button type="submit" id="retrain-submit">Trigger full retrain</button><div id="retrain-result"></div></form>`;
}

function retrainConf(form) {
  const conf = {};
  for (const field of form.querySelectorAll("[name]")) {
    const text = field.value.trim();
    if (field.type === "number") conf[field.name] = text === "" ? null : Number(text);
    else conf[field.name] = /^\d+$/.test(text) && field.name === "history_days" ? Number(text) : text;
  }
  return conf;
}

function wireAction(id, path, conf) {
  const form = document.getElementById(id);
  const out = form.querySelector("div[id$=-result]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    out.className = "result";
    out.textContent = "triggering...";
    try {
      const run = await postJSON(path, conf(form));
      out.innerHTML = `triggered <b class="dag-run-id">${esc(run.dag_run_id)}</b> of ${airflowLink(run.airflow_run)}`;
    } catch (err) {
      out.className = "result error";
      out.textContent = String(err.message);
    }
  });
}

async function indexPage() {
  const [serving, chain, runs, quarantine] = await Promise.all(
    ["api/serving", "api/chain", "api/runs", "api/quarantine"].map(getJSON));
  const form = await getJSON("api/actions/retrain/form").catch(() => null);
  const versions = chain.rows.filter((r) => r.version).map((r) => r.version);
  main.innerHTML = `<h1>tidal: models</h1>` + servingSection(serving) + chainSection(chain.rows) + plotsSection()
    + runsSection(runs.runs) + quarantineSection(quarantine) + actionsSection(versions, form);
  wireAction("rollback-form", "api/actions/rollback", (f) => ({to: f.to.value, reason: f.reason.value}));
  wireAction("retrain-form", "api/actions/retrain", retrainConf);
  document.body.dataset.loadedMs = String(Math.round(performance.now()));  // since navigation start (the benchmark)
  document.body.dataset.loaded = "true";
}

async function runPage(runId) {
  const run = await getJSON(`api/runs/${encodeURIComponent(runId)}`);
  const reports = Object.entries(run.report_urls).map(([name, url]) => `<a class="report" data-report="${esc(name)}" href="${esc(url)}">${esc(name)}</a>`);
  main.innerHTML = `<h1>tidal run ${esc(run.run_id)}</h1><p>Airflow run: ${airflowLink(run.airflow_run)}</p>
    <h2>Reports</h2><p>${reports.join(" | ") || "none"}</p><h2>Step summaries</h2>` +
    Object.entries(run.steps).map(([step, s]) => `<h3>${esc(step)}</h3><pre data-step="${esc(step)}">${esc(JSON.stringify(s, null, 2))}</pre>`).join("");
  document.body.dataset.loaded = "true";
}

const page = document.body.dataset.page === "run" ? runPage(document.body.dataset.run) : indexPage();
page.catch((err) => { main.innerHTML = `<p class="result error">${esc(err.message)}</p>`; document.body.dataset.loaded = "error"; });
