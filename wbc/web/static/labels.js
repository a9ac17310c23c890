// WBC lab page: the lab's own labels (a point per labelled cell, as compare.py reads them) and their CSV.
// Loaded before app.js (both deferred); uses its state `st` and helpers when called.
"use strict";

// A label is a point with a class, as compare.py reads them: it stays with its cell when the image is segmented
// again, and the CSV matches it to the cell under it in any predict run. The point is inside the cell (the server's
// inside_x/y): the centroid of a band or horseshoe nucleus lies outside it. A label put at the centroid (as before
// inside_x/y, kept in a tab's session) still belongs to its cell, to the tenth of a pixel the CSV holds.
function marksOf(it, c) {
  const atCentre = (m) => Math.abs(m.x - c.centroid_x) < 0.05 && Math.abs(m.y - c.centroid_y) < 0.05;
  return ((it && it.marks) || []).filter((m) => atCentre(m) || c.polygon.some((ring) => inRing(m.x, m.y, ring)));
}

function markOf(it, c) {
  return marksOf(it, c)[0] || null;
}

function setLabel(it, c, label) {
  const old = marksOf(it, c);
  it.marks = (it.marks || []).filter((m) => !old.includes(m)); // one label per cell: a new one replaces it
  const inside = Number.isFinite(c.inside_x) && Number.isFinite(c.inside_y);
  if (label) it.marks.push({ x: inside ? c.inside_x : c.centroid_x, y: inside ? c.inside_y : c.centroid_y, label });
  st.unsaved++;
  saveSession(); // a reload keeps the labels (session.js)
  renderLabels(); renderTable(it.data.cells); draw();
}

// A field a spreadsheet would run as a formula (= + - @, tab, CR) opens as text behind an apostrophe; numbers
// stay numbers. The same rule as wbc/spreadsheet.py, whose readers take the apostrophe off again.
const FORMULA = /^'*[=+\-@\t\r]/;
const NUMBER = /^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)$/i;

function csvField(v) {
  let text = String(v);
  if (FORMULA.test(text) && (text.startsWith("'") || !NUMBER.test(text))) text = "'" + text;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function renderLabels() {
  const rows = st.items.flatMap((it) => (it.marks || []).map((m) => [it.name, m.x.toFixed(1), m.y.toFixed(1), m.label]));
  const a = $("download-labels");
  if (st.labelsUrl) URL.revokeObjectURL(st.labelsUrl);
  st.labelsUrl = rows.length ? URL.createObjectURL(new Blob([["image,x,y,label", ...rows.map((r) => r.map(csvField).join(","))].join("\r\n") + "\r\n"], { type: "text/csv" })) : null;
  a.hidden = !rows.length;
  a.textContent = `Download my labels (CSV, ${rows.length} cell${rows.length === 1 ? "" : "s"})`;
  if (st.labelsUrl) a.href = st.labelsUrl; else a.removeAttribute("href");
}
