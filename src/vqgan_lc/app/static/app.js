// The page: three views over the JSON API of vqgan_lc/app/server.py. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;

// ----------------------------------------------------------------------------- talking to the server
async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the app's server does not answer; is `vqgan-lc app` still running?");
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    throw new Error(`the server answered ${response.status} without a readable reply`);
  }
  if (data && data.error) throw new Error(data.error);
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// One progress line for whatever runs: a job (elapsed time) or the usage count (a fraction).
const running = new Map();
function setStatus(key, text, fraction) {
  if (text === null) running.delete(key); else running.set(key, { text, fraction });
  const shown = [...running.values()].pop();
  $("status").hidden = !shown;
  if (!shown) return;
  $("status-text").textContent = shown.text;
  const fill = $("status-fill");
  fill.classList.toggle("indeterminate", shown.fraction == null);
  fill.style.width = shown.fraction == null ? "30%" : `${Math.round(100 * shown.fraction)}%`;
  fill.style.marginLeft = "0";
}

// POST, then poll the job until it ends; the progress line shows what runs and for how long.
async function runJob(url, body, label) {
  showError("");
  const key = `${label}-${Math.random()}`;
  setStatus(key, `${label}…`, null);
  try {
    const { job } = await api(url, { method: "POST", body });
    for (;;) {
      await new Promise((r) => setTimeout(r, 200));
      const status = await api(`/api/job/${job}`);
      if (status.state === "done") return status.result;
      if (status.state === "error") throw new Error(status.error);
      setStatus(key, `${label}… ${status.elapsed.toFixed(1)} s`, null);
    }
  } finally {
    setStatus(key, null);
  }
}

function guarded(fn) {
  return (...args) => fn(...args).catch((err) => showError(err.message));
}

// ----------------------------------------------------------------------------- token maps
function colourOf(value, byClass) {
  const hue = (value * 137.508) % 360;
  if (byClass) return `hsl(${hue}, 65%, 55%)`;
  return `hsl(${hue}, ${50 + (value % 3) * 15}%, ${42 + (value % 4) * 8}%)`;
}

// Draw a (h, w) grid of ids on a canvas; `marked` ids get a white outline (e.g. entries no real image used).
function drawTokenMap(canvas, grid, ids, classes, byClass, selected, marked) {
  const [h, w] = grid;
  const side = canvas.width;
  const ctx = canvas.getContext("2d");
  const cw = side / w, ch = side / h;
  ctx.clearRect(0, 0, side, side);
  for (let k = 0; k < ids.length; k++) {
    const r = Math.floor(k / w), c = k % w;
    ctx.fillStyle = colourOf(byClass && classes ? classes[k] : ids[k], byClass && classes);
    ctx.fillRect(c * cw, r * ch, cw, ch);
    if (marked && marked.has(ids[k])) {
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
      ctx.strokeRect(c * cw + 2, r * ch + 2, cw - 4, ch - 4);
    }
  }
  if (cw >= 8) {
    ctx.strokeStyle = "rgba(255,255,255,0.35)"; ctx.lineWidth = 1;
    for (let c = 1; c < w; c++) { ctx.beginPath(); ctx.moveTo(c * cw, 0); ctx.lineTo(c * cw, side); ctx.stroke(); }
    for (let r = 1; r < h; r++) { ctx.beginPath(); ctx.moveTo(0, r * ch); ctx.lineTo(side, r * ch); ctx.stroke(); }
  }
  if (selected != null) {
    const r = Math.floor(selected / w), c = selected % w;
    ctx.strokeStyle = "#000"; ctx.lineWidth = 3;
    ctx.strokeRect(c * cw + 1.5, r * ch + 1.5, cw - 3, ch - 3);
  }
}

function cellAt(canvas, grid, event) {
  const rect = canvas.getBoundingClientRect();
  const c = Math.min(grid[1] - 1, Math.floor(((event.clientX - rect.left) / rect.width) * grid[1]));
  const r = Math.min(grid[0] - 1, Math.floor(((event.clientY - rect.top) / rect.height) * grid[0]));
  return r * grid[1] + c;
}

// ----------------------------------------------------------------------------- one entry
async function showEntry(panelId, entry) {
  const data = await api(`/api/entry/${entry}`);
  const panel = $(panelId);
  panel.hidden = false;
  panel.innerHTML = "";
  const title = document.createElement("h2");
  title.className = "entry-title";
  title.textContent = `entry ${data.entry}` + (data.class_name != null ? ` · class ${data.class_name}` : "");
  panel.appendChild(title);
  const usage = document.createElement("p");
  usage.className = "muted entry-usage";
  if (data.usage) {
    const u = data.usage;
    usage.textContent = `used ${u.count} time${u.count === 1 ? "" : "s"} by the evaluation set (${u.num_images} images, ` +
      `${u.num_tokens} tokens; ${(100 * u.share).toFixed(3)}% of them), rank ${u.rank} of ${INFO.codebook_size}`;
  } else {
    usage.textContent = INFO.data.count ? "usage of the evaluation set: still counting" :
      "usage: start the app with --data DIR to count how often an evaluation set uses it";
  }
  panel.appendChild(usage);
  if (!data.exemplars.length) {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = data.exemplar_note || "no exemplars";
    panel.appendChild(note);
    return;
  }
  const caption = document.createElement("p");
  caption.className = "muted";
  caption.textContent = `the ${data.exemplars.length} image patches whose features lie nearest to this entry (nearest first)`;
  panel.appendChild(caption);
  const row = document.createElement("div");
  row.className = "patches";
  for (const ex of data.exemplars) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = ex.url;
    img.className = "exemplar";
    img.title = `${ex.source}\ncell ${ex.cell}, squared distance ${ex.distance}` + (ex.label != null ? `\nclass ${ex.label}` : "");
    const cap = document.createElement("figcaption");
    cap.textContent = ex.label != null ? String(ex.label) : ex.short;
    fig.append(img, cap);
    row.appendChild(fig);
  }
  panel.appendChild(row);
}

// ----------------------------------------------------------------------------- Tokenize
let TOKENS = null;
let selectedCell = null;

function redrawTokens() {
  if (!TOKENS) return;
  const same = selectedCell == null ? null : new Set([TOKENS.ids[selectedCell]]);  // every token of the clicked entry
  drawTokenMap($("tokenmap"), TOKENS.grid, TOKENS.ids, TOKENS.classes, $("colour-by").value === "class", selectedCell, same);
}

async function tokenize(url, body, label) {
  const result = await runJob(url, body, label);
  TOKENS = result;
  selectedCell = null;
  $("tokenize-result").hidden = false;
  $("tokenize-entry").hidden = true;
  $("original").src = result.original;
  $("reconstruction").src = result.reconstruction;
  $("recon-caption").textContent = `reconstruction · PSNR ${result.psnr} dB`;
  $("map-caption").textContent = `token map ${result.grid[0]}×${result.grid[1]} · ${result.distinct} distinct entries · click a token`;
  redrawTokens();
}

// ----------------------------------------------------------------------------- Atlas
function renderHistogram(bins) {
  const width = 640, height = 200, left = 50, bottom = 34, top = 10;
  const max = Math.max(...bins.map((b) => b.count), 1);
  const bw = (width - left - 10) / bins.length;
  const y = (v) => top + (height - top - bottom) * (1 - Math.log10(v + 1) / Math.log10(max + 1));
  let svg = `<svg id="usage-svg" width="${width}" height="${height}" role="img" aria-label="usage histogram">`;
  svg += `<text x="4" y="${top + 8}">entries</text>`;
  bins.forEach((b, i) => {
    const x = left + i * bw;
    const yy = y(b.count);
    svg += `<rect x="${x + 2}" y="${yy}" width="${bw - 4}" height="${height - bottom - yy}" fill="${i === 0 ? "#d77aa8" : "#2d6cdf"}"><title>${b.count} entries used ${b.label} times</title></rect>`;
    svg += `<text x="${x + bw / 2}" y="${yy - 3}" text-anchor="middle">${b.count}</text>`;
    svg += `<text x="${x + bw / 2}" y="${height - bottom + 14}" text-anchor="middle">${b.label}</text>`;
  });
  svg += `<text x="${left + (width - left) / 2}" y="${height - 4}" text-anchor="middle">tokens per entry in the evaluation set (log-scaled bars)</text></svg>`;
  $("histogram").innerHTML = svg;
}

function renderUsage(u) {
  if (u.state === "none") {
    $("usage-line").textContent = "no evaluation set: start the app with --data DIR to count how often each entry is used";
    return;
  }
  if (u.state === "error") { $("usage-line").textContent = `counting usage failed: ${u.error}`; return; }
  if (u.state !== "done") { $("usage-line").textContent = `counting: ${u.done} of ${u.total} images…`; return; }
  $("usage-line").textContent = `${u.used} of ${INFO.codebook_size} entries used (${(100 * u.utilization).toFixed(1)}%) by ` +
    `${u.num_tokens} tokens of ${u.total} images of ${INFO.data.source} (counted in ${u.seconds} s)`;
  renderHistogram(u.histogram);
  if (u.per_class) {
    let html = "<table class='classes'><tr><th>class</th><th>entries</th><th>used</th><th>tokens</th></tr>";
    const shown = u.per_class.slice(0, 50);
    for (const c of shown) html += `<tr><td>${c.name}</td><td>${c.entries}</td><td>${c.used}</td><td>${c.tokens}</td></tr>`;
    const rest = u.per_class.length - shown.length;
    $("class-usage").innerHTML = html + "</table>" + (rest ? `<p class="muted">and ${rest} more classes</p>` : "");
  }
}

async function pollUsage() {
  for (;;) {
    const u = await api("/api/usage");
    renderUsage(u);
    if (u.state !== "running") { setStatus("usage", null); return; }
    setStatus("usage", `counting token usage of the evaluation set: ${u.done} / ${u.total} images`, u.total ? u.done / u.total : 0);
    await new Promise((r) => setTimeout(r, 700));
  }
}

async function browse(order, title, offset = 0) {
  const cls = $("browse-class").value;
  const data = await api(`/api/entries?order=${order}&offset=${offset}` + (order === "class" ? `&class=${cls}` : ""));
  const end = data.offset + data.entries.length;
  $("list-title").hidden = false;
  $("list-title").textContent = `${title}: ${data.total} entries` + (data.total > end || offset ? ` (${end} shown)` : "");
  const list = $("entry-list");
  if (!offset) list.innerHTML = "";
  list.querySelector(".more")?.remove();
  for (const e of data.entries) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.entry = e.entry;
    const pic = document.createElement(e.patch ? "img" : "div");
    if (e.patch) pic.src = e.patch; else pic.className = "empty";
    const label = document.createElement("div");
    label.textContent = `#${e.entry} · ${e.count}×`;
    tile.append(pic, label);
    tile.addEventListener("click", guarded(() => showEntry("atlas-entry", e.entry)));
    list.appendChild(tile);
  }
  if (data.total > end) {
    const more = document.createElement("button");
    more.className = "more";
    more.textContent = `${Math.min(data.total - end, data.entries.length)} more`;
    more.addEventListener("click", guarded(() => browse(order, title, end)));
    list.appendChild(more);
  }
}

// ----------------------------------------------------------------------------- Generate
async function generate() {
  const settings = {
    class_id: $("gen-class").value, cfg_scale: $("gen-cfg").value, method: $("gen-method").value,
    steps: $("gen-steps").value, seed: $("gen-seed").value, count: $("gen-count").value,
  };
  const result = await runJob("/api/generate", JSON.stringify(settings), "sampling");
  const unseen = new Set(result.unseen || []);
  const box = $("samples");
  box.innerHTML = "";
  result.images.forEach((src, i) => {
    const div = document.createElement("div");
    div.className = "sample";
    const pair = document.createElement("div");
    pair.className = "pair";
    const img = document.createElement("img");
    img.src = src;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 160;
    canvas.className = "sample-map";
    drawTokenMap(canvas, result.grid, result.ids[i], result.classes[i], false, null, unseen);
    canvas.addEventListener("click", guarded((ev) => showEntry("generate-entry", result.ids[i][cellAt(canvas, result.grid, ev)])));
    pair.append(img, canvas);
    div.appendChild(pair);
    box.appendChild(div);
  });
  const summary = $("gen-summary");
  if (result.unseen === null) {
    summary.textContent = `${result.distinct} distinct entries. Start the app with --data DIR to see which of them no real image uses.`;
    return;
  }
  summary.textContent = `${result.distinct} distinct entries; ${unseen.size} of them no real image of the evaluation set uses ` +
    "(outlined in white on the token maps):";
  const chips = document.createElement("div");
  chips.className = "chips";
  chips.id = "unseen";
  for (const e of unseen) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = `#${e}`;
    chip.addEventListener("click", guarded(() => showEntry("generate-entry", e)));
    chips.appendChild(chip);
  }
  summary.appendChild(chips);
}

// ----------------------------------------------------------------------------- start
function setupTabs() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => {
      for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b === button);
      for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${button.dataset.tab}`;
    });
  }
}

async function start() {
  setupTabs();
  INFO = await api("/api/info");
  const ex = INFO.exemplars;
  $("summary").textContent = `${INFO.tokenizer} · ${INFO.quantizer.toUpperCase()} codebook of ${INFO.codebook_size} entries` +
    (INFO.per_class ? ` (per class, ${INFO.class_names.length} classes)` : "") +
    ` · ${INFO.resolution} px → ${INFO.grid[0]}×${INFO.grid[1]} tokens · ` +
    (ex.available ? `${ex.per_entry} exemplars per entry` : "no exemplars") +
    (INFO.data.count ? ` · evaluation set ${INFO.data.source} (${INFO.data.count} images)` : "");
  if (!ex.available) { $("exemplar-note").hidden = false; $("exemplar-note").textContent = `No exemplars: ${ex.note}`; }
  if (!INFO.per_class) {
    $("colour-by").querySelector("option[value=class]").disabled = true;
  } else {
    $("class-browse").hidden = false;
    INFO.class_names.forEach((name, i) => $("browse-class").add(new Option(name, i)));
  }
  if (INFO.data.count) {
    const data = await api("/api/data");
    for (const d of data) $("pick").add(new Option(d.name, d.index));
  } else {
    $("pick-label").hidden = true;
  }
  const gen = INFO.generator;
  if (!gen) {
    $("no-generator").hidden = false;
    $("generate-controls").hidden = true;
  } else {
    for (let c = 0; c < gen.num_classes; c++) $("gen-class").add(new Option(gen.class_names[c] || String(c), c));
    for (const m of gen.samplers) $("gen-method").add(new Option(m, m));
    if (gen.family === "gpt") $("gen-steps").disabled = true;
  }

  $("upload").addEventListener("change", guarded(async () => {
    const file = $("upload").files[0];
    if (file) await tokenize("/api/tokenize", file, `tokenizing ${file.name}`);
  }));
  $("pick").addEventListener("change", guarded(async () => {
    if ($("pick").value !== "") await tokenize(`/api/tokenize?data=${$("pick").value}`, null, "tokenizing");
  }));
  $("colour-by").addEventListener("change", redrawTokens);
  $("tokenmap").addEventListener("click", guarded(async (ev) => {
    if (!TOKENS) return;
    selectedCell = cellAt($("tokenmap"), TOKENS.grid, ev);
    redrawTokens();
    await showEntry("tokenize-entry", TOKENS.ids[selectedCell]);
  }));
  $("entry-open").addEventListener("click", guarded(() => showEntry("atlas-entry", $("entry-search").value)));
  $("entry-search").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("entry-open").click(); });
  $("browse-most").addEventListener("click", guarded(() => browse("most", "Most used")));
  $("browse-never").addEventListener("click", guarded(() => browse("never", "Never used")));
  $("browse-class-go").addEventListener("click", guarded(() => browse("class", `Class ${$("browse-class").selectedOptions[0].text}`)));
  $("gen-go").addEventListener("click", guarded(generate));
  await pollUsage();
}

guarded(start)();
