"""The dashboard page: static HTML, CSS and a small script that polls `/v1/dashboard` with the caller's key.

The key comes from the address (`/#key=...`, then removed from it), or from a form; it stays in this tab's
sessionStorage and is sent as `Authorization: Bearer`, so the page itself holds no data and needs no key.
"""

PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>Tide dashboard</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:20px auto;max-width:1300px;padding:0 16px;color:#111}
h1{font-size:20px;margin:0}h2{font-size:15px;margin:22px 0 6px}.muted{color:#666}
header{display:flex;justify-content:space-between;align-items:baseline}
table{border-collapse:collapse;width:100%}td,th{padding:5px 8px;border-bottom:1px solid #eee;text-align:left;
white-space:nowrap}th{font-weight:600;color:#444}td.num{text-align:right}
.bar{width:180px;height:12px;background:#eee;border-radius:6px;overflow:hidden;display:inline-block;
vertical-align:middle}.bar>i{display:block;height:100%;background:#2563eb}.bar.done>i{background:#16a34a}
.status{padding:1px 8px;border-radius:9px;background:#eef}.status.completed{background:#dcfce7}
.status.failed,.status.expired,.status.cancelled{background:#fee2e2}#error{color:#b91c1c}
form{margin:40px 0}input{font:inherit;padding:4px 8px;width:320px}
</style></head><body>
<header><h1>Tide</h1><span class=muted id=updated>connecting...</span></header>
<div id=error></div>
<form id=login hidden><p>An API key (one of TIDE_API_KEYS) shows its own jobs and batches.</p>
<input id=key type=password placeholder="API key" autocomplete=off> <button>Show</button></form>
<main id=main hidden>
<h2>Jobs and batches</h2>
<table id=jobs><thead><tr><th>id</th><th>kind</th><th>model</th><th>status</th><th>progress</th><th></th>
<th>tokens/s</th><th>ETA</th><th></th></tr></thead><tbody></tbody></table>
<h2>Queues</h2><table id=queues><thead><tr><th>queue</th><th>waiting tasks</th></tr></thead><tbody></tbody></table>
<h2>Workers</h2><table id=workers><thead><tr><th>worker</th><th>model</th><th>batch occupancy</th><th>tokens/s</th>
<th>last heartbeat</th></tr></thead><tbody></tbody></table>
<h2>Eval suites</h2><table id=evals><thead><tr><th>suite</th><th>model</th><th>last score</th><th>status</th>
<th>trend</th></tr></thead><tbody></tbody></table>
</main>
<script>
"use strict";
const POLL_MS = 2000;
let key = sessionStorage.getItem("tide-key");
const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
if (fromHash) { key = fromHash; sessionStorage.setItem("tide-key", key); history.replaceState(null, "", "/"); }
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const num = (x, d = 1) => x == null ? "-" : Number(x).toFixed(d);
const pct = (x) => x == null ? "-" : Math.round(x * 100) + "%";
const ago = (s) => s < 1 ? "now" : Math.round(s) + " s ago";
function eta(s) {
  if (s == null) return "-";
  if (s < 90) return Math.round(s) + " s";
  return s < 5400 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";
}
function spark(values) {
  if (!values.length) return "";
  const w = 120, h = 22, n = Math.max(values.length - 1, 1);
  const pts = values.map((v, i) => (i * w / n).toFixed(1) + "," + (h - 2 - v * (h - 4)).toFixed(1)).join(" ");
  return `<svg width=${w} height=${h}><polyline fill=none stroke="#2563eb" stroke-width=1.5 points="${pts}"/></svg>`;
}
function rows(id, items, render, empty) {
  $(id).tBodies[0].innerHTML = items.length ? items.map(render).join("")
    : `<tr><td colspan=8 class=muted>${empty}</td></tr>`;
}
function show(data) {
  rows("jobs", data.jobs, (j) => {
    const f = j.progress.fraction, done = j.progress.done + "/" + j.progress.total;
    return `<tr data-id="${esc(j.id)}" data-status="${esc(j.status)}"><td>${esc(j.id)}</td><td>${esc(j.kind)}</td>
      <td>${esc(j.model)}</td><td><span class="status ${esc(j.status)}">${esc(j.status)}</span></td>
      <td><span class="bar${f >= 1 ? " done" : ""}"><i style="width:${(f * 100).toFixed(1)}%"></i></span></td>
      <td class="num pct">${Math.floor(f * 100)}% <span class=muted>${done}</span></td>
      <td class=num>${num(j.output_tokens_per_s)}</td><td class=num>${eta(j.eta_s)}</td>
      <td>${j.report ? `<a href="#" class=report data-job="${esc(j.id)}">report</a>` : ""}</td></tr>`;
  }, "no jobs yet");
  rows("queues", Object.entries(data.queues), ([q, n]) =>
    `<tr><td>${esc(q)}</td><td class=num>${n}</td></tr>`, "every queue is empty");
  rows("workers", data.workers, (w) => `<tr data-worker="${esc(w.name)}"><td>${esc(w.name)}</td>
    <td>${esc(w.model)}</td><td class=num>${pct(w.batch_occupancy)}</td><td class=num>${num(w.tokens_per_s)}</td>
    <td>${ago(w.heartbeat_age_s)}</td></tr>`, "no live workers");
  rows("evals", data.evals, (e) => e.error ? `<tr><td>${esc(e.suite)}</td><td colspan=4 id=error>${esc(e.error)}</td>
    </tr>` : `<tr><td>${esc(e.suite)}</td><td>${esc(e.model)}</td><td class=num>${pct(e.last_score)}</td>
    <td>${esc(e.last_status ?? "no runs")}</td><td>${spark(e.trend)}</td></tr>`, "no eval suites configured");
  $("updated").textContent = "updated " + new Date(data.now * 1000).toLocaleTimeString();
}
async function poll() {
  try {
    const r = await fetch("/v1/dashboard", {headers: {Authorization: "Bearer " + key}, cache: "no-store"});
    if (r.status === 401) { sessionStorage.removeItem("tide-key"); key = null; return login("That key was refused."); }
    if (!r.ok) throw new Error("HTTP " + r.status);
    show(await r.json());
    $("error").textContent = "";
    $("main").hidden = false;
  } catch (e) {
    $("error").textContent = "cannot reach the API: " + e.message;
  }
  setTimeout(poll, POLL_MS);
}
async function openReport(jobId) {
  const tab = window.open("", "_blank");  // opened now, while the click still counts as the user's
  const r = await fetch("/v1/jobs/" + encodeURIComponent(jobId) + "/report",
                        {headers: {Authorization: "Bearer " + key}});
  if (!r.ok) { tab.close(); $("error").textContent = "report: HTTP " + r.status; return; }
  tab.location = URL.createObjectURL(new Blob([await r.text()], {type: "text/html"}));
}
$("jobs").addEventListener("click", (ev) => {
  const link = ev.target.closest("a.report");
  if (link) { ev.preventDefault(); openReport(link.dataset.job); }
});
function login(message) {
  $("main").hidden = true; $("login").hidden = false; $("error").textContent = message || "";
  $("updated").textContent = "";
}
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault(); key = $("key").value.trim(); if (!key) return;
  sessionStorage.setItem("tide-key", key); $("login").hidden = true; poll();
});
if (key) poll(); else login();
</script></body></html>
"""
