// pokegan studio: plain JS over the JSON API in app.py (no framework, no CDN).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, version: null, start: 0, pageSize: 16, pinned: [], anim: null, seq: 0 };

function status(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

async function api(path, body, raw) {
  const opts = body === undefined ? {} : raw
    ? { method: "POST", body: body, headers: { "Content-Type": "application/octet-stream" } }
    : { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).detail || msg; } catch (e) { /* not JSON */ }
    throw new Error(`${r.status}: ${msg}`);
  }
  return r;
}

function look() {
  const cutoff = $("cutoff").value;
  return {
    version: state.version, psi: parseFloat($("psi").value),
    cutoff: cutoff === "" ? null : parseInt(cutoff, 10), noise_mode: $("noise").value,
  };
}

function labelOf(item) { return item.seed !== undefined ? `seed ${item.seed}` : `projection ${item.projection}`; }

function download(url, name) {
  const a = document.createElement("a");
  a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
}

async function downloadW(item) {
  try {
    const r = await api("/api/w", { ...look(), item });
    const url = URL.createObjectURL(await r.blob());
    download(url, (item.seed !== undefined ? `seed${String(item.seed).padStart(4, "0")}` : `projection-${item.projection}`) + "_w.npz");
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) { status(e.message, true); }
}

function pngName(item) {
  return item.seed !== undefined ? `seed${String(item.seed).padStart(4, "0")}.png` : `projection-${item.projection}.png`;
}

function button(text, cls, onclick) {
  const b = document.createElement("button");
  b.textContent = text; b.className = cls; b.onclick = onclick;
  return b;
}

// The Pokédex's name for a tile (shown under it), its top 3 species on hover; none without a Pokédex.
function caption(img, ex) {
  if (!ex) return [];
  const name = document.createElement("div");
  name.className = "name"; name.textContent = ex.name;
  name.title = img.title = "looks like " + ex.looks_like.map((m) => `${m.name} ${Math.round(m.prob * 100)}%`).join(", ");
  return [name];
}

async function renderGrid() {
  const seq = ++state.seq;  // a slider drag sends many requests: show only the newest answer
  const items = [];
  for (let i = 0; i < state.pageSize; i++) items.push({ seed: state.start + i });
  status("rendering…");
  try {
    const data = await (await api("/api/render", { ...look(), items })).json();
    if (seq !== state.seq) return;
    const grid = $("grid");
    grid.replaceChildren();
    data.images.forEach((url, i) => {
      const item = items[i];
      const cell = document.createElement("div");
      cell.className = "cell";
      cell.dataset.seed = item.seed;
      const img = document.createElement("img");
      img.src = url; img.alt = labelOf(item);
      const label = document.createElement("div");
      label.className = "label"; label.textContent = labelOf(item);
      cell.append(img, ...caption(img, (data.looks_like || [])[i]), label, button("pin", "pin-btn", () => pin(item)),
        button("png", "png-btn", () => download(img.src, pngName(item))),
        button("w", "w-btn", () => downloadW(item)));
      grid.appendChild(cell);
    });
    status(`seeds ${state.start}–${state.start + state.pageSize - 1}`);
    refreshPinned();
  } catch (e) { if (seq === state.seq) status(e.message, true); }
}

async function refreshPinned() {
  const box = $("pinned");
  if (!state.pinned.length) return;
  try {
    const data = await (await api("/api/render", { ...look(), items: state.pinned.map((p) => p.item) })).json();
    box.replaceChildren();
    state.pinned.forEach((p, i) => {
      p.url = data.images[i];
      const div = document.createElement("div");
      div.className = "pin";
      const img = document.createElement("img");
      img.src = p.url; img.alt = labelOf(p.item);
      const label = document.createElement("div");
      label.textContent = labelOf(p.item);
      div.append(img, ...caption(img, (data.looks_like || [])[i]), label, button("×", "unpin-btn", () => { state.pinned.splice(i, 1); if (!state.pinned.length) box.replaceChildren(); refreshPinned(); }),
        button("png", "png-btn", () => download(img.src, pngName(p.item))),
        button("w", "w-btn", () => downloadW(p.item)));
      box.appendChild(div);
    });
  } catch (e) { status(e.message, true); }
}

function pin(item) {
  if (!state.pinned.some((p) => JSON.stringify(p.item) === JSON.stringify(item))) state.pinned.push({ item });
  refreshPinned();
}

async function mix() {
  if (state.pinned.length < 2) { status("pin at least two images to mix", true); return; }
  const styles = document.querySelector("input[name=styles]:checked").value;
  const items = state.pinned.map((p) => p.item);
  status("mixing…");
  try {
    const data = await (await api("/api/mix", { ...look(), rows: items, cols: items, styles })).json();
    const table = $("mix-grid");
    table.replaceChildren();
    const cell = (url, cls, alt) => {
      const td = document.createElement("td");
      td.className = cls;
      if (url) {
        const img = document.createElement("img");
        img.src = url; img.alt = alt; img.title = "click to download as PNG";
        img.onclick = () => download(url, `mix-${styles}.png`);
        td.appendChild(img);
      }
      return td;
    };
    const head = document.createElement("tr");
    head.appendChild(cell(null, "blank"));
    data.sources.forEach((u, j) => head.appendChild(cell(u, "parent source", labelOf(items[j]))));
    table.appendChild(head);
    data.destinations.forEach((u, i) => {
      const tr = document.createElement("tr");
      tr.appendChild(cell(u, "parent destination", labelOf(items[i])));
      data.mixed[i].forEach((m, j) => tr.appendChild(cell(m, "mixed", `${labelOf(items[i])} with ${labelOf(items[j])}'s ${styles} styles`)));
      table.appendChild(tr);
    });
    status(`${styles} styles (layers ${data.layers[0]}–${data.layers[1]}) from the columns`);
  } catch (e) { status(e.message, true); }
}

function stopAnim() { if (state.anim) { clearInterval(state.anim); state.anim = null; } }

async function play() {
  if (state.pinned.length < 2) { status("pin at least two images to interpolate", true); return; }
  stopAnim();
  status("interpolating…");
  try {
    const body = { ...look(), items: state.pinned.map((p) => p.item), steps: parseInt($("steps").value, 10) || 12,
      space: $("space").value, loop: true };
    const data = await (await api("/api/interpolate", body)).json();
    const img = $("anim");
    img.hidden = false;
    let i = 0;
    img.src = data.frames[0];
    img.dataset.frames = data.frames.length;
    state.anim = setInterval(() => { i = (i + 1) % data.frames.length; img.src = data.frames[i]; }, 80);
    status(`${data.frames.length} frames (${body.space === "w" ? "w lerp" : "z slerp"})`);
  } catch (e) { status(e.message, true); }
}

async function projectUpload() {
  const file = $("upload").files[0];
  if (!file) { status("choose a picture first", true); return; }
  const limit = state.info.limits.max_upload_bytes;
  if (file.size > limit) { status(`the picture is ${file.size} bytes; at most ${limit}`, true); return; }
  const steps = parseInt($("project-steps").value, 10) || 200;
  const q = new URLSearchParams({ steps, w_plus: $("w-plus").checked, crop: $("crop").checked });
  if (state.version) q.set("version", state.version);
  status(`projecting (${steps} steps)…`);
  $("project").disabled = true;
  try {
    const data = await (await api(`/api/project?${q}`, file, true)).json();
    const box = $("projection");
    box.replaceChildren();
    const side = document.createElement("div");
    side.className = "side";
    for (const [url, cap] of [[data.target, "target"], [data.image, `projection ${data.id}`]]) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = url; img.alt = cap; img.className = "big";
      const fc = document.createElement("figcaption"); fc.textContent = cap;
      fig.append(img, fc); side.appendChild(fig);
    }
    const err = document.createElement("p");
    err.id = "projection-error";
    err.textContent = `mean |error| ${data.pixel_error.toFixed(2)}/255 (from ${data.start_error.toFixed(2)} at the average w)` +
      (data.perceptual ? "" : "; pixel loss only");
    box.append(side, err);
    pin({ projection: data.id });
    status(`projected as ${data.id}; pinned`);
  } catch (e) { status(e.message, true); } finally { $("project").disabled = false; }
}

function showVersion(versions) {
  const box = $("version-info");
  const v = versions.find((x) => x.version === state.version);
  if (!v) { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren();
  const p = document.createElement("p");
  p.id = "promotion";
  p.textContent = `v${v.version}${v.aliases.length ? " (" + v.aliases.join(", ") + ")" : ""}: ` +
    (v.decision ? `${v.decision}: ${v.reason || ""}` : "not evaluated yet");
  const table = document.createElement("table");
  table.id = "metrics";
  for (const [k, val] of Object.entries(v.metrics)) {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.textContent = k;
    const td = document.createElement("td"); td.textContent = Number(val).toPrecision(5);
    tr.append(th, td); table.appendChild(tr);
  }
  box.append(p, table);
}

async function loadInfo() {
  const q = state.version ? `?version=${encodeURIComponent(state.version)}` : "";
  state.info = await (await api(`/api/info${q}`)).json();
  state.pageSize = Math.min(16, state.info.limits.max_images);
  $("model-name").textContent = `${state.info.model} · ${state.info.resolution}×${state.info.resolution}` +
    (state.info.pokedex ? " · names by the Pokédex" : "");
  const cutoff = $("cutoff");
  cutoff.replaceChildren(new Option("all layers", ""));
  for (let i = 1; i <= state.info.num_ws; i++) cutoff.appendChild(new Option(`first ${i}`, String(i)));
  document.querySelectorAll("input[name=styles]").forEach((r) => { r.disabled = !(r.value in state.info.styles); });
}

async function loadVersions() {
  const data = await (await api("/api/versions")).json();
  if (!data.registry) return;
  state.version = state.version || data.default_version;
  const sel = $("version");
  sel.replaceChildren();
  for (const v of data.versions) {
    const opt = new Option(`v${v.version}${v.aliases.length ? " (" + v.aliases.join(", ") + ")" : ""}`, v.version);
    sel.appendChild(opt);
  }
  sel.value = state.version;
  $("version-label").hidden = false;
  showVersion(data.versions);
  sel.onchange = async () => {
    state.version = sel.value;
    state.pinned = state.pinned.filter((p) => p.item.seed !== undefined);  // projections belong to a version
    $("pinned").replaceChildren();
    showVersion(data.versions);
    try { await loadInfo(); await renderGrid(); } catch (e) { status(e.message, true); }
  };
}

function init() {
  $("psi").addEventListener("input", () => { $("psi-value").textContent = parseFloat($("psi").value).toFixed(2); renderGrid(); });
  $("cutoff").onchange = renderGrid;
  $("noise").onchange = renderGrid;
  $("start-seed").onchange = () => { state.start = Math.max(0, parseInt($("start-seed").value, 10) || 0); renderGrid(); };
  $("prev").onclick = () => { state.start = Math.max(0, state.start - state.pageSize); $("start-seed").value = state.start; renderGrid(); };
  $("next").onclick = () => { state.start += state.pageSize; $("start-seed").value = state.start; renderGrid(); };
  $("pin-seed").onclick = () => { const s = parseInt($("one-seed").value, 10); if (s >= 0) pin({ seed: s }); else status("type a seed (an integer >= 0)", true); };
  $("mix").onclick = mix;
  $("play").onclick = play;
  $("stop").onclick = stopAnim;
  $("anim").onclick = () => download($("anim").src, "frame.png");
  $("project").onclick = projectUpload;
  (async () => {
    try { await loadVersions(); await loadInfo(); await renderGrid(); } catch (e) { status(e.message, true); }
  })();
}

init();
