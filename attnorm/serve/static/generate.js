// The generator page: a grid of class-conditional samples (POST /api/generate), an interpolation
// slider between two classes with the selected sample's latent (POST /api/interpolate) and the AN
// layouts of the selected sample (POST /api/layouts). Every call uses the seed, count and truncation
// of the grid on screen, so a selected sample is always the same latent z.

import { $, health, postJSON, setModelInfo } from "./common.js";

const STEPS = 33;
const S = { info: null, grid: null, selected: null, frames: [], seq: { grid: 0, interp: 0, layout: 0 } };

function status(text, kind = "muted") {
  const el = $("gen-status");
  el.textContent = text;
  el.className = `status-line ${kind}`;
}
function checkedClasses() {
  return [...document.querySelectorAll("#class-list input:checked")].map((c) => +c.value);
}
function truncation() { return $("trunc-on").checked ? +$("trunc").value : null; }

function buildControls(info) {
  const list = $("class-list");
  list.replaceChildren();
  info.classes.forEach((name, i) => {
    const lab = document.createElement("label");
    const cb = document.createElement("input");
    cb.type = "checkbox";
    cb.value = i;
    cb.checked = i < Math.min(info.num_classes, 8);
    lab.append(cb, `${i} ${name === String(i) ? "" : name}`);
    lab.title = name;
    list.append(lab);
  });
  for (const id of ["interp-from", "interp-to"]) {
    const sel = $(id);
    sel.replaceChildren(...info.classes.map((name, i) => new Option(`${i} ${name === String(i) ? "" : name}`, i)));
  }
  $("interp-to").value = Math.min(1, info.num_classes - 1);
  $("count").max = Math.min(64, info.max_images);
}

async function generate() {
  const classes = checkedClasses();
  if (!classes.length) { status("Choose at least one class.", "error"); return; }
  const n = Math.max(1, Math.min(64, Math.round(+$("count").value || 1)));
  const seed = Math.max(0, Math.round(+$("seed").value || 0));
  const params = { classes, n, seed, truncation: truncation() };
  const my = ++S.seq.grid;
  $("btn-generate").disabled = true;
  status(`Generating ${classes.length * n} images…`);
  const t0 = performance.now();
  try {
    const res = await postJSON("/api/generate?format=json", params);
    if (my !== S.seq.grid) return;
    S.grid = params;
    renderGrid(res);
    status(`${classes.length * n} images in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    select(classes[0], 0);
  } catch (e) {
    status(e.message, "error");
  } finally {
    if (my === S.seq.grid) $("btn-generate").disabled = false;
  }
}

function renderGrid(res) {
  const grid = $("grid");
  grid.replaceChildren();
  res.tiles.forEach((row, r) => {
    const cls = res.classes[r];
    const div = document.createElement("div");
    div.className = "sample-row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${cls} ${res.names[r] === String(cls) ? "" : res.names[r]}`;
    label.title = res.names[r];
    div.append(label);
    row.forEach((src, i) => {
      const b = document.createElement("button");
      b.className = "tile";
      b.dataset.cls = cls;
      b.dataset.index = i;
      b.title = `class ${res.names[r]}, sample ${i} (seed ${res.seed})`;
      const img = document.createElement("img");
      img.src = src;
      img.alt = `class ${res.names[r]} sample ${i}`;
      b.append(img);
      b.addEventListener("click", () => select(cls, i));
      div.append(b);
    });
    grid.append(div);
  });
  const t = res.truncation === null ? "no truncation" : `truncation ${res.truncation}`;
  $("grid-caption").textContent = `(seed ${res.seed}, ${res.n} per class, ${t}; click a sample)`;
}

function select(cls, index) {
  S.selected = { cls, index };
  for (const b of document.querySelectorAll(".tile")) {
    b.classList.toggle("selected", +b.dataset.cls === cls && +b.dataset.index === index);
  }
  const from = $("interp-from"), to = $("interp-to");
  from.value = cls;
  if (+to.value === cls) to.value = (cls + 1) % S.info.num_classes;
  interpolate();
  layouts();
}

function zParams() {
  const g = S.grid;
  return { seed: g.seed, n: g.n, index: S.selected.index, truncation: g.truncation };
}

async function interpolate() {
  if (!S.selected) return;
  const my = ++S.seq.interp;
  const body = { from: +$("interp-from").value, to: +$("interp-to").value, steps: STEPS, ...zParams() };
  try {
    const res = await postJSON("/api/interpolate?format=json", body);
    if (my !== S.seq.interp) return;
    S.frames = res.frames;
    $("interp-strip").src = res.strip;
    showFrame();
  } catch (e) {
    if (my === S.seq.interp) status(e.message, "error");
  }
}
function showFrame() {
  if (!S.frames.length) return;
  const j = +$("interp-t").value;
  $("interp-frame").src = S.frames[j];
  const names = S.info.classes;
  const t = j / (STEPS - 1);
  $("interp-label").textContent =
    `t = ${t.toFixed(2)}: ${(1 - t).toFixed(2)} × ${names[+$("interp-from").value]} + ${t.toFixed(2)} × ${names[+$("interp-to").value]}`;
}

async function layouts() {
  if (!S.selected) return;
  const view = $("layout-view");
  if (!S.info.layouts) {
    $("layout-caption").textContent = `this generator has attention="${S.info.attention}": it has no AN layer, so no layout to show`;
    view.replaceChildren();
    return;
  }
  const my = ++S.seq.layout;
  try {
    const res = await postJSON("/api/layouts?format=json", { class: S.selected.cls, ...zParams() });
    if (my !== S.seq.layout) return;
    const fig = (src, caption, alt) => {
      const f = document.createElement("figure");
      const img = document.createElement("img");
      img.src = src;
      img.alt = alt;
      img.className = "pix";
      f.append(img, caption);
      return f;
    };
    const items = [fig(res.image, "sample", "the selected sample")];
    for (const lay of res.layers) {
      items.push(fig(lay.argmax, `layer ${lay.layer} (${lay.size}×${lay.size}): argmax entity`,
                     `argmax layout of AN layer ${lay.layer}`));
      items.push(fig(lay.entities, `its ${lay.num_entities} entity maps`, `entity maps of AN layer ${lay.layer}`));
    }
    view.replaceChildren(...items);
    const used = res.layers.map((l) => `layer ${l.layer}: ${l.used} of ${l.num_entities} entities win ≥ 2% of the pixels`);
    $("layout-caption").textContent = `class ${res.name}, sample ${res.index} of seed ${res.seed}. ${used.join("; ")}.`;
  } catch (e) {
    if (my === S.seq.layout) $("layout-caption").textContent = e.message;
  }
}

$("btn-generate").addEventListener("click", generate);
$("cls-all").addEventListener("click", () => document.querySelectorAll("#class-list input").forEach((c) => { c.checked = true; }));
$("cls-none").addEventListener("click", () => document.querySelectorAll("#class-list input").forEach((c) => { c.checked = false; }));
$("seed-random").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e6); generate(); });
$("trunc-on").addEventListener("change", (e) => {
  $("trunc").disabled = !e.target.checked;
  $("trunc-label").textContent = e.target.checked ? (+$("trunc").value).toFixed(2) : "off";
});
$("trunc").addEventListener("input", (e) => { $("trunc-label").textContent = (+e.target.value).toFixed(2); });
$("interp-t").max = STEPS - 1;
$("interp-t").addEventListener("input", showFrame);
$("interp-from").addEventListener("change", interpolate);
$("interp-to").addEventListener("change", interpolate);
for (const id of ["count", "seed"]) $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") generate(); });

health().then((h) => {
  const g = h.gan;
  S.info = g;
  if (!g.available) {
    setModelInfo("no GAN loaded", false);
    $("gan-missing-reason").textContent = g.reason;
    $("gan-missing").hidden = false;
    document.body.dataset.ready = "1";
    return;
  }
  setModelInfo(`GAN: ${g.checkpoint} · ${g.resolution} px · ${g.num_classes} classes · ${g.attention} · ${h.device}`);
  buildControls(g);
  $("gan-ui").hidden = false;
  document.body.dataset.ready = "1";
  generate();
}).catch((e) => {
  setModelInfo(e.message, false);
  $("gan-missing-reason").textContent = e.message;
  $("gan-missing").hidden = false;
});
