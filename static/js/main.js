// The shell: header, navigation (hash routes), connection banner, theme,
// the API-key prompt, and the page of the current route.
import { html, render, useEffect, useState } from "../vendor/htm-preact.js";
import { apiKey, setApiKey } from "./api.js";
import { connect, disconnect } from "./live.js";
import { store, useStore } from "./store.js";
import { load, save } from "./util.js";
import { Playground } from "./pages/playground.js";
import { Models } from "./pages/models.js";
import { Activity } from "./pages/activity.js";
import { Logs } from "./pages/logs.js";
import { Performance } from "./pages/performance.js";
import { ConfigPage } from "./pages/config.js";

const PAGES = [
  { path: "/", name: "Playground", icon: "✦", view: Playground },
  { path: "/models", name: "Models", icon: "▤", view: Models },
  { path: "/activity", name: "Activity", icon: "≋", view: Activity },
  { path: "/logs", name: "Logs", icon: "☰", view: Logs },
  { path: "/performance", name: "Performance", icon: "◔", view: Performance },
  { path: "/config", name: "Config", icon: "⚙", view: ConfigPage },
];

// /ui/models (the reference's path routes, and /upstream's redirect) -> #/models
(function pathToHash() {
  const rest = location.pathname.replace(/^\/ui\/?/, "");
  if (rest && !location.hash) history.replaceState(null, "", "/ui/#/" + rest);
})();

function route() {
  const h = location.hash.replace(/^#/, "") || "/";
  return h.split("?")[0];
}

function applyTheme(mode) {
  const dark = mode === "dark" || (mode === "system" && matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  document.getElementById("hljs-dark").disabled = !dark;
  document.getElementById("hljs-light").disabled = dark;
}

function Theme() {
  const [mode, setMode] = useState(load("theme", "system"));
  useEffect(() => {
    applyTheme(mode);
    save("theme", mode);
    const mq = matchMedia("(prefers-color-scheme: dark)");
    const f = () => applyTheme(mode);
    mq.addEventListener("change", f);
    return () => mq.removeEventListener("change", f);
  }, [mode]);
  return html`<label class="theme"><span class="sr-only">Theme</span>
    <select aria-label="Theme" value=${mode} onChange=${(e) => setMode(e.target.value)}>
      <option value="system">◐ System</option><option value="light">☀ Light</option><option value="dark">☾ Dark</option>
    </select></label>`;
}

function Status() {
  const conn = useStore((s) => s.conn);
  const version = useStore((s) => s.version);
  const label = { open: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", unauthorized: "Signed out" }[conn];
  const title = "Event stream: " + conn + (version ? " · llamaswap " + version.version : "");
  return html`<span class=${"conn conn-" + conn} title=${title} role="status"><span class="dot" aria-hidden="true"></span>${label}</span>`;
}

function Banner() {
  const conn = useStore((s) => s.conn);
  const ever = useStore((s) => s.everConnected);
  if (conn === "open" || conn === "unauthorized") return null;
  if (!ever) return html`<div class="banner info" role="status">Connecting to llamaswap…</div>`;
  return html`<div class="banner warn" role="alert">Reconnecting to llamaswap — data may be stale; actions are disabled until the connection is back.</div>`;
}

function KeyPrompt() {
  const auth = useStore((s) => s.auth);
  const [key, setKey] = useState("");
  const submit = (e) => {
    e.preventDefault();
    if (!key.trim()) return;
    setApiKey(key.trim());
    store.set({ auth: "unknown", conn: "connecting" });
    connect();
  };
  return html`<main class="page signin">
    <form class="card signin-card" onSubmit=${submit}>
      <h1>Sign in to llamaswap</h1>
      <p>This llamaswap is protected by API keys (<code>apiKeys</code> in its config). Enter one of them: it is kept in this tab's session storage only, and sent with each of the UI's calls.</p>
      ${auth === "invalid" && html`<p class="error" role="alert">Unauthorised: that API key was refused.</p>`}
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="current-password" value=${key} onInput=${(e) => setKey(e.target.value)} autofocus />
      <button class="primary" type="submit">Sign in</button>
    </form></main>`;
}

function signOut() {
  setApiKey("");
  disconnect();
  store.set({ auth: "needed", conn: "unauthorized" });
}

function NotFound() {
  return html`<main class="page"><div class="card empty"><h1>Not found</h1>
    <p>There is no page at <code>${location.hash}</code>.</p><p><a href="#/">Go to the Playground</a></p></div></main>`;
}

function App() {
  const [path, setPath] = useState(route());
  const conn = useStore((s) => s.conn);
  const busy = useStore((s) => s.playgroundBusy);
  useEffect(() => {
    const f = () => setPath(route());
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  const page = PAGES.find((p) => p.path === path);
  useEffect(() => {
    const dot = { open: "🟢", connecting: "🟡", reconnecting: "🟡", unauthorized: "🔴" }[conn];
    document.title = dot + " " + (page ? page.name : "Not found") + " · llamaswap";
  }, [conn, page]);
  const View = page ? page.view : NotFound;
  return html`
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <a class="brand" href="#/"><span class="logo" aria-hidden="true">⇄</span> llamaswap</a>
      <nav aria-label="Main">
        ${PAGES.map((p) => html`<a href=${"#" + p.path} class=${(p === page ? "active" : "") + (p.path === "/" && busy ? " busy" : "")}
            aria-current=${p === page ? "page" : undefined}><span class="icon" aria-hidden="true">${p.icon}</span><span class="label">${p.name}</span></a>`)}
      </nav>
      <div class="tools">
        <${Status} />
        <${Theme} />
        ${apiKey() && conn !== "unauthorized" && html`<button class="ghost" onClick=${signOut}>Sign out</button>`}
      </div>
    </header>
    <${Banner} />
    <div id="main" class=${"content" + (conn === "reconnecting" ? " stale" : "")}>
      ${conn === "unauthorized" ? html`<${KeyPrompt} />` : html`<${View} key=${path} />`}
    </div>`;
}

applyTheme(load("theme", "system"));
const root = document.getElementById("app");
root.textContent = "";
render(html`<${App} />`, root);
connect();
