// Performance: CPU, memory, load and GPU charts (uPlot): the history from
// GET /api/performance, read once, then each new sample as the event
// stream's `performance` message brings it (live.js keeps them in the
// store, so leaving and coming back redraws at once).
import { html, useEffect, useRef, useState } from "../../vendor/htm-preact.js";
import uPlot from "../../vendor/uplot.js";
import { loadPerformance } from "../live.js";
import { useNow, useStore } from "../store.js";
import { num } from "../util.js";

const WINDOWS = { "5 min": 300, "15 min": 900, "1 h": 3600 };
const COLORS = ["#2f7dd1", "#d9822b", "#2aa876", "#b04fc4", "#c94343", "#7a8b99", "#c1a300", "#3bb3c3"];

function Chart({ title, data, series, unit, max }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const width = Math.max(260, box.current.clientWidth - 8);
    const opts = {
      title, width, height: 180,
      scales: { x: { time: true }, y: max ? { range: [0, max] } : { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
      axes: [{ stroke: "currentColor", grid: { stroke: "rgba(128,128,128,.15)" } },
        { stroke: "currentColor", grid: { stroke: "rgba(128,128,128,.15)" }, values: (u, v) => v.map((x) => num(x, x < 10 ? 1 : 0) + unit) }],
      series: [{}, ...series.map((s, i) => ({ label: s, stroke: COLORS[i % COLORS.length], width: 1.5, points: { show: false } }))],
      legend: { show: series.length <= 8 },
    };
    plot.current = new uPlot(opts, data, box.current);
    const ro = new ResizeObserver(() => plot.current && plot.current.setSize({ width: Math.max(260, box.current.clientWidth - 8), height: 180 }));
    ro.observe(box.current);
    return () => { ro.disconnect(); plot.current.destroy(); plot.current = null; };
  }, [series.join("|")]);
  useEffect(() => { if (plot.current) plot.current.setData(data); }, [data]);
  return html`<figure class="card chart" aria-label=${title}><div ref=${box}></div></figure>`;
}

function columns(samples, pick, n) {
  const xs = samples.map((s) => Date.parse(s.timestamp) / 1000);
  const cols = [xs];
  for (let i = 0; i < n; i++) cols.push(samples.map((s) => pick(s, i)));
  return cols;
}

export function Performance() {
  const perf = useStore((s) => s.perf);
  const [win, setWin] = useState("15 min");
  useNow(30000);   // slide the window even when no sample comes
  useEffect(() => { if (perf.status === "idle" || perf.status === "error") loadPerformance(); }, []);
  const { sys, gpu, message } = perf;
  const state = perf.status === "idle" ? "loading" : perf.status;
  const since = Date.now() / 1000 - WINDOWS[win];
  const s = sys.filter((x) => Date.parse(x.timestamp) / 1000 >= since);
  const g = gpu.filter((x) => Date.parse(x.timestamp) / 1000 >= since);
  const cores = s.length ? s[s.length - 1].cpu_util_per_core.length : 0;
  const latest = s[s.length - 1];
  const gpuIds = [...new Set(g.map((x) => x.id))];
  const byKey = new Map(g.map((x) => [x.timestamp + "/" + x.id, x]));
  const gpuTimes = [...new Set(g.map((x) => x.timestamp))];
  const gpuCols = (field) => {
    const cols = [gpuTimes.map((t) => Date.parse(t) / 1000)];
    for (const id of gpuIds) cols.push(gpuTimes.map((t) => { const r = byKey.get(t + "/" + id); return r ? r[field] : null; }));
    return cols;
  };
  const gpuNames = gpuIds.map((id) => { const r = g.find((x) => x.id === id); return "GPU " + id + (r && r.name ? " " + r.name : ""); });
  return html`<main class="page">
    <div class="page-head"><h1>Performance</h1><span class="spacer"></span>
      <div class="seg" role="group" aria-label="Window">${Object.keys(WINDOWS).map((w) => html`<button class=${w === win ? "active" : ""} aria-pressed=${w === win} onClick=${() => setWin(w)}>${w}</button>`)}</div></div>
    ${state === "loading" && html`<div class="card empty">Loading samples…</div>`}
    ${state === "disabled" && html`<div class="card empty" role="status">The performance monitor is disabled on this llamaswap (<code>performance: {disabled: true}</code> in its config).</div>`}
    ${state === "error" && html`<div class="failure" role="alert">Could not read the performance samples: ${message}</div>`}
    ${state === "ok" && html`
      <h2>GPU</h2>
      ${gpuIds.length === 0 ? html`<div class="card empty" role="status">No GPU metrics on this machine.</div>` : html`<div class="charts">
        <${Chart} title="GPU utilisation" unit="%" max=${100} series=${gpuNames} data=${gpuCols("gpu_util_pct")} />
        <${Chart} title="GPU memory used" unit=" MB" series=${gpuNames} data=${gpuCols("mem_used_mb")} />
        <${Chart} title="GPU temperature" unit=" °C" series=${gpuNames} data=${gpuCols("temp_c")} />
        <${Chart} title="GPU power" unit=" W" series=${gpuNames} data=${gpuCols("power_draw_w")} /></div>`}
      <h2>System</h2>
      ${latest ? html`<p class="muted small"><span class="perf-count">${s.length} ${s.length === 1 ? "sample" : "samples"} · latest ${new Date(Date.parse(latest.timestamp)).toLocaleTimeString()}</span> · Memory ${num(latest.mem_used_mb)} / ${num(latest.mem_total_mb)} MB · swap ${num(latest.swap_used_mb)} / ${num(latest.swap_total_mb)} MB · load ${latest.load_avg_1.toFixed(2)} ${latest.load_avg_5.toFixed(2)} ${latest.load_avg_15.toFixed(2)}</p>`
        : html`<div class="card empty">No samples yet: the first arrives a few seconds after start.</div>`}
      ${s.length > 0 && html`<div class="charts">
        <${Chart} title="CPU utilisation (mean of cores)" unit="%" max=${100} series=${["CPU"]} data=${columns(s, (x) => x.cpu_util_per_core.reduce((a, b) => a + b, 0) / Math.max(1, x.cpu_util_per_core.length), 1)} />
        <${Chart} title="Memory used" unit="%" max=${100} series=${["RAM", "Swap"]} data=${columns(s, (x, i) => i === 0 ? 100 * x.mem_used_mb / Math.max(1, x.mem_total_mb) : 100 * x.swap_used_mb / Math.max(1, x.swap_total_mb), 2)} />
        <${Chart} title="Load average" unit="" series=${["1 min", "5 min", "15 min"]} data=${columns(s, (x, i) => [x.load_avg_1, x.load_avg_5, x.load_avg_15][i], 3)} />
        <${Chart} title=${"CPU per core (" + cores + ")"} unit="%" max=${100} series=${Array.from({ length: cores }, (_, i) => "core " + i)} data=${columns(s, (x, i) => x.cpu_util_per_core[i] ?? null, cores)} />
      </div>`}`}
  </main>`;
}
