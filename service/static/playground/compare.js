// The comparison view, /?compare=A,B: two models of the same input shape side by side (an AE
// and a VAE, say). Plain JavaScript on the service's public REST API, nothing from the
// internet; page.js (the API, the published state) and pixels.js (pictures) are loaded first.
"use strict";

const {imageShape} = Pixels;
const SIDES = ["a", "b"];
const SAMPLES = 6; // sampled reconstructions per model
const GRID = 15; // the quantile grid's side: the classic 15 x 15 manifold picture
const GRID_LOW = 0.05, GRID_HIGH = 0.95; // its quantiles, as in the Keras VAE example
const PRIOR_SAMPLES = 36;
const MAP_SIZE = 360; // the maps' canvases, in pixels
const KEY_STEP = 8; // pixels of the map per arrow key press

const state = {
  models: [], // GET /models
  shape: null, // the input shape both models take, {h, w, c, light} (the left model's light)
  sides: {a: null, b: null}, // per side: {info, shape, map, scatter, code, input}
  views: {a: null, b: null}, // each map's axes, {cx, cy, scale} (pixels per latent unit):
                             // the same for both unless "Same scale" is unticked
  probe: null, // [z1, z2] under the pointer or the keyboard's cursor
};

// --- numbers -------------------------------------------------------------------------------------

// Φ⁻¹(p), the standard normal's quantile function: Acklam's rational approximation (relative
// error below 1.2e-9), plenty for placing a 15 x 15 grid.
function normalQuantile(p) {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690,
             -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
             -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
             4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const tail = (q) => (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
    ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

const QUANTILES = Array.from({length: GRID},
  (_, i) => normalQuantile(GRID_LOW + (GRID_HIGH - GRID_LOW) * i / (GRID - 1)));

// The grid's latent points, row by row from the top: z₂ falls down the rows and z₁ rises
// along them, so the picture lies as the map does.
function gridPoints() {
  const points = [];
  for (let row = GRID - 1; row >= 0; row--) {
    for (let col = 0; col < GRID; col++) points.push([QUANTILES[col], QUANTILES[row]]);
  }
  return points;
}

// n points of N(0, I) in `dims` dimensions from `seed`: mulberry32 and Box-Muller, so that the
// same seed gives both models the same points when their latent sizes agree.
function priorPoints(seed, n, dims) {
  let t = seed >>> 0;
  const uniform = () => {
    t = (t + 0x6D2B79F5) >>> 0;
    let x = Math.imul(t ^ (t >>> 15), 1 | t);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return (((x ^ (x >>> 14)) >>> 0) + 0.5) / 4294967296; // in (0, 1): log() stays finite
  };
  return Array.from({length: n}, () => Array.from({length: dims}, () =>
    Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform())));
}

function seedValue(id) {
  const value = parseInt($(id).value, 10);
  return Number.isFinite(value) && value >= 0 ? value : 0;
}

const fixed = (values) => `[${values.map((v) => v.toFixed(2).replace("-", "−")).join(", ")}]`;

// --- which two models ----------------------------------------------------------------------------

function shapeWords({h, w, c}) {
  return `${h} × ${w} ${c === 3 ? "colour" : "grayscale"}`;
}

// Why `names` cannot be compared, in words, or null when they can.
function refusal(names) {
  const here = state.models.map((m) => m.name).join(", ");
  const example = "/?compare=mnist-ae-2d,mnist-vae-2d";
  if (names.length !== 2) {
    return `Name two models to compare, separated by a comma: ${example}. ` +
      `This service has: ${here}.`;
  }
  for (const name of names) {
    if (!state.models.some((m) => m.name === name)) {
      return `There is no model named "${name}" here; this service has: ${here}.`;
    }
  }
  const [a, b] = names.map((name) => imageShape(state.models.find((m) => m.name === name)));
  if (a.h !== b.h || a.w !== b.w || a.c !== b.c) {
    return `${names[0]} takes ${shapeWords(a)} images and ${names[1]} ${shapeWords(b)} ones: ` +
      "the view compares two models of the same input shape. Pick two that agree above.";
  }
  return null;
}

function describe(info) {
  const metrics = (info.manifest && info.manifest.metrics) || {};
  const parts = [`${info.kind.toUpperCase()}, latent ${info.latent_dim}`];
  if (metrics.negative_elbo !== undefined) parts.push(`test −ELBO ${metrics.negative_elbo.toFixed(1)}`);
  const recon = metrics.deterministic_reconstruction;
  if (recon && recon.bce !== undefined) parts.push(`decode(mu) BCE ${recon.bce.toFixed(1)} nats`);
  return parts.join(" · ");
}

async function loadModels() {
  const list = await timed("models", () => api("/models"));
  if (!list) return;
  state.models = list.models;
  const wanted = (new URLSearchParams(location.search).get("compare") || "")
    .split(",").map((name) => name.trim()).filter(Boolean);
  for (const [i, side] of SIDES.entries()) {
    const select = $(`model-${side}`);
    select.replaceChildren(...list.models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.kind}, ${m.latent_dim}-d)`;
      return option;
    }));
    if (wanted[i] && list.models.some((m) => m.name === wanted[i])) select.value = wanted[i];
  }
  await compare(wanted);
}

// Shows `names` side by side, or says why it cannot.
async function compare(names) {
  const why = refusal(names);
  $("compare-error").textContent = why || "";
  $("compare-error").hidden = !why;
  $("compare-main").hidden = Boolean(why);
  if (why) return;
  const infos = names.map((name) => state.models.find((m) => m.name === name));
  state.shape = imageShape(infos[0]);
  SIDES.forEach((side, i) => {
    state.sides[side] = {info: infos[i], shape: imageShape(infos[i]), map: null, scatter: null,
                         code: null, input: null};
  });
  document.title = `${names[0]} and ${names[1]} side by side`;
  $("playground-link").href = `/?model=${encodeURIComponent(names[1])}`;
  buildColumns();
  sizePad();
  await loadMaps();
  await Promise.all([refreshDrawing(), decodeLatents(true), decodeProbe()]);
}

function pick() {
  const names = SIDES.map((side) => $(`model-${side}`).value);
  history.replaceState(null, "", `/?compare=${names.map(encodeURIComponent).join(",")}`);
  return track(compare(names));
}

// --- the columns ---------------------------------------------------------------------------------

// A new element with properties, "aria-*" attributes and children.
function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function digitCanvas(id, label) {
  const {h, w} = state.shape;
  return element("canvas", {id, className: "digit", width: w, height: h, "aria-label": label});
}

function title(side) {
  const {info} = state.sides[side];
  return element("h3", {className: "side-title"}, `${info.name} `,
                 element("span", {className: "fine"}, describe(info)));
}

function note(text) {
  return element("p", {className: "note"}, text);
}

// One column per model in each section: built anew for every pair of models.
function buildColumns() {
  for (const side of SIDES) {
    const {info} = state.sides[side];
    const vae = info.kind === "vae";
    const twoD = info.latent_dim === 2;
    const name = info.name;
    const recon = element("div", {className: "side"}, title(side),
      element("figure", {}, digitCanvas(`recon-${side}`, `${name}: decode(mu)`),
              element("figcaption", {}, "Deterministic: decode(mu)")),
      vae ? element("div", {id: `samples-${side}`, className: "strip",
                            "aria-label": `${name}: sampled reconstructions`})
          : note(`${name} is an autoencoder: one code per image and no variance, so there is ` +
                 "nothing to sample; its reconstruction is the same whatever the seed."),
      element("p", {id: `code-${side}`, className: "fine"}, "Draw something to see its code."));
    const map = twoD
      ? element("div", {className: "side"}, title(side),
          element("canvas", {id: `map-${side}`, className: "map", width: MAP_SIZE,
                             height: MAP_SIZE, tabIndex: 0,
                             "aria-label": `${name}'s latent space: point to decode; arrow keys ` +
                               "move the point"}),
          element("figure", {className: "probe"}, digitCanvas(`probe-${side}`, `${name}: decode(z)`),
                  element("figcaption", {id: `probe-z-${side}`}, "Point at a map")))
      : element("div", {className: "side"}, title(side),
          note(`${name} has a ${info.latent_dim}-D latent space: a map and the quantile grid ` +
               "need 2-D. Its reconstructions and samples are shown above and below."));
    const grid = element("div", {className: "side"}, title(side), twoD
      ? element("canvas", {id: `grid-${side}`, className: "grid quantiles",
                           "aria-label": `${name}: decodings at a 15 by 15 grid of Gaussian quantiles`})
      : note(`No quantile grid: ${name}'s latent space is ${info.latent_dim}-D.`));
    const samples = element("div", {className: "side"}, title(side),
      element("canvas", {id: `gen-${side}`, className: "grid",
                         "aria-label": `${name}: decodings of samples from N(0, I)`}),
      element("p", {className: "fine"}, vae
        ? "Its prior, N(0, I): what the KL term pulled its codes towards, and what /generate samples."
        : "Nothing made an AE's codes follow N(0, I): this is what decoding them gives."));
    for (const [pair, column] of [["recon", recon], ["map", map], ["grid", grid], ["samples", samples]]) {
      const box = $(`${pair}-pair`);
      if (side === "a") box.replaceChildren();
      box.append(column);
    }
  }
  for (const canvas of document.querySelectorAll("#recon-pair canvas, #map-pair .digit")) {
    Pixels.clearCanvas(canvas, Pixels.background(state.shape));
  }
  for (const side of SIDES) {
    const map = $(`map-${side}`);
    if (map) setupMap(map, side);
  }
}

// --- draw or drop --------------------------------------------------------------------------------

function sizePad() {
  const pad = $("draw-canvas");
  const drawing = Pixels.copyOf(pad);
  const [width, height] = Pixels.padSize(state.shape);
  if (pad.width !== width || pad.height !== height) [pad.width, pad.height] = [width, height];
  Pixels.fitPicture(drawing, pad, false, state.shape);
}

// What a side's model sees of the pad: drawn in the left model's form, inverted for a right
// model trained on the other background.
function inputFor(side) {
  const {shape} = state.sides[side];
  let pad = $("draw-canvas");
  if (shape.light !== state.shape.light) {
    const copy = Pixels.copyOf(pad);
    Pixels.fitPicture(pad, copy, true, shape);
    pad = copy;
  }
  return Pixels.toModelInput(pad, shape);
}

function setupDrawing() {
  const pad = $("draw-canvas");
  Pixels.clearCanvas(pad, "#000");
  Pixels.drawStrokes(pad, {
    ink: () => (state.shape.c === 3 ? "#ffa500" : state.shape.light ? "#000" : "#fff"),
    changed: refreshDrawing,
    finished: () => {
      window.playground.strokes++;
      refreshDrawing();
      publish();
    },
  });
  const clear = () => {
    Pixels.clearCanvas(pad, Pixels.background(state.shape));
    $("drop-note").textContent = "";
    refreshDrawing();
  };
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Backspace") { event.preventDefault(); clear(); }
  });
  $("clear-btn").addEventListener("click", clear);
  $("upload-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) track(drawFile(file));
  });
  pad.addEventListener("dragover", (event) => event.preventDefault());
  pad.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files[0]) track(drawFile(event.dataTransfer.files[0]));
  });
  $("resample-btn").addEventListener("click", () => {
    $("seed-input").value = String(seedValue("seed-input") + 1);
    refreshSamples();
  });
  $("seed-input").addEventListener("change", refreshSamples);
}

// A file onto the pad, inverted as the service's invert=auto would (see the playground).
async function drawFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    setStatus(`Cannot read ${file.name} as an image: ${error.message || error}`, true);
    return;
  }
  const light = Pixels.lightBorder(bitmap, state.shape);
  const invert = state.shape.c !== 3 && light !== state.shape.light;
  Pixels.fitPicture(bitmap, $("draw-canvas"), invert, state.shape);
  bitmap.close();
  $("drop-note").textContent = invert ? `${file.name} was inverted: its border is light.` : "";
  await refreshDrawing();
}

// Each model's encoding, deterministic and sampled reconstructions of the drawing, in parallel.
const refreshDrawing = latest(async () => {
  if (!state.shape) return;
  for (const side of SIDES) state.sides[side].input = inputFor(side);
  if (!state.sides.a.input) {
    for (const side of SIDES) {
      state.sides[side].code = null;
      Pixels.clearCanvas($(`recon-${side}`), Pixels.background(state.sides[side].shape));
      const strip = $(`samples-${side}`);
      if (strip) strip.replaceChildren();
      $(`code-${side}`).textContent = "Draw something to see its code.";
    }
    drawMaps();
    return;
  }
  await timed("reconstruct", () => Promise.all(SIDES.map(reconstruct)));
  drawMaps();
});

async function reconstruct(side) {
  const {info, shape, input} = state.sides[side];
  const model = info.name;
  const images = [Array.from(input)];
  const calls = [api("/encode", {model, images}),
                 api("/reconstruct", {model, images, mode: "deterministic"})];
  if (info.kind === "vae") calls.push(sampled(model, images));
  const [code, recon, samples] = await Promise.all(calls);
  if (state.sides[side].info !== info) return; // another pair was picked meanwhile
  Pixels.paint($(`recon-${side}`), recon.images[0], shape);
  if (samples) showSamples(side, samples);
  const mu = code.mu[0];
  const sigma = code.logvar ? code.logvar[0].map((v) => Math.exp(v / 2)) : null;
  state.sides[side].code = {mu, sigma};
  const shown = mu.length <= 4 ? `mu = ${fixed(mu)}` : `mu: ${mu.length} numbers`;
  $(`code-${side}`).textContent = sigma
    ? `${shown}${mu.length <= 4 ? `, sigma = exp(logvar / 2) = ${fixed(sigma)}` : ""}`
    : `${shown.replace("mu", "code")} (no sigma: an AE predicts a point)`;
}

function sampled(model, images) {
  return api("/reconstruct", {model, images, mode: "sampled", seed: seedValue("seed-input"),
                              samples: SAMPLES});
}

function showSamples(side, answer) {
  const {shape} = state.sides[side];
  const strip = $(`samples-${side}`);
  strip.replaceChildren(...answer.images[0].map((image, i) => {
    const canvas = digitCanvas(`sample-${side}-${i}`, `sample ${i + 1}`);
    Pixels.paint(canvas, image, shape);
    return canvas;
  }));
}

const refreshSamples = latest(async () => {
  const vaes = SIDES.filter((side) => state.sides[side] && state.sides[side].info.kind === "vae");
  if (!state.sides.a || !state.sides.a.input || !vaes.length) return;
  await timed("resample", () => Promise.all(vaes.map(async (side) => {
    const {info, input} = state.sides[side];
    const answer = await sampled(info.name, [Array.from(input)]);
    if (state.sides[side].info === info) showSamples(side, answer);
  })));
});

// --- the quantile grid and the prior samples: one /decode per model -----------------------------

// Decodes, per model in one request, the prior samples and (with `grid`, for a 2-D model) the
// 225 grid points before them; answered as .npy.
const decodeLatents = (() => {
  let withGrid = false;
  const run = latest(async () => {
    const grid = withGrid;
    withGrid = false;
    const seed = seedValue("sample-seed");
    await timed(grid ? "grid and samples" : "samples", () => Promise.all(SIDES.map(async (side) => {
      const {info, shape} = state.sides[side];
      const gridZ = grid && info.latent_dim === 2 ? gridPoints() : [];
      const z = [...gridZ, ...priorPoints(seed, PRIOR_SAMPLES, info.latent_dim)];
      const {data} = await api("/decode", {model: info.name, z}, {npy: true});
      if (state.sides[side].info !== info) return;
      const size = shape.h * shape.w * shape.c;
      const images = z.map((_, i) => data.subarray(i * size, (i + 1) * size));
      if (gridZ.length) Pixels.paintGrid($(`grid-${side}`), images.slice(0, gridZ.length), GRID, shape);
      Pixels.paintGrid($(`gen-${side}`), images.slice(gridZ.length), 6, shape);
    })));
  });
  return (grid = false) => {
    withGrid = withGrid || grid;
    return run();
  };
})();

function setupSamples() {
  $("sample-btn").addEventListener("click", () => {
    $("sample-seed").value = String(seedValue("sample-seed") + 1);
    decodeLatents();
  });
  $("sample-seed").addEventListener("change", () => decodeLatents());
}

// --- the latent maps -----------------------------------------------------------------------------

async function loadMaps() {
  state.probe = [0, 0]; // the prior's mode, decoded by both to start with
  await Promise.all(SIDES.map(async (side) => {
    const {info} = state.sides[side];
    if (info.latent_dim !== 2 || !info.latent_map) return;
    const path = `/models/${encodeURIComponent(info.name)}/latent-map`;
    const map = await timed("latent map", () => api(path));
    if (state.sides[side].info === info) state.sides[side].map = map || null;
  }));
  drawScatters();
  drawLegend();
}

// The maps' fixed layers, for the axes "Same scale" asks for.
function drawScatters() {
  fitViews();
  for (const side of SIDES) {
    if (state.sides[side].info.latent_dim === 2) state.sides[side].scatter = renderScatter(side);
  }
  drawMaps();
}

// The maps' axes: square, over the middle 99 % of the test set's points and the prior's 2σ
// circle, with a margin; common to both maps unless "Same scale" is unticked. The same scale
// is the point: it shows how far apart the two spaces are.
function fitViews() {
  const same = $("same-scale").checked;
  for (const side of SIDES) state.views[side] = fitView(same ? SIDES : [side]);
}

function fitView(sides) {
  let lo = [-2.2, -2.2], hi = [2.2, 2.2];
  const q = (values, p) => values[Math.min(values.length - 1, Math.floor(p * values.length))];
  for (const side of sides) {
    const {map} = state.sides[side];
    if (!map || !map.mu.length) continue;
    for (const axis of [0, 1]) {
      const values = map.mu.map((p) => p[axis]).sort((x, y) => x - y);
      lo[axis] = Math.min(lo[axis], q(values, 0.005));
      hi[axis] = Math.max(hi[axis], q(values, 0.995));
    }
  }
  const span = Math.max(hi[0] - lo[0], hi[1] - lo[1]) * 1.1;
  return {cx: (lo[0] + hi[0]) / 2, cy: (lo[1] + hi[1]) / 2, scale: MAP_SIZE / span};
}

function toScreen(view, [x, y]) {
  const {cx, cy, scale} = view;
  return [MAP_SIZE / 2 + (x - cx) * scale, MAP_SIZE / 2 - (y - cy) * scale];
}

function toLatent(view, [px, py]) {
  const {cx, cy, scale} = view;
  return [cx + (px - MAP_SIZE / 2) / scale, cy - (py - MAP_SIZE / 2) / scale];
}

// Grid lines every 1, 2, 5 or 10 latent units, whichever leaves them at least 24 px apart.
function gridStep(view) {
  return [1, 2, 5, 10, 20, 50, 100].find((step) => step * view.scale >= 24) || 100;
}

// A map's fixed layer, drawn once per pair: grid lines, test points, the prior's circles, the
// quantile grid's square.
function renderScatter(side) {
  const layer = element("canvas", {width: MAP_SIZE, height: MAP_SIZE});
  const ctx = layer.getContext("2d");
  ctx.fillStyle = "#fafafa";
  ctx.fillRect(0, 0, MAP_SIZE, MAP_SIZE);
  const view = state.views[side];
  const screen = (point) => toScreen(view, point);
  const step = gridStep(view);
  const [x0, y1] = toLatent(view, [0, 0]);
  const [x1, y0] = toLatent(view, [MAP_SIZE, MAP_SIZE]);
  ctx.lineWidth = 1;
  for (let v = Math.ceil(x0 / step) * step; v <= x1; v += step) {
    ctx.strokeStyle = v === 0 ? "#999" : "#e3e3e3";
    const [px] = screen([v, 0]);
    ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, MAP_SIZE); ctx.stroke();
  }
  for (let v = Math.ceil(y0 / step) * step; v <= y1; v += step) {
    ctx.strokeStyle = v === 0 ? "#999" : "#e3e3e3";
    const [, py] = screen([0, v]);
    ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(MAP_SIZE, py); ctx.stroke();
  }
  const {map} = state.sides[side];
  if (map) {
    ctx.globalAlpha = 0.55;
    map.mu.forEach((point, i) => {
      const [px, py] = screen(point);
      ctx.fillStyle = Pixels.COLOURS[map.labels[i] % Pixels.COLOURS.length];
      ctx.fillRect(px - 1, py - 1, 2, 2);
    });
    ctx.globalAlpha = 1;
  }
  const [ox, oy] = screen([0, 0]);
  ctx.strokeStyle = "#111";
  ctx.lineWidth = 1.5;
  for (const radius of [1, 2]) { // the prior N(0, I)'s 1σ and 2σ circles
    ctx.beginPath();
    ctx.arc(ox, oy, radius * view.scale, 0, 2 * Math.PI);
    ctx.stroke();
  }
  ctx.fillStyle = "#111";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText("1σ", ox + view.scale * 0.71 + 2, oy - view.scale * 0.71 - 2);
  ctx.fillText("2σ", ox + view.scale * 1.41 + 2, oy - view.scale * 1.41 - 2);
  const edge = QUANTILES[GRID - 1] * view.scale;
  ctx.setLineDash([4, 4]);
  ctx.lineWidth = 1;
  ctx.strokeRect(ox - edge, oy - edge, 2 * edge, 2 * edge);
  ctx.setLineDash([]);
  ctx.fillStyle = "#555";
  ctx.fillText(`grid lines every ${step}`, 6, MAP_SIZE - 6);
  return layer;
}

function drawLegend() {
  const map = state.sides.a.map || state.sides.b.map;
  const names = map ? map.label_names : [];
  $("map-legend").replaceChildren(...names.map((name, i) => element("li", {},
    element("span", {style: `background: ${Pixels.COLOURS[i % Pixels.COLOURS.length]}`}), name)));
}

function drawMaps() {
  for (const side of SIDES) {
    const canvas = $(`map-${side}`);
    const view = state.views[side];
    const {scatter, code} = state.sides[side] || {};
    if (!canvas || !scatter || !view) continue;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(scatter, 0, 0);
    if (state.probe) {
      const [px, py] = toScreen(view, state.probe);
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(px - 8, py); ctx.lineTo(px + 8, py);
      ctx.moveTo(px, py - 8); ctx.lineTo(px, py + 8);
      ctx.stroke();
    }
    if (code) drawCode(ctx, view, code);
  }
}

// The drawing's code as a marker; a VAE's sigma = exp(logvar / 2) as an ellipse around it.
function drawCode(ctx, view, {mu, sigma}) {
  const [px, py] = toScreen(view, mu);
  if (sigma) {
    ctx.fillStyle = "rgba(0, 0, 0, 0.12)";
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.ellipse(px, py, Math.max(1, sigma[0] * view.scale),
                Math.max(1, sigma[1] * view.scale), 0, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
  }
  ctx.fillStyle = "#000";
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.arc(px, py, 6, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();
}

// The same z, decoded by each 2-D model.
const decodeProbe = latest(async () => {
  if (!state.probe) return;
  const z = state.probe.map((v) => Number(v.toFixed(4)));
  const sides = SIDES.filter((side) => state.sides[side].info.latent_dim === 2);
  await timed("decode", () => Promise.all(sides.map(async (side) => {
    const {info, shape} = state.sides[side];
    const result = await api("/decode", {model: info.name, z: [z]});
    if (state.sides[side].info !== info) return;
    Pixels.paint($(`probe-${side}`), result.images[0], shape);
    $(`probe-z-${side}`).textContent = `decode(z = ${fixed(z)})`;
  })));
});

function setupMap(canvas, side) {
  const move = (event) => {
    const r = canvas.getBoundingClientRect();
    state.probe = toLatent(state.views[side], [(event.clientX - r.left) * MAP_SIZE / r.width,
                            (event.clientY - r.top) * MAP_SIZE / r.height]);
    drawMaps();
    decodeProbe();
  };
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerdown", move);
  canvas.addEventListener("keydown", (event) => {
    const steps = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1]};
    if (!(event.key in steps)) return;
    event.preventDefault();
    const step = KEY_STEP / state.views[side].scale;
    const [dx, dy] = steps[event.key];
    const [x, y] = state.probe || [0, 0];
    state.probe = [x + dx * step, y + dy * step];
    drawMaps();
    decodeProbe();
  });
}

// --- start ---------------------------------------------------------------------------------------

async function start() {
  $("api-key").value = sessionStorage.getItem("vae-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("vae-api-key", $("api-key").value.trim());
    track(loadModels());
  });
  for (const side of SIDES) $(`model-${side}`).addEventListener("change", pick);
  $("same-scale").addEventListener("change", () => { if (state.sides.a) drawScatters(); });
  setupDrawing();
  setupSamples();
  publish();
  await track(loadModels());
  window.playground.ready = true;
  document.body.dataset.ready = "true";
}

start();
