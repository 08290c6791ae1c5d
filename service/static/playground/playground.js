// The playground: plain JavaScript on the service's public REST API, nothing from the internet.
"use strict";

const SAMPLES = 6; // sampled reconstructions shown per drawing
// The seed of /score's importance samples: fixed, so that a VAE's numbers hold still while the
// drawing changes (a new seed per request would move the nll by a nat or so each stroke).
const SCORE_SEED = 0;
// Tableau 10: the colours matplotlib uses for the report's latent scatter.
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const $ = (id) => document.getElementById(id);

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

// What the page is doing, for whoever watches it (the browser tests wait on it, never on time):
// `timings` per interaction, how long the service took to answer (ms, the last one shown in the
// footer); `busy` the work under way (requests, file decoding); `strokes` the strokes and taps
// finished on the drawing pad; `answers` the service's answers painted so far. publish() mirrors
// the counters on <body> as data-state="busy|idle", data-strokes and data-answers.
window.playground = {timings: [], ready: false, busy: 0, strokes: 0, answers: 0};

function publish() {
  const page = window.playground;
  const data = document.body.dataset;
  data.state = page.busy ? "busy" : "idle";
  data.strokes = String(page.strokes);
  data.answers = String(page.answers);
}

// Counts `promise` as work under way until it settles.
async function track(promise) {
  window.playground.busy++;
  publish();
  try {
    return await promise;
  } finally {
    window.playground.busy--;
    publish();
  }
}

// --- the API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const headers = {"Accept": "application/json"};
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const init = {headers};
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = (data && (data.detail || data.error)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, typeof message === "string" ? message : JSON.stringify(message));
  }
  return data;
}

// Runs `work` (which calls the API) and reports how long it took, or what went wrong.
async function timed(what, work) {
  const start = performance.now();
  try {
    const result = await work();
    const ms = performance.now() - start;
    window.playground.timings.push({what, ms});
    window.playground.answers++;
    publish();
    $("timing").textContent = `${what}: answered in ${ms.toFixed(1)} ms`;
    setStatus("");
    return result;
  } catch (error) {
    reportError(error);
    return undefined;
  }
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function reportError(error) {
  if (error instanceof ApiError && error.status === 401) {
    $("key-box").open = true;
    $("api-key").focus();
  }
  setStatus(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), true);
}

// Keeps one request of a kind in flight: while it runs, later calls only mark it to run once
// more with the newest state, so pointer moves never pile up requests.
function latest(task) {
  let running = false;
  let again = false;
  async function loop() {
    try {
      do { again = false; await task(); } while (again);
    } finally {
      running = false;
    }
  }
  return function run() {
    if (running) { again = true; return Promise.resolve(); }
    running = true;
    return track(loop());
  };
}

// --- pixels --------------------------------------------------------------------------------------

// The shape of a model's images, {h, w, c} (c 1: grayscale, 3: RGB), and whether their
// background is light. From the manifest's input.shape, (C, H, W) whatever the graph's layout;
// else from image_shape: [H, W] or [H, W, 3] (older services: [C, H, W]).
function imageShape(info) {
  const input = (info.manifest && info.manifest.input) || {};
  const light = input.background === "light";
  if (Array.isArray(input.shape) && input.shape.length === 3) {
    const [c, h, w] = input.shape;
    return {h, w, c, light};
  }
  const s = info.image_shape || [28, 28];
  if (s.length === 2) return {h: s[0], w: s[1], c: 1, light};
  if (s[2] === 3 || (s[0] !== 1 && s[0] !== 3)) return {h: s[0], w: s[1], c: s[2], light};
  return {h: s[1], w: s[2], c: s[0], light};
}

// The shape of one image of an answer: nested H x W (grayscale) or H x W x C (colour) lists.
// Flat images (the page's own inputs) are of the model's shape.
function shapeOf(image, fallback) {
  if (!Array.isArray(image) || !Array.isArray(image[0])) return fallback;
  const pixel = image[0][0];
  return {h: image.length, w: image[0].length, c: Array.isArray(pixel) ? pixel.length : 1};
}

// Paints one image (nested rows or flat in HWC order, values in [0, 1]; grey or RGB) into a
// canvas at (dx, dy).
function paint(canvas, image, dx = 0, dy = 0) {
  const {h, w, c} = shapeOf(image, state.shape);
  const flat = Array.isArray(image[0]) ? image.flat(2) : image;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  const byte = (v) => Math.round(Math.min(1, Math.max(0, v)) * 255);
  for (let i = 0; i < h * w; i++) {
    for (let k = 0; k < 3; k++) pixels.data[4 * i + k] = byte(flat[c * i + (c === 3 ? k : 0)]);
    pixels.data[4 * i + 3] = 255;
  }
  ctx.putImageData(pixels, dx, dy);
}

function paintGrid(canvas, images, columns) {
  const {h, w} = shapeOf(images[0], state.shape);
  const rows = Math.ceil(images.length / columns);
  canvas.width = columns * w;
  canvas.height = rows * h;
  clearCanvas(canvas);
  images.forEach((image, i) => paint(canvas, image, (i % columns) * w, Math.floor(i / columns) * h));
}

// The colour of the model's background: where nothing is drawn.
function background() {
  return state.shape.light ? "#fff" : "#000";
}

function clearCanvas(canvas, colour = background()) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = colour;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

// What the model sees of the pad (or any canvas in its form: see fitPicture), as a
// Float32Array of h * w * c values in HWC order, or null when nothing is drawn.
function toModelInput(source) {
  return state.shape.c === 3 ? wholePicture(source) : centredStrokes(source);
}

// A colour model sees the whole pad, resized to its h x w, as the service resizes uploads:
// colour models are trained on whole pictures (photos), not on strokes placed in a frame.
function wholePicture(source) {
  const {h, w} = state.shape;
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const ctx = small.getContext("2d", {willReadFrequently: true});
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h).data;
  const paper = state.shape.light ? 255 : 0;
  const input = new Float32Array(h * w * 3);
  let drawn = false;
  for (let i = 0; i < h * w; i++) {
    for (let k = 0; k < 3; k++) {
      const v = data[4 * i + k];
      if (Math.abs(v - paper) > 24) drawn = true;
      input[3 * i + k] = v / 255;
    }
  }
  return drawn ? input : null;
}

// A grayscale model gets MNIST's own preparation (LeCun et al.), at its size: the strokes'
// bounding box scaled to fit 20/28 of the frame, then placed with its centre of mass at the
// centre. Without it a drawing that is small or off-centre looks like nothing the model was
// trained on. Strokes are what differs from the background: bright on dark, or dark on a light
// background's model.
function centredStrokes(source) {
  const {h: side_h, w: side_w, light} = state.shape;
  const ink = (v) => (light ? 255 - v : v);
  const w = source.width, h = source.height;
  const data = source.getContext("2d").getImageData(0, 0, w, h).data;
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (ink(data[4 * (y * w + x)]) > 24) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  if (x1 < 0) return null; // nothing drawn
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const scale = Math.min((side_w * 20) / 28 / bw, (side_h * 20) / 28 / bh);
  const sw = Math.max(1, Math.round(bw * scale)), sh = Math.max(1, Math.round(bh * scale));
  const small = document.createElement("canvas");
  small.width = sw;
  small.height = sh;
  const sctx = small.getContext("2d", {willReadFrequently: true});
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage(source, x0, y0, bw, bh, 0, 0, sw, sh);
  const sdata = sctx.getImageData(0, 0, sw, sh).data;
  let mass = 0, cx = 0, cy = 0;
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      const v = ink(sdata[4 * (y * sw + x)]) / 255;
      mass += v; cx += v * x; cy += v * y;
    }
  }
  cx = mass ? cx / mass : sw / 2;
  cy = mass ? cy / mass : sh / 2;
  const ox = Math.min(side_w - sw, Math.max(0, Math.round(side_w / 2 - 0.5 - cx)));
  const oy = Math.min(side_h - sh, Math.max(0, Math.round(side_h / 2 - 0.5 - cy)));
  const input = new Float32Array(side_h * side_w).fill(light ? 1 : 0);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      input[(y + oy) * side_w + x + ox] = sdata[4 * (y * sw + x)] / 255;
    }
  }
  return input;
}

// Whether a picture is dark ink on light paper: the mean grey of its border, the outermost ring
// of its own pixels, above half of white, judged on luminance (ITU-R 601, as Pillow's "L") for a
// colour picture. The server's "auto" invert rule (service/codecs/images.py, light_background),
// judged on the file's pixels, not on the letterboxed canvas. The border, not the whole
// picture: a bright garment filling a dark frame is bright-on-dark already.
const BORDER_MAX = 4096; // a strip longer than this is scaled down: the mean barely moves
function lightBorder(bitmap) {
  const w = bitmap.width, h = bitmap.height;
  const strip = (width, height) => {
    const c = document.createElement("canvas");
    c.width = width;
    c.height = height;
    const ctx = c.getContext("2d", {willReadFrequently: true});
    ctx.fillStyle = background(); // transparency shows as the background, as on the pad
    ctx.fillRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = true;
    return ctx;
  };
  const parts = [];
  const across = Math.min(w, BORDER_MAX);
  const rows = strip(across, h > 1 ? 2 : 1); // row 0 and the last
  rows.drawImage(bitmap, 0, 0, w, 1, 0, 0, across, 1);
  if (h > 1) rows.drawImage(bitmap, 0, h - 1, w, 1, 0, 1, across, 1);
  parts.push(rows.getImageData(0, 0, across, h > 1 ? 2 : 1).data);
  if (h > 2) { // columns 0 and the last, between those rows
    const down = Math.min(h - 2, BORDER_MAX);
    const cols = strip(w > 1 ? 2 : 1, down);
    cols.drawImage(bitmap, 0, 1, 1, h - 2, 0, 0, 1, down);
    if (w > 1) cols.drawImage(bitmap, w - 1, 1, 1, h - 2, 1, 0, 1, down);
    parts.push(cols.getImageData(0, 0, w > 1 ? 2 : 1, down).data);
  }
  let sum = 0, count = 0;
  for (const d of parts) {
    for (let i = 0; i < d.length; i += 4) {
      sum += Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
      count++;
    }
  }
  return 2 * sum > 255 * count;
}

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

// Draws a picture onto a canvas (the pad, or one of its size) in the form the model takes:
// for a grayscale model fitted and centred, grey, on the model's background; for a colour model
// stretched to the whole canvas, in colour, as the service resizes an upload to the model's
// size. Inverted (255 - value) when `invert`.
function fitPicture(source, canvas, invert) {
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  clearCanvas(canvas);
  const colour = state.shape.c === 3;
  let x = 0, y = 0, w = canvas.width, h = canvas.height;
  if (!colour) {
    // In whole pixels, so that only the picture is made grey (and inverted): the letterbox
    // stays the model's background.
    const scale = Math.min(canvas.width / source.width, canvas.height / source.height);
    w = Math.max(1, Math.round(source.width * scale));
    h = Math.max(1, Math.round(source.height * scale));
    x = Math.floor((canvas.width - w) / 2);
    y = Math.floor((canvas.height - h) / 2);
  }
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, x, y, w, h);
  const image = ctx.getImageData(x, y, w, h);
  const d = image.data;
  for (let i = 0; i < d.length; i += 4) {
    if (colour) {
      if (invert) for (let k = 0; k < 3; k++) d[i + k] = 255 - d[i + k];
    } else {
      const grey = Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
      d[i] = d[i + 1] = d[i + 2] = invert ? 255 - grey : grey;
    }
  }
  ctx.putImageData(image, x, y);
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

// The pad's longer side, in its own pixels; the other follows the model's aspect ratio.
const PAD = 280;
const BRUSH = 22; // pixels of the pad: about MNIST's stroke once scaled to 20/28 of the frame

function padSize({h, w}) {
  const scale = PAD / Math.max(h, w);
  return [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
}

// A copy of a canvas's pixels, as a canvas.
function copyOf(canvas) {
  const copy = document.createElement("canvas");
  copy.width = canvas.width;
  copy.height = canvas.height;
  copy.getContext("2d").drawImage(canvas, 0, 0);
  return copy;
}

// The brush: white on a dark background, black on a light one; a colour model's brush paints
// in the colour picked.
function inkColour() {
  if (state.shape.c === 3) return $("brush-colour").value;
  return state.shape.light ? "#000" : "#fff";
}

function setupDrawing() {
  const canvas = $("draw-canvas");
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  clearCanvas(canvas);
  // Set before each mark: clearing the pad and dropping a file change the context's styles.
  const ink = () => {
    ctx.fillStyle = ctx.strokeStyle = inkColour();
    ctx.lineWidth = BRUSH;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
  };
  // The pointer drawing the current stroke (mouse, pen or finger) and where it last was; null
  // between strokes. One pointer draws at a time: a second finger does not join the stroke.
  let pen = null;
  const at = (event) => {
    const r = canvas.getBoundingClientRect();
    return [(event.clientX - r.left) * canvas.width / r.width,
            (event.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (pen !== null || event.button !== 0) return; // main button, pen tip or finger only
    canvas.setPointerCapture(event.pointerId);
    pen = {id: event.pointerId, last: at(event)};
    // The ink starts where the pointer lands, so a tap leaves a dot, as on paper. A filled disc,
    // not a zero-length line: whether that gets round caps differs between browsers.
    const [x, y] = pen.last;
    ink();
    ctx.arc(x, y, BRUSH / 2, 0, 2 * Math.PI);
    ctx.fill();
    refreshDrawing();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (pen === null || event.pointerId !== pen.id) return;
    // Every position the pointer reported, also those merged into this event while the page
    // was busy: the stroke has the same shape however loaded the machine is.
    const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    ink();
    ctx.moveTo(...pen.last);
    for (const moved of coalesced.length ? coalesced : [event]) {
      pen.last = at(moved);
      ctx.lineTo(...pen.last);
    }
    ctx.stroke();
    refreshDrawing(); // live while drawing; `latest` keeps one request in flight
  });
  const end = (event) => {
    if (pen === null || event.pointerId !== pen.id) return;
    pen = null;
    window.playground.strokes++;
    refreshDrawing(); // the whole stroke, tap or line, is encoded and reconstructed
    publish();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
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
