// The playground: plain JavaScript on the service's public REST API, nothing from the internet.
// page.js (the API, the published state) and pixels.js (pictures) are loaded before it.
"use strict";

const SAMPLES = 6; // sampled reconstructions shown per drawing
// The seed of /score's importance samples: fixed, so that a VAE's numbers hold still while the
// drawing changes (a new seed per request would move the nll by a nat or so each stroke).
const SCORE_SEED = 0;

const state = {
  models: [],
  model: null,        // the picked ModelInfo from GET /models
  shape: {h: 28, w: 28, c: 1, light: false}, // its images: see imageShape()
  input: null,        // Float32Array(h * w * c), HWC: the drawing as the model sees it, or null
  code: null,         // {mu, sigma} of the drawing
  map: null,          // the latent map of a 2-D model: {mu, labels, label_names}
  view: null,         // latent-map axes: {cx, cy, scale}: centre and pixels per latent unit
  scatter: null,      // the test points, drawn once per model onto an offscreen canvas
  pointer: null,      // [x, y] in latent space under the pointer / keyboard cursor
  slots: {a: null, b: null}, // interpolation ends: copies of the pad (see setSlot)
};

// --- pixels --------------------------------------------------------------------------------------

// The shared pixel work (pixels.js), for the picked model's shape.
const {COLOURS, imageShape, shapeOf, padSize, copyOf} = Pixels;
const paint = (canvas, image, dx = 0, dy = 0) => Pixels.paint(canvas, image, state.shape, dx, dy);
const paintGrid = (canvas, images, columns) => Pixels.paintGrid(canvas, images, columns, state.shape);
const clearCanvas = (canvas, colour = Pixels.background(state.shape)) => Pixels.clearCanvas(canvas, colour);
const toModelInput = (source) => Pixels.toModelInput(source, state.shape);
const lightBorder = (bitmap) => Pixels.lightBorder(bitmap, state.shape);
const fitPicture = (source, canvas, invert) => Pixels.fitPicture(source, canvas, invert, state.shape);

// Draws an image file onto a canvas in the pad's form (see fitPicture), inverted where its
// border (see lightBorder) is not the model's background: a photo or a scan of dark ink on
// light paper becomes MNIST's bright-on-dark, as the service's invert=auto does. False, with
// the reason shown, when the file is not an image the browser can read.
async function drawFile(file, canvas) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    setStatus(`Cannot read ${file.name} as an image: ${error.message || error}`, true);
    return false;
  }
  const light = lightBorder(bitmap);
  // As the service's invert=auto: grayscale models only; a colour photo is never negated.
  const invert = state.shape.c !== 3 && light !== state.shape.light;
  fitPicture(bitmap, canvas, invert);
  bitmap.close();
  // Said, not only done: a photo turned negative is a surprise unless the page says why.
  $("drop-note").textContent = invert
    ? `${file.name} was inverted, as the service's invert=auto does: its border is ` +
      `${light ? "light" : "dark"} and this model's background is ${light ? "dark" : "light"}.`
    : "";
  return true;
}

// --- models --------------------------------------------------------------------------------------

function describeModel(info) {
  const m = info.manifest || {};
  const dataset = (m.dataset && m.dataset.name) || "unknown data";
  const metrics = m.metrics || {};
  const parts = [`${info.kind.toUpperCase()}`, `latent size ${info.latent_dim}`, `trained on ${dataset}`];
  if (metrics.iwae && metrics.iwae.nll !== undefined) {
    parts.push(`test NLL ≈ ${metrics.iwae.nll.toFixed(1)} nats (IWAE, k=${metrics.iwae.k})`);
  } else if (metrics.negative_elbo !== undefined) {
    parts.push(`test −ELBO ${metrics.negative_elbo.toFixed(1)} nats`);
  }
  const recon = metrics.deterministic_reconstruction;
  if (recon && recon.mse_per_pixel !== undefined) {
    parts.push(`reconstruction MSE ${recon.mse_per_pixel.toFixed(4)} per pixel`);
  }
  parts.push(`version ${info.version}`, `on ${info.providers.join(", ")}`);
  return parts.join(" · ");
}

async function loadModels() {
  const list = await timed("models", () => api("/models"));
  if (!list) {
    $("model-info").textContent = "Could not list the models (see the message above).";
    return;
  }
  state.models = list.models;
  const select = $("model-select");
  select.replaceChildren(...list.models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = `${m.name} (${m.kind}, ${m.latent_dim}-d)`;
    return option;
  }));
  const wanted = new URLSearchParams(location.search).get("model");
  const first = list.models.find((m) => m.name === wanted)
    || list.models.find((m) => m.name === list.default) || list.models[0];
  select.value = first.name;
  await pickModel(first.name);
}

async function pickModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const vae = state.model.kind === "vae";
  $("model-info").textContent = describeModel(state.model);
  applyShape(imageShape(state.model));
  $("sampled-block").hidden = !vae;
  $("ae-note").hidden = vae;
  $("generate-note").hidden = vae;
  for (const id of ["gen-n", "gen-seed", "gen-temp", "gen-btn"]) $(id).disabled = !vae;
  $("bars-legend").textContent = vae
    ? "Bars: mu of each dimension; whiskers: ± sigma = exp(logvar / 2)."
    : "Bars: the autoencoder's code (no sigma: an AE has no posterior variance).";
  await loadMap();
  const work = [refreshDrawing(), interpolate()];
  if (vae) work.push(generate());
  else clearCanvas($("gen-canvas"));
  await Promise.all(work);
}

// Sizes every picture of the page to the model's images, and carries the drawing and the
// interpolation's ends over to them: switching models keeps what was drawn, without a reload.
function applyShape(shape) {
  const before = state.shape;
  const pad = $("draw-canvas");
  const drawing = copyOf(pad);
  state.shape = shape;
  const [width, height] = padSize(shape);
  if (pad.width !== width || pad.height !== height) {
    pad.width = width;
    pad.height = height;
  }
  // The pad in the new model's form: grey or colour, on its background, at its aspect ratio.
  fitPicture(drawing, pad, before.light !== shape.light);
  const {h, w, c} = shape;
  for (const id of ["input-canvas", "recon-canvas", "heat-canvas", "map-preview", "interp-a", "interp-b"]) {
    const canvas = $(id);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    clearCanvas(canvas);
  }
  $("samples").replaceChildren();
  showScore(null); // the heat map is black (no error), whatever the model's background
  const colour = c === 3;
  const size = `${h} × ${w}${colour ? ", colour" : ""}`;
  $("input-caption").textContent = `What the model sees (${size})`;
  $("brush-box").hidden = !colour;
  $("pad-hint").textContent = colour
    ? `This model takes colour pictures (${size}): drop or upload a photo (resized to ` +
      `${h} × ${w}, as the service does), or paint with the brush colour.`
    : shape.light
      ? "Dark strokes on light paper, as this model was trained. Dropped pictures with a dark " +
        "border are inverted."
      : "Bright strokes on dark, as in MNIST. Dropped photos of dark ink on light paper are " +
        "inverted.";
  showSlots();
}

// --- draw or drop --------------------------------------------------------------------------------

// The brush: white on a dark background, black on a light one; a colour model's brush paints
// in the colour picked.
function inkColour() {
  if (state.shape.c === 3) return $("brush-colour").value;
  return state.shape.light ? "#000" : "#fff";
}

function setupDrawing() {
  const canvas = $("draw-canvas");
  clearCanvas(canvas);
  Pixels.drawStrokes(canvas, {
    ink: inkColour,
    changed: refreshDrawing, // live while drawing; `latest` keeps one request in flight
    finished: () => {
      window.playground.strokes++;
      refreshDrawing(); // the whole stroke, tap or line, is encoded and reconstructed
      publish();
    },
  });
  canvas.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Backspace") { event.preventDefault(); clearDrawing(); }
  });
  $("clear-btn").addEventListener("click", clearDrawing);
  $("upload-input").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) await loadFile(file);
    event.target.value = "";
  });
  canvas.addEventListener("dragover", (event) => { event.preventDefault(); canvas.classList.add("dragging"); });
  canvas.addEventListener("dragleave", () => canvas.classList.remove("dragging"));
  canvas.addEventListener("drop", async (event) => {
    event.preventDefault();
    canvas.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) await loadFile(file);
  });
  $("resample-btn").addEventListener("click", () => {
    const seed = $("seed-input");
    seed.value = String((parseInt(seed.value, 10) || 0) + 1);
    refreshSamples();
  });
  $("seed-input").addEventListener("change", () => refreshSamples());
}

function loadFile(file) {
  return track(drawAndRefresh(file));
}

async function drawAndRefresh(file) {
  if (await drawFile(file, $("draw-canvas"))) await refreshDrawing();
}

function clearDrawing() {
  clearCanvas($("draw-canvas"));
  $("drop-note").textContent = "";
  refreshDrawing();
}

function seedValue(id) {
  const value = parseInt($(id).value, 10);
  return Number.isFinite(value) && value >= 0 ? value : 0;
}

const refreshDrawing = latest(async () => {
  state.input = toModelInput($("draw-canvas"));
  if (state.input) paint($("input-canvas"), state.input);
  else clearCanvas($("input-canvas"));
  if (!state.model) return;
  if (!state.input) {
    clearCanvas($("recon-canvas"));
    $("samples").replaceChildren();
    state.code = null;
    drawBars();
    drawMap();
    showScore(null);
    return;
  }
  const images = [Array.from(state.input)];
  const model = state.model.name;
  const vae = state.model.kind === "vae";
  // The score goes with the same drawing, timed on its own: its answer is painted when it comes.
  await Promise.all([timed("reconstruct", async () => {
    const calls = [
      api("/encode", {model, images}),
      api("/reconstruct", {model, images, mode: "deterministic"}),
    ];
    if (vae) calls.push(api("/reconstruct", {model, images, mode: "sampled", seed: seedValue("seed-input"), samples: SAMPLES}));
    const [code, recon, sampled] = await Promise.all(calls);
    if (model !== state.model.name) return; // another model was picked: its turn comes next
    paint($("recon-canvas"), recon.images[0]);
    if (sampled) showSamples(sampled.images[0]);
    const mu = code.mu[0];
    state.code = {mu, sigma: code.logvar ? code.logvar[0].map((v) => Math.exp(v / 2)) : null};
    drawBars();
    drawMap();
  }), timed("score", async () => {
    // per_pixel: the heat map comes in the same answer as the numbers (the PNG form would be a
    // second request, scoring the drawing twice). An AE takes no seed.
    const body = {model, images, per_pixel: true};
    if (vae) body.seed = SCORE_SEED;
    const result = await api("/score", body);
    if (model === state.model.name) showScore(result);
  })]);
});

const refreshSamples = latest(async () => {
  if (!state.input || !state.model || state.model.kind !== "vae") return;
  await timed("resample", async () => {
    const body = {model: state.model.name, images: [Array.from(state.input)], mode: "sampled",
                  seed: seedValue("seed-input"), samples: SAMPLES};
    const sampled = await api("/reconstruct", body);
    if (body.model === state.model.name) showSamples(sampled.images[0]);
  });
});

function showSamples(images) {
  const strip = $("samples");
  while (strip.children.length < images.length) {
    const canvas = document.createElement("canvas");
    canvas.className = "digit";
    strip.append(canvas);
  }
  while (strip.children.length > images.length) strip.lastChild.remove();
  images.forEach((image, i) => {
    const canvas = strip.children[i];
    const {h, w} = shapeOf(image, state.shape);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    canvas.setAttribute("aria-label", `sample ${i + 1}`);
    paint(canvas, image);
  });
}

// --- how unusual is it: /score ------------------------------------------------------------------

// Numbers at a precision a person reads at a glance: 492.5, 58.8, -12.6, 0.0033.
function fmt(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const size = Math.abs(value);
  const text = size >= 1000 ? value.toFixed(0) : size >= 1 ? value.toFixed(1) : value.toPrecision(2);
  return text.replace("-", "−");
}

// A percentage without a trailing ".0": 99 %, 97.3 %, 0.5 %.
function percent(value) {
  return `${Number(value.toFixed(1))}\u00a0%`; // never split from its number
}

// What `score_name` means, in words, for the line under the verdict.
const SCORE_WORDS = {
  complexity_residual: "nats less likely than held-out images of the same complexity",
  reconstruction_error: "mean squared error per pixel of decode(mu)",
};

// The answer of /score for the drawing (one image), or null for a blank pad: the verdict, the
// percentile on a meter with the threshold marked, the note of an uncalibrated model, the
// parts in small print and the heat map.
function showScore(result) {
  const panel = $("score-panel");
  const meter = $("score-meter-box");
  if (!result) {
    panel.dataset.outlier = "";
    $("score-verdict").textContent = "Draw something to see how unusual it is for the model.";
    meter.hidden = true;
    $("score-line").textContent = "";
    $("score-note").hidden = true;
    $("score-parts").textContent = "";
    clearCanvas($("heat-canvas"), "#000");
    return;
  }
  const score = result.score[0];
  const outlier = result.is_outlier ? result.is_outlier[0] : null;
  const percentile = result.percentile ? result.percentile[0] : null;
  const calibration = (state.model.manifest && state.model.manifest.score_calibration) || null;
  const dataset = (state.model.manifest && state.model.manifest.dataset && state.model.manifest.dataset.name) || "";
  const held = calibration ? `${calibration.images.toLocaleString("en")} held-out ${dataset} images` : "held-out images";
  panel.dataset.outlier = outlier === null ? "unknown" : String(outlier);
  let verdict;
  if (outlier === null) {
    verdict = result.calibrated ? "Not judged: no threshold."
      : "Not judged: this model was not calibrated on normal data, so no percentile and no threshold.";
  }
  else if (outlier) verdict = "Unusual: an outlier for this model.";
  else verdict = "Looks like what the model was trained on.";
  if (percentile !== null) {
    verdict += percentile >= 100
      ? ` More unusual than all of the model's ${held}.`
      : ` More unusual than ${percentile.toFixed(1)}\u00a0% of the model's ${held}.`;
  }
  $("score-verdict").textContent = verdict;

  meter.hidden = percentile === null;
  if (percentile !== null) {
    const m = $("score-meter");
    m.setAttribute("aria-valuenow", percentile.toFixed(1));
    m.setAttribute("aria-valuetext", `${percentile.toFixed(1)} percentile`);
    $("score-fill").style.width = `${percentile}%`;
    const line = result.fpr !== null ? 100 * (1 - result.fpr) : null;
    $("score-threshold").hidden = line === null;
    $("score-threshold-label").textContent = line === null ? "" : `outlier line at ${percent(line)}`;
    if (line !== null) $("score-threshold").style.left = `${line}%`;
  }

  const words = SCORE_WORDS[result.score_name] || "";
  let line = `Score ${fmt(score)}`;
  if (result.threshold !== null) {
    line += `, outlier above ${fmt(result.threshold)}`;
    if (result.fpr !== null) line += ` (${percent(100 * result.fpr)} of held-out images pass it)`;
  }
  $("score-line").textContent = `${line}. ${result.score_name}${words ? ": " + words : ""}.`;

  $("score-note").hidden = !result.note;
  $("score-note").textContent = result.note || "";

  const parts = [];
  if (result.nll && result.nll[0] !== null) {
    parts.push(`−log p(x) ≈ ${fmt(result.nll[0])} nats (nll, k = ${result.k}, seed ${result.seed})`,
               `ELBO ${fmt(result.elbo[0])} = −(reconstruction ${fmt(result.reconstruction[0])} + KL ${fmt(result.kl[0])})`);
  }
  parts.push(`reconstruction error ${fmt(result.reconstruction_error[0])} per pixel`);
  $("score-parts").textContent = parts.join(" · ");

  if (result.per_pixel_error) paintHeat($("heat-canvas"), result.per_pixel_error[0]);
}

// The service's heat-map colours (service/codecs/images.py, heat_map): black, red, yellow,
// white at |error| = 0, 1/3, 2/3, 1, linear in between.
const HEAT_STOPS = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]];

// Paints squared errors per pixel (H x W, or H x W x C for colour) as the service's PNG heat
// map does: |error| = the square root of the squared error (of its mean over a colour pixel's
// channels), on a fixed scale so that two drawings' maps compare.
function paintHeat(canvas, map) {
  const h = map.length, w = map[0].length;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  const top = HEAT_STOPS.length - 1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const value = map[y][x];
      const squared = Array.isArray(value) ? value.reduce((a, b) => a + b, 0) / value.length : value;
      const error = Math.sqrt(Math.min(1, Math.max(0, squared)));
      const low = Math.min(Math.floor(error * top), top - 1);
      const frac = error * top - low;
      const i = 4 * (y * w + x);
      for (let k = 0; k < 3; k++) {
        pixels.data[i + k] = Math.round((HEAT_STOPS[low][k] * (1 - frac) + HEAT_STOPS[low + 1][k] * frac) * 255);
      }
      pixels.data[i + 3] = 255;
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

// mu of each dimension as a bar, sigma as whiskers, on a fixed scale of -4..4 (the prior's
// mass is within +-3).
function drawBars() {
  const canvas = $("latent-bars");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const mid = h / 2, unit = (h / 2 - 8) / 4;
  ctx.strokeStyle = "#ccc";
  ctx.lineWidth = 1;
  for (const v of [-3, -2, -1, 0, 1, 2, 3]) {
    ctx.beginPath();
    ctx.moveTo(24, mid - v * unit);
    ctx.lineTo(w, mid - v * unit);
    ctx.stroke();
  }
  ctx.fillStyle = "#666";
  ctx.font = "10px system-ui, sans-serif";
  for (const v of [-3, 0, 3]) ctx.fillText(String(v), 2, mid - v * unit + 3);
  if (!state.code) {
    ctx.fillText("draw something to see its latent code", 32, 14);
    return;
  }
  const {mu, sigma} = state.code;
  const step = (w - 28) / mu.length;
  const clamp = (v) => Math.max(-4, Math.min(4, v));
  mu.forEach((m, i) => {
    const x = 28 + i * step;
    ctx.fillStyle = COLOURS[0];
    const top = mid - clamp(m) * unit;
    ctx.fillRect(x + step * 0.2, Math.min(top, mid), step * 0.6, Math.max(1, Math.abs(top - mid)));
    if (sigma) {
      ctx.strokeStyle = "#222";
      ctx.beginPath();
      ctx.moveTo(x + step / 2, mid - clamp(m + sigma[i]) * unit);
      ctx.lineTo(x + step / 2, mid - clamp(m - sigma[i]) * unit);
      ctx.stroke();
    }
  });
}

// --- the latent map ------------------------------------------------------------------------------

async function loadMap() {
  state.map = null;
  state.view = null;
  state.pointer = null;
  const model = state.model;
  const note = $("map-note");
  if (model.latent_dim !== 2) {
    note.textContent = `The latent map needs a model with a 2-D latent space (such as ` +
      `mnist-vae-2d); ${model.name} has ${model.latent_dim} dimensions.`;
    note.hidden = false;
    $("map-block").hidden = true;
    return;
  }
  $("map-block").hidden = false;
  note.hidden = true;
  if (model.latent_map) {
    state.map = await timed("latent map", () => api(`/models/${encodeURIComponent(model.name)}/latent-map`)) || null;
  }
  if (!state.map) {
    note.textContent = "No latent map was exported with this model: the map shows the prior's " +
      "range only. Point anywhere to decode it.";
    note.hidden = false;
  }
  fitView();
  drawLegend();
  drawMap();
}

// Axes: the middle 99 % of the test points (or the prior's +-3), square, with a margin.
function fitView() {
  let lo = [-3, -3], hi = [3, 3];
  if (state.map && state.map.mu.length) {
    const q = (values, p) => values[Math.min(values.length - 1, Math.floor(p * values.length))];
    const xs = state.map.mu.map((p) => p[0]).sort((a, b) => a - b);
    const ys = state.map.mu.map((p) => p[1]).sort((a, b) => a - b);
    lo = [q(xs, 0.005), q(ys, 0.005)];
    hi = [q(xs, 0.995), q(ys, 0.995)];
  }
  const span = Math.max(hi[0] - lo[0], hi[1] - lo[1]) * 1.1 || 6;
  const canvas = $("map-canvas");
  state.view = {
    cx: (lo[0] + hi[0]) / 2,
    cy: (lo[1] + hi[1]) / 2,
    scale: canvas.width / span, // pixels per latent unit
  };
  state.scatter = renderScatter();
}

function toScreen([x, y]) {
  const {cx, cy, scale} = state.view;
  const c = $("map-canvas");
  return [c.width / 2 + (x - cx) * scale, c.height / 2 - (y - cy) * scale];
}

function toLatent([px, py]) {
  const {cx, cy, scale} = state.view;
  const c = $("map-canvas");
  return [cx + (px - c.width / 2) / scale, cy - (py - c.height / 2) / scale];
}

function renderScatter() {
  const canvas = $("map-canvas");
  const layer = document.createElement("canvas");
  layer.width = canvas.width;
  layer.height = canvas.height;
  const ctx = layer.getContext("2d");
  ctx.fillStyle = "#fafafa";
  ctx.fillRect(0, 0, layer.width, layer.height);
  // Grid lines at every whole latent unit, the axes darker.
  const [x0, y1] = toLatent([0, 0]);
  const [x1, y0] = toLatent([layer.width, layer.height]);
  ctx.lineWidth = 1;
  for (let v = Math.ceil(x0); v <= x1; v++) {
    ctx.strokeStyle = v === 0 ? "#999" : "#e3e3e3";
    const [px] = toScreen([v, 0]);
    ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, layer.height); ctx.stroke();
  }
  for (let v = Math.ceil(y0); v <= y1; v++) {
    ctx.strokeStyle = v === 0 ? "#999" : "#e3e3e3";
    const [, py] = toScreen([0, v]);
    ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(layer.width, py); ctx.stroke();
  }
  if (state.map) {
    ctx.globalAlpha = 0.55;
    state.map.mu.forEach((point, i) => {
      const [px, py] = toScreen(point);
      ctx.fillStyle = COLOURS[state.map.labels[i] % COLOURS.length];
      ctx.fillRect(px - 1, py - 1, 2, 2);
    });
    ctx.globalAlpha = 1;
  }
  return layer;
}

function drawLegend() {
  const legend = $("map-legend");
  const names = state.map ? state.map.label_names : [];
  legend.replaceChildren(...names.map((name, i) => {
    const item = document.createElement("li");
    const dot = document.createElement("span");
    dot.style.background = COLOURS[i % COLOURS.length];
    item.append(dot, name);
    return item;
  }));
}

function drawMap() {
  if (!state.view || !state.scatter) return;
  const canvas = $("map-canvas");
  const ctx = canvas.getContext("2d");
  ctx.drawImage(state.scatter, 0, 0);
  if (state.pointer) {
    const [px, py] = toScreen(state.pointer);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(px - 8, py); ctx.lineTo(px + 8, py);
    ctx.moveTo(px, py - 8); ctx.lineTo(px, py + 8);
    ctx.stroke();
  }
  if (state.code && state.model && state.model.latent_dim === 2) {
    // The drawing's mu as a marker, its sigma as an ellipse.
    const [px, py] = toScreen(state.code.mu);
    ctx.fillStyle = "#000";
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(px, py, 6, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    if (state.code.sigma) {
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.ellipse(px, py, state.code.sigma[0] * state.view.scale, state.code.sigma[1] * state.view.scale, 0, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }
}

const decodePointer = latest(async () => {
  if (!state.pointer || !state.model) return;
  const z = state.pointer.map((v) => Number(v.toFixed(4)));
  await timed("decode", async () => {
    const model = state.model.name;
    const result = await api("/decode", {model, z: [z]});
    if (model !== state.model.name) return;
    paint($("map-preview"), result.images[0]);
    $("map-z").textContent = `decode(z = [${z[0].toFixed(2)}, ${z[1].toFixed(2)}])`;
  });
});

function setupMap() {
  const canvas = $("map-canvas");
  const move = (event) => {
    if (!state.view) return;
    const r = canvas.getBoundingClientRect();
    state.pointer = toLatent([(event.clientX - r.left) * canvas.width / r.width,
                              (event.clientY - r.top) * canvas.height / r.height]);
    drawMap();
    decodePointer();
  };
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerdown", move);
  canvas.addEventListener("keydown", (event) => {
    const steps = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1]};
    if (!(event.key in steps) || !state.view) return;
    event.preventDefault();
    const step = 8 / state.view.scale; // 8 px per key press
    const [dx, dy] = steps[event.key];
    const [x, y] = state.pointer || [state.view.cx, state.view.cy];
    state.pointer = [x + dx * step, y + dy * step];
    drawMap();
    decodePointer();
  });
}

// --- generate ------------------------------------------------------------------------------------

const generate = latest(async () => {
  if (!state.model || state.model.kind !== "vae") return;
  const n = parseInt($("gen-n").value, 10);
  await timed("generate", async () => {
    const body = {model: state.model.name, n, seed: seedValue("gen-seed"),
                  temperature: parseFloat($("gen-temp").value)};
    const result = await api("/generate", body);
    if (body.model === state.model.name) paintGrid($("gen-canvas"), result.images, Math.ceil(Math.sqrt(n)));
  });
});

function setupGenerate() {
  $("gen-btn").addEventListener("click", generate);
  $("gen-n").addEventListener("change", generate);
  $("gen-seed").addEventListener("change", generate);
  $("gen-temp").addEventListener("input", () => {
    $("gen-temp-value").textContent = parseFloat($("gen-temp").value).toFixed(1);
    generate();
  });
}

// --- interpolate ---------------------------------------------------------------------------------

// An end of the interpolation is kept as a copy of the pad it came from (`picture`, drawn for
// a model whose background was `light`), so that it follows a switch to a model of another
// size or colour; `slotInput` turns it into that model's input.
function setSlot(which, picture) {
  state.slots[which] = picture ? {picture, light: state.shape.light} : null;
  showSlots();
  if (state.slots.a && state.slots.b) interpolate();
}

function slotInput(slot) {
  const pad = document.createElement("canvas");
  [pad.width, pad.height] = padSize(state.shape);
  fitPicture(slot.picture, pad, slot.light !== state.shape.light);
  return toModelInput(pad);
}

// The ends as the current model sees them.
function showSlots() {
  for (const which of ["a", "b"]) {
    const slot = state.slots[which];
    const input = slot && slotInput(slot);
    if (input) paint($(`interp-${which}`), input); else clearCanvas($(`interp-${which}`));
  }
  $("interp-btn").disabled = !(state.slots.a && state.slots.b);
}

const interpolate = latest(async () => {
  const {a, b} = state.slots;
  if (!a || !b || !state.model) return;
  const ends = [slotInput(a), slotInput(b)];
  if (!ends[0] || !ends[1]) return;
  const steps = Math.min(24, Math.max(2, parseInt($("interp-steps").value, 10) || 10));
  const model = state.model.name;
  await timed("interpolate", async () => {
    // Between the two posterior means, in a straight line.
    const code = await api("/encode", {model, images: ends.map((end) => Array.from(end))});
    const [za, zb] = code.mu;
    const z = Array.from({length: steps}, (_, i) => {
      const t = i / (steps - 1);
      return za.map((v, d) => (1 - t) * v + t * zb[d]);
    });
    const result = await api("/decode", {model, z});
    if (model === state.model.name) paintGrid($("interp-canvas"), result.images, steps);
  });
});

async function slotFromFile(which, file) {
  const scratch = document.createElement("canvas");
  [scratch.width, scratch.height] = padSize(state.shape);
  if (!(await drawFile(file, scratch))) return;
  if (!toModelInput(scratch)) { setStatus(`${file.name} looks blank.`, true); return; }
  setSlot(which, scratch);
}

function setupInterpolate() {
  for (const which of ["a", "b"]) {
    $(`interp-set-${which}`).addEventListener("click", () => {
      if (!state.input) { setStatus("Draw something first, then set it as " + which.toUpperCase() + ".", true); return; }
      setSlot(which, copyOf($("draw-canvas")));
    });
    $(`interp-file-${which}`).addEventListener("change", (event) => {
      const file = event.target.files[0];
      event.target.value = "";
      if (file) track(slotFromFile(which, file));
    });
  }
  $("interp-btn").addEventListener("click", interpolate);
  $("interp-steps").addEventListener("change", interpolate);
  clearCanvas($("interp-a"));
  clearCanvas($("interp-b"));
  clearCanvas($("interp-canvas"));
}

// --- start ---------------------------------------------------------------------------------------

async function start() {
  $("api-key").value = sessionStorage.getItem("vae-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("vae-api-key", $("api-key").value.trim());
    track(loadModels());
  });
  $("model-select").addEventListener("change", (event) => track(pickModel(event.target.value)));
  setupDrawing();
  setupMap();
  setupGenerate();
  setupInterpolate();
  clearCanvas($("input-canvas"));
  clearCanvas($("recon-canvas"));
  clearCanvas($("map-preview"));
  showScore(null);
  drawBars();
  publish();
  await track(loadModels());
  window.playground.ready = true;
  document.body.dataset.ready = "true";
}

start();
