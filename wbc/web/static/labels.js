// WBC lab page: the lab's own labels (a point per labelled cell, as compare.py reads them) and their CSV.
// Loaded before app.js (both deferred); uses its state `st` and helpers when called.
"use strict";

// A label is a point (the cell's centre) with a class, as compare.py reads them: it stays with its cell
// when the image is segmented again, and the CSV matches it to the cell under it in any predict run.
function markOf(it, c) {
  return (it.marks || []).find((m) => c.polygon.some((ring) => inRing(m.x, m.y, ring))) || null;
}

function setLabel(it, c, label) {
  it.marks = (it.marks || []).filter((m) => !c.polygon.some((ring) => inRing(m.x, m.y, ring)));
  if (label) it.marks.push({ x: c.centroid_x, y: c.centroid_y, label });
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
