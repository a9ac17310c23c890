// WBC lab page: this tab's list of its own images, kept in sessionStorage (per tab, so two tabs stay apart)
// so that a reload lists again the images the server still has. Loaded before app.js (both deferred); uses
// its state `st` and helpers when called. Labels are not kept: leaving with labels not downloaded asks first.
"use strict";

const SESSION_KEY = "wbc-images";
const IMAGE_ID = /^[0-9a-f]{1,64}$/; // the server's ids (ResultStore.add): nothing else goes into a URL

// the ids of this tab's images and their names (shown while restoring), in the list's order
function saveSession() {
  const kept = st.items.filter((it) => it.id).map((it) => ({ id: it.id, name: it.name }));
  try { sessionStorage.setItem(SESSION_KEY, JSON.stringify(kept)); } catch (err) { /* storage off: a reload starts empty */ }
}

function savedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "[]");
    return Array.isArray(saved) ? saved.filter((s) => s && typeof s.id === "string" && IMAGE_ID.test(s.id)) : [];
  } catch (err) {
    return [];
  }
}

// The saved images are listed at once (the list is read before anything saves it again), then each is asked
// for: one the server answers 404 for (expired or deleted meanwhile) is dropped, another error is shown.
async function restoreSession() {
  const items = savedSession().map((s) => ({
    key: nextKey++, file: null, name: typeof s.name === "string" && s.name ? s.name : s.id, status: "restoring",
    id: s.id, data: null, error: null, img: null, marks: [],
  }));
  if (!items.length) return;
  st.items.push(...items);
  if (!st.current) select(items[0]); else renderList();
  await pool(items, 2, restoreItem);
}

async function restoreItem(it) {
  try {
    it.data = await api("GET", `/api/images/${it.id}`);
    it.name = it.data.name; it.status = it.data.status;
    await loadImage(it);
  } catch (err) {
    if (err.status === 404) {
      st.items = st.items.filter((x) => x !== it);
      if (st.current === it) select(st.items[0] || null); else renderList();
      return;
    }
    it.status = "error"; it.error = `${it.name}: not restored after the reload: ${err.message}`;
  }
  renderList();
  if (it === st.current) show();
}
