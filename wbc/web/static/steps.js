// WBC lab page: the steps on an image (Segment, Classify) and their batches ("Segment all", "Classify all").
// A "busy" answer (503: the server's job queue is full) is asked again after the Retry-After it gives, a few
// times; an image the server no longer has (404) is marked expired, as a reload marks it (session.js).
// Loaded before app.js (all deferred); uses its state `st` and helpers when called.
"use strict";

const BUSY_TRIES = 5; // a call answered "busy" is sent at most this many times in all

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function apiRetrying(method, url, body) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api(method, url, body);
    } catch (err) {
      if (err.status !== 503 || attempt >= BUSY_TRIES) throw err;
      await sleep(1000 * Math.min(10, Math.max(0.2, err.retryAfter || 1)));
    }
  }
}

// one step on one image; true when it succeeded
async function runStep(it, step) {
  const label = step === "segment" ? "segmenting" : "classifying";
  const before = it.status;
  it.status = label; st.busy++; renderList(); if (it === st.current) show();
  let ok = true;
  try {
    it.data = await apiRetrying("POST", `/api/images/${it.id}/${step}`);
    it.status = it.data.status; it.error = null;
  } catch (err) {
    ok = false;
    if (err.status === 404) markExpired(it); // the same file uploaded again takes over its labels
    else { it.status = before; it.error = `${it.name}: ${step} failed: ${err.message}`; }
  }
  st.busy--; renderList(); if (it === st.current) show();
  return ok;
}

// The step on every image at state `from` (uploaded: segment; segmented: classify), two at a time. An image
// that left that state while it waited its turn (the lab segmented or classified it by hand, or removed it)
// is skipped: its results stay. The progress line counts the failures, and stays up when there were some.
async function batch(step, from) {
  const todo = st.items.filter((it) => it.id && it.status === from);
  if (!todo.length || st.batching) return;
  st.batching = true; renderList();
  const verb = step === "segment" ? ["Segmenting", "Segmented"] : ["Classifying", "Classified"];
  $("batch-progress").hidden = false;
  let done = 0, failed = 0, skipped = 0;
  const tail = () => (failed ? `, ${failed} failed (see the list)` : "") + (skipped ? `, ${skipped} done meanwhile` : "");
  const update = () => { $("batch-bar").max = todo.length; $("batch-bar").value = done; $("batch-text").textContent = `${verb[0]} ${Math.min(done + 1, todo.length)} of ${todo.length}${tail()}`; };
  update();
  await pool(todo, 2, async (it) => {
    if (it.status !== from || !st.items.includes(it)) skipped++;
    else if (!(await runStep(it, step))) failed++;
    done++; update();
  });
  $("batch-text").textContent = `${verb[1]} ${todo.length - failed - skipped} of ${todo.length}${tail()}`;
  st.batching = false; renderList();
  if (!failed) setTimeout(() => { if (!st.busy && !st.batching) $("batch-progress").hidden = true; }, 1500);
}
