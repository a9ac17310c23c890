// WBC lab page: this tab's list of its own images and the labels on them, kept in sessionStorage (per tab, so
// two tabs stay apart) so that a reload lists again the images the server still has, with the lab's labels.
// Loaded before app.js (both deferred); uses its state `st` and helpers when called. Closing the tab loses the
// labels: leaving with labels not downloaded asks first.
"use strict";

const SESSION_KEY = "wbc-images";
const UNSAVED_KEY = "wbc-unsaved-labels"; // label changes since the last download: a reload still asks before leaving
const IMAGE_ID = /^[0-9a-f]{1,64}$/; // the server's ids (ResultStore.add): nothing else goes into a URL

// the ids of this tab's images, their names (shown while restoring) and the labels on them, in the list's order
function saveSession() {
  const kept = st.items.filter((it) => it.id).map((it) => ((it.marks || []).length ? { id: it.id, name: it.name, size: it.size, marks: it.marks } : { id: it.id, name: it.name }));
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(kept));
    sessionStorage.setItem(UNSAVED_KEY, String(st.unsaved));
  } catch (err) { /* storage off: a reload starts empty */ }
}

// a saved label is a point and a class name; anything else in storage is not ours and is left out
function savedMarks(marks) {
  const ok = (m) => m && Number.isFinite(m.x) && Number.isFinite(m.y) && typeof m.label === "string" && m.label !== "";
  return Array.isArray(marks) ? marks.filter(ok).map((m) => ({ x: m.x, y: m.y, label: m.label })) : [];
}

function savedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "[]");
    return Array.isArray(saved) ? saved.filter((s) => s && typeof s.id === "string" && IMAGE_ID.test(s.id)) : [];
  } catch (err) {
    return [];
  }
}

// The saved images are listed at once with their labels (the list is read before anything saves it again), then
// each is asked for: one the server answers 404 for (expired or deleted meanwhile) is dropped, unless the lab
// labelled cells on it: those labels stay in the CSV, so the image stays listed, saying so. Another error is shown.
async function restoreSession() {
  const items = savedSession().map((s) => ({
    key: nextKey++, file: null, name: typeof s.name === "string" && s.name ? s.name : s.id, status: "restoring",
    id: s.id, data: null, error: null, img: null, marks: savedMarks(s.marks), size: Number.isFinite(s.size) ? s.size : null,
  }));
  if (!items.length) return;
  try { st.unsaved = Math.max(0, Number(sessionStorage.getItem(UNSAVED_KEY)) || 0); } catch (err) { st.unsaved = 0; }
  st.items.push(...items);
  renderLabels();
  if (!st.current) select(items[0]); else renderList();
  await pool(items, 2, restoreItem);
}

async function restoreItem(it) {
  try {
    it.data = await api("GET", `/api/images/${it.id}`);
    if (it.name === it.id) it.name = it.data.name; // else the name as uploaded (the server shows at most 120 characters): the CSV's
    it.status = it.data.status;
    await loadImage(it);
  } catch (err) {
    if (err.status === 404 && it.marks.length) {
      markExpired(it);
    } else if (err.status === 404) {
      st.items = st.items.filter((x) => x !== it);
      if (st.current === it) select(st.items[0] || null); else renderList();
      return;
    } else {
      it.status = "error"; it.error = `${it.name}: not restored after the reload: ${err.message}`;
    }
  }
  renderList();
  if (it === st.current) show();
}

// An image the server no longer has (404 on a reload or on a step): no step can run on it; the same file
// uploaded again takes its labels (adoptLabels)
function markExpired(it) {
  it.status = "error"; it.expired = true; it.data = null;
  const n = (it.marks || []).length;
  it.error = `${it.name}: no longer on the server (expired or deleted)` + (n ? `; your ${n} label(s) on it stay in Download my labels` : ": upload it again");
}

// The same file (name and size) uploaded again after its image expired takes over the labels on it: they are
// points in that image, and kept on both entries they would be one cell twice in the CSV (compare.py refuses that).
function adoptLabels(added) {
  for (const it of added) {
    const old = st.items.find((x) => x.expired && x.name === it.name && x.size === it.size);
    if (!old) continue;
    it.marks = old.marks; st.items = st.items.filter((x) => x !== old);
    if (st.current === old) st.current = null; // addFiles then shows the new entry
  }
}
