// md4 serve: the page. Plain JavaScript, no build step. It lists the server's runs, sends a job as JSON and
// reads its Server-Sent Events from the response (fetch, so a POST body and a Stop button that closes the
// connection, which cancels the job on the server).
"use strict";

const RAMP = [[49, 54, 149], [44, 123, 182], [26, 152, 80], [230, 145, 30], [215, 48, 39]]; // early to late
const MASK_RGBA = "rgba(230, 40, 150, 0.8)";
const $ = (id) => document.getElementById(id);
const state = { runs: [], limits: {}, run: null, job: null, mask: null, source: null, upload: null };

function ramp(fraction) {
  const where = Math.min(Math.max(fraction, 0), 1) * (RAMP.length - 1);
  const low = Math.min(Math.floor(where), RAMP.length - 2);
  const mix = where - low;
  const rgb = RAMP[low].map((a, i) => Math.round(a + (RAMP[low + 1][i] - a) * mix));
  return `rgb(${rgb.join(",")})`;
}

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

// ------------------------------------------------------------------ runs and their controls
async function loadRuns() {
  const response = await fetch("/api/runs");
  const data = await response.json();
  state.runs = data.runs;
  state.limits = data.limits;
  const nav = $("runs");
  for (const run of state.runs) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = run.index;
    button.textContent = `${run.index} · ${run.name}`;
    button.title = `${run.kind}, ${run.model}, step ${run.step}, shape ${run.shape.join("×")}`;
    button.addEventListener("click", () => selectRun(run.index));
    nav.append(button);
  }
  $("limits").textContent =
    `This server's limits: ${state.limits.length} tokens a sample, ${state.limits.steps} steps, ` +
    `${state.limits.samples} samples a job, ${state.limits.jobs} job(s) at a time.`;
  $("controls").hidden = false;
  selectRun(0);
}

function selectRun(index) {
  stopJob();
  const run = state.runs[index];
  state.run = run;
  for (const button of $("runs").children) button.classList.toggle("active", Number(button.dataset.index) === index);
  $("text-form").hidden = run.kind !== "text";
  $("image-form").hidden = run.kind !== "images";
  const sampler = $("sampler");
  sampler.replaceChildren(...run.samplers.map((s) => new Option(s.name, s.name)));
  sampler.value = run.defaults.sampler;
  $("steps").value = run.defaults.steps;
  $("steps").max = state.limits.steps;
  $("grid").value = run.defaults.grid;
  $("top-p").value = run.defaults.top_p;
  $("samples").replaceChildren();
  $("image-out").hidden = true;
  $("caption").hidden = true;
  $("legend").hidden = true;
  if (run.kind === "text") setUpText(run);
  else setUpImages(run);
  samplerChanged();
  setStatus(`${run.name}: ${run.kind === "text" ? "a text" : "an image"} model (${run.model}, step ${run.step}). ` +
    "Choose the settings and press Generate.");
}

function samplerChanged() {
  const chosen = state.run.samplers.find((s) => s.name === $("sampler").value);
  $("sampler-about").textContent = chosen.about;
  $("steps-field").hidden = !chosen.steps;
  $("grid-field").hidden = !chosen.grid;
  $("top-p-field").hidden = !["top_p", "autoregressive"].includes(chosen.name);
}

function sampling() {
  const body = {
    sampler: $("sampler").value,
    steps: Number($("steps").value),
    grid: $("grid").value,
    seed: Number($("seed").value),
  };
  if (!$("top-p-field").hidden) body.top_p = Number($("top-p").value);
  return body;
}

// ------------------------------------------------------------------ text
const HINTS = {
  free: "Samples from nothing: every token is drawn.",
  prompt: "The samples start with this text, kept exactly (bold, underlined).",
  infill: "Each _ is one token to fill (a character, for a character model): type as many as the gap should " +
    "hold, e.g. “To be, or ___ to be”. Everything else is kept exactly (bold, underlined).",
};

function setUpText(run) {
  $("length").value = run.defaults.length;
  $("length").max = state.limits.length;
  $("num").max = state.limits.samples;
  $("mode-infill").disabled = !run.infill;
  if (!run.infill && $("mode-infill").checked) $("mode-free").checked = true;
  modeChanged();
}

function textMode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function modeChanged() {
  const mode = textMode();
  $("text-input").disabled = mode === "free";
  $("mode-hint").textContent = HINTS[mode];
  $("length").disabled = mode === "infill";
  if (mode === "infill" && !$("text-input").value.includes("_")) $("text-input").value = "To be, or ___ to be: that is the ________.";
}

function textRequest() {
  const mode = textMode();
  const body = { ...sampling(), mode, num: Number($("num").value) };
  if (mode !== "free") body.text = $("text-input").value;
  if (mode !== "infill") body.length = Number($("length").value);
  return body;
}

class TextView {
  constructor(start) {
    this.planned = Math.max(start.planned, 1);
    this.spans = [];
    this.steps = [];
    const samples = $("samples");
    samples.replaceChildren();
    start.samples.forEach((tokens, i) => {
      const box = document.createElement("div");
      box.className = "sample";
      const title = document.createElement("h2");
      title.textContent = `Sample ${i + 1}`;
      const text = document.createElement("div");
      text.className = "tokens";
      const spans = tokens.map((piece) => {
        const span = document.createElement("span");
        if (piece === null) {
          span.className = "masked";
          span.textContent = "\u00a0";
        } else {
          span.className = "given";
          span.textContent = piece;
        }
        text.append(span);
        return span;
      });
      box.append(title, text);
      samples.append(box);
      this.spans.push(spans);
    });
    $("legend").hidden = false;
  }

  step(event) {
    for (const [row, position, piece] of event.tokens) {
      const span = this.spans[row][position];
      span.className = "drawn";
      span.textContent = piece;
      span.dataset.step = event.step;
      span.style.color = ramp((event.step - 1) / Math.max(this.planned - 1, 1));
    }
  }

  done(event) {
    for (const span of document.querySelectorAll("#samples span.drawn")) {
      span.style.color = ramp((Number(span.dataset.step) - 1) / Math.max(event.steps - 1, 1));
    }
  }
}

// ------------------------------------------------------------------ images
function setUpImages(run) {
  const label = $("label");
  const options = [new Option("All (a row each)", "all")];
  for (let c = 0; c < (run.classes || 0); c++) options.push(new Option(`${c}`, `${c}`));
  label.replaceChildren(...options);
  $("label-field").hidden = !run.classes;
  $("guidance-field").hidden = !run.classes;
  $("guidance-hint").hidden = !run.classes;
  const thumbs = $("test-images");
  thumbs.replaceChildren();
  run.test_images.forEach((image, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    button.title = image.label === null ? `test image ${i}` : `test image ${i} (class ${image.label})`;
    const img = document.createElement("img");
    img.src = image.png;
    img.alt = button.title;
    button.append(img);
    button.addEventListener("click", () => chooseSource({ test: i }, image.png, button));
    thumbs.append(button);
  });
  $("test-note").textContent = run.test_note ||
    "Pick a test image, or upload a picture; then paint the region to fill.";
  const [height, width] = run.shape;
  state.mask = new Uint8Array(height * width);
  state.source = null;
  state.scale = Math.max(1, Math.floor(280 / Math.max(height, width)));
  $("canvas").width = width * state.scale;
  $("canvas").height = height * state.scale;
  drawCanvas();
  imageModeChanged();
  if (run.test_images.length) chooseSource({ test: 0 }, run.test_images[0].png, thumbs.firstChild);
}

function imageMode() {
  return document.querySelector("input[name=image-mode]:checked").value;
}

function imageModeChanged() {
  const infill = imageMode() === "infill";
  $("infill-source").hidden = !infill;
  $("label").options[0].text = infill ? "No class" : "All (a row each)";
  const perClass = !infill && $("label").value === "all" && state.run.classes;
  $("num-images-label").textContent = infill ? "Completions" : perClass ? "Per class" : "Images";
}

function chooseSource(source, png, button) {
  state.source = source;
  state.picture = null;
  for (const thumb of $("test-images").children) thumb.classList.toggle("active", thumb === button);
  const img = new Image();
  img.onload = () => {
    state.picture = img;
    if (!state.mask.some((v) => v)) presetMask("bottom");
    drawCanvas();
  };
  img.src = png;
}

function drawCanvas() {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.fillStyle = "#222";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (state.source && state.picture) context.drawImage(state.picture, 0, 0, canvas.width, canvas.height);
  const [height, width] = state.run.shape;
  context.fillStyle = MASK_RGBA;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (state.mask[y * width + x]) context.fillRect(x * state.scale, y * state.scale, state.scale, state.scale);
    }
  }
}

function presetMask(name) {
  const [height, width] = state.run.shape;
  const inside = {
    bottom: (y) => y >= Math.floor(height / 2),
    top: (y) => y < Math.floor(height / 2),
    left: (y, x) => x < Math.floor(width / 2),
    right: (y, x) => x >= Math.floor(width / 2),
    center: (y, x) => [y, x].every((v, i) => {
      const size = [height, width][i];
      return v >= Math.floor(size / 4) && v < Math.floor(size / 4) + Math.floor(size / 2);
    }),
    clear: () => false,
  }[name];
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) state.mask[y * width + x] = inside(y, x) ? 1 : 0;
  drawCanvas();
}

function paint(event) {
  if (!(event.buttons & 1) || !state.source) return;
  const canvas = $("canvas");
  const box = canvas.getBoundingClientRect();
  const [height, width] = state.run.shape;
  const x = Math.floor(((event.clientX - box.left) / box.width) * width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * height);
  const size = Number($("brush").value);
  const half = Math.floor((size - 1) / 2);
  for (let dy = -half; dy < size - half; dy++) {
    for (let dx = -half; dx < size - half; dx++) {
      const [py, px] = [y + dy, x + dx];
      if (py >= 0 && py < height && px >= 0 && px < width) state.mask[py * width + px] = event.shiftKey ? 0 : 1;
    }
  }
  drawCanvas();
}

async function uploadPicture() {
  const file = $("upload").files[0];
  if (!file) return;
  if (file.size > state.limits.request_bytes * 0.7) {
    setStatus(`The picture is ${file.size.toLocaleString()} bytes; this server takes at most about ` +
      `${Math.floor(state.limits.request_bytes * 0.7).toLocaleString()}.`, "error");
    return;
  }
  const dataUrl = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(file);
  });
  const response = await fetch(`/api/runs/${state.run.index}/upload`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ png: dataUrl, invert: $("invert").checked }),
  });
  const data = await response.json();
  if (!response.ok) return setStatus(data.error, "error");
  chooseSource({ png: data.png }, data.png, null);
  setStatus("The picture as the model sees it: paint the region to fill, then press Generate.");
}

function imageRequest() {
  const body = { ...sampling(), mode: imageMode(), num: Number($("num-images").value) };
  if (state.run.classes) {
    body.label = $("label").value === "all" ? "all" : Number($("label").value);
    body.guidance = Number($("guidance").value);
  }
  if (body.mode === "infill") {
    if (!state.source) throw new Error("Pick a test image or upload a picture first.");
    Object.assign(body, state.source, { mask: Array.from(state.mask).join("") });
  }
  return body;
}

function showFrame(event) {
  const out = $("image-out");
  out.onload = () => {  // each pixel a square of 1 to 16 screen pixels, the grid at most 560 x 720
    const scale = Math.max(1, Math.min(16, Math.floor(560 / out.naturalWidth), Math.floor(720 / out.naturalHeight)));
    out.width = out.naturalWidth * scale;
    out.height = out.naturalHeight * scale;
  };
  out.src = event.frame;
  out.hidden = false;
}

// ------------------------------------------------------------------ jobs
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of chunk.split("\n")) if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

async function generate() {
  const run = state.run;
  let body;
  try {
    body = run.kind === "text" ? textRequest() : imageRequest();
  } catch (err) {
    return setStatus(err.message, "error");
  }
  const controller = new AbortController();
  state.job = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("Starting…");
  let view = null;
  const started = performance.now();
  try {
    const response = await fetch(`/api/runs/${run.index}/${run.kind}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({ error: response.statusText }));
      throw new Error(data.error);
    }
    await readEvents(response, (event) => {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      if (event.type === "start" && run.kind === "text") view = new TextView(event);
      else if (event.type === "start" || event.type === "frame") showFrame(event);
      if (event.caption) {
        $("caption").textContent = event.caption;
        $("caption").hidden = false;
      }
      if (event.type === "step") {
        view.step(event);
        setStatus(`Sampling… step ${event.step} of at most ${view.planned} · ${seconds} s`);
      } else if (event.type === "frame") {
        setStatus(`Sampling… ${(100 * (1 - event.masked)).toFixed(0)}% unmasked · ${seconds} s`);
      } else if (event.type === "done") {
        if (view) view.done(event);
        else showFrame(event);
        const steps = event.steps === undefined ? "" : `${event.steps} steps, `;
        setStatus(`Done: ${steps}${event.nfe} network calls, ${event.seconds} s.`, "done");
      } else if (event.type === "error") {
        setStatus(event.message, "error");
      }
    });
  } catch (err) {
    if (err.name === "AbortError") setStatus("Stopped.");
    else setStatus(err.message, "error");
  } finally {
    if (state.job === controller) state.job = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function stopJob() {
  if (state.job) state.job.abort();
}

document.addEventListener("DOMContentLoaded", () => {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stopJob);
  $("sampler").addEventListener("change", samplerChanged);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", modeChanged);
  for (const radio of document.querySelectorAll("input[name=image-mode]")) {
    radio.addEventListener("change", imageModeChanged);
  }
  $("label").addEventListener("change", imageModeChanged);
  for (const button of document.querySelectorAll("[data-mask]")) {
    button.addEventListener("click", () => presetMask(button.dataset.mask));
  }
  $("canvas").addEventListener("pointerdown", paint);
  $("canvas").addEventListener("pointermove", paint);
  $("upload").addEventListener("change", uploadPicture);
  $("invert").addEventListener("change", uploadPicture);
  loadRuns().catch((err) => setStatus(`Cannot list the runs: ${err.message}`, "error"));
});
