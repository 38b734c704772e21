// The capture viewer: request and response of one exchange, pretty JSON,
// SSE reassembled into the final text, "copy as curl", and pinning (a
// pinned capture is kept in this browser after the server evicts it).
import { html, useEffect, useRef, useState } from "../../vendor/htm-preact.js";
import { getJSON } from "../api.js";
import { foldEvent } from "../chatstream.js";
import { copyText, decodeBase64, load, save, utf8 } from "../util.js";

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

function reassemble(path, text) {
  const endpoint = path.startsWith("/v1/messages") ? "/v1/messages" : path.startsWith("/v1/responses") ? "/v1/responses" : "/v1/chat/completions";
  const acc = { content: "", reasoning: "", usage: null, timings: null };
  for (const block of text.split(/\r?\n\r?\n/)) {
    let name = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    try { if (data.length) foldEvent(endpoint, acc, name, data.join("\n")); } catch (_) { /* an error event */ }
  }
  return acc;
}

export function curlOf(capture, origin = location.origin) {
  const q = (s) => "'" + String(s).replace(/'/g, "'\\''") + "'";
  const parts = ["curl", q(origin + capture.req_path)];
  for (const [k, v] of Object.entries(capture.req_headers || {})) {
    if (/^(host|content-length|connection|accept-encoding|authorization|x-api-key|x-llamaswap-ui)$/i.test(k)) continue;
    parts.push("-H", q(k + ": " + v));
  }
  parts.push("-H", q("Authorization: Bearer $LLAMASWAP_API_KEY"));
  const body = capture.req_body ? utf8(decodeBase64(capture.req_body)) : "";
  if (body) parts.push("--data-raw", q(body));
  return parts.join(" ");
}

function Headers({ headers }) {
  const entries = Object.entries(headers || {});
  if (!entries.length) return html`<p class="muted">(none)</p>`;
  return html`<table class="kv"><tbody>${entries.map(([k, v]) => html`<tr><th>${k}</th><td class="mono">${Array.isArray(v) ? v.join(", ") : v}</td></tr>`)}</tbody></table>`;
}

function Body({ b64, type, path, response }) {
  const [raw, setRaw] = useState(false);
  if (!b64) return html`<p class="muted">(empty)</p>`;
  const bytes = decodeBase64(b64);
  if (/^image\//.test(type || "")) return html`<img class="capture-img" alt="Image in the response" src=${"data:" + type + ";base64," + b64} />`;
  if (type && !/json|text|event-stream|xml|javascript|x-www-form/.test(type)) return html`<p class="muted">(binary data – ${type}, ${bytes.length} bytes)</p>`;
  const text = utf8(bytes);
  const sse = response && /event-stream/.test(type || "");
  let view;
  if (raw) view = html`<pre class="code">${text}</pre>`;
  else if (sse) {
    const acc = reassemble(path, text);
    view = html`<div>${acc.reasoning && html`<h4>Reasoning</h4><pre class="code wrap">${acc.reasoning}</pre>`}<h4>Text</h4><pre class="code wrap">${acc.content || "(no text)"}</pre></div>`;
  } else view = html`<pre class="code">${pretty(text)}</pre>`;
  return html`<div><div class="seg" role="group" aria-label="View">
      <button class=${raw ? "" : "active"} aria-pressed=${!raw} onClick=${() => setRaw(false)}>${sse ? "Reassembled" : "Pretty"}</button>
      <button class=${raw ? "active" : ""} aria-pressed=${raw} onClick=${() => setRaw(true)}>Raw</button>
      <button onClick=${() => copyText(text)}>Copy</button></div>${view}</div>`;
}

function headerValue(headers, name) {
  for (const [k, v] of Object.entries(headers || {})) if (k.toLowerCase() === name) return Array.isArray(v) ? v[0] : v;
  return "";
}

export function CaptureDialog({ entry, onClose }) {
  const ref = useRef(null);
  const pinKey = "pinned-captures";
  const [capture, setCapture] = useState(null);
  const [error, setError] = useState(null);
  const [copied, setCopied] = useState(false);
  const [pinned, setPinned] = useState(!!load(pinKey, {})[entry.key]);
  useEffect(() => {
    const d = ref.current;
    d.showModal();
    const close = () => onClose();
    d.addEventListener("close", close);
    const pins = load(pinKey, {});
    if (pins[entry.key]) setCapture(pins[entry.key]);
    else getJSON("/api/captures/" + entry.id).then(setCapture, (e) => setError(e.status === 404
      ? "Capture not found: the server keeps captures in a buffer of captureBuffer MB, and this one was evicted. Pin a capture to keep it in this browser."
      : e.message));
    return () => d.removeEventListener("close", close);
  }, []);
  const pin = () => {
    const pins = load(pinKey, {});
    if (pinned) delete pins[entry.key]; else pins[entry.key] = capture;
    save(pinKey, pins);
    setPinned(!pinned);
  };
  const onBackdrop = (e) => { if (e.target === ref.current) ref.current.close(); };
  return html`<dialog ref=${ref} class="capture" aria-labelledby="capture-title" onClick=${onBackdrop}>
    <div class="dialog-head"><h2 id="capture-title">Capture #${entry.id} <span class="mono small">${entry.req_path}</span></h2>
      <span class="spacer"></span>
      ${capture && html`<button class="ghost small" onClick=${() => copyText(curlOf(capture)).then(() => setCopied(true))}>${copied ? "Copied" : "Copy as curl"}</button>
        <button class="ghost small" aria-pressed=${pinned} onClick=${pin}>${pinned ? "Unpin" : "Pin"}</button>`}
      <button class="ghost" onClick=${() => ref.current.close()} aria-label="Close">✕</button></div>
    ${error && html`<div class="failure" role="alert">${error}</div>`}
    ${!capture && !error && html`<p class="muted">Loading…</p>`}
    ${capture && html`<div class="capture-body">
      <details open><summary>Request headers</summary><${Headers} headers=${capture.req_headers} /></details>
      <details open><summary>Request body</summary><${Body} b64=${capture.req_body} type=${headerValue(capture.req_headers, "content-type") || "application/json"} path=${capture.req_path} /></details>
      <details><summary>Response headers</summary><${Headers} headers=${capture.resp_headers} /></details>
      <details open><summary>Response body</summary><${Body} b64=${capture.resp_body} type=${headerValue(capture.resp_headers, "content-type")} path=${capture.req_path} response=${true} /></details>
    </div>`}
  </dialog>`;
}
