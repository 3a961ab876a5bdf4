// The upscaler's web page: pick or drop an image, POST it to v1/upscale, compare before and after.
// Vanilla JS with no external assets (the page must work offline and behind firewalls).
"use strict";

// Serve's HTTP proxy routes a request carrying this header to a replica that already holds the model.
const MODEL_HEADER = "serve_multiplexed_model_id";
const TOKEN_KEY = "srgan-api-token"; // sessionStorage: gone when the tab closes, never sent elsewhere
const REASONS = {
  400: "the image could not be read",
  401: "a token is needed",
  404: "not found",
  413: "the image is too large",
  415: "not a supported image",
  503: "the server is not ready",
};
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };

const $ = (id) => document.getElementById(id);
let defaultModel = "";
let objectUrls = [];

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  setStatus("");
  $("result").hidden = true; // never leave a broken or stale image on screen next to an error
  $("error").textContent = text;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function errorMessage(resp) {
  // The API answers every error with {"error": "<one line>"}; anything else (a proxy page) gets its status text.
  let detail = resp.statusText || "unexpected answer";
  try {
    const body = await resp.json();
    if (body && typeof body.error === "string") detail = body.error;
  } catch (_) { /* not JSON */ }
  const reason = REASONS[resp.status] ? ` (${REASONS[resp.status]})` : "";
  return `Error ${resp.status}${reason}: ${detail}`;
}

function authHeaders() {
  // The API may need a bearer token (SRGAN_API_TOKEN on the server); the page asks for it on a 401.
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY); // a refused token is not kept
  $("auth-message").textContent = message;
  $("auth").hidden = false;
  $("token").focus();
}

function saveToken(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("auth").hidden = true;
  clearError();
  loadModels();
}

async function loadModels() {
  let resp;
  try {
    resp = await fetch("v1/models", { headers: authHeaders() });
  } catch (err) {
    return showError(`The server could not be reached: ${err.message}`);
  }
  if (resp.status === 401) return askForToken("This server needs an API token to list its models and upscale.");
  if (!resp.ok) return showError(await errorMessage(resp));
  const select = $("model");
  select.textContent = "";
  for (const model of (await resp.json()).models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.error
      ? `${model.id} (unavailable)` // allowed, but it cannot be resolved now
      : `${model.name} ${model.version} (x${model.scale})${model.default ? ", default" : ""}`;
    option.title = model.error || model.id; // the full reference (or what went wrong), on hover
    option.disabled = Boolean(model.error);
    if (model.default) {
      defaultModel = model.id;
      option.selected = true;
    }
    select.append(option);
  }
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function releaseImages() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
}

async function upscale(file) {
  clearError();
  $("result").hidden = true;
  setStatus(`Upscaling ${file.name} (${Math.ceil(file.size / 1024)} KiB)...`);
  const headers = { "Content-Type": file.type || "application/octet-stream", ...authHeaders() };
  const model = $("model").value;
  if (model && model !== defaultModel) headers[MODEL_HEADER] = model;
  const started = performance.now();
  let resp;
  try {
    resp = await fetch("v1/upscale", { method: "POST", body: file, headers });
  } catch (err) {
    return showError(`The server could not be reached: ${err.message}`);
  }
  if (resp.status === 401) {
    setStatus("");
    return askForToken("The token was refused (or none was given): enter the API token, then pick the image again.");
  }
  if (!resp.ok) return showError(await errorMessage(resp));
  const output = await resp.blob();
  const seconds = (performance.now() - started) / 1000;
  await showResult(file, output, resp.headers, seconds);
}

async function showResult(file, output, headers, seconds) {
  releaseImages();
  const before = $("before");
  const after = $("after");
  before.src = objectUrl(file);
  after.src = objectUrl(output);
  try {
    await Promise.all([before.decode(), after.decode()]);
  } catch (_) {
    return showError("The browser cannot display this image (the server answered, but the image does not decode here).");
  }
  const stem = file.name.replace(/\.[^.]*$/, "") || "image";
  const download = $("download");
  download.href = after.src;
  download.download = `${stem}_x4.${EXTENSIONS[output.type] || "png"}`;
  $("info-model").textContent = `${headers.get("X-Model-Name")} version ${headers.get("X-Model-Version")}`;
  $("info-input").textContent = headers.get("X-Input-Size");
  $("info-output").textContent = headers.get("X-Output-Size");
  $("info-time").textContent = `${seconds.toFixed(2)} s (upload, upscaling and download)`;
  $("result").hidden = false;
  fitZoom();
  setStatus(`Done: ${file.name}`);
}

function applyZoom() {
  const after = $("after");
  const zoom = Number($("zoom").value);
  // Both images are drawn at the output's natural size times the zoom: the same on-screen size.
  $("stage").style.width = `${Math.round(after.naturalWidth * zoom)}px`;
  $("stage").style.height = `${Math.round(after.naturalHeight * zoom)}px`;
  $("zoom-value").textContent = `${Math.round(zoom * 100)}%`;
}

function fitZoom() {
  const width = $("after").naturalWidth;
  const room = $("stage").parentElement.clientWidth || width;
  const steps = Math.floor(Math.min(1, room / width) * 8) / 8; // the slider's steps are 1/8
  $("zoom").value = String(Math.max(0.125, steps));
  applyZoom();
}

function applySplit() {
  const percent = Number($("split").value);
  $("after").style.clipPath = `inset(0 0 0 ${percent}%)`; // the output on the right of the divider
  $("divider").style.left = `${percent}%`;
}

function pickFirst(files) {
  if (files && files.length) upscale(files[0]);
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => pickFirst(event.target.files));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pickFirst(event.dataTransfer.files);
  });
  // A file dropped next to the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("zoom").addEventListener("input", applyZoom);
  $("split").addEventListener("input", applySplit);
  $("auth").addEventListener("submit", saveToken);
  applySplit();
  loadModels();
}

document.addEventListener("DOMContentLoaded", wire);
