// The UI's HTTP calls: every call carries the UI's header (so a 401 comes
// without a Basic-auth challenge) and the API key kept in session storage.
import { store } from "./store.js";

const KEY = "llamaswap-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export function headers(extra = {}) {
  const h = { "X-LlamaSwap-UI": "1", ...extra };
  const key = apiKey();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

// The message of an OpenAI-style error body, or the text itself.
export function errorMessage(status, text) {
  try {
    const parsed = JSON.parse(text);
    const e = parsed.error;
    if (e && typeof e === "object" && e.message) return e.message;
    if (typeof e === "string") return e;
    if (parsed.message) return parsed.message;
  } catch (_) { /* not JSON */ }
  return (text || "").trim().slice(0, 500) || "HTTP " + status;
}

// fetch() with the UI's headers; a 401 marks the session unauthorised.
// Resolves with the Response when it is ok, else rejects with an ApiError.
export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "llamaswap is unreachable (" + e.message + ")");
  }
  if (response.status === 401) store.set({ auth: apiKey() ? "invalid" : "needed" });
  if (!response.ok) {
    const text = await response.text();
    throw new ApiError(response.status, errorMessage(response.status, text), text);
  }
  return response;
}

export async function getJSON(path, options) {
  return (await call(path, options)).json();
}

export async function postJSON(path, body, options = {}) {
  const init = { method: "POST", ...options };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  }
  return call(path, init);
}

// Save a Blob as a file.
export function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
