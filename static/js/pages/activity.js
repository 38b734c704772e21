// Activity: the token-metrics table, live, with filters, paging, export,
// Server-Timing phases, and the capture viewer.
import { html, useState } from "../../vendor/htm-preact.js";
import { download } from "../api.js";
import { useNow, useStore } from "../store.js";
import { ago, num, seconds } from "../util.js";
import { CaptureDialog } from "./capture.js";

const PAGE = 50;
const PHASES = ["queue", "stop", "load", "ttfb"];

function Phases({ entry }) {
  const p = entry.phases || {};
  const total = p.total || entry.duration_ms / 1000 || 0;
  if (!total) return html`<span class="muted">–</span>`;
  const rest = Math.max(0, total - PHASES.reduce((a, k) => a + (p[k] || 0), 0));
  const title = PHASES.map((k) => k + " " + seconds(p[k] || 0)).join(", ") + ", generation " + seconds(rest);
  return html`<span class="phases" title=${title} role="img" aria-label=${"Timing: " + title}>
    ${PHASES.map((k) => p[k] > 0 && html`<span class=${"ph ph-" + k} style=${{ flexGrow: p[k] / total }}></span>`)}
    <span class="ph ph-gen" style=${{ flexGrow: rest / total }}></span></span>`;
}

function speed(x) {
  return num(x, x >= 100 ? 0 : 1) + " t/s";
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];   // nearest rank
}

// A small histogram of speeds with the P50 / P95 of the requests that report one.
function SpeedCard({ title, values }) {
  const v = values.filter((x) => x > 0).sort((a, b) => a - b);
  if (!v.length) return html`<div class="card stat"><span class="muted small">${title}</span><strong>–</strong><span class="small">no data yet</span></div>`;
  const bins = 16, lo = v[0], hi = v[v.length - 1], width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const x of v) counts[Math.min(bins - 1, Math.floor((x - lo) / width))] += 1;
  const top = Math.max(...counts);
  return html`<div class="card stat"><span class="muted small">${title}</span>
    <strong>${speed(percentile(v, 0.5))}</strong><span class="small">p50 · p95 ${speed(percentile(v, 0.95))} · p99 ${speed(percentile(v, 0.99))}</span>
    <div class="hist" role="img" aria-label=${title + " histogram, " + num(lo, 1) + " to " + num(hi, 1) + " tokens per second"}>
      ${counts.map((c) => html`<span style=${{ height: Math.max(4, (100 * c) / top) + "%" }} class=${c ? "" : "zero"}></span>`)}</div></div>`;
}

function epochOf(entry) {
  return Date.parse(entry.timestamp) / 1000;
}

function csv(rows) {
  const cols = ["id", "timestamp", "model", "req_path", "resp_status_code", "resp_content_type", "duration_ms",
    "cache_tokens", "input_tokens", "output_tokens", "prompt_per_second", "tokens_per_second", "queue", "stop", "load", "ttfb"];
  const q = (v) => (v === undefined || v === null ? "" : /[",\n]/.test(String(v)) ? '"' + String(v).replace(/"/g, '""') + '"' : String(v));
  const lines = [cols.join(",")];
  for (const e of rows) {
    const t = e.tokens || {}, p = e.phases || {};
    lines.push([e.id, e.timestamp, e.model, e.req_path, e.resp_status_code, e.resp_content_type, e.duration_ms,
      t.cache_tokens, t.input_tokens, t.output_tokens, t.prompt_per_second, t.tokens_per_second, p.queue, p.stop, p.load, p.ttfb].map(q).join(","));
  }
  return lines.join("\n") + "\n";
}

export function Activity() {
  const activity = useStore((s) => s.activity);
  const inflight = useStore((s) => s.inflight);
  const epoch = useStore((s) => s.epoch);
  const ever = useStore((s) => s.everConnected);
  const now = useNow(5000);
  const [model, setModel] = useState("");
  const [status, setStatus] = useState("");
  const [path, setPath] = useState("");
  const [page, setPage] = useState(0);
  const [open, setOpen] = useState(null);
  const models = [...new Set(activity.map((e) => e.model))].sort();
  const rows = activity.filter((e) => (!model || e.model === model)
    && (!status || (status === "ok" ? e.resp_status_code < 400 : e.resp_status_code >= 400))
    && (!path || (e.req_path || "").includes(path))).slice().reverse();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  const p = Math.min(page, pages - 1);
  const shown = rows.slice(p * PAGE, p * PAGE + PAGE);
  const sum = (k) => activity.reduce((a, e) => a + Math.max(0, (e.tokens || {})[k] || 0), 0);
  const captures = activity.filter((e) => e.has_capture && e.epoch === epoch).length;
  const filter = (f) => (e) => { f(e.target.value); setPage(0); };
  return html`<main class="page">
    <div class="page-head"><h1>Activity</h1><span class="spacer"></span>
      <button class="ghost" onClick=${() => download("llamaswap-activity.csv", new Blob([csv(rows)], { type: "text/csv" }))} disabled=${!rows.length}>Export CSV</button>
      <button class="ghost" onClick=${() => download("llamaswap-activity.json", new Blob([JSON.stringify(rows, null, 2)], { type: "application/json" }))} disabled=${!rows.length}>Export JSON</button></div>
    <div class="totals">
      <div class="card stat"><span class="muted small">Requests</span><strong>${num(activity.length)}</strong><span class="small">${inflight} in flight</span></div>
      <div class="card stat"><span class="muted small">Prompt tokens</span><strong>${num(sum("input_tokens"))}</strong><span class="small">${num(sum("cache_tokens"))} cached</span></div>
      <div class="card stat"><span class="muted small">Generated tokens</span><strong>${num(sum("output_tokens"))}</strong></div>
      <${SpeedCard} title="Prompt speed" values=${activity.map((e) => (e.tokens || {}).prompt_per_second)} />
      <${SpeedCard} title="Generation speed" values=${activity.map((e) => (e.tokens || {}).tokens_per_second)} />
      <div class="card stat"><span class="muted small">Captures kept</span><strong>${num(captures)}</strong><span class="small">older ones are evicted</span></div>
    </div>
    <div class="filters">
      <label class="field inline"><span>Model</span><select value=${model} onChange=${filter(setModel)}><option value="">All</option>${models.map((m) => html`<option value=${m}>${m}</option>`)}</select></label>
      <label class="field inline"><span>Status</span><select value=${status} onChange=${filter(setStatus)}><option value="">All</option><option value="ok">OK (&lt; 400)</option><option value="error">Errors (≥ 400)</option></select></label>
      <label class="field inline"><span>Path</span><input type="search" value=${path} onInput=${filter(setPath)} placeholder="/v1/chat" /></label>
      <span class="muted small">${rows.length} of ${activity.length}</span>
    </div>
    <div class="card flush scroll-x"><table class="activity">
      <thead><tr><th>ID</th><th>Time</th><th>Model</th><th>Path</th><th>Status</th><th class="num">Cached</th><th class="num">Prompt</th><th class="num">Generated</th>
        <th class="num">Prompt speed</th><th class="num">Gen speed</th><th class="num">Duration</th><th title="Where the time went (Server-Timing)">Timing</th><th>Capture</th></tr></thead>
      <tbody>
        ${shown.length === 0 && html`<tr><td colspan="13" class="empty muted">${ever ? (activity.length ? "No request matches the filters." : "No requests yet. Send one from the Playground or with curl.") : "Waiting for llamaswap…"}</td></tr>`}
        ${shown.map((e) => { const t = e.tokens || {}; return html`<tr key=${e.key} class=${e.resp_status_code >= 400 ? "error-row" : ""}>
          <td data-label="ID">${e.id}</td><td data-label="Time" title=${e.timestamp}>${ago(epochOf(e), now)}</td><td data-label="Model">${e.model}</td><td data-label="Path" class="mono small">${e.req_path}</td>
          <td data-label="Status"><span class=${"code " + (e.resp_status_code >= 400 ? "bad" : "good")}>${e.resp_status_code}</span></td>
          <td data-label="Cached" class="num">${t.cache_tokens > 0 ? num(t.cache_tokens) : "–"}</td><td data-label="Prompt" class="num">${num(t.input_tokens)}</td><td data-label="Generated" class="num">${num(t.output_tokens)}</td>
          <td data-label="Prompt speed" class="num">${t.prompt_per_second > 0 ? num(t.prompt_per_second, 1) + " t/s" : "–"}</td><td data-label="Gen speed" class="num">${t.tokens_per_second > 0 ? num(t.tokens_per_second, 1) + " t/s" : "–"}</td>
          <td data-label="Duration" class="num">${seconds(e.duration_ms / 1000)}</td><td data-label="Timing"><${Phases} entry=${e} /></td>
          <td data-label="Capture">${e.has_capture && e.epoch !== epoch ? html`<span class="muted small" title="llamaswap restarted since; its captures are gone">gone</span>`
            : e.has_capture ? html`<button class="small" onClick=${() => setOpen(e)} aria-label=${"View capture " + e.id}>View</button>` : html`<span class="muted">–</span>`}</td></tr>`; })}
      </tbody></table></div>
    <div class="pager"><button class="ghost" onClick=${() => setPage(p - 1)} disabled=${p === 0}>Newer</button>
      <span class="muted small">Page ${p + 1} of ${pages}</span>
      <button class="ghost" onClick=${() => setPage(p + 1)} disabled=${p >= pages - 1}>Older</button></div>
    <p class="legend muted small"><span class="ph ph-queue"></span> queue <span class="ph ph-stop"></span> stopping others <span class="ph ph-load"></span> loading <span class="ph ph-ttfb"></span> first byte <span class="ph ph-gen"></span> generation</p>
    ${open && html`<${CaptureDialog} entry=${open} onClose=${() => setOpen(null)} />`}
  </main>`;
}
