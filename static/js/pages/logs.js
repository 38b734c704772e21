// Logs: proxy and upstream panes from the event stream; per-model upstream
// output from GET /logs/stream/<model>; search, errors only, pause, clear,
// download; a bounded number of lines in memory.
import { html, useEffect, useRef, useState } from "../../vendor/htm-preact.js";
import { call, download } from "../api.js";
import { clearLog, levelOf } from "../live.js";
import { useStore } from "../store.js";

const MAX = 4000;

function matcher(query) {
  if (!query) return { test: () => true, error: null };
  const m = /^\/(.+)\/([a-z]*)$/.exec(query);
  if (m) {
    try { const re = new RegExp(m[1], m[2].includes("i") ? m[2] : m[2] + "i"); return { test: (s) => re.test(s), error: null }; }
    catch (e) { return { test: () => false, error: "Invalid regular expression: " + e.message }; }
  }
  const q = query.toLowerCase();
  return { test: (s) => s.toLowerCase().includes(q), error: null };
}

function stamp(at) {
  if (!at) return "earlier     ";
  const d = new Date(at);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// Lines of one model's own log, streamed while the pane shows it.
function useModelLog(model) {
  const [lines, setLines] = useState([]);
  useEffect(() => {
    if (!model) return undefined;
    setLines([]);
    const ctrl = new AbortController();
    (async () => {
      try {
        const res = await call("/logs/stream/" + encodeURIComponent(model), { signal: ctrl.signal });
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let rest = "", first = true;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          rest += dec.decode(value, { stream: true });
          const parts = rest.split("\n");
          rest = parts.pop();
          const at = first ? null : Date.now();
          first = false;
          setLines((old) => old.concat(parts.map((t) => ({ text: t, at, level: levelOf(t) }))).slice(-MAX));
        }
      } catch (e) { if (e.name !== "AbortError") setLines((old) => old.concat([{ text: "(log stream ended: " + e.message + ")", at: Date.now(), level: "warn" }])); }
    })();
    return () => ctrl.abort();
  }, [model]);
  return lines;
}

function Pane({ title, name, models }) {
  const all = useStore((s) => s.logs[name]);
  const [model, setModel] = useState("");
  const modelLines = useModelLog(name === "upstream" ? model : "");
  const [query, setQuery] = useState("");
  const [errorsOnly, setErrorsOnly] = useState(false);
  const [paused, setPaused] = useState(null);
  const [wrap, setWrap] = useState(false);
  const box = useRef(null);
  const stick = useRef(true);
  const source = model ? modelLines : all;
  const lines = paused || source;
  const m = matcher(query);
  const shown = lines.filter((l) => (!errorsOnly || l.level === "error" || l.level === "warn") && m.test(l.text));
  useEffect(() => { if (stick.current && box.current) box.current.scrollTop = box.current.scrollHeight; });
  const onScroll = (e) => { const el = e.target; stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40; };
  const id = "log-" + name;
  return html`<section class="card log-pane" aria-labelledby=${id + "-title"}>
    <div class="log-head"><h2 id=${id + "-title"}>${title}</h2>
      ${name === "upstream" && html`<label class="field inline"><span>Model</span><select value=${model} onChange=${(e) => setModel(e.target.value)}>
        <option value="">All models</option>${models.map((x) => html`<option value=${x}>${x}</option>`)}</select></label>`}
      <label class="field inline grow"><span class="sr-only">Search ${title}</span><input type="search" placeholder="Search (text or /regex/)" value=${query} onInput=${(e) => setQuery(e.target.value)} aria-label=${"Search " + title} /></label>
    </div>
    <div class="log-tools">
      <label class="check small"><input type="checkbox" checked=${errorsOnly} onChange=${(e) => setErrorsOnly(e.target.checked)} /> Errors and warnings only</label>
      <label class="check small"><input type="checkbox" checked=${wrap} onChange=${(e) => setWrap(e.target.checked)} /> Wrap</label>
      <span class="spacer"></span>
      <button class="ghost small" aria-pressed=${!!paused} onClick=${() => setPaused(paused ? null : source.slice())}>${paused ? "Resume" : "Pause"}</button>
      <button class="ghost small" onClick=${() => { if (!model) clearLog(name); setPaused(null); }} disabled=${!!model}>Clear</button>
      <button class="ghost small" onClick=${() => download("llamaswap-" + (model || name) + ".log", new Blob([lines.map((l) => l.text).join("\n") + "\n"], { type: "text/plain" }))}>Download</button>
    </div>
    ${m.error && html`<div class="failure small" role="alert">${m.error}</div>`}
    ${paused && html`<div class="muted small">Paused: ${source.length - paused.length > 0 ? source.length - paused.length + " new lines waiting" : "no new lines yet"}</div>`}
    <div class=${"log" + (wrap ? " wrap" : "")} ref=${box} onScroll=${onScroll} tabindex="0" role="log" aria-label=${title + " lines"}>
      ${shown.length === 0 && html`<div class="muted">${lines.length ? "No line matches." : "No output yet."}</div>`}
      ${shown.slice(-1500).map((l) => html`<div class=${"line lv-" + l.level}><span class="ts">${stamp(l.at)}</span><span class="tx">${l.text}</span></div>`)}
    </div></section>`;
}

export function Logs() {
  const models = useStore((s) => s.models);
  const [view, setView] = useState("both");
  const ids = models.filter((m) => !m.peerID).map((m) => m.id);
  return html`<main class="page logs">
    <div class="page-head"><h1>Logs</h1><span class="spacer"></span>
      <div class="seg" role="group" aria-label="Panes">${["both", "proxy", "upstream"].map((v) => html`<button class=${view === v ? "active" : ""} aria-pressed=${view === v} onClick=${() => setView(v)}>${v[0].toUpperCase() + v.slice(1)}</button>`)}</div></div>
    <div class=${"log-panes view-" + view}>
      ${view !== "upstream" && html`<${Pane} title="Proxy" name="proxy" models=${ids} />`}
      ${view !== "proxy" && html`<${Pane} title="Upstream" name="upstream" models=${ids} />`}
    </div></main>`;
}
