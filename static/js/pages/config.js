// Config: the effective config (secrets redacted) and a Reload button.
import { html, useEffect, useState } from "../../vendor/htm-preact.js";
import { call, getJSON } from "../api.js";
import { useStore } from "../store.js";

function List({ label, items }) {
  return html`<div><dt>${label}</dt><dd>${items && items.length ? items.join(", ") : "none"}</dd></div>`;
}

export function ConfigPage() {
  const live = useStore((s) => s.conn === "open");
  const [config, setConfig] = useState(null);
  const [error, setError] = useState(null);
  const [report, setReport] = useState(null);
  const [busy, setBusy] = useState(false);
  const fetchConfig = () => getJSON("/api/config").then((c) => { setConfig(c); setError(null); }, (e) => setError(e.message));
  useEffect(() => { fetchConfig(); }, []);
  const reload = async () => {
    setBusy(true);
    setReport(null);
    try {
      const r = await (await call("/api/config/reload", { method: "POST" })).json();
      setReport(r);
      fetchConfig();
    } catch (e) {
      setReport({ applied: false, reason: e.message, status: e.status });
    } finally { setBusy(false); }
  };
  return html`<main class="page">
    <div class="page-head"><h1>Config</h1><span class="muted small">the effective configuration, secrets redacted</span><span class="spacer"></span>
      <button class="primary" onClick=${reload} disabled=${busy || !live}>${busy ? "Reloading…" : "Reload config"}</button></div>
    ${report && (report.applied
      ? html`<div class="card ok-box" role="status"><strong>Config reloaded.</strong><dl class="report">
          <${List} label="Kept" items=${report.kept} /><${List} label="Restarted" items=${report.restarted} />
          <${List} label="Changed (not running)" items=${report.changed} />
          <${List} label="Added" items=${report.added} /><${List} label="Removed" items=${report.removed} /></dl></div>`
      : html`<div class="failure" role="alert"><strong>Reload refused${report.status ? " (HTTP " + report.status + ")" : ""}:</strong> ${report.reason}. The old config keeps serving.</div>`)}
    ${error && html`<div class="failure" role="alert">Could not read the config: ${error}</div>`}
    ${config && html`<div class="card"><p class="muted small">${Object.keys(config.models || {}).length} models · ${Object.keys(config.peers || {}).length} peers · ${(config.apiKeys || []).length} API keys</p>
      <pre class="code config-json" tabindex="0" aria-label="Effective config">${JSON.stringify(config, null, 2)}</pre></div>`}
  </main>`;
}
