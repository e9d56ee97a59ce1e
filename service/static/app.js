// gan-serve playground: sample grid, class picker, seed walk and a live metrics chart.
// Plain browser JavaScript, no dependencies; talks to /playground/api/* and /metrics.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [], model: null, label: null, frames: [], history: [], last: null, ticks: null,
};
const TILES = 16;
const STEPS = 16;
const POLL_MS = 2000;
const HISTORY = 90;

function showError(err) {
  $("status").textContent = err ? String(err.message || err) : "";
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = body.error;
    throw new Error((e && (e.message || e)) || response.statusText);
  }
  return body;
}

function query(params) {
  return Object.entries(params)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join("&");
}

function currentModel() {
  return state.models.find((m) => m.name === state.model);
}

// --- samples ------------------------------------------------------------------------------

function renderClassButtons() {
  const box = $("classes");
  box.replaceChildren();
  const model = currentModel();
  if (!model || model.num_classes === 0) return;
  const options = [{ label: null, text: "mixed" }].concat(
    model.class_names.map((name, i) => ({ label: i, text: name }))
  );
  for (const option of options) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = option.text;
    button.dataset.label = option.label === null ? "" : String(option.label);
    button.setAttribute("aria-pressed", String(option.label === state.label));
    button.addEventListener("click", () => {
      state.label = option.label;
      for (const b of box.children) b.setAttribute("aria-pressed", String(b === button));
      loadSamples();
      loadInterpolation();
    });
    box.appendChild(button);
  }
}

async function loadSamples() {
  const seed = Number($("seed").value) || 0;
  try {
    const body = await api(
      `/playground/api/samples?${query({ model: state.model, seed, n: TILES, label: state.label })}`
    );
    const grid = $("grid");
    while (grid.children.length < body.images.length) grid.appendChild(document.createElement("img"));
    while (grid.children.length > body.images.length) grid.lastChild.remove();
    body.images.forEach((b64, i) => {
      const img = grid.children[i];
      const label = body.labels ? body.labels[i] : null;
      img.src = `data:image/png;base64,${b64}`;
      img.alt = `seed ${body.seeds[i]}` + (label === null ? "" : `, class ${label}`);
      img.title = img.alt;
      img.dataset.seed = body.seeds[i];
      img.dataset.label = label === null ? "" : label;
    });
    const model = currentModel();
    const cls = state.label === null ? "mixed classes" : `class ${model.class_names[state.label]}`;
    $("grid-caption").textContent =
      `seeds ${body.seeds[0]}–${body.seeds[body.seeds.length - 1]}, ${cls}, version ${body.version}`;
    showError(null);
  } catch (err) {
    showError(err);
  }
}

// --- interpolation ------------------------------------------------------------------------

async function loadInterpolation() {
  const params = {
    model: state.model,
    seed_a: Number($("seed-a").value) || 0,
    seed_b: Number($("seed-b").value) || 0,
    steps: STEPS,
    label: state.label,
  };
  try {
    const body = await api(`/playground/api/interpolate?${query(params)}`);
    state.frames = body.frames;
    $("interp-slider").max = String(body.frames.length - 1);
    showFrame();
    showError(null);
  } catch (err) {
    showError(err);
  }
}

function showFrame() {
  if (!state.frames.length) return;
  const i = Number($("interp-slider").value);
  $("interp-frame").src = `data:image/png;base64,${state.frames[i]}`;
  const t = i / (state.frames.length - 1);
  $("interp-caption").textContent =
    `t = ${t.toFixed(2)} between seed ${$("seed-a").value} and seed ${$("seed-b").value}`;
}

// --- metrics ------------------------------------------------------------------------------

// Prometheus text exposition format -> [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const p of (m[2] || "").matchAll(pair)) labels[p[1]] = p[2].replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

const WORK_ROUTE = /infer|generate|interpolate|samples/;

function summarize(samples) {
  const out = { images: 0, count: 0, sum: 0, buckets: new Map(), queue: 0 };
  for (const s of samples) {
    if (s.name === "gan_serve_images_generated_total") out.images += s.value;
    else if (s.name === "gan_serve_queue_depth_images") out.queue += s.value;
    else if (s.name.startsWith("gan_serve_request_duration_seconds") && WORK_ROUTE.test(s.labels.route || "")) {
      if (s.name.endsWith("_count")) out.count += s.value;
      else if (s.name.endsWith("_sum")) out.sum += s.value;
      else if (s.name.endsWith("_bucket")) {
        const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
        out.buckets.set(le, (out.buckets.get(le) || 0) + s.value);
      }
    }
  }
  return out;
}

// Upper bound of the bucket holding quantile q of the requests between two scrapes.
function quantile(prev, now, q) {
  const bounds = [...now.buckets.keys()].sort((a, b) => a - b);
  const total = now.count - prev.count;
  if (total <= 0) return null;
  for (const le of bounds) {
    const seen = (now.buckets.get(le) || 0) - (prev.buckets.get(le) || 0);
    if (seen >= q * total) return Number.isFinite(le) ? le : bounds[bounds.length - 2] || null;
  }
  return null;
}

async function pollMetrics() {
  try {
    const response = await fetch("/metrics");
    const now = { ...summarize(parseMetrics(await response.text())), at: performance.now() };
    if (state.last) {
      const prev = state.last;
      const seconds = (now.at - prev.at) / 1000;
      const requests = now.count - prev.count;
      const point = {
        throughput: Math.max(0, (now.images - prev.images) / seconds),
        latency: requests > 0 ? ((now.sum - prev.sum) / requests) * 1000 : null,
        p95: requests > 0 ? quantile(prev, now, 0.95) * 1000 : null,
      };
      state.history.push(point);
      if (state.history.length > HISTORY) state.history.shift();
      const peak = Math.max(...state.history.map((p) => p.throughput));
      $("throughput").textContent = formatValue(point.throughput);
      $("throughput-peak").textContent = formatValue(peak);
      $("latency").textContent = point.latency === null ? "–" : formatValue(point.latency);
      $("p95").textContent = point.p95 === null ? "–" : `≤ ${formatValue(point.p95)}`;
      $("queue").textContent = String(now.queue);
      drawChart();
    }
    state.last = now;
  } catch (err) {
    showError(err);
  }
}

// A readable value: three significant digits, whole numbers from 100 up, "0" for nothing.
function formatValue(v) {
  if (v === 0) return "0";
  return v >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3)));
}

// Axis ticks 0..top in `count` equal steps of 1, 2 or 5 times a power of ten, each label with
// just the decimals its step needs (0.5 reads "0.5", not "1"; 0.02 reads "0.02", not "0").
function niceTicks(max, count = 4) {
  const raw = Math.max(max, 1e-6) / count;
  let power = 10 ** Math.floor(Math.log10(raw) + 1e-9);
  let multiple = [1, 2, 5, 10].find((m) => m * power >= raw * (1 - 1e-9));
  if (multiple === 10) [power, multiple] = [power * 10, 1];
  const step = multiple * power;
  const decimals = Math.max(0, -Math.round(Math.log10(power)));
  const labels = [];
  for (let k = 0; k <= count; k++) labels.push(k === 0 ? "0" : (k * step).toFixed(decimals));
  return { top: step * count, labels };
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const pad = { l: 44, r: 60, t: 10, b: 20 };
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const points = state.history;
  const maxOf = (key) => Math.max(0, ...points.map((p) => p[key] || 0));
  const throughputTicks = niceTicks(Math.max(maxOf("throughput") * 1.1, 1));
  const latencyTicks = niceTicks(Math.max(maxOf("latency"), maxOf("p95"), 1) * 1.1);
  state.ticks = { throughput: throughputTicks.labels, latency: latencyTicks.labels };
  const maxThroughput = throughputTicks.top;
  const maxLatency = latencyTicks.top;
  const x = (i) => pad.l + (i * (w - pad.l - pad.r)) / Math.max(1, HISTORY - 1);
  const y = (v, max) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#d0d5dd";
  ctx.fillStyle = "#667085";
  for (let k = 0; k <= 4; k++) {
    const yy = pad.t + (k * (h - pad.t - pad.b)) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, yy);
    ctx.lineTo(w - pad.r, yy);
    ctx.stroke();
    ctx.fillText(throughputTicks.labels[4 - k], 4, yy + 4);
    ctx.fillText(`${latencyTicks.labels[4 - k]} ms`, w - pad.r + 4, yy + 4);
  }
  ctx.fillText("images/s", pad.l + 4, pad.t + 10);
  const line = (key, max, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    points.forEach((p, i) => {
      if (p[key] === null || p[key] === undefined) return;
      const px = x(i + HISTORY - points.length);
      if (started) ctx.lineTo(px, y(p[key], max));
      else ctx.moveTo(px, y(p[key], max));
      started = true;
    });
    ctx.stroke();
    ctx.lineWidth = 1;
    const lastIndex = points.length - 1;
    const last = points[lastIndex];
    if (last && last[key] !== null && last[key] !== undefined) {
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x(lastIndex + HISTORY - points.length), y(last[key], max), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  };
  line("throughput", maxThroughput, "#2b6cb0");
  line("latency", maxLatency, "#dd6b20");
  line("p95", maxLatency, "#c53030");
}

// --- text to image ------------------------------------------------------------------------

const TEXT_TILES = 8;

function isTextModel(model) {
  return Boolean(model && model.kind === "text-to-image");
}

async function loadText() {
  const params = {
    model: state.model,
    text: $("caption").value,
    seed: Number($("text-seed").value) || 0,
    n: TEXT_TILES,
  };
  try {
    const body = await api(`/playground/api/text?${query(params)}`);
    const grid = $("text-grid");
    grid.replaceChildren();
    body.images.forEach((b64, i) => {
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${b64}`;
      img.alt = `"${body.text}", seed ${body.seeds[i]}`;
      img.title = img.alt;
      grid.appendChild(img);
    });
    $("text-caption").textContent =
      `"${body.text}", seeds ${body.seeds[0]}–${body.seeds[body.seeds.length - 1]}, ` +
      `version ${body.version}`;
    showError(null);
  } catch (err) {
    $("text-grid").replaceChildren();
    showError(err);
  }
}

// --- translate (image-to-image models) ------------------------------------------------------

function setupSketch() {
  const canvas = $("sketch");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (canvas.width / r.width), (e.clientY - r.top) * (canvas.height / r.height)];
  };
  canvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    canvas.setPointerCapture(e.pointerId);
    ctx.beginPath();
    ctx.moveTo(...at(e));
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 18;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineTo(...at(e));
    ctx.stroke();
  });
  const stop = () => {
    if (drawing) translateImage();
    drawing = false;
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointerleave", stop);
  $("clear-canvas").addEventListener("click", clear);
  clear();
}

let translateSeq = 0; // only the latest request's answer is shown

async function translateImage(file) {
  const seq = ++translateSeq;
  const blob = file || (await new Promise((resolve) => $("sketch").toBlob(resolve, "image/png")));
  const direction = $("direction").value;
  try {
    const response = await fetch(
      `/v1/models/${encodeURIComponent(state.model)}/translate?${query({ direction, format: "png" })}`,
      { method: "POST", headers: { "Content-Type": blob.type || "image/png" }, body: blob }
    );
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    const answer = await response.blob();
    if (seq !== translateSeq) return;
    const url = URL.createObjectURL(answer);
    const img = $("translated");
    const old = img.src;
    img.src = url;
    img.dataset.direction = direction;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("translate-caption").textContent = `${direction}: ${response.headers.get("X-Model-Name")} v${response.headers.get("X-Model-Version")}`;
    showError(null);
  } catch (err) {
    showError(err);
  }
}

function showPanels(model) {
  const translates = Boolean(model && model.kind === "image-to-image");
  $("translate-panel").hidden = !translates;
  $("samples-panel").hidden = translates;
  $("interp-panel").hidden = translates;
  if (translates && model.domains) {
    $("domains").textContent = `A: ${model.domains[0]} · B: ${model.domains[1]}`;
  }
  return translates;
}

// --- wiring -------------------------------------------------------------------------------

async function selectModel(name) {
  state.model = name;
  state.label = null;
  const m = currentModel();
  const text = isTextModel(m);
  $("text-panel").hidden = !text;
  if (showPanels(m)) {
    $("model-info").textContent = `v${m.version} · ${m.image_size}×${m.image_size}×${m.channels} · image-to-image`;
    return;
  }
  $("model-info").textContent = m
    ? `v${m.version} · ${m.image_size}×${m.image_size}×${m.channels} · ` +
      (m.num_classes ? `${m.num_classes} classes` : "unconditional")
    : "";
  if (text) {
    $("samples-panel").hidden = true;
    $("interp-panel").hidden = true;
    $("text-words").textContent = `words: ${m.vocabulary.join(" ")}`;
    await loadText();
    return;
  }
  renderClassButtons();
  await Promise.all([loadSamples(), loadInterpolation()]);
}

async function init() {
  try {
    state.models = (await api("/playground/api/models")).models;
  } catch (err) {
    showError(err);
    return;
  }
  const select = $("model");
  for (const m of state.models) select.add(new Option(`${m.name} (${m.family})`, m.name));
  select.addEventListener("change", () => selectModel(select.value));
  $("refresh").addEventListener("click", loadSamples);
  $("seed").addEventListener("change", loadSamples);
  $("random-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 1e9));
    loadSamples();
  });
  $("interp-load").addEventListener("click", loadInterpolation);
  $("text-generate").addEventListener("click", loadText);
  $("caption").addEventListener("keydown", (e) => {
    if (e.key === "Enter") loadText();
  });
  $("interp-slider").addEventListener("input", showFrame);
  setupSketch();
  $("translate").addEventListener("click", () => translateImage());
  $("direction").addEventListener("change", () => translateImage());
  $("upload").addEventListener("change", (e) => {
    if (e.target.files.length) translateImage(e.target.files[0]);
  });
  if (state.models.length) await selectModel(state.models[0].name);
  else showError("no models are loaded");
  document.body.dataset.ready = "true";
  pollMetrics();
  setInterval(pollMetrics, POLL_MS);
}

init();
