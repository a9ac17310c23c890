// WBC lab page: upload -> Segment -> Classify, overlays, the cell table, downloads. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const st = { model: null, items: [], current: null, cell: null, overlay: "outline", opacity: 0.85, labels: true, busy: 0, batching: false, blind: false, labelsUrl: null, unsaved: 0 };
let nextKey = 1;

// ---------------------------------------------------------------------------- server calls
async function api(method, url, body) {
  let res;
  try {
    res = await fetch(url, { method, body });
  } catch (err) {
    throw new Error("the server cannot be reached (is serve.py still running?)");
  }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (err) { /* not JSON */ }
    const error = new Error(detail);
    error.status = res.status; // 404: the image expired or was deleted (session.js drops it)
    error.retryAfter = Number(res.headers.get("Retry-After")) || 0; // 503 busy: when to ask again (steps.js)
    throw error;
  }
  return res.status === 204 ? null : res.json();
}

function showMessage(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

// ---------------------------------------------------------------------------- theme
function setTheme(theme, remember) {
  document.documentElement.setAttribute("data-theme", theme);
  if (remember) { try { localStorage.setItem("wbc-theme", theme); } catch (err) { /* private mode */ } }
  const dark = theme === "dark";
  $("theme-toggle").textContent = dark ? "Day theme" : "Dark theme";
  $("theme-toggle").setAttribute("aria-pressed", String(dark));
}

// ---------------------------------------------------------------------------- model card
function colour(name) {
  const c = (st.model && st.model.colours && st.model.colours[name]) || (st.model ? st.model.unclassified_colour : null) || [255, 225, 25];
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// the code and library versions a run was trained with (job.json's `software`), in one line
function softwareLine(sw) {
  if (!sw) return "not recorded (an ONNX export, or a run from before it was recorded)";
  const code = sw.code ? `wbc-lab ${sw.code.commit.slice(0, 10)}${sw.code.modified ? " with uncommitted changes" : ""}` : "wbc-lab (not a git checkout)";
  const pk = sw.packages || {};
  return [code, ...["torch", "timm", "albumentations"].filter((n) => pk[n]).map((n) => `${n} ${pk[n]}`), `Python ${sw.python}`].join(", ");
}

async function loadModel() {
  try {
    st.model = await api("GET", "/api/model");
  } catch (err) {
    $("model-line").textContent = "model description unavailable: " + err.message;
    return;
  }
  const m = st.model;
  const figures = (m.test_figures || []).map((f) => `${f.label} ${f.value.toFixed(3)}`);
  $("model-line").textContent = `${m.kind || "model"}: ${m.classes.join(", ") || "nuclei only"}` +
    (m.trained ? ` · trained ${m.trained}` : "") + (figures.length ? ` · ${figures[0]}` : "");
  const rows = [
    ["loaded from", m.source || "(in-process)"], ["kind", m.kind], ["classes", m.classes.join(", ") || "none (masks and crops only)"],
    ["trained", m.trained || "unknown"], ["trained with", softwareLine(m.software)], ["data", m.data || "unknown"],
    ["segmenter input", m.segmenter_input ? `${m.segmenter_input} x ${m.segmenter_input} px` : "?"],
    ["cell crop", m.crop_size ? `${m.crop_size} px, classified at ${m.classifier_input} px` : "whole image"],
    ["classifier input", m.classifier_inputs || "none"],
  ].concat(figures.map((f) => ["test figure", f]));
  if (m.morphology) {
    rows.push(["nucleus morphology", `class probabilities averaged with the morphology model ${m.morphology}`]);
  }
  rows.push(["unlike-its-training-images check", m.appearance_check
    ? `each image's colours against the ${m.appearance_check.model}'s ${m.appearance_check.training_images} training images (` +
      m.appearance_check.sources.map((c) => `${c.name}: distance limit ${c.threshold.toFixed(1)}`).join("; ") +
      "); an image beyond every limit is flagged with all its cells"
    : "off (no colour profile in this model: trained before it was recorded, or review.unlike_training=false)"]);
  if (m.adapted) {
    rows.push(["adapted to this lab", `${m.adapted.models.join(" and ")}: batch-norm statistics from ${m.adapted.images} image(s) of ${m.adapted.folder} (AdaBN); the test figures above are the unadapted model's`]);
  }
  const lim = m.limits || {};
  rows.push(["limits", `${lim.max_file_mb} MB per file, ${lim.max_pixels || "20000000"} pixels; results kept ${lim.max_age_min} min, last ${lim.max_images} images`]);
  const dl = $("model-info");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  $("limits-line").textContent = `PNG, JPEG, TIFF (8/16-bit) or BMP, up to ${lim.max_file_mb} MB each`;
  const select = $("cell-label");
  for (const name of m.classes) { const o = document.createElement("option"); o.value = name; o.textContent = name; select.append(o); }
  document.querySelector(".labelling").hidden = m.classes.length === 0;
  document.querySelector(".your-label").hidden = m.classes.length === 0;
}

// ---------------------------------------------------------------------------- image list
const BUSY = new Set(["uploading", "segmenting", "classifying", "queued", "restoring"]);

function renderList() {
  const ul = $("image-list");
  const focused = document.activeElement && document.activeElement.closest("#image-list li"); // kept on the rebuilt row's button
  ul.replaceChildren();
  for (const it of st.items) {
    const li = document.createElement("li");
    li.dataset.key = it.key;
    li.className = it === st.current ? "current" : "";
    // the name is a button: Tab reaches it, Enter or Space picks the image (its click reaches the row's)
    const name = document.createElement("button"); name.type = "button"; name.className = "name"; name.textContent = it.name; name.title = it.name;
    if (it === st.current) name.setAttribute("aria-current", "true");
    const status = document.createElement("span");
    status.className = "status " + (it.error ? "error" : it.status) + (BUSY.has(it.status) ? " busy" : "");
    const n = it.data ? it.data.count : null;
    status.textContent = it.error ? "error" : it.status + (n !== null && !BUSY.has(it.status) ? ` · ${n} cell${n === 1 ? "" : "s"}` : "");
    const rm = document.createElement("button"); rm.className = "remove"; rm.type = "button"; rm.textContent = "×";
    rm.setAttribute("aria-label", "remove " + it.name);
    rm.addEventListener("click", (ev) => { ev.stopPropagation(); removeItem(it); });
    li.append(name, status, rm);
    li.addEventListener("click", () => select(it));
    ul.append(li);
    if (focused && focused.dataset.key === String(it.key)) name.focus();
    if (it.error) {
      const err = document.createElement("li"); err.className = "item-error"; err.textContent = it.error; ul.append(err);
    }
  }
  const ready = st.items.filter((it) => it.id && !it.error);
  // "Segment all" means all: it waits until every image still uploading has arrived
  const uploading = st.items.some((it) => it.status === "queued" || it.status === "uploading");
  $("segment-all").disabled = uploading || !ready.some((it) => it.status === "uploaded") || st.busy > 0 || !!st.batching;
  $("classify-all").hidden = !(st.model && st.model.has_classifier) || !ready.some((it) => it.status === "segmented");
  $("classify-all").disabled = st.busy > 0 || !!st.batching; // a second click while it runs would classify twice
  // this page's images only: the server holds other users' too (a link without ids would give every one)
  const done = ready.filter((it) => it.data && (it.data.status === "segmented" || it.data.status === "classified"));
  $("download-all").hidden = !done.length; $("download-all").href = "/api/files/all.zip?ids=" + done.map((it) => it.id).join(",");
  $("clear-all").hidden = st.items.length === 0;
  saveSession(); // every change of the list is rendered here: a reload restores it (session.js)
}

// adding and removing images: uploads.js; the steps and their batches: steps.js

// ---------------------------------------------------------------------------- the current image
function select(it) {
  st.current = it; st.cell = null;
  renderList(); show();
}

function show() {
  const it = st.current;
  const data = it && it.data;
  const segmented = !!data && (data.status === "segmented" || data.status === "classified");
  const classified = !!data && data.status === "classified";
  $("empty-hint").hidden = !!(it && it.img);
  $("canvas").hidden = !(it && it.img);
  $("segment-btn").disabled = !(it && it.id) || it.expired || BUSY.has(it.status);
  $("segment-btn").textContent = segmented ? "Segment again" : "Segment";
  $("classify-btn").hidden = !segmented || !(st.model && st.model.has_classifier);
  $("classify-btn").disabled = !segmented || BUSY.has(it.status);
  $("step-status").textContent = it ? ({ uploading: "uploading…", queued: "waiting…", restoring: "restoring…", segmenting: "segmenting…", classifying: "classifying…" }[it.status] || "") : "";
  showMessage(it && it.error ? it.error : "");
  $("summary").textContent = !segmented ? "" : classified && st.blind ? `${data.count} cells (the model's calls hidden)` : data.summary;
  $("scale-line").textContent = segmented && data.scale_text ? `Processed: ${data.scale_text}` : "";
  $("appearance-line").textContent = segmented && data.appearance_text ? `⚠ ${data.appearance_text}` : "";
  $("appearance-line").hidden = !(segmented && data.appearance_text);
  $("downloads").hidden = !segmented;
  if (segmented) for (const a of $("downloads").querySelectorAll("a")) a.href = `/api/images/${it.id}/files/${a.dataset.kind}`;
  renderTable(classified ? data.cells : segmented ? data.cells : []);
  showCell();
  draw();
}

function renderTable(cells) {
  const body = $("cell-table").querySelector("tbody");
  body.replaceChildren();
  $("cell-table").hidden = cells.length === 0;
  for (const c of cells) {
    const tr = document.createElement("tr");
    tr.dataset.cell = c.cell; tr.tabIndex = 0;
    if (c.cell === st.cell) tr.className = "selected";
    const cls = document.createElement("td");
    if (c.class && st.blind) cls.textContent = "hidden";
    else if (c.class) { const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = colour(c.class); cls.append(sw, c.class); } else cls.textContent = "–";
    const flag = document.createElement("td");
    if (c.review && !st.blind) { flag.className = "flag"; flag.textContent = "⚑ review"; flag.title = c.review_reasons; }
    const texts = [String(c.cell), null, c.probability === null || st.blind ? "–" : c.probability.toFixed(3), String(c.area), `${c.centroid_x.toFixed(0)}, ${c.centroid_y.toFixed(0)}`];
    texts.forEach((text, i) => { if (i === 1) tr.append(cls); else { const td = document.createElement("td"); td.textContent = text; tr.append(td); } });
    const mark = markOf(st.current, c);
    const yours = document.createElement("td"); yours.className = "yours"; yours.textContent = mark ? mark.label : "";
    tr.append(flag, yours);
    tr.addEventListener("click", () => selectCell(c.cell));
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); selectCell(c.cell); } });
    body.append(tr);
  }
}

function selectCell(n) {
  st.cell = n;
  for (const tr of $("cell-table").querySelectorAll("tbody tr")) {
    const on = Number(tr.dataset.cell) === n;
    tr.classList.toggle("selected", on);
    if (on) { const panel = tr.closest(".details"), left = panel.scrollLeft; tr.scrollIntoView({ block: "nearest" }); panel.scrollLeft = left; }
  }
  showCell(); draw();
}

function showCell() {
  const it = st.current;
  const c = it && it.data && st.cell !== null ? it.data.cells.find((x) => x.cell === st.cell) : null;
  $("cell-detail").hidden = !c;
  if (!c) return;
  $("cell-title").textContent = c.class && !st.blind ? `Cell ${c.cell}: ${c.class} (${(100 * c.probability).toFixed(1)} %)` : c.class ? `Cell ${c.cell}` : `Cell ${c.cell} (not classified yet)`;
  const mark = markOf(it, c);
  $("cell-label").value = mark ? mark.label : "";
  $("cell-crop").src = `/api/images/${it.id}/crops/${c.cell}.png`;
  const bars = $("cell-probs");
  bars.replaceChildren();
  if (c.class && st.blind) {
    bars.textContent = "The model's call is hidden while you label.";
  } else if (c.class) {
    for (const name of st.model.classes) {
      const p = c["p_" + name] || 0;
      const row = document.createElement("div"); row.className = "bar-row" + (name === c.class ? " top" : "");
      const label = document.createElement("span"); label.className = "bar-name"; label.textContent = name;
      const track = document.createElement("span"); track.className = "bar-track";
      const fill = document.createElement("span"); fill.className = "bar-fill"; fill.style.display = "block"; fill.style.width = `${(100 * p).toFixed(1)}%`;
      const value = document.createElement("span"); value.textContent = p.toFixed(3);
      track.append(fill); row.append(label, track, value); bars.append(row);
    }
  } else {
    bars.textContent = `area ${c.area} px, centre ${c.centroid_x.toFixed(0)}, ${c.centroid_y.toFixed(0)}. Press Classify for its class.`;
  }
  $("cell-review").textContent = c.review && !st.blind ? `Review: ${c.review_reasons}` : "";
}

// ---------------------------------------------------------------------------- the canvas
function draw() {
  const it = st.current;
  const cv = $("canvas");
  if (!it || !it.img) return;
  const img = it.img;
  const maxW = Math.max(320, cv.parentElement.clientWidth - 8) * (window.devicePixelRatio || 1);
  const s = Math.min(1, maxW / img.naturalWidth) * (img.naturalWidth < 400 ? Math.min(4, 400 / img.naturalWidth) : 1);
  cv.width = Math.round(img.naturalWidth * s); cv.height = Math.round(img.naturalHeight * s);
  const ctx = cv.getContext("2d");
  ctx.imageSmoothingEnabled = s < 1;
  ctx.drawImage(img, 0, 0, cv.width, cv.height);
  const data = it.data;
  if (!data || !data.cells || st.overlay === "off") return;
  const lw = Math.max(1.5, 1.5 * (window.devicePixelRatio || 1));
  for (const c of data.cells) {
    const path = new Path2D();
    for (const ring of c.polygon) {
      ring.forEach(([x, y], i) => (i ? path.lineTo(x * s, y * s) : path.moveTo(x * s, y * s)));
      path.closePath();
    }
    const col = colour(st.blind ? null : c.class);
    ctx.globalAlpha = st.opacity;
    if (st.overlay === "fill") { ctx.globalAlpha = st.opacity * 0.45; ctx.fillStyle = col; ctx.fill(path); ctx.globalAlpha = st.opacity; }
    if (c.cell === st.cell) { ctx.lineWidth = lw * 3; ctx.strokeStyle = "#000"; ctx.stroke(path); ctx.lineWidth = lw * 1.6; ctx.strokeStyle = "#fff"; ctx.stroke(path); }
    else { ctx.lineWidth = lw; ctx.strokeStyle = col; ctx.stroke(path); }
    if (c.class && st.labels) label(ctx, st.blind ? String(c.cell) : `${c.cell} ${c.class} ${c.probability.toFixed(2)}`, c.bbox_x0 * s, c.bbox_y0 * s, col);
  }
  ctx.globalAlpha = 1;
}

function label(ctx, text, x, y, col) {
  const size = Math.max(11, Math.round(12 * (window.devicePixelRatio || 1)));
  ctx.font = `${size}px system-ui, sans-serif`;
  const w = ctx.measureText(text).width + 6;
  const lx = Math.min(Math.max(0, x), ctx.canvas.width - w), ly = Math.max(size + 4, y - 2);
  ctx.fillStyle = "rgba(0, 0, 0, 0.72)"; ctx.fillRect(lx, ly - size - 2, w + 4, size + 4);
  ctx.fillStyle = col; ctx.fillRect(lx, ly - size - 2, 4, size + 4);
  ctx.fillStyle = "#fff"; ctx.fillText(text, lx + 7, ly - 2);
}

function inRing(x, y, ring) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i], [xj, yj] = ring[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function canvasClick(ev) {
  const it = st.current;
  if (!it || !it.data || !it.data.cells || !it.img) return;
  const r = $("canvas").getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * it.img.naturalWidth, y = ((ev.clientY - r.top) / r.height) * it.img.naturalHeight;
  const hit = it.data.cells.find((c) => c.polygon.some((ring) => inRing(x, y, ring)));
  if (hit) selectCell(hit.cell);
}

// ---------------------------------------------------------------------------- wiring
function init() {
  setTheme(document.documentElement.getAttribute("data-theme") || "light", false);
  $("theme-toggle").addEventListener("click", () => setTheme(document.documentElement.getAttribute("data-theme") === "dark" ? "light" : "dark", true));
  const dz = $("dropzone");
  dz.addEventListener("dragover", (ev) => { ev.preventDefault(); dz.classList.add("over"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("over"));
  dz.addEventListener("drop", (ev) => { ev.preventDefault(); dz.classList.remove("over"); addFiles(ev.dataTransfer.files); });
  dz.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("file-input").click(); } });
  $("file-input").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  $("segment-btn").addEventListener("click", () => st.current && runStep(st.current, "segment"));
  $("classify-btn").addEventListener("click", () => st.current && runStep(st.current, "classify"));
  $("segment-all").addEventListener("click", () => batch("segment", "uploaded"));
  $("classify-all").addEventListener("click", () => batch("classify", "segmented"));
  $("clear-all").addEventListener("click", removeAll);
  for (const r of document.querySelectorAll('input[name="overlay"]')) r.addEventListener("change", () => { st.overlay = r.value; draw(); });
  $("show-labels").addEventListener("change", (ev) => { st.labels = ev.target.checked; draw(); });
  $("opacity").addEventListener("input", (ev) => { st.opacity = Number(ev.target.value) / 100; draw(); });
  $("canvas").addEventListener("click", canvasClick);
  $("blind").addEventListener("change", (ev) => { st.blind = ev.target.checked; show(); });
  $("download-labels").addEventListener("click", () => { st.unsaved = 0; saveSession(); });
  // labels live in this tab (a reload keeps them, closing it does not): leaving with changes not downloaded asks first
  window.addEventListener("beforeunload", (ev) => {
    if (st.unsaved && st.items.some((it) => (it.marks || []).length)) { ev.preventDefault(); ev.returnValue = ""; }
  });
  $("cell-label").addEventListener("change", (ev) => {
    const it = st.current, c = it && it.data && it.data.cells.find((x) => x.cell === st.cell);
    if (c) setLabel(it, c, ev.target.value);
  });
  window.addEventListener("resize", draw);
  restoreSession(); // lists the saved images before anything below saves the list again
  loadModel().then(() => { renderList(); show(); });
}

document.addEventListener("DOMContentLoaded", init);
