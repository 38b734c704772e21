// One small store for what the event stream and the pages share, with a
// hook that re-renders a component when the part it reads changes.
import { useEffect, useState } from "../vendor/htm-preact.js";

const listeners = new Set();

export const store = {
  state: {
    conn: "connecting",      // connecting | open | reconnecting | unauthorized
    auth: "unknown",         // unknown | ok | needed | invalid
    everConnected: false,
    models: [],
    seen: {},                // model id -> {state, at}: when this page saw a state begin
    inflight: 0,
    activity: [],            // newest last; entries get a `key`
    epoch: 0,
    logs: { proxy: [], upstream: [] },
    logSeq: 0,
    // Performance samples (GET /api/performance records), oldest first:
    // history read once, then each new sample from the event stream.
    perf: { sys: [], gpu: [], status: "idle", message: "" },   // idle | loading | ok | disabled | error
    version: null,
    playgroundBusy: false,
  },
  set(patch) {
    this.state = { ...this.state, ...(typeof patch === "function" ? patch(this.state) : patch) };
    for (const f of listeners) f(this.state);
  },
};

export function useStore(select) {
  const [value, setValue] = useState(() => select(store.state));
  useEffect(() => {
    let last = select(store.state);
    setValue(() => last);
    const f = (s) => {
      const next = select(s);
      if (next !== last) {
        last = next;
        setValue(() => next);
      }
    };
    listeners.add(f);
    return () => listeners.delete(f);
  }, []);
  return value;
}

// Re-render every `ms` (relative times, countdowns): a clock, not a poll.
export function useNow(ms = 1000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

export function online() {
  return store.state.conn === "open";
}
