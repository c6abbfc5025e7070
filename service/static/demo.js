// The demo page. It talks to the service's public API only:
//   GET  /samples                      the bundled test images and their adversarial versions
//   GET  /samples/{id}                 one of them, as PNG
//   POST /purify                       the purified image (PNG; X-Noise-Level, X-Spike-Count)
//   POST /purify?output=noise          the estimated noise-level map (grey level / 255 = level)
//   POST /classify?purify=true|false   label, top-k, spikes and timings
"use strict";

const TOP_K = 5;
const SAMPLES_RETRIES = 30; // the model may still be loading: retry /samples for about a minute
const SAMPLES_RETRY_MS = 2000;
// "inferno"-like colour ramp for the noise map (the legend in demo.css uses the same stops)
const RAMP = [
  [0, 0, 4],
  [87, 16, 110],
  [188, 55, 84],
  [249, 142, 9],
  [252, 255, 164],
];
const VARIANT_ORDER = ["clean", "pgd", "autoattack", "pgd-end-to-end"];
const ATTACK_NAMES = { "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", square: "Square" };
const THREAT_MODEL_NAMES = {
  "classifier-only": "classifier-only / transfer to the pipeline",
  "end-to-end": "end-to-end, adaptive attacker",
};

const $ = (selector, root = document) => root.querySelector(selector);
const state = { samples: new Map(), bySource: new Map(), source: null, run: 0, urls: [] };

// ------------------------------------------------------------------ API

class APIError extends Error {}

async function describeFailure(response) {
  // The service answers {"error": {"code", "message"}}; a proxy in front may not.
  let detail = "";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      detail = `${body.error.message} (${body.error.code}, HTTP ${response.status})`;
    }
  } catch (_) {
    // not JSON: fall through to the status line
  }
  if (!detail) {
    const known = { 413: "the file is too large", 415: "the file type is not accepted" };
    detail = `${known[response.status] || response.statusText || "request failed"} (HTTP ${response.status})`;
  }
  return detail;
}

async function post(path, image) {
  const form = new FormData();
  form.append("file", image, image.name || "image");
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method: "POST", body: form });
  } catch (_) {
    throw new APIError("The service cannot be reached. Is it still running?");
  }
  if (!response.ok) {
    throw new APIError(`The service could not use this file: ${await describeFailure(response)}.`);
  }
  return { response, roundTripMs: performance.now() - started };
}

async function classify(image, purify) {
  const { response, roundTripMs } = await post(`/classify?purify=${purify}&top_k=${TOP_K}`, image);
  return { body: await response.json(), roundTripMs };
}

async function purify(image, output) {
  const { response, roundTripMs } = await post(`/purify?output=${output}`, image);
  return {
    blob: await response.blob(),
    noiseLevel: Number(response.headers.get("X-Noise-Level")),
    spikes: Number(response.headers.get("X-Spike-Count")),
    roundTripMs,
  };
}

// ------------------------------------------------------------------ rendering helpers

function objectURL(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

function releaseURLs() {
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [];
}

function ms(value) {
  return value === null || value === undefined ? "n/a" : `${value.toFixed(1)} ms`;
}

function percent(value) {
  return `${(100 * value).toFixed(1)}%`;
}

function count(value) {
  return Math.round(value).toLocaleString("en");
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new APIError("The service returned an image the browser cannot show."));
    image.src = url;
  });
}

function rampColour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
}

async function drawNoiseMap(blob, meanLevel) {
  const grey = await loadImage(objectURL(blob));
  const canvas = $("#noise-map");
  canvas.width = grey.naturalWidth;
  canvas.height = grey.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(grey, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  let top = 0;
  for (let i = 0; i < pixels.data.length; i += 4) top = Math.max(top, pixels.data[i]);
  // colour scale 0 .. the map's maximum, rounded up to 0.05 (the legend shows it)
  const scaleMax = Math.max(0.05, Math.ceil((top / 255) * 20) / 20);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const [r, g, b] = rampColour(pixels.data[i] / 255 / scaleMax);
    pixels.data[i] = r;
    pixels.data[i + 1] = g;
    pixels.data[i + 2] = b;
    pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  $("#legend-max").textContent = scaleMax.toFixed(2);
  canvas.setAttribute(
    "aria-label",
    `Heat map of the noise level the purifier estimated per pixel: mean ${meanLevel.toFixed(3)}, ` +
      `highest ${(top / 255).toFixed(3)}, on a scale from 0 (dark) to ${scaleMax.toFixed(2)} (bright).`,
  );
}

function renderPrediction(section, result, trueLabel) {
  const { body, roundTripMs } = result;
  $(".label", section).textContent = body.label;
  $(".confidence", section).textContent = `${percent(body.confidence)} confidence`;
  const truth = $(".truth", section);
  truth.classList.remove("correct", "wrong");
  if (trueLabel) {
    const correct = body.label === trueLabel;
    truth.textContent = correct ? `Correct (true label: ${trueLabel})` : `Wrong: the true label is ${trueLabel}`;
    truth.classList.add(correct ? "correct" : "wrong");
  } else {
    truth.textContent = "";
  }
  const list = $(".top-k", section);
  list.replaceChildren(
    ...body.top_k.map((entry) => {
      const item = document.createElement("li");
      const row = document.createElement("span");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = entry.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = percent(entry.confidence);
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = percent(entry.confidence);
      row.append(name, bar, value);
      item.append(row);
      return item;
    }),
  );
  const t = body.timings_ms;
  const spikes =
    body.spikes.purifier === null
      ? `Spikes: classifier ${count(body.spikes.classifier)}.`
      : `Spikes: purifier ${count(body.spikes.purifier)}, classifier ${count(body.spikes.classifier)}.`;
  const purifyTime = t.purify === null ? "" : `purify ${ms(t.purify)}, `;
  $(".stats", section).textContent =
    `${spikes} Time: ${purifyTime}classify ${ms(t.classify)}, server total ${ms(t.total)}, ` +
    `round trip ${ms(roundTripMs)} (batch of ${t.batch_size}).`;
}

// ------------------------------------------------------------------ the flow

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = $("#error");
  box.textContent = "";
  box.hidden = true;
}

function describeSample(sample) {
  if (sample.variant === "clean") return "the clean test image";
  const attack = attackName(sample);
  const threat = THREAT_MODEL_NAMES[sample.threat_model] || sample.threat_model;
  return `${attack} adversarial version (${threat}, ε = ${sample.eps.toFixed(3)})`;
}

function attackName(sample) {
  const settings = sample.attack || {};
  if (sample.variant === "autoattack" && Array.isArray(settings.components)) {
    const name = (c) => ATTACK_NAMES[c] || c;
    const ran = settings.components.map(name).join(" + ");
    const skipped = (settings.not_run || []).map(name).join(", ");
    return `AutoAttack (${ran}, ${sample.steps} iterations${skipped ? `; ${skipped} not run` : ""})`;
  }
  if (sample.variant.startsWith("pgd")) return `PGD (${sample.steps} steps)`;
  return settings.attack || sample.variant;
}

// `getImage` resolves to the image to send; the latest choice wins even when an earlier
// one answers later.
async function analyse(getImage, caption, alt, trueLabel) {
  const run = ++state.run;
  clearError();
  const results = $("#results");
  results.dataset.state = "loading";
  $("#status").textContent = "Purifying and classifying…";
  try {
    const image = await getImage();
    if (run !== state.run) return;
    const [purified, noise, withPurifier, withoutPurifier] = await Promise.all([
      purify(image, "purified"),
      purify(image, "noise"),
      classify(image, true),
      classify(image, false),
    ]);
    if (run !== state.run) return; // a newer image was chosen meanwhile
    releaseURLs();
    const input = $("#input-image");
    input.src = objectURL(image);
    input.alt = alt;
    const purifiedImage = $("#purified-image");
    purifiedImage.src = objectURL(purified.blob);
    purifiedImage.alt = `${alt}, after the purifier`;
    await Promise.all([loadImage(purifiedImage.src), drawNoiseMap(noise.blob, noise.noiseLevel)]);
    if (run !== state.run) return;
    $("#input-caption").textContent = caption;
    $("#purify-stats").textContent =
      `Purifier: mean estimated noise level ${purified.noiseLevel.toFixed(3)}, ` +
      `${count(purified.spikes)} spikes, round trip ${ms(purified.roundTripMs)}.`;
    renderPrediction($("#prediction-plain"), withoutPurifier, trueLabel);
    renderPrediction($("#prediction-purified"), withPurifier, trueLabel);
    results.hidden = false;
    results.dataset.state = "done";
    $("#status").textContent =
      `Done. Without purification: ${withoutPurifier.body.label}; ` +
      `with purification: ${withPurifier.body.label}.`;
  } catch (error) {
    if (run !== state.run) return;
    results.dataset.state = "error";
    results.hidden = true;
    $("#status").textContent = "";
    showError(error instanceof APIError ? error.message : `Something went wrong: ${error}`);
  }
}

function onUpload(event) {
  const file = event.target.files[0];
  if (!file) return;
  selectSource(null);
  analyse(async () => file, `Uploaded file: ${file.name}`, `Uploaded image ${file.name}`, null);
}

async function fetchSample(sample) {
  let response;
  try {
    response = await fetch(sample.url);
  } catch (_) {
    throw new APIError("The service cannot be reached. Is it still running?");
  }
  if (!response.ok) throw new APIError(`The sample cannot be loaded: ${await describeFailure(response)}.`);
  return new File([await response.blob()], `${sample.id}.png`, { type: "image/png" });
}

function analyseSample(sample) {
  const what = describeSample(sample);
  analyse(
    () => fetchSample(sample),
    `Test image ${sample.source} (true label ${sample.label}): ${what}.`,
    `Test image ${sample.source}, a ${sample.label}: ${what}`,
    sample.label,
  );
}

function selectSource(source) {
  state.source = source;
  document.querySelectorAll("#sample-list button").forEach((button) => {
    button.setAttribute("aria-pressed", String(button.dataset.source === source));
  });
  const picker = $("#variant-picker");
  const list = $("#variant-list");
  if (source === null) {
    picker.disabled = true;
    list.replaceChildren(hint("Pick a bundled test image first."));
    return;
  }
  const variants = [...state.bySource.get(source)].sort(
    (a, b) => rank(a.variant) - rank(b.variant) || a.id.localeCompare(b.id),
  );
  list.replaceChildren(
    ...variants.map((sample, index) => {
      const label = document.createElement("label");
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "variant";
      radio.value = sample.id;
      radio.checked = index === 0;
      radio.addEventListener("change", () => analyseSample(sample));
      const text = document.createElement("span");
      text.textContent = variantTitle(sample);
      const detail = document.createElement("span");
      detail.className = "detail";
      detail.textContent = sample.threat_model_note;
      label.append(radio, text, detail);
      return label;
    }),
  );
  picker.disabled = false;
  analyseSample(variants[0]);
}

function variantTitle(sample) {
  if (sample.variant === "clean") return "Clean test image";
  const threat = THREAT_MODEL_NAMES[sample.threat_model] || sample.threat_model;
  return `${attackName(sample)}, ε = ${sample.eps.toFixed(3)}: ${threat}`;
}

function rank(variant) {
  const i = VARIANT_ORDER.indexOf(variant);
  return i === -1 ? VARIANT_ORDER.length : i;
}

function hint(text) {
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = text;
  return p;
}

function renderSamples(listing) {
  const model = listing.model;
  $("#model-info").textContent = `Model: ${model.name}, version ${model.version}.`;
  for (const sample of listing.samples) {
    state.samples.set(sample.id, sample);
    if (!state.bySource.has(sample.source)) state.bySource.set(sample.source, []);
    state.bySource.get(sample.source).push(sample);
  }
  const status = $("#samples-status");
  if (state.bySource.size === 0) {
    status.textContent = "This model ships no sample images; upload one instead.";
    $("#sample-picker").disabled = true;
    return;
  }
  status.textContent = `${state.bySource.size} Fashion-MNIST test images, each with adversarial versions.`;
  const items = [...state.bySource.entries()].map(([source, variants]) => {
    const clean = variants.find((s) => s.variant === "clean") || variants[0];
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.source = source;
    button.setAttribute("aria-pressed", "false");
    const thumb = document.createElement("img");
    thumb.src = clean.url;
    thumb.alt = "";
    thumb.width = 56;
    thumb.height = 56;
    const label = document.createElement("span");
    label.textContent = `${source}: ${clean.label}`;
    button.append(thumb, label);
    button.setAttribute("aria-label", `Test image ${source}, a ${clean.label}`);
    button.addEventListener("click", () => {
      $("#upload").value = "";
      selectSource(source);
    });
    item.append(button);
    return item;
  });
  $("#sample-list").replaceChildren(...items);
}

async function loadSamples() {
  for (let attempt = 0; attempt < SAMPLES_RETRIES; attempt++) {
    let response;
    try {
      response = await fetch("/samples");
    } catch (_) {
      response = null;
    }
    if (response && response.ok) {
      renderSamples(await response.json());
      return;
    }
    if (response && response.status !== 503) {
      $("#samples-status").textContent = `The samples cannot be listed: ${await describeFailure(response)}.`;
      return;
    }
    $("#samples-status").textContent = "The model is still loading; the samples will appear when it is ready.";
    await new Promise((resolve) => setTimeout(resolve, SAMPLES_RETRY_MS));
  }
  $("#samples-status").textContent = "The model did not become ready; reload the page to try again.";
}

document.addEventListener("DOMContentLoaded", () => {
  $("#upload").addEventListener("change", onUpload);
  loadSamples();
});
