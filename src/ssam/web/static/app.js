// S-SAM web page: choose a file and labels, run a job, poll its progress, view the overlay.
// Talks only to this server's API (/v1/labels, /healthz, /v1/jobs...). No dependencies.

import { $, el, errorMessage, formatBytes, showError } from "./dom.js";
import { state } from "./state.js";
import { resetRefine, wireRefine } from "./refine.js";
import { clearResult, redraw, showResult, showSlice, updateDownloads } from "./viewer.js";

const POLL_MS = 250;


// ----- model information and server status ----------------------------------------------

async function loadInfo() {
  const response = await fetch("/v1/labels");
  if (!response.ok) throw new Error(await errorMessage(response));
  state.info = await response.json();
  const model = state.info.model || {};
  const parts = [];
  if (model.adapter) parts.push(["Adapter", model.adapter]);
  if (model.variant) parts.push(["Base", model.variant]);
  parts.push(["Input", `${model.image_size} px`]);
  const info = $("model-info");
  info.textContent = "";
  parts.forEach(([key, value], i) => {
    if (i) info.append(" · ");
    info.append(key + " ");
    info.append(el("b", "", String(value)));
  });
  $("max-upload").textContent = formatBytes(state.info.limits.max_upload_bytes);
  $("custom-label").maxLength = state.info.limits.max_label_chars;
  state.info.labels.forEach((name) => state.selected.add(name));
  renderChips();
}

async function checkHealth() {
  const box = $("server-status");
  try {
    const health = await (await fetch("/healthz")).json();
    const queue = health.queue;
    const busy = queue.running + queue.waiting >= queue.capacity;
    box.dataset.state = busy ? "busy" : "ok";
    $("server-status-text").textContent = busy
      ? "Busy" : `Ready · ${queue.running} running, ${queue.waiting} waiting`;
  } catch (_) {
    box.dataset.state = "down";
    $("server-status-text").textContent = "Server unreachable";
  }
}

// ----- inputs: file and labels ----------------------------------------------------------

// One file, or the files of a DICOM series (sent as repeated "file" fields).
function chooseFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  showError("");
  clearResult();  // the previous file's result must not pass for this one's
  const limit = state.info ? state.info.limits.max_upload_bytes : Infinity;
  const size = files.reduce((total, file) => total + file.size, 0);
  if (size > limit) {
    state.files = [];
    $("file-info").hidden = true;
    updateRunButton();
    showError(`Too large: ${formatBytes(size)} is over the ${formatBytes(limit)} limit.`);
    return;
  }
  state.files = files;
  $("file-name").textContent = files.length > 1 ? `${files.length} files` : files[0].name;
  $("file-size").textContent = formatBytes(size);
  $("file-info").hidden = false;
  showPreview(files[0]);
  updateRunButton();
}

function showPreview(file) {
  // PNG and JPEG files are shown as chosen until a result replaces them; other formats
  // (DICOM, NIfTI) cannot be drawn by the browser.
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  if (state.result) return;
  const preview = $("preview");
  preview.hidden = true;
  $("placeholder").hidden = false;
  const browserImage = /\.(png|jpe?g)$/i.test(file.name) || /^image\/(png|jpeg)$/.test(file.type);
  if (!browserImage) return;
  state.previewUrl = URL.createObjectURL(file);
  preview.src = state.previewUrl;
}

function previewLoaded(ok) {
  const preview = $("preview");
  preview.hidden = !ok || Boolean(state.result);
  $("placeholder").hidden = !preview.hidden || Boolean(state.result);
}

function makeChip(name, removable) {
  const chip = el("button", "chip");
  chip.type = "button";
  chip.dataset.label = name;
  chip.setAttribute("aria-pressed", String(state.selected.has(name)));
  chip.append(el("span", "tick", state.selected.has(name) ? "✓" : "+"), el("span", "", name));
  chip.addEventListener("click", () => {
    if (state.selected.has(name)) state.selected.delete(name);
    else state.selected.add(name);
    renderChips();
  });
  if (removable) {
    const remove = el("span", "remove", "×");
    remove.title = "Remove";
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      state.custom = state.custom.filter((n) => n !== name);
      state.selected.delete(name);
      renderChips();
    });
    chip.append(remove);
  }
  return chip;
}

function renderChips() {
  const trained = state.info ? state.info.labels : [];
  $("trained-labels").replaceChildren(...trained.map((n) => makeChip(n, false)));
  $("custom-labels").replaceChildren(...state.custom.map((n) => makeChip(n, true)));
  updateRunButton();
}

function addCustomLabel(event) {
  event.preventDefault();
  const name = $("custom-label").value.trim().replace(/\s+/g, " ");
  if (!name) return;
  const known = (state.info ? state.info.labels : []).concat(state.custom);
  if (!known.includes(name)) state.custom.push(name);
  state.selected.add(name);
  $("custom-label").value = "";
  renderChips();
}

function updateRunButton() {
  const ready = state.files.length > 0 && state.selected.size > 0 && !state.timer;
  $("segment-button").disabled = !ready;
  $("run-hint").hidden = Boolean(ready) || Boolean(state.timer);
}

// ----- intensity mapping: as trained, a preset, or a CT window ----------------------------

function appendIntensity(form) {
  const preset = $("intensity").value;
  if (!preset) return;
  form.append("intensity", preset);
  if (preset === "ct") {
    form.append("window_level", $("window-level").value);
    form.append("window_width", $("window-width").value);
  }
}

$("intensity").addEventListener("change", () => {
  $("ct-window").hidden = $("intensity").value !== "ct";
});
$("ct-preset").addEventListener("change", () => {
  const [level, width] = $("ct-preset").value.split(",");
  $("window-level").value = level;
  $("window-width").value = width;
});

// ----- running a job --------------------------------------------------------------------

function labelCountError() {
  const limit = state.info ? state.info.limits.max_labels : Infinity;
  const count = state.selected.size;
  return count > limit ? `Too many labels: ${count} chosen, at most ${limit} per run.` : "";
}

async function runSegmentation() {
  showError("");
  const tooMany = labelCountError();
  if (tooMany) {
    showError(tooMany);
    return;
  }
  const form = new FormData();
  for (const file of state.files) form.append("file", file);
  for (const name of state.selected) form.append("labels", name);
  appendIntensity(form);
  startProgress();
  try {
    const response = await fetch("/v1/jobs", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const job = await response.json();
    const status = await pollJob(job.id);
    state.jobId = job.id; // only now: until then the links and refine act on the shown job
    resetRefine(status.result);
    await showResult(status.result);
  } catch (error) {
    $("progress").hidden = true;
    clearResult();
    showError(error.message);
  } finally {
    stopProgress();
    checkHealth();
  }
}

function startProgress() {
  state.startedAt = performance.now();
  $("progress").hidden = false;
  setProgress("Uploading", null, "");
  state.timer = setInterval(() => {
    const seconds = (performance.now() - state.startedAt) / 1000;
    $("progress-elapsed").textContent = seconds.toFixed(1) + " s";
  }, 100);
  updateRunButton();
}

function stopProgress() {
  clearInterval(state.timer);
  state.timer = null;
  updateRunButton();
}

function setProgress(phase, fraction, detail) {
  $("progress-phase").textContent = phase;
  $("progress-detail").textContent = detail;
  const bar = $("progress-bar").parentElement;
  bar.classList.toggle("indeterminate", fraction === null);
  $("progress-bar").style.width = fraction === null ? "" : `${Math.round(fraction * 100)}%`;
}

async function pollJob(id) {
  for (;;) {
    const response = await fetch(`/v1/jobs/${id}`);
    if (!response.ok) throw new Error(await errorMessage(response));
    const status = await response.json();
    const { done, total } = status.progress;
    if (status.state === "done") {
      setProgress("Done", 1, `${total} slice${total === 1 ? "" : "s"} segmented`);
      return status;
    }
    if (status.state === "failed" || status.state === "cancelled") {
      throw new Error(status.error || `The job ${status.state}.`);
    }
    if (status.state === "queued") {
      setProgress("Waiting in queue", null, `position ${status.queue_position + 1}`);
    } else if (status.phase === "segmenting" && total > 0) {
      setProgress("Running image encoder", done / total, `slice ${done} of ${total}`);
    } else {
      setProgress(status.phase === "reading" ? "Reading file" : "Working", null, "");
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// ----- wiring ---------------------------------------------------------------------------

function wireDropzone() {
  const zone = $("dropzone");
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => {
    zone.classList.remove("dragging");
  }));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    chooseFiles(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => chooseFiles(event.target.files));
  $("preview").addEventListener("load", () => previewLoaded(true));
  $("preview").addEventListener("error", () => previewLoaded(false));
}

function wireControls() {
  $("custom-label-form").addEventListener("submit", addCustomLabel);
  $("segment-button").addEventListener("click", runSegmentation);
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    redraw();
    updateDownloads();
  });
  $("outline").addEventListener("change", redraw);
  wireRefine();
  $("slice").addEventListener("input", () => {
    showSlice(Number($("slice").value)).catch((error) => showError(error.message));
  });
}

async function main() {
  wireDropzone();
  wireControls();
  checkHealth();
  setInterval(checkHealth, 5000);
  try {
    await loadInfo();
  } catch (error) {
    showError(`Cannot load the model information: ${error.message}`);
  }
}

document.addEventListener("DOMContentLoaded", main);
