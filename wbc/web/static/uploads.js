// WBC lab page: the upload queue (two files at a time) and removing images. An image removed while it waits its
// turn is never sent; one removed while on its way is deleted on the server as soon as its upload returns, so
// "Remove all" and × leave nothing of the page's behind. Loaded before app.js (all deferred); uses its state
// `st` and helpers when called.
"use strict";

async function addFiles(files) {
  const added = Array.from(files).map((file) => ({ key: nextKey++, file, name: file.name, size: file.size, status: "queued", id: null, data: null, error: null, img: null, marks: [] }));
  adoptLabels(added); st.items.push(...added); // session.js: labels of the same file whose image expired
  if (!st.current && added.length) select(added[0]);
  renderList();
  await pool(added, 2, upload);
}

async function pool(items, width, fn) {
  const queue = items.slice();
  const worker = async () => { while (queue.length) await fn(queue.shift()); };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
}

async function upload(it) {
  if (it.removed) return; // removed while it waited: never sent
  it.status = "uploading"; renderList();
  const form = new FormData();
  form.append("file", it.file, it.file.name);
  try {
    const data = await apiRetrying("POST", "/api/images", form); // steps.js: "busy" is asked again
    if (it.removed) { forget([data.id]); return; } // removed while on its way: the server's copy goes too
    it.data = data; it.id = data.id; it.status = "uploaded"; it.file = null;
    await loadImage(it);
  } catch (err) {
    if (it.removed) return;
    it.error = err.message.startsWith(it.name) ? err.message : `${it.name}: ${err.message}`; it.status = "error";
  }
  renderList();
  if (it === st.current) show();
}

function loadImage(it) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => { it.img = img; if (it === st.current) draw(); resolve(); };
    img.onerror = () => resolve();
    img.src = `/api/images/${it.id}/image.png`;
  });
}

// delete these images on the server (this page's own, never other users'); one gone already is no error
async function forget(ids) {
  if (!ids.length) return;
  const url = ids.length === 1 ? `/api/images/${ids[0]}` : "/api/images?ids=" + ids.join(",");
  try { await api("DELETE", url); } catch (err) { /* already gone */ }
}

async function removeItem(it) {
  const n = (it.marks || []).length;
  if (n && !window.confirm(`Remove ${it.name} and your ${n} label(s) on it?`)) return;
  it.removed = true; // an upload still queued or on its way ends here (upload above)
  st.items = st.items.filter((x) => x !== it);
  renderLabels();
  if (st.current === it) select(st.items[0] || null); else renderList();
  if (it.id) await forget([it.id]);
}

async function removeAll() {
  const n = st.items.reduce((k, it) => k + (it.marks || []).length, 0);
  if (n && !window.confirm(`Remove all images and your ${n} label(s)? Download your labels first to keep them.`)) return;
  const gone = st.items;
  for (const it of gone) it.removed = true;
  st.items = []; renderLabels(); select(null);
  await forget(gone.filter((it) => it.id).map((it) => it.id));
}
