// Models: every model with its state and runtime facts, Load / Unload.
import { html, useState } from "../../vendor/htm-preact.js";
import { call } from "../api.js";
import { store, useNow, useStore } from "../store.js";
import { ago, bytes, countdown, seconds } from "../util.js";

const ACTIVE = new Set(["starting", "ready", "stopping"]);

export function StatePill({ model }) {
  return html`<span class=${"pill state-" + model.state}>${model.state}</span>`;
}

function Progress({ model, since, now }) {
  const p = model.progress || {};
  const elapsed = p.elapsed !== undefined && p.elapsed !== null
    ? p.elapsed + Math.max(0, now / 1000 - (model.heardAt || now / 1000))
    : Math.max(0, now / 1000 - since);
  const fraction = p.bytesTotal ? Math.min(1, p.bytesLoaded / p.bytesTotal)
    : p.expected ? Math.min(elapsed / p.expected, 0.99)
    : (p.fraction ?? null);
  const pct = fraction === null ? null : Math.round(fraction * 100);
  return html`<div class="progress">
    <span>loading… ${seconds(elapsed)}${p.expected ? " of ~" + seconds(p.expected) : ""}${p.bytesTotal ? " · " + bytes(p.bytesLoaded) + " / " + bytes(p.bytesTotal) : ""}${pct === null ? "" : " · " + pct + "%"}</span>
    <div class=${"bar" + (pct === null ? " indeterminate" : "")} role="progressbar" aria-label=${"Loading " + model.id}
      aria-valuemin="0" aria-valuemax="100" aria-valuenow=${pct === null ? undefined : pct}>
      <span style=${{ width: pct === null ? "30%" : pct + "%" }}></span></div></div>`;
}

function Failure({ failure }) {
  if (!failure) return null;
  const code = failure.exitCode !== null && failure.exitCode !== undefined
    && !String(failure.reason || "").includes("exit code " + failure.exitCode)
    ? " (exit code " + failure.exitCode + ")" : "";
  const lines = failure.lastLines || [];
  return html`<div class="failure" role="alert"><strong>Failed to start:</strong> ${failure.reason}${code}
    ${lines.length ? html`<pre class="lastlines" aria-label="Last output lines">${lines.join("\n")}</pre>` : null}</div>`;
}

function memoryText(memory) {
  if (memory.needBytes === null || memory.needBytes === undefined) return "unknown · runs alone until measured";
  return bytes(memory.needBytes) + " · " + memory.source;
}

function budgetLeft(memory) {
  return memory.budgetLeftBytes === null || memory.budgetLeftBytes === undefined
    ? "unknown" : bytes(memory.budgetLeftBytes);
}

function facts(model, now) {
  const out = [];
  if (model.group) out.push(["Group", model.group]);
  if (model.matrixSets && model.matrixSets.length) out.push(["Matrix sets", model.matrixSets.join(", ")]);
  if (model.ttl) {
    let ttl = "TTL " + seconds(model.ttl);
    if (model.unloadAt) ttl += " · unloads in " + countdown(Math.min(model.ttl, model.unloadAt - now / 1000));
    out.push(["TTL", ttl]);
  } else out.push(["TTL", "no TTL (stays loaded)"]);
  if (model.pid) out.push(["PID", String(model.pid)]);
  const port = model.port || model.proxyPort;
  if (port) out.push(["Port", String(port)]);
  out.push(["In flight", String(model.inFlight ?? 0) + (model.queued ? " · " + model.queued + " queued" : "")]);
  out.push(["Last used", ago(model.lastUsed, now)]);
  if (model.memory) out.push(["Memory", memoryText(model.memory), "Budget left on its device: " + budgetLeft(model.memory)]);
  if (model.capabilities && model.capabilities.length) out.push(["Capabilities", model.capabilities.join(", ")]);
  return out;
}

function ModelRow({ model, seen, now, live, error, act }) {
  const active = ACTIVE.has(model.state);
  const since = model.since || (seen && seen.at) || now / 1000;
  return html`<tr class=${"model-row state-row-" + model.state + (model.unlisted ? " unlisted" : "")}>
    <td class="m-name" data-label="Model">
      <a class="model-id" href=${"/upstream/" + encodeURIComponent(model.id) + "/"} target="_blank" rel="noopener" title="Open the model's own server (loads it)">${model.id}</a>
      ${model.name && model.name !== model.id && html`<div class="m-title">${model.name}</div>`}
      ${model.description && html`<div class="muted m-desc">${model.description}</div>`}
      ${model.aliases && model.aliases.length ? html`<div class="muted small">Aliases: ${model.aliases.join(", ")}</div>` : null}
    </td>
    <td data-label="State">
      <${StatePill} model=${model} />
      ${model.state !== "stopped" && model.state !== "starting" && html`<span class="muted small"> for ${seconds(now / 1000 - since)}</span>`}
      ${model.state === "starting" && html`<${Progress} model=${model} since=${since} now=${now} />`}
      <${Failure} failure=${model.failure} />
      ${error && !(model.failure && error.startsWith("Load")) && html`<div class="failure" role="alert">${error}</div>`}
    </td>
    <td class="facts" data-label="Facts"><dl>${facts(model, now).map(([k, v, title]) => html`<div title=${title}><dt>${k}</dt><dd>${v}</dd></div>`)}</dl></td>
    <td class="actions" data-label="Actions">
      ${active
        ? html`<button onClick=${() => act("unload", model.id)} disabled=${!live || model.state === "stopping"} aria-label=${"Unload " + model.id}>Unload</button>`
        : html`<button class="primary" onClick=${() => act("load", model.id)} disabled=${!live} aria-label=${"Load " + model.id}>Load</button>`}
    </td></tr>`;
}

export function Models() {
  const models = useStore((s) => s.models);
  const seen = useStore((s) => s.seen);
  const conn = useStore((s) => s.conn);
  const ever = useStore((s) => s.everConnected);
  const now = useNow(1000);
  const [errors, setErrors] = useState({});
  const [showUnlisted, setShowUnlisted] = useState(true);
  const [busy, setBusy] = useState(false);
  const live = conn === "open";
  const local = models.filter((m) => !m.peerID && (showUnlisted || !m.unlisted));
  const peers = {};
  for (const m of models.filter((m) => m.peerID)) (peers[m.peerID] ||= []).push(m);

  const act = async (what, id) => {
    setErrors((e) => ({ ...e, [id]: null }));
    try {
      await call("/api/models/" + what + "/" + encodeURIComponent(id), { method: "POST" });
    } catch (e) {
      setErrors((old) => ({ ...old, [id]: (what === "load" ? "Load" : "Unload") + " failed: " + e.message }));
    }
  };
  const unloadAll = async () => {
    setBusy(true);
    try {
      await call("/api/models/unload", { method: "POST" });
      setErrors({});
    } catch (e) {
      setErrors({ _all: "Unload all failed: " + e.message });
    } finally {
      setBusy(false);
    }
  };
  const running = models.filter((m) => !m.peerID && ACTIVE.has(m.state)).length;
  const budgets = [...new Set(models.filter((m) => m.memory).map((m) => budgetLeft(m.memory)))];
  return html`<main class="page">
    <div class="page-head">
      <h1>Models</h1>
      <span class="muted">${local.length} local · ${running} running</span>
      ${budgets.length > 0 && html`<span class="pill memory-left" aria-label="GPU memory budget left">GPU memory left: ${budgets.join(" / ")}</span>`}
      <span class="spacer"></span>
      <label class="check"><input type="checkbox" checked=${showUnlisted} onChange=${(e) => setShowUnlisted(e.target.checked)} /> Show unlisted</label>
      <button onClick=${unloadAll} disabled=${!live || busy}>${busy ? "Unloading…" : "Unload all"}</button>
    </div>
    ${errors._all && html`<div class="failure" role="alert">${errors._all}</div>`}
    ${!ever ? html`<div class="card empty">Waiting for llamaswap…</div>`
      : local.length === 0 ? html`<div class="card empty">No models are configured. Add some under <code>models:</code> in the config.</div>`
      : html`<div class="card flush"><table class="models">
        <thead><tr><th>Model</th><th>State</th><th>Facts</th><th><span class="sr-only">Actions</span></th></tr></thead>
        <tbody>${local.map((m) => html`<${ModelRow} key=${m.id} model=${m} seen=${seen[m.id]} now=${now} live=${live} error=${errors[m.id]} act=${act} />`)}</tbody>
      </table></div>`}
    ${Object.keys(peers).length > 0 && html`<h2>Peer models</h2>
      ${Object.entries(peers).map(([peer, list]) => html`<div class="card"><h3>Peer: ${peer}</h3>
        <ul class="peer-list">${list.map((m) => html`<li><span class="pill peer">peer</span> ${m.id}</li>`)}</ul></div>`)}`}
  </main>`;
}

export { store };
