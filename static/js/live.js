// The live data channel: one EventSource on /api/events, opened with a
// short-lived token from POST /api/events/token (EventSource cannot send
// the API key), reconnected with backoff.  History is kept across
// reconnects: activity entries are merged, logs continue after the last
// line already shown, performance samples missed while away are read once
// with ?after=.
import { call, getJSON } from "./api.js";
import { store } from "./store.js";

const MAX_LOG_LINES = 4000;
const MAX_ACTIVITY = 5000;
const MAX_SYS_SAMPLES = 2000;    // over an hour at the monitor's fastest (5 s)
const MAX_GPU_SAMPLES = 16000;
let source = null;
let retry = 0;
let timer = null;
let fresh = { proxy: true, upstream: true, metrics: true };

export function connect() {
  clearTimeout(timer);
  if (source) source.close();
  source = null;
  open();
}

export function disconnect() {
  clearTimeout(timer);
  if (source) source.close();
  source = null;
}

async function open() {
  let token;
  try {
    token = (await (await call("/api/events/token", { method: "POST" })).json()).token;
  } catch (e) {
    if (e.status === 401) {
      store.set({ conn: "unauthorized" });
      return;
    }
    return later();
  }
  store.set({ auth: "ok" });
  fresh = { proxy: true, upstream: true, metrics: true };
  const es = new EventSource("/api/events?token=" + encodeURIComponent(token));
  source = es;
  es.onopen = () => {
    retry = 0;
    const again = store.state.everConnected;
    store.set({ conn: "open", everConnected: true });
    if (again && store.state.perf.status === "ok") loadPerformance();   // what the gap missed
    getJSON("/api/version").then((v) => store.set({ version: v }), () => {});
  };
  es.onmessage = (event) => {
    try {
      const outer = JSON.parse(event.data);
      handle(outer.type, JSON.parse(outer.data));
    } catch (e) {
      console.warn("bad event", e);
    }
  };
  es.onerror = () => {
    if (source !== es) return;
    es.close();
    source = null;
    later();
  };
}

function later() {
  store.set({ conn: "reconnecting" });
  const delay = Math.min(1000 * 2 ** retry, 10000);
  retry += 1;
  timer = setTimeout(open, delay);
}

function handle(type, data) {
  if (type === "modelStatus") return models(data);
  if (type === "logData") return logData(data.source, data.data);
  if (type === "metrics") return metrics(data);
  if (type === "inflight") return store.set({ inflight: data.total });
  if (type === "performance") return addPerformance(data);
}

const stamp = (r) => Date.parse(r.timestamp);

// Merge performance records into `old` (oldest first), once each.
function mergeSamples(old, added, keyOf, max) {
  if (!added.length) return old;
  const known = new Set(old.map(keyOf));
  const fresh = added.filter((r) => !known.has(keyOf(r)));
  if (!fresh.length) return old;
  let next = old.concat(fresh);
  if (old.length && stamp(fresh[0]) < stamp(old[old.length - 1])) next.sort((a, b) => stamp(a) - stamp(b));
  return next.length > max ? next.slice(next.length - max) : next;
}

function addPerformance(data) {
  const perf = store.state.perf;
  store.set({ perf: {
    ...perf,
    // Samples arriving mean a monitor runs (a reload may have enabled it).
    status: perf.status === "disabled" ? "ok" : perf.status,
    sys: mergeSamples(perf.sys, data.sys_stats || [], (r) => r.timestamp, MAX_SYS_SAMPLES),
    gpu: mergeSamples(perf.gpu, data.gpu_stats || [], (r) => r.timestamp + "/" + r.id, MAX_GPU_SAMPLES),
  } });
}

// Read the kept samples from GET /api/performance (those after the newest
// already here, if any) and merge them with what the stream brought.  Once
// when the Performance page first opens, and after a reconnection.
export async function loadPerformance() {
  const perf = store.state.perf;
  if (perf.status === "idle") store.set({ perf: { ...perf, status: "loading" } });
  const last = perf.status === "ok" && perf.sys.length ? perf.sys[perf.sys.length - 1].timestamp : "";
  try {
    const j = await getJSON("/api/performance" + (last ? "?after=" + encodeURIComponent(last) : ""));
    addPerformance(j);
    store.set({ perf: { ...store.state.perf, status: "ok", message: "" } });
  } catch (e) {
    if (e.status === 503) store.set({ perf: { ...store.state.perf, status: "disabled" } });
    else if (store.state.perf.status !== "ok") store.set({ perf: { ...store.state.perf, status: "error", message: e.message } });
  }
}

function models(list) {
  const now = Date.now() / 1000;
  // When this page heard each record: a load's elapsed time keeps counting
  // from there between two progress reports.
  for (const m of list) m.heardAt = now;
  const seen = { ...store.state.seen };
  for (const m of list) {
    const before = seen[m.id];
    if (!before || before.state !== m.state) seen[m.id] = { state: m.state, at: m.since || now };
  }
  store.set({ models: list, seen });
}

function splitLines(text) {
  const lines = text.split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function logData(name, text) {
  const logs = store.state.logs;
  const old = logs[name] || [];
  const at = Date.now();
  let lines = splitLines(text);
  let added;
  if (fresh[name]) {
    // The first message of a (re)connection is the server's whole history.
    fresh[name] = false;
    if (old.length) {
      const last = old[old.length - 1].text;
      const i = lines.lastIndexOf(last);
      if (i >= 0) lines = lines.slice(i + 1);
      else if (lines.length) old.push({ text: "— llamaswap restarted; history below is the new server's —", at, level: "mark" });
      added = lines.map((t) => line(t, at));
    } else {
      added = lines.map((t) => line(t, null));
    }
  } else {
    added = lines.map((t) => line(t, at));
  }
  const next = old.concat(added);
  const bounded = next.length > MAX_LOG_LINES ? next.slice(next.length - MAX_LOG_LINES) : next;
  store.set({ logs: { ...logs, [name]: bounded }, logSeq: store.state.logSeq + 1 });
}

export function levelOf(text) {
  const m = /\[(ERROR|WARN|WARNING|INFO|DEBUG)\]/.exec(text);
  if (m) return m[1] === "WARNING" ? "warn" : m[1].toLowerCase();
  if (/\b(error|fatal|panic|traceback|failed)\b/i.test(text)) return "error";
  if (/\bwarn(ing)?\b/i.test(text)) return "warn";
  return "info";
}

function line(text, at) {
  return { text, at, level: levelOf(text) };
}

function metrics(entries) {
  let { activity, epoch } = store.state;
  if (fresh.metrics) {
    fresh.metrics = false;
    const known = new Set(activity.filter((a) => a.epoch === epoch).map((a) => a.id));
    const maxKnown = Math.max(-1, ...known);
    const maxNew = Math.max(-1, ...entries.map((e) => e.id));
    if (activity.length && maxNew < maxKnown) epoch += 1;   // the server restarted
  }
  const added = entries.map((e) => ({ ...e, epoch, key: epoch + ":" + e.id }));
  const keys = new Set(added.map((e) => e.key));
  let next = activity.filter((a) => !keys.has(a.key)).concat(added);
  if (next.length > MAX_ACTIVITY) next = next.slice(next.length - MAX_ACTIVITY);
  store.set({ activity: next, epoch });
}

export function clearLog(name) {
  store.set({ logs: { ...store.state.logs, [name]: [] }, logSeq: store.state.logSeq + 1 });
}
