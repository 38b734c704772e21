// Formatting helpers and markdown rendering (marked + DOMPurify + highlight.js).
import { marked } from "../vendor/marked.js";
import DOMPurify from "../vendor/purify.js";
import hljs from "../vendor/highlight.js";

marked.setOptions({ gfm: true, breaks: false });

export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text || ""), { USE_PROFILES: { html: true } });
}

export function highlightIn(element) {
  if (!element) return;
  for (const block of element.querySelectorAll("pre code:not(.hljs)")) {
    try { hljs.highlightElement(block); } catch (_) { /* unknown language */ }
  }
}

export function seconds(s) {
  if (s === null || s === undefined || isNaN(s)) return "–";
  s = Math.max(0, s);
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// A countdown: "4:05", "1:02:03"; "now" at or past zero.
export function countdown(s) {
  if (s === null || s === undefined || isNaN(s)) return "–";
  s = Math.floor(s);
  if (s <= 0) return "now";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? h + ":" + pad(m) + ":" + pad(r) : m + ":" + pad(r);
}

export function ago(epochSeconds, nowMs = Date.now()) {
  if (!epochSeconds) return "never";
  const s = nowMs / 1000 - epochSeconds;
  if (s < 5) return "just now";
  return seconds(s) + " ago";
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

export function num(n, digits = 0) {
  if (n === null || n === undefined || n < 0 || isNaN(n)) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  return Promise.resolve();
}

export function load(key, fallback) {
  try {
    const v = localStorage.getItem("llamaswap:" + key);
    return v === null ? fallback : JSON.parse(v);
  } catch (_) {
    return fallback;
  }
}

export function save(key, value) {
  try { localStorage.setItem("llamaswap:" + key, JSON.stringify(value)); } catch (_) { /* full */ }
}

export function decodeBase64(b64) {
  if (!b64) return new Uint8Array();
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function utf8(bytesArray) {
  return new TextDecoder("utf-8", { fatal: false }).decode(bytesArray);
}
