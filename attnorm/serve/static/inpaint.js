// The inpainting page: open an image, paint the hole, run POST /api/inpaint, compare, download.
//
// State is a list of operations (strokes, uploaded masks, clears, inpainting results) so that undo
// and redo are exact and cheap: the mask is re-drawn from the operations since the last result, and
// a result operation keeps the image before and after it (undoing it brings back the image and the
// mask that produced it). Painting happens on an off-screen canvas at the image's resolution; the
// visible canvas only draws the image, the layout overlay and the mask under the zoom/pan transform.

import { $, ApiError, dataURLToBlob, fmtBytes, fmtMP, getJSON, health, isTyping, setModelInfo,
         setupHelp } from "./common.js";

const MASK_RGB = [255, 48, 96];
const MASK_STYLE = `rgb(${MASK_RGB.join(",")})`;
const MASK_ALPHA = 0.5;       // how the hole is shown over the image
const MIN_SCALE = 0.02, MAX_SCALE = 64;

const view = $("view");
const vctx = view.getContext("2d");
const viewport = $("viewport");
const mask = document.createElement("canvas");           // the hole: MASK_RGB where painted (alpha = coverage)
const mctx = mask.getContext("2d", { willReadFrequently: true });

const S = {
  image: null,          // {canvas, blob, name, width, height}: the image as opened
  ops: [], redo: [],    // operations; see applyOp
  stroke: null,         // the stroke being painted
  tool: "brush", size: 40,
  scale: 1, tx: 0, ty: 0, fitted: true,
  comparing: false, layout: false, layoutOpacity: 0.6,
  busy: false, space: false, pan: null,
  limits: null, layoutsAvailable: false, holePixels: 0,
};

// ------------------------------------------------------------------ state helpers
function lastResult() {
  for (let i = S.ops.length - 1; i >= 0; i--) if (S.ops[i].t === "result") return S.ops[i];
  return null;
}
function current() { const r = lastResult(); return r ? r.after : S.image; }

function drawDot(ctx, op, p) {
  ctx.beginPath();
  ctx.arc(p[0], p[1], op.size / 2, 0, 2 * Math.PI);
  ctx.fill();
}
function drawSegment(ctx, op, a, b) {
  ctx.beginPath();
  ctx.moveTo(a[0], a[1]);
  ctx.lineTo(b[0], b[1]);
  ctx.stroke();
}
function strokeStyle(ctx, op) {
  ctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
  ctx.fillStyle = ctx.strokeStyle = MASK_STYLE;
  ctx.lineWidth = op.size;
  ctx.lineCap = ctx.lineJoin = "round";
}
// Strokes are drawn as a dot and then segment by segment, live and on replay alike, so that a
// replayed stroke (undo / redo) gives exactly the pixels it gave while it was painted.
function applyOp(op) {
  if (op.t === "stroke") {
    mctx.save();
    strokeStyle(mctx, op);
    drawDot(mctx, op, op.pts[0]);
    for (let i = 1; i < op.pts.length; i++) drawSegment(mctx, op, op.pts[i - 1], op.pts[i]);
    mctx.restore();
  } else if (op.t === "mask") {
    mctx.clearRect(0, 0, mask.width, mask.height);
    mctx.drawImage(op.canvas, 0, 0);
  } else if (op.t === "clear") {
    mctx.clearRect(0, 0, mask.width, mask.height);
  }
}
function rebuildMask() {
  mctx.clearRect(0, 0, mask.width, mask.height);
  let start = 0;
  for (let i = S.ops.length - 1; i >= 0; i--) if (S.ops[i].t === "result") { start = i + 1; break; }
  for (let i = start; i < S.ops.length; i++) applyOp(S.ops[i]);
}
function pushOp(op) {
  S.ops.push(op);
  S.redo = [];
}
function countHole() {
  if (!S.image) return 0;
  const d = mctx.getImageData(0, 0, mask.width, mask.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) n++;
  return n;
}

// ------------------------------------------------------------------ rendering
let frame = 0;
function render() {
  if (!frame) frame = requestAnimationFrame(draw);
}
function draw() {
  frame = 0;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(viewport.clientWidth * dpr)), h = Math.max(1, Math.round(viewport.clientHeight * dpr));
  if (view.width !== w || view.height !== h) { view.width = w; view.height = h; }
  vctx.setTransform(1, 0, 0, 1, 0, 0);
  vctx.clearRect(0, 0, w, h);
  view.dataset.scale = S.scale;
  view.dataset.tx = S.tx;
  view.dataset.ty = S.ty;
  if (!S.image) return;
  vctx.setTransform(dpr * S.scale, 0, 0, dpr * S.scale, dpr * S.tx, dpr * S.ty);
  vctx.imageSmoothingEnabled = S.scale < 1;
  const res = lastResult();
  const before = S.comparing && res;
  vctx.drawImage(before ? res.before.canvas : current().canvas, 0, 0);
  if (!before) {
    if (S.layout && res && res.after.layout) {
      vctx.globalAlpha = S.layoutOpacity;
      vctx.drawImage(res.after.layout, 0, 0);
    }
    vctx.globalAlpha = MASK_ALPHA;
    vctx.drawImage(mask, 0, 0);
    vctx.globalAlpha = 1;
  }
  $("compare-badge").hidden = !before;
  $("st-zoom").textContent = `${Math.round(S.scale * 100)}%`;
}

function fit() {
  if (!S.image) return;
  const pad = 24;
  const vw = viewport.clientWidth, vh = viewport.clientHeight;
  let s = Math.min((vw - pad) / S.image.width, (vh - pad) / S.image.height);
  if (s > 1) s = Math.min(8, Math.floor(s));    // enlarge small images by whole factors: crisp pixels
  S.scale = Math.max(MIN_SCALE, s);
  S.tx = Math.round((vw - S.image.width * S.scale) / 2);
  S.ty = Math.round((vh - S.image.height * S.scale) / 2);
  S.fitted = true;
  render();
}
function actualPixels() {
  if (!S.image) return;
  const vw = viewport.clientWidth, vh = viewport.clientHeight;
  S.scale = 1;
  S.tx = Math.round((vw - S.image.width) / 2);
  S.ty = Math.round((vh - S.image.height) / 2);
  S.fitted = false;
  render();
}
function zoomAt(factor, cx, cy) {
  if (!S.image) return;
  const ns = Math.min(MAX_SCALE, Math.max(MIN_SCALE, S.scale * factor));
  S.tx = cx - (cx - S.tx) * ns / S.scale;
  S.ty = cy - (cy - S.ty) * ns / S.scale;
  S.scale = ns;
  S.fitted = false;
  updateCursor();
  render();
}

// ------------------------------------------------------------------ UI state
function message(text, kind = "info") {
  const el = $("st-msg");
  el.textContent = text;
  el.className = `msg ${kind}`;
}
function updateHole() {
  S.holePixels = countHole();
  if (S.image) {
    const frac = 100 * S.holePixels / (S.image.width * S.image.height);
    $("st-hole").textContent = `hole: ${frac.toFixed(frac < 1 && frac > 0 ? 2 : 1)}% (${S.holePixels.toLocaleString("en")} px)`;
  } else {
    $("st-hole").textContent = "";
  }
  updateButtons();
}
function updateButtons() {
  const has = !!S.image, res = lastResult();
  $("btn-undo").disabled = !S.ops.length || S.busy;
  $("btn-redo").disabled = !S.redo.length || S.busy;
  $("btn-clear").disabled = !has || !S.holePixels || S.busy;
  $("btn-run").disabled = !has || !S.holePixels || S.busy;
  $("btn-compare").disabled = !res;
  $("btn-download").disabled = !res;
  $("btn-fit").disabled = $("btn-100").disabled = !has;
  const lay = !!(res && res.after.layout);
  $("chk-layout").disabled = !lay;
  $("layout-opacity").disabled = !lay;
  $("chk-layout").checked = S.layout && lay;
  $("file-mask").disabled = !has || S.busy;
  $("lbl-mask").classList.toggle("disabled", !has || S.busy);
}
function setTool(tool) {
  S.tool = tool;
  for (const t of ["brush", "eraser", "hand"]) {
    const b = $(`tool-${t}`);
    b.classList.toggle("active", t === tool);
    b.setAttribute("aria-checked", t === tool ? "true" : "false");
  }
  updateCursor();
}
function setSize(size) {
  S.size = Math.max(1, Math.min(500, Math.round(size)));
  $("brush-size").value = S.size;
  $("brush-size-label").textContent = `${S.size} px`;
  updateCursor();
}
let lastPointer = null;
function updateCursor(e) {
  if (e) lastPointer = { x: e.clientX, y: e.clientY };
  const c = $("brush-cursor");
  const panning = S.tool === "hand" || S.space || S.pan;
  viewport.classList.toggle("panning", !!panning);
  if (!S.image || !lastPointer || panning || S.busy) { c.hidden = true; return; }
  const r = viewport.getBoundingClientRect();
  const d = S.size * S.scale;
  c.hidden = false;
  c.style.width = c.style.height = `${d}px`;
  c.style.left = `${lastPointer.x - r.left - d / 2}px`;
  c.style.top = `${lastPointer.y - r.top - d / 2}px`;
  c.classList.toggle("erase", S.tool === "eraser");
}
function toImage(e) {
  const r = view.getBoundingClientRect();
  return [(e.clientX - r.left - S.tx) / S.scale, (e.clientY - r.top - S.ty) / S.scale];
}

// ------------------------------------------------------------------ opening images and masks
async function decode(file) {
  try {
    return await createImageBitmap(file);   // EXIF orientation applied, as the server does
  } catch (e) {
    throw new Error(`cannot open ${file.name || "the pasted image"}: not an image this browser can decode`);
  }
}
function canvasOf(bitmap) {
  const c = document.createElement("canvas");
  c.width = bitmap.width;
  c.height = bitmap.height;
  c.getContext("2d").drawImage(bitmap, 0, 0);
  return c;
}
function limitProblem(width, height, bytes) {
  if (!S.limits) return null;
  if (width * height > S.limits.max_pixels)
    return `this image is ${width}x${height} = ${fmtMP(width * height)}; the server accepts at most ` +
           `${fmtMP(S.limits.max_pixels)} (attnorm serve --max-pixels)`;
  if (bytes > S.limits.max_upload_bytes * 0.9)
    return `this file is ${fmtBytes(bytes)}; the server accepts uploads up to ${fmtBytes(S.limits.max_upload_bytes)} ` +
           `(attnorm serve --max-upload-mb)`;
  return null;
}
async function openImage(file) {
  if (S.busy) return;
  let bmp;
  try { bmp = await decode(file); } catch (e) { message(e.message, "error"); return; }
  S.image = { canvas: canvasOf(bmp), blob: file, name: (file.name || "pasted.png").replace(/\.[^.]*$/, ""),
              width: bmp.width, height: bmp.height };
  bmp.close();
  mask.width = S.image.width;
  mask.height = S.image.height;
  S.ops = [];
  S.redo = [];
  S.layout = false;
  $("empty").hidden = true;
  $("st-size").textContent = `${S.image.width}×${S.image.height} · ${S.image.name}`;
  const problem = limitProblem(S.image.width, S.image.height, file.size);
  if (problem) message(problem, "error");
  else message("Paint over what should go, then press Enter (or Inpaint).");
  updateHole();
  fit();
  viewport.focus();
}
async function openMask(file) {
  if (!S.image || S.busy) return;
  let bmp;
  try { bmp = await decode(file); } catch (e) { message(e.message, "error"); return; }
  if (bmp.width !== S.image.width || bmp.height !== S.image.height) {
    message(`mask is ${bmp.width}x${bmp.height} but the image is ${S.image.width}x${S.image.height}; ` +
            `they must have the same size`, "error");
    bmp.close();
    return;
  }
  const c = canvasOf(bmp);
  bmp.close();
  const ctx = c.getContext("2d", { willReadFrequently: true });
  const im = ctx.getImageData(0, 0, c.width, c.height);
  const d = im.data;
  for (let i = 0; i < d.length; i += 4) {
    // grey level as Pillow's convert("L"); >= 128 is a hole (the server's threshold)
    const hole = (d[i] * 299 + d[i + 1] * 587 + d[i + 2] * 114) / 1000 >= 127.5;
    d[i] = MASK_RGB[0]; d[i + 1] = MASK_RGB[1]; d[i + 2] = MASK_RGB[2];
    d[i + 3] = hole ? 255 : 0;
  }
  ctx.putImageData(im, 0, 0);
  const op = { t: "mask", canvas: c };
  pushOp(op);
  applyOp(op);
  updateHole();
  render();
  message(`mask ${file.name || ""} loaded`);
}
function maskBlob() {
  const c = document.createElement("canvas");
  c.width = mask.width;
  c.height = mask.height;
  const ctx = c.getContext("2d");
  const src = mctx.getImageData(0, 0, mask.width, mask.height).data;
  const out = ctx.createImageData(mask.width, mask.height);
  const d = out.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = src[i + 3] >= 128 ? 255 : 0;
    d[i] = d[i + 1] = d[i + 2] = v;
    d[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

// ------------------------------------------------------------------ running
function setBusy(on, label = "", fraction = null) {
  S.busy = on;
  $("busy").hidden = !on;
  if (on) {
    $("busy-label").textContent = label;
    const p = $("busy-progress");
    if (fraction === null) p.removeAttribute("value"); else p.value = fraction;
  }
  updateButtons();
  updateCursor();
}
function jobId() {
  const a = new Uint8Array(12);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}
function post(url, form, id, onUpload) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-Job-Id", id);
    xhr.responseType = "text";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onUpload(e.loaded / e.total); };
    xhr.upload.onload = () => onUpload(1);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* handled below */ }
      if (xhr.status === 200 && body) resolve(body);
      else reject(new ApiError(xhr.status, (body && body.error) || `${xhr.status} ${xhr.statusText}`));
    };
    xhr.onerror = () => reject(new ApiError(0, "the connection to the attnorm server was lost"));
    xhr.send(form);
  });
}
async function run() {
  if (!S.image || S.busy) return;
  if (!S.holePixels) { message("Paint the area to fill first.", "error"); return; }
  const cur = current();
  const problem = limitProblem(S.image.width, S.image.height, cur.blob.size);
  if (problem) { message(problem, "error"); return; }
  const started = performance.now();
  const secs = () => `${((performance.now() - started) / 1000).toFixed(0)} s`;
  setBusy(true, "Preparing the mask…");
  let uploaded = 0, polling = null;
  try {
    const form = new FormData();
    form.append("image", cur.blob, `${S.image.name}.png`);
    form.append("mask", await maskBlob(), "mask.png");
    const id = jobId();
    const url = S.layoutsAvailable ? "/api/inpaint?layouts=1" : "/api/inpaint?format=json";
    polling = setInterval(async () => {
      if (uploaded < 1) { setBusy(true, `Uploading ${Math.round(uploaded * 100)}% · ${secs()}`, uploaded); return; }
      try {
        const p = await getJSON(`/api/progress?job=${id}`);
        if (!S.busy) return;
        if (p.state === "reading" || p.state === "unknown") setBusy(true, `Reading the image · ${secs()}`);
        else if (p.state === "queued") setBusy(true, `Waiting for the model${p.ahead ? ` (${p.ahead} ahead)` : ""} · ${secs()}`);
        else if (p.state === "running") setBusy(true, `Inpainting ${Math.round(100 * p.fraction)}% · ${secs()}`, p.fraction);
        else if (p.state === "encoding" || p.state === "done") setBusy(true, `Receiving the result · ${secs()}`, 1);
      } catch (_) { /* the next poll will tell */ }
    }, 250);
    const res = await post(url, form, id, (f) => { uploaded = f; });
    clearInterval(polling);
    polling = null;
    setBusy(true, "Decoding the result…", 1);
    const blob = dataURLToBlob(res.image);
    const bmp = await createImageBitmap(blob);
    const after = { canvas: canvasOf(bmp), blob, layout: null };
    bmp.close();
    if (res.layout) {
      const lb = await createImageBitmap(dataURLToBlob(res.layout));
      after.layout = canvasOf(lb);
      lb.close();
    }
    pushOp({ t: "result", before: cur, after });
    rebuildMask();
    setBusy(false);
    updateHole();
    render();
    message(`Inpainted ${res.hole_pixels.toLocaleString("en")} px in ${res.inference_seconds.toFixed(2)} s ` +
            `(${secs()} in all). Hold C to compare, Ctrl+Z to undo.`);
  } catch (e) {
    if (polling) clearInterval(polling);
    setBusy(false);
    message(e.status ? `${e.message} (HTTP ${e.status})` : e.message, "error");
  }
}
function download() {
  const res = lastResult();
  if (!res) return;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(res.after.blob);
  a.download = `${S.image.name}_inpainted.png`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ------------------------------------------------------------------ history
function undo() {
  if (!S.ops.length || S.busy) return;
  const op = S.ops.pop();
  S.redo.push(op);
  rebuildMask();
  updateHole();
  render();
}
function redo() {
  if (!S.redo.length || S.busy) return;
  const op = S.redo.pop();
  S.ops.push(op);
  if (op.t === "result") rebuildMask();
  else applyOp(op);
  updateHole();
  render();
}
function clearMask() {
  if (!S.image || !S.holePixels || S.busy) return;
  const op = { t: "clear" };
  pushOp(op);
  applyOp(op);
  updateHole();
  render();
}
function toggleLayout(on) {
  const res = lastResult();
  S.layout = on === undefined ? !S.layout : on;
  if (!(res && res.after.layout)) S.layout = false;
  updateButtons();
  render();
}
function setComparing(on) {
  if (S.comparing === on) return;
  S.comparing = on && !!lastResult();
  $("btn-compare").classList.toggle("active", S.comparing);
  render();
}

// ------------------------------------------------------------------ pointer input
view.addEventListener("pointerdown", (e) => {
  if (!S.image) return;
  viewport.focus({ preventScroll: true });
  if (e.button === 1 || (e.button === 0 && (S.tool === "hand" || S.space))) {
    S.pan = { x: e.clientX, y: e.clientY };
    view.setPointerCapture(e.pointerId);
    e.preventDefault();
    updateCursor(e);
    return;
  }
  if (e.button !== 0 || S.busy) return;
  const op = { t: "stroke", erase: S.tool === "eraser", size: S.size, pts: [toImage(e)] };
  S.stroke = op;
  mctx.save();
  strokeStyle(mctx, op);
  drawDot(mctx, op, op.pts[0]);
  mctx.restore();
  view.setPointerCapture(e.pointerId);
  render();
});
view.addEventListener("pointermove", (e) => {
  if (S.image) {
    const [x, y] = toImage(e);
    const inside = x >= 0 && y >= 0 && x < S.image.width && y < S.image.height;
    $("st-pos").textContent = inside ? `x ${Math.floor(x)}, y ${Math.floor(y)}` : "";
  }
  updateCursor(e);
  if (S.pan) {
    S.tx += e.clientX - S.pan.x;
    S.ty += e.clientY - S.pan.y;
    S.pan = { x: e.clientX, y: e.clientY };
    S.fitted = false;
    render();
    return;
  }
  const op = S.stroke;
  if (!op) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  mctx.save();
  strokeStyle(mctx, op);
  for (const ev of events.length ? events : [e]) {
    const p = toImage(ev), q = op.pts[op.pts.length - 1];
    if (Math.hypot(p[0] - q[0], p[1] - q[1]) * S.scale < 0.5) continue;
    op.pts.push(p);
    drawSegment(mctx, op, q, p);
  }
  mctx.restore();
  render();
});
function endPointer(e) {
  if (S.pan) { S.pan = null; updateCursor(e); return; }
  if (!S.stroke) return;
  pushOp(S.stroke);
  S.stroke = null;
  updateHole();
  render();
}
view.addEventListener("pointerup", endPointer);
view.addEventListener("pointercancel", endPointer);
view.addEventListener("pointerleave", () => { lastPointer = null; $("brush-cursor").hidden = true; $("st-pos").textContent = ""; });
view.addEventListener("auxclick", (e) => e.preventDefault());
view.addEventListener("wheel", (e) => {
  if (!S.image) return;
  e.preventDefault();
  const r = view.getBoundingClientRect();
  const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
  zoomAt(Math.exp(-dy * 0.0015), e.clientX - r.left, e.clientY - r.top);
}, { passive: false });

// ------------------------------------------------------------------ keyboard
document.addEventListener("keydown", (e) => {
  if (isTyping(e) || $("help").open) return;
  const k = e.key, mod = e.ctrlKey || e.metaKey;
  if (mod && (k === "z" || k === "Z")) { e.preventDefault(); if (e.shiftKey) redo(); else undo(); return; }
  if (mod && (k === "y" || k === "Y")) { e.preventDefault(); redo(); return; }
  if (mod && (k === "o" || k === "O")) { e.preventDefault(); $("file-image").click(); return; }
  if (mod && (k === "s" || k === "S")) { e.preventDefault(); download(); return; }
  if (mod || e.altKey) return;
  switch (k) {
    case "[": setSize(S.size <= 10 ? S.size - 1 : S.size / 1.2); break;
    case "]": setSize(S.size < 10 ? S.size + 1 : S.size * 1.2); break;
    case "b": case "B": setTool("brush"); break;
    case "e": case "E": setTool("eraser"); break;
    case "h": case "H": setTool("hand"); break;
    case "l": case "L": toggleLayout(); break;
    case "f": case "F": fit(); break;
    case "1": actualPixels(); break;
    case "+": case "=": zoomAt(1.25, viewport.clientWidth / 2, viewport.clientHeight / 2); break;
    case "-": case "_": zoomAt(0.8, viewport.clientWidth / 2, viewport.clientHeight / 2); break;
    case "c": case "C": if (!e.repeat) setComparing(true); break;
    case "Enter": if (e.target.tagName === "BUTTON") return; run(); break;
    case "Delete": case "Backspace": clearMask(); break;
    case " ":
      if (e.target.tagName === "BUTTON" || e.target.tagName === "INPUT") e.target.blur();
      S.space = true; updateCursor(); break;
    default: return;
  }
  e.preventDefault();
});
document.addEventListener("keyup", (e) => {
  if (e.key === "c" || e.key === "C") setComparing(false);
  if (e.key === " ") { S.space = false; updateCursor(); e.preventDefault(); }
});
window.addEventListener("blur", () => { setComparing(false); S.space = false; });

// ------------------------------------------------------------------ buttons, files, drop, paste
$("file-image").addEventListener("change", (e) => { if (e.target.files[0]) openImage(e.target.files[0]); e.target.value = ""; });
$("file-mask").addEventListener("change", (e) => { if (e.target.files[0]) openMask(e.target.files[0]); e.target.value = ""; });
$("tool-brush").addEventListener("click", () => setTool("brush"));
$("tool-eraser").addEventListener("click", () => setTool("eraser"));
$("tool-hand").addEventListener("click", () => setTool("hand"));
$("brush-size").addEventListener("input", (e) => setSize(+e.target.value));
$("btn-undo").addEventListener("click", undo);
$("btn-redo").addEventListener("click", redo);
$("btn-clear").addEventListener("click", clearMask);
$("btn-run").addEventListener("click", run);
$("btn-fit").addEventListener("click", fit);
$("btn-100").addEventListener("click", actualPixels);
$("btn-download").addEventListener("click", download);
$("chk-layout").addEventListener("change", (e) => toggleLayout(e.target.checked));
$("layout-opacity").addEventListener("input", (e) => { S.layoutOpacity = +e.target.value; render(); });
const cmp = $("btn-compare");
cmp.addEventListener("pointerdown", (e) => { cmp.setPointerCapture(e.pointerId); setComparing(true); });
for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) cmp.addEventListener(ev, () => setComparing(false));
// keep keyboard shortcuts working after a toolbar click: give the focus back to the image
document.querySelector(".toolbar").addEventListener("click", (e) => {
  if (e.target.closest("button")) viewport.focus({ preventScroll: true });
});

for (const ev of ["dragover", "drop"]) window.addEventListener(ev, (e) => e.preventDefault());
viewport.addEventListener("dragenter", () => viewport.classList.add("dropping"));
viewport.addEventListener("dragleave", (e) => { if (e.target === viewport) viewport.classList.remove("dropping"); });
viewport.addEventListener("drop", (e) => {
  viewport.classList.remove("dropping");
  const f = [...(e.dataTransfer.files || [])].find((x) => x.type.startsWith("image/")) || e.dataTransfer.files[0];
  if (f) openImage(f);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { e.preventDefault(); openImage(item.getAsFile()); }
});
new ResizeObserver(() => { if (S.fitted) fit(); else render(); }).observe(viewport);

setupHelp();
setSize(S.size);
updateButtons();
health().then((h) => {
  S.limits = h.limits;
  const inp = h.inpaint;
  if (!inp.available) { setModelInfo("no inpainting model loaded", false); return; }
  S.layoutsAvailable = !!inp.layouts;
  const cfg = inp.config || {};
  setModelInfo(`inpainting: ${inp.checkpoint} · ${cfg.attention || "?"} · ${h.device} · up to ${fmtMP(h.limits.max_pixels)}`);
  $("viewport").dataset.ready = "1";
}).catch((e) => setModelInfo(e.message, false));
