// Playground: chat (streamed over three APIs) and the media tabs.
import { html, useEffect, useRef, useState } from "../../vendor/htm-preact.js";
import { call } from "../api.js";
import { answerStats, buildRequest, foldEvent, readSSE } from "../chatstream.js";
import { store, useNow, useStore } from "../store.js";
import { copyText, highlightIn, load, num, renderMarkdown, save, seconds } from "../util.js";
import { download } from "../api.js";
import { ModelPicker, useOnly } from "./picker.js";
import { Images, Rerank, Speech, Transcription } from "./media.js";

const TABS = ["Chat", "Images", "Speech", "Transcription", "Rerank"];
const DEFAULTS = { endpoint: "/v1/chat/completions", system: "", temperature: 0.7, maxTokens: 1024, topP: "", seed: "", stop: "", extra: "" };

export function Playground() {
  const [tab, setTab] = useState(load("tab", "Chat"));
  const pick = (t) => { setTab(t); save("tab", t); };
  const onKey = (e) => {
    const i = TABS.indexOf(tab);
    if (e.key === "ArrowRight") pick(TABS[(i + 1) % TABS.length]);
    if (e.key === "ArrowLeft") pick(TABS[(i + TABS.length - 1) % TABS.length]);
  };
  return html`<main class="page playground">
    <div class="tabs" role="tablist" aria-label="Playground" onKeyDown=${onKey}>
      ${TABS.map((t) => html`<button role="tab" id=${"tab-" + t} aria-selected=${t === tab} aria-controls=${"panel-" + t}
        tabindex=${t === tab ? 0 : -1} class=${t === tab ? "active" : ""} onClick=${() => pick(t)}>${t}</button>`)}
    </div>
    ${TABS.map((t) => html`<section role="tabpanel" id=${"panel-" + t} aria-labelledby=${"tab-" + t} hidden=${t !== tab} class="tabpanel">
      ${t === "Chat" ? html`<${Chat} />` : t === "Images" ? html`<${Images} />` : t === "Speech" ? html`<${Speech} />`
        : t === "Transcription" ? html`<${Transcription} />` : html`<${Rerank} />`}</section>`)}
  </main>`;
}

function Markdown({ text }) {
  const ref = useRef(null);
  useEffect(() => highlightIn(ref.current), [text]);
  return html`<div class="md" ref=${ref} dangerouslySetInnerHTML=${{ __html: renderMarkdown(text) }}></div>`;
}

function Stats({ stats }) {
  if (!stats) return null;
  const parts = [];
  if (stats.input !== undefined && stats.input !== null) parts.push(num(stats.input) + " in");
  if (stats.output !== undefined && stats.output !== null) parts.push(num(stats.output) + " out");
  if (stats.speed) parts.push(num(stats.speed, 1) + " tok/s");
  if (stats.ttft !== null && stats.ttft !== undefined) parts.push("first token " + seconds(stats.ttft));
  parts.push(seconds(stats.seconds) + " total");
  return html`<span class="stats" title="Tokens and speed of this answer">${parts.join(" · ")}</span>`;
}

function Waiting({ model, started }) {
  const m = useStore((s) => s.models.find((x) => x.id === model || (x.aliases || []).includes(model)));
  const now = useNow(500);
  if (m && m.state !== "ready") {
    return html`<div class="waiting" role="status"><span class="spinner" aria-hidden="true"></span> Loading ${m.id}… ${seconds((now - started) / 1000)}</div>`;
  }
  return html`<div class="waiting" role="status"><span class="spinner" aria-hidden="true"></span> Waiting for the first token… ${seconds((now - started) / 1000)}</div>`;
}

function Message({ m, index, busy, onEdit, onRegenerate, onRetry }) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(m.content);
  const [copied, setCopied] = useState(false);
  if (m.role === "user") {
    if (editing) {
      return html`<div class="msg user editing"><label class="sr-only" for=${"edit-" + index}>Edit message</label>
        <textarea id=${"edit-" + index} value=${draft} onInput=${(e) => setDraft(e.target.value)} rows="3"></textarea>
        <div class="msg-actions"><button onClick=${() => setEditing(false)}>Cancel</button>
        <button class="primary" onClick=${() => { setEditing(false); onEdit(index, draft); }}>Save and resend</button></div></div>`;
    }
    return html`<div class="msg user">${(m.images || []).length ? html`<div class="thumbs">${m.images.map((src, i) => html`<img src=${src} alt=${"Attached image " + (i + 1)} />`)}</div>` : null}
      <div class="bubble">${m.content}</div>
      <div class="msg-actions"><button class="ghost small" disabled=${busy} onClick=${() => { setDraft(m.content); setEditing(true); }} aria-label="Edit message">✎ Edit</button></div></div>`;
  }
  const copy = () => copyText(m.content).then(() => { setCopied(true); setTimeout(() => setCopied(false), 1500); });
  return html`<article class=${"msg assistant" + (m.error ? " has-error" : "")} aria-label="Answer">
    ${m.reasoning && html`<details class="reasoning" open=${m.streaming && !m.content}><summary>Reasoning (${m.reasoning.length} chars)</summary><div class="reasoning-text">${m.reasoning}</div></details>`}
    ${m.streaming && !m.content && !m.reasoning && html`<${Waiting} model=${m.model} started=${m.started} />`}
    ${m.content && html`<${Markdown} text=${m.content} />`}
    ${m.streaming && m.content && html`<span class="cursor" aria-hidden="true">▍</span>`}
    ${m.error && html`<div class="failure" role="alert"><strong>Request failed:</strong> ${m.error}
      <button class="small" onClick=${() => onRetry(index)} disabled=${busy}>Retry</button></div>`}
    ${!m.streaming && html`<div class="msg-actions">
      <span class="muted small">${m.model}${m.endpoint && m.endpoint !== DEFAULTS.endpoint ? " · " + m.endpoint : ""}${m.stopped ? " · stopped" : ""}</span>
      <${Stats} stats=${m.stats} />
      <span class="spacer"></span>
      <button class="ghost small" onClick=${copy} disabled=${!m.content}>${copied ? "Copied" : "Copy"}</button>
      <button class="ghost small" onClick=${() => onRegenerate(index)} disabled=${busy}>Regenerate</button></div>`}
  </article>`;
}

function Settings({ s, set }) {
  let extraError = null;
  if (s.extra.trim()) { try { JSON.parse(s.extra); } catch (e) { extraError = e.message; } }
  const field = (key, label, type = "text", attrs = {}) => html`<label class="field"><span>${label}</span>
    <input type=${type} value=${s[key]} onInput=${(e) => set({ [key]: e.target.value })} ...${attrs} /></label>`;
  return html`<div class="settings card">
    <label class="field"><span>Endpoint</span><select value=${s.endpoint} onChange=${(e) => set({ endpoint: e.target.value })}>
      <option value="/v1/chat/completions">OpenAI /v1/chat/completions</option>
      <option value="/v1/messages">Anthropic /v1/messages</option>
      <option value="/v1/responses">OpenAI /v1/responses</option></select></label>
    <label class="field wide"><span>System prompt</span><textarea rows="2" value=${s.system} onInput=${(e) => set({ system: e.target.value })}></textarea></label>
    <label class="field"><span>Temperature: ${s.temperature}</span><input type="range" min="0" max="2" step="0.05" value=${s.temperature} onInput=${(e) => set({ temperature: e.target.value })} /></label>
    ${field("maxTokens", "Max tokens", "number", { min: 1 })}
    ${field("topP", "Top-p", "number", { min: 0, max: 1, step: 0.05, placeholder: "default" })}
    ${field("seed", "Seed", "number", { placeholder: "random" })}
    ${field("stop", "Stop (comma-separated)", "text", { placeholder: "none" })}
    <label class="field wide"><span>Extra JSON (merged into the request)</span><textarea rows="2" class="mono" placeholder='{"top_k": 40}' value=${s.extra} onInput=${(e) => set({ extra: e.target.value })}></textarea>
      ${extraError && html`<span class="error small" role="alert">Not valid JSON: ${extraError}</span>`}</label>
    <button class="ghost small" onClick=${() => set(DEFAULTS)}>Reset settings</button>
  </div>`;
}

function Chat() {
  const [model, setModel] = useState(load("chat-model", ""));
  const [only, setOnly] = useOnly("chat", "chat");
  const [s, setS] = useState({ ...DEFAULTS, ...load("chat-settings", {}) });
  const [showSettings, setShowSettings] = useState(false);
  const [messages, setMessages] = useState(load("chat-messages", []).map((m) => ({ ...m, streaming: false })));
  const [input, setInput] = useState("");
  const [images, setImages] = useState([]);
  const [attachError, setAttachError] = useState(null);
  const [saved, setSaved] = useState(load("chat-saved", []));
  const [naming, setNaming] = useState(null);
  const [busy, setBusy] = useState(false);
  const abort = useRef(null);
  const list = useRef(null);
  const stick = useRef(true);
  const live = useStore((st) => st.conn === "open");
  const set = (patch) => setS((old) => { const n = { ...old, ...patch }; save("chat-settings", n); return n; });
  useEffect(() => { save("chat-model", model); }, [model]);
  useEffect(() => {
    const t = setTimeout(() => save("chat-messages", messages.map(({ streaming, ...m }) => m)), busy ? 1000 : 0);
    return () => clearTimeout(t);
  }, [messages]);
  useEffect(() => { if (stick.current && list.current) list.current.scrollTop = list.current.scrollHeight; }, [messages]);
  useEffect(() => { store.set({ playgroundBusy: busy }); }, [busy]);

  const run = async (history) => {
    const endpoint = s.endpoint;
    let body;
    try { body = buildRequest(endpoint, model, history, s); } catch (e) {
      setMessages([...history, { role: "assistant", content: "", error: "the extra JSON is not valid: " + e.message, model, endpoint }]);
      return;
    }
    const started = Date.now();
    const acc = { content: "", reasoning: "", usage: null, timings: null };
    let first = null;
    const answer = () => ({ role: "assistant", content: acc.content, reasoning: acc.reasoning, model, endpoint, started, streaming: true });
    setMessages([...history, answer()]);
    setBusy(true);
    stick.current = true;
    const controller = new AbortController();
    abort.current = controller;
    let error = null, stopped = false, frame = 0;
    try {
      const response = await call(endpoint, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" }, signal: controller.signal });
      await readSSE(response, (name, data) => {
        foldEvent(endpoint, acc, name, data);
        if (first === null && (acc.content || acc.reasoning)) first = Date.now();
        if (!frame) frame = requestAnimationFrame(() => { frame = 0; setMessages([...history, answer()]); });
      });
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else error = e.status ? e.message + " (HTTP " + e.status + ")" : e.message;
    }
    if (frame) cancelAnimationFrame(frame);
    const end = Date.now();
    setMessages([...history, { ...answer(), streaming: false, stopped, error, stats: error ? null : answerStats(acc, started, first, end) }]);
    setBusy(false);
    abort.current = null;
  };

  const send = () => {
    const text = input.trim();
    if ((!text && !images.length) || busy || !model) return;
    setInput("");
    const user = { role: "user", content: text };
    if (images.length) user.images = images;
    setImages([]);
    run([...messages.filter((m) => !m.error || m.content), user]);
  };
  const attach = (e) => {
    setAttachError(null);
    const files = [...e.target.files];
    e.target.value = "";
    for (const f of files) {
      if (!/^image\/(png|jpeg|gif|webp)$/.test(f.type)) { setAttachError(f.name + ": only PNG, JPEG, GIF and WebP images"); continue; }
      if (f.size > 20 * 1024 * 1024) { setAttachError(f.name + ": larger than 20 MB"); continue; }
      const reader = new FileReader();
      reader.onload = () => setImages((old) => (old.length >= 5 ? (setAttachError("at most 5 images per message"), old) : [...old, reader.result]));
      reader.readAsDataURL(f);
    }
  };
  const keep = (list) => { setSaved(list); save("chat-saved", list); };
  const saveAs = (e) => {
    e.preventDefault();
    const name = (naming || "").trim() || "Conversation " + (saved.length + 1);
    keep([{ name, at: Date.now(), model, messages: messages.map(({ streaming, ...m }) => m) }, ...saved.filter((c) => c.name !== name)]);
    setNaming(null);
  };
  const open = (name) => {
    const c = saved.find((x) => x.name === name);
    if (!c) return;
    if (abort.current) abort.current.abort();
    setMessages(c.messages);
    if (c.model) setModel(c.model);
  };
  const onKey = (e) => { if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); } };
  const upTo = (i) => messages.slice(0, i).map(({ streaming, ...m }) => m);
  const regenerate = (i) => run(upTo(i));
  const edit = (i, text) => run([...upTo(i), { role: "user", content: text }]);
  const newChat = () => { if (abort.current) abort.current.abort(); setMessages([]); };
  const exportChat = () => download("llamaswap-chat.json", new Blob([JSON.stringify({ model, settings: s, messages }, null, 2)], { type: "application/json" }));
  const onScroll = (e) => { const el = e.target; stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40; };

  return html`<div class="chat">
    <div class="toolbar">
      <${ModelPicker} id="chat-model" capability="chat" value=${model} onChange=${setModel} only=${only} setOnly=${setOnly} disabled=${busy} />
      <span class="spacer"></span>
      <button class="ghost" aria-expanded=${showSettings} onClick=${() => setShowSettings(!showSettings)}>⚙ Settings</button>
      ${saved.length > 0 && html`<select aria-label="Saved conversations" value="" onChange=${(e) => open(e.target.value)} disabled=${busy}>
        <option value="">Saved conversations…</option>${saved.map((c) => html`<option value=${c.name}>${c.name}</option>`)}</select>`}
      ${naming === null ? html`<button class="ghost" onClick=${() => setNaming("")} disabled=${!messages.length || busy}>Save</button>`
        : html`<form class="inline-form" onSubmit=${saveAs}><label class="sr-only" for="chat-name">Conversation name</label>
          <input id="chat-name" placeholder="Conversation name" value=${naming} onInput=${(e) => setNaming(e.target.value)} autofocus />
          <button class="primary" type="submit">Save conversation</button><button class="ghost" type="button" onClick=${() => setNaming(null)}>Cancel</button></form>`}
      <button class="ghost" onClick=${exportChat} disabled=${!messages.length}>Export</button>
      <button class="ghost" onClick=${newChat} disabled=${!messages.length}>New chat</button>
    </div>
    ${showSettings && html`<${Settings} s=${s} set=${set} />`}
    <div class="messages" ref=${list} onScroll=${onScroll} aria-live="polite">
      ${messages.length === 0 && html`<div class="empty muted">Start a conversation: type a message below. Enter sends, Shift+Enter adds a line.</div>`}
      ${messages.map((m, i) => html`<${Message} key=${i + ":" + m.role} m=${m} index=${i} busy=${busy} onEdit=${edit} onRegenerate=${regenerate} onRetry=${regenerate} />`)}
    </div>
    ${(images.length > 0 || attachError) && html`<div class="attachments">
      ${images.map((src, i) => html`<span class="thumb"><img src=${src} alt=${"Image " + (i + 1) + " to send"} />
        <button class="ghost small" aria-label=${"Remove image " + (i + 1)} onClick=${() => setImages(images.filter((_, j) => j !== i))}>✕</button></span>`)}
      ${attachError && html`<span class="error small" role="alert">${attachError}</span>`}</div>`}
    <div class="composer">
      <label class="attach ghost" title="Attach images (PNG, JPEG, GIF, WebP; 5 at most, 20 MB each)"><span aria-hidden="true">+ Image</span><span class="sr-only">Attach image</span>
        <input type="file" accept="image/png,image/jpeg,image/gif,image/webp" multiple onChange=${attach} disabled=${busy} /></label>
      <label for="chat-input" class="sr-only">Message</label>
      <textarea id="chat-input" rows="3" placeholder=${model ? "Message " + model + "…" : "Pick a model first"} value=${input}
        onInput=${(e) => setInput(e.target.value)} onKeyDown=${onKey} disabled=${!model}></textarea>
      ${busy ? html`<button class="danger" onClick=${() => abort.current && abort.current.abort()}>Stop</button>`
        : html`<button class="primary" onClick=${send} disabled=${(!input.trim() && !images.length) || !model || !live}>Send</button>`}
    </div>
  </div>`;
}
