// What the playground and the comparison view share: the page's published state (the browser
// tests wait on it), calls to the service's API, and how an answer or an error is shown. Both
// pages have the elements #status, #timing, #key-box and #api-key.
"use strict";

const $ = (id) => document.getElementById(id);

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

// GET `path`, or POST `body` to it as JSON; the answer's JSON, or with `npy` its images as
// {shape, data} (see readNpy): a fifth of JSON's bytes, and nothing to parse for many images.
async function api(path, body, {npy = false} = {}) {
  const headers = {"Accept": npy ? "application/x-npy" : "application/json"};
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const init = {headers};
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (npy && response.ok) return readNpy(await response.arrayBuffer());
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = (data && (data.detail || data.error)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, typeof message === "string" ? message : JSON.stringify(message));
  }
  return data;
}

// A little-endian float32 .npy answer (the service's images: N x H x W, or N x H x W x C) as
// {shape, data}, data a Float32Array over the answer's own bytes. numpy pads the header so that
// the data starts on a multiple of 64 bytes.
function readNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const version = bytes[6];
  const size = version === 1 ? bytes[8] | (bytes[9] << 8) : new DataView(buffer).getUint32(8, true);
  const start = (version === 1 ? 10 : 12);
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + size));
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!header.includes("'descr': '<f4'") || header.includes("'fortran_order': True") || !shape) {
    throw new Error(`an .npy answer this page cannot read: ${header.trim()}`);
  }
  return {
    shape: shape[1].split(",").filter((d) => d.trim()).map((d) => parseInt(d, 10)),
    data: new Float32Array(buffer, start + size),
  };
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
