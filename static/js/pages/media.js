// The Playground's Images, Speech, Transcription and Rerank tabs.
import { html, useRef, useState } from "../../vendor/htm-preact.js";
import { call } from "../api.js";
import { useStore } from "../store.js";
import { copyText, load, num, save } from "../util.js";
import { download } from "../api.js";
import { ModelPicker, useOnly } from "./picker.js";

function useModel(key) {
  const [model, setModel] = useState(load(key + "-model", ""));
  return [model, (m) => { save(key + "-model", m); setModel(m); }];
}

function useRun() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const ctrl = useRef(null);
  const run = async (f) => {
    setBusy(true);
    setError(null);
    ctrl.current = new AbortController();
    try { await f(ctrl.current.signal); } catch (e) {
      if (e.name !== "AbortError") setError(e.status ? e.message + " (HTTP " + e.status + ")" : e.message);
    } finally { setBusy(false); ctrl.current = null; }
  };
  const cancel = () => ctrl.current && ctrl.current.abort();
  return { busy, error, run, cancel };
}

function Go({ label, r, disabled, onClick }) {
  const live = useStore((s) => s.conn === "open");
  return r.busy ? html`<button class="danger" onClick=${r.cancel}>Cancel</button>`
    : html`<button class="primary" onClick=${onClick} disabled=${disabled || !live}>${label}</button>`;
}

function Err({ r }) {
  return r.error ? html`<div class="failure" role="alert">${r.error}</div>` : null;
}

const SIZES = ["512x512", "768x768", "1024x1024", "1024x768", "768x1024", "1280x720", "720x1280"];

export function Images() {
  const [model, setModel] = useModel("images");
  const [only, setOnly] = useOnly("images", "images");
  const [prompt, setPrompt] = useState("");
  const [size, setSize] = useState(load("images-size", "512x512"));
  const [images, setImages] = useState([]);
  const r = useRun();
  const go = () => r.run(async (signal) => {
    const res = await call("/v1/images/generations", { method: "POST", signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, prompt, n: 1, size }) });
    const j = await res.json();
    setImages((j.data || []).map((d) => ({ src: d.b64_json ? "data:image/png;base64," + d.b64_json : d.url, broken: false })));
  });
  return html`<div class="media">
    <div class="toolbar"><${ModelPicker} id="images-model" capability="images" value=${model} onChange=${setModel} only=${only} setOnly=${setOnly} />
      <label class="field inline"><span>Size</span><select value=${size} onChange=${(e) => { setSize(e.target.value); save("images-size", e.target.value); }}>
        ${SIZES.map((x) => html`<option value=${x}>${x}</option>`)}</select></label></div>
    <label class="field wide"><span>Prompt</span><textarea rows="3" value=${prompt} onInput=${(e) => setPrompt(e.target.value)} placeholder="A lighthouse at dawn, watercolour"></textarea></label>
    <div class="row"><${Go} label="Generate" r=${r} disabled=${!prompt.trim() || !model} onClick=${go} /><button class="ghost" onClick=${() => setImages([])} disabled=${!images.length}>Clear</button></div>
    <${Err} r=${r} />
    <div class="image-grid">${images.length === 0 && !r.busy ? html`<p class="muted">Enter a prompt and press Generate.</p>` : null}
      ${images.map((im, i) => im.broken
        ? html`<div class="failure" role="alert">The server's answer is not an image this browser can decode.</div>`
        : html`<figure><img src=${im.src} alt=${"Generated image " + (i + 1)}
            onLoad=${(e) => { const { naturalWidth: w, naturalHeight: h } = e.target; setImages((all) => all.map((x, j) => j === i ? { ...x, size: w + "×" + h } : x)); }}
            onError=${() => setImages((all) => all.map((x, j) => j === i ? { ...x, broken: true } : x))} />
          <figcaption>${im.size && html`<span class="muted small">${im.size} px · </span>`}<a href=${im.src} download=${"image-" + (i + 1) + ".png"}>Download</a></figcaption></figure>`)}</div>
  </div>`;
}

export function Speech() {
  const [model, setModel] = useModel("speech");
  const [only, setOnly] = useOnly("speech", "speech");
  const [text, setText] = useState("");
  const [voice, setVoice] = useState(load("speech-voice", "coral"));
  const [voices, setVoices] = useState([]);
  const [clip, setClip] = useState(null);
  const r = useRun();
  const loadVoices = () => r.run(async () => {
    const j = await (await call("/v1/audio/voices?model=" + encodeURIComponent(model))).json();
    setVoices((j.voices || j.data || j || []).map((v) => (typeof v === "string" ? v : v.id || v.name)).filter(Boolean));
  });
  const go = () => r.run(async (signal) => {
    const res = await call("/v1/audio/speech", { method: "POST", signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, input: text, voice }) });
    const blob = await res.blob();
    if (clip) URL.revokeObjectURL(clip.url);
    setClip({ url: URL.createObjectURL(blob), blob, voice, type: blob.type });
  });
  return html`<div class="media">
    <div class="toolbar"><${ModelPicker} id="speech-model" capability="speech" value=${model} onChange=${setModel} only=${only} setOnly=${setOnly} />
      <label class="field inline"><span>Voice</span><input list="voices" value=${voice} onInput=${(e) => { setVoice(e.target.value); save("speech-voice", e.target.value); }} />
        <datalist id="voices">${voices.map((v) => html`<option value=${v}></option>`)}</datalist></label>
      <button class="ghost" onClick=${loadVoices} disabled=${!model}>Load voices</button></div>
    <label class="field wide"><span>Text</span><textarea rows="3" value=${text} onInput=${(e) => setText(e.target.value)} placeholder="Text to speak"></textarea></label>
    <div class="row"><${Go} label="Speak" r=${r} disabled=${!text.trim() || !model} onClick=${go} /></div>
    <${Err} r=${r} />
    ${clip && html`<div class="card"><p class="muted small">Voice ${clip.voice} · ${clip.type || "audio"}</p><audio controls src=${clip.url}></audio>
      <button class="ghost small" onClick=${() => download("speech", clip.blob)}>Download</button></div>`}
  </div>`;
}

export function Transcription() {
  const [model, setModel] = useModel("transcription");
  const [only, setOnly] = useOnly("transcription", "transcription");
  const [file, setFile] = useState(null);
  const [text, setText] = useState("");
  const r = useRun();
  const go = () => r.run(async (signal) => {
    const form = new FormData();
    form.append("model", model);
    form.append("file", file, file.name);
    const res = await call("/v1/audio/transcriptions", { method: "POST", body: form, signal });
    const type = res.headers.get("content-type") || "";
    setText(type.includes("json") ? ((await res.json()).text ?? "") : await res.text());
  });
  return html`<div class="media">
    <div class="toolbar"><${ModelPicker} id="transcription-model" capability="transcription" value=${model} onChange=${setModel} only=${only} setOnly=${setOnly} /></div>
    <label class="field wide dropzone"><span>Audio file (MP3, WAV, OGG, FLAC…)</span><input type="file" accept="audio/*" onChange=${(e) => setFile(e.target.files[0] || null)} /></label>
    <div class="row"><${Go} label="Transcribe" r=${r} disabled=${!file || !model} onClick=${go} /></div>
    <${Err} r=${r} />
    ${text && html`<div class="card"><pre class="wrap">${text}</pre><button class="ghost small" onClick=${() => copyText(text)}>Copy</button></div>`}
  </div>`;
}

const SAMPLE_DOCS = "Paris is the capital of France.\nA transformer is a neural network architecture.\nLlamas are domesticated South American camelids.\nLarge language models predict the next token.";

export function Rerank() {
  const [model, setModel] = useModel("rerank");
  const [only, setOnly] = useOnly("rerank", "rerank");
  const [query, setQuery] = useState("How do language models work?");
  const [docs, setDocs] = useState(load("rerank-docs", SAMPLE_DOCS));
  const [result, setResult] = useState(null);
  const r = useRun();
  const documents = docs.split("\n").map((d) => d.trim()).filter(Boolean);
  const go = () => r.run(async (signal) => {
    const res = await call("/v1/rerank", { method: "POST", signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, query, documents }) });
    const j = await res.json();
    const rows = (j.results || j.data || []).map((x) => ({ index: x.index, score: x.relevance_score ?? x.score, text: documents[x.index] }));
    rows.sort((a, b) => b.score - a.score);
    setResult({ rows, tokens: j.usage && (j.usage.total_tokens ?? j.usage.prompt_tokens) });
  });
  return html`<div class="media">
    <div class="toolbar"><${ModelPicker} id="rerank-model" capability="rerank" value=${model} onChange=${setModel} only=${only} setOnly=${setOnly} /></div>
    <label class="field wide"><span>Query</span><input value=${query} onInput=${(e) => setQuery(e.target.value)} /></label>
    <label class="field wide"><span>Documents (one per line)</span><textarea rows="5" value=${docs} onInput=${(e) => { setDocs(e.target.value); save("rerank-docs", e.target.value); }}></textarea></label>
    <div class="row"><${Go} label="Rerank" r=${r} disabled=${!query.trim() || !documents.length || !model} onClick=${go} /></div>
    <${Err} r=${r} />
    ${result && html`<div class="card flush"><table><caption class="muted small">${result.tokens ? num(result.tokens) + " tokens" : ""}</caption>
      <thead><tr><th>Score</th><th>#</th><th>Document</th></tr></thead>
      <tbody>${result.rows.map((x) => html`<tr><td class="num">${Number(x.score).toFixed(3)}</td><td>${x.index}</td><td>${x.text}</td></tr>`)}</tbody></table></div>`}
  </div>`;
}
