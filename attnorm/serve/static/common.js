// Shared helpers of the attnorm pages: API calls with readable errors, server info, formatting.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Turn a non-2xx response into an ApiError carrying the server's one-line message.
export async function errorFrom(resp) {
  let msg = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) msg = body.error;
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(resp.status, msg);
}

export async function getJSON(path) {
  let resp;
  try { resp = await fetch(path, { cache: "no-store" }); }
  catch (e) { throw new ApiError(0, "cannot reach the attnorm server (is `attnorm serve` still running?)"); }
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}

export async function postJSON(path, body) {
  let resp;
  try {
    resp = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body) });
  } catch (e) { throw new ApiError(0, "cannot reach the attnorm server (is `attnorm serve` still running?)"); }
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}

let healthPromise = null;
export function health() {
  if (!healthPromise) healthPromise = getJSON("/api/health");
  return healthPromise;
}

export function fmtMP(pixels) { return `${(pixels / 1e6).toFixed(1)} MP`; }
export function fmtBytes(n) {
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${n} bytes`;
}

// Decode a data: URL into a Blob without the network (works under the page's CSP).
export function dataURLToBlob(url) {
  const comma = url.indexOf(",");
  const mime = url.slice(5, url.indexOf(";"));
  const bin = atob(url.slice(comma + 1));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type: mime });
}

export function $(id) { return document.getElementById(id); }

export function setModelInfo(text, ok = true) {
  const el = $("model-info");
  el.textContent = text;
  el.classList.toggle("bad", !ok);
}

// The help dialog and the "?" key, on every page that has one.
export function setupHelp() {
  const dlg = $("help"), btn = $("btn-help");
  if (!dlg || !btn) return;
  btn.addEventListener("click", () => dlg.showModal());
  document.addEventListener("keydown", (e) => {
    if (e.key === "?" && !e.ctrlKey && !e.metaKey && !isTyping(e)) { e.preventDefault(); dlg.showModal(); }
  });
}

export function isTyping(e) {
  const t = e.target;
  return t && (t.tagName === "INPUT" && !["range", "checkbox", "radio", "button", "file"].includes(t.type)
               || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
}
