// Click-to-refine: with "Refine" on, a click on the shown slice adds a positive point for the
// chosen label (shift-click: a negative one); the server re-runs only the mask decoder on that
// slice (POST /v1/refine) and the slice's labels are redrawn. Undo takes back the label's last
// edit (POST /v1/refine/undo). Points travel in the slice's own pixels (x: column j, y: row i
// of label_map[:, :, k]): on the 2D canvas NIfTI slices are shown rotated 90°
// counter-clockwise, so clicks there are turned back first; the volume viewer (volume.js)
// finds the voxel from the click's world position and the affine.

import { $, el, errorMessage, formatNumber, showError } from "./dom.js";
import { state } from "./state.js";
import { redraw } from "./viewer.js";
import { patchLabelSlice, redrawVolume, view } from "./volume.js";

const points = new Map(); // "slice:label" -> [[x, y, 1|0], ...], slice pixels
let busy = false;

const key = (slice, label) => `${slice}:${label}`;

export function resetRefine(result) {
  points.clear();
  const options = result.labels.map((name) => el("option", "", name));
  $("refine-label").replaceChildren(...options);
  $("refine-controls").hidden = false;
  $("refine-undo").disabled = true;
  state.afterDraw = drawMarkers;
  view.marks = (slice, label) => points.get(key(slice, label)) || [];
  view.onRefineClick = addPoint;
}

// A click's canvas pixel (the canvas is letterboxed by object-fit: contain), or null.
function canvasPixel(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const scale = Math.min(rect.width / canvas.width, rect.height / canvas.height);
  const left = rect.left + (rect.width - canvas.width * scale) / 2;
  const top = rect.top + (rect.height - canvas.height * scale) / 2;
  const col = Math.floor((event.clientX - left) / scale);
  const row = Math.floor((event.clientY - top) / scale);
  if (col < 0 || row < 0 || col >= canvas.width || row >= canvas.height) return null;
  return [col, row];
}

// Display (col, row) <-> slice (x, y): display = rot90(slice), so display[r][c] is
// slice[c][W - 1 - r] with W the slice width (the display height).
function toSlice([col, row]) {
  return state.result.rotated ? [$("canvas").height - 1 - row, col] : [col, row];
}

function toDisplay([x, y]) {
  return state.result.rotated ? [y, $("canvas").height - 1 - x] : [x, y];
}

function drawMarkers(context) {
  const label = $("refine-label").value;
  for (const [x, y, positive] of points.get(key(state.slice, label)) || []) {
    const [col, row] = toDisplay([x, y]);
    context.beginPath();
    context.arc(col + 0.5, row + 0.5, Math.max(2, context.canvas.width / 120), 0, 2 * Math.PI);
    context.fillStyle = positive ? "#22c55e" : "#ef4444";
    context.strokeStyle = "#ffffff";
    context.fill();
    context.stroke();
  }
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ job_id: state.jobId, ...body }),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// The server changed slice `index`: fetch its label picture again, show sizes, redraw.
async function applyAnswer(answer) {
  points.set(key(answer.slice, answer.label), answer.points);
  const entry = state.slices.get(answer.slice);
  if (state.volume) {
    patchLabelSlice(answer.slice, answer.label_map); // uploads the labels once
  } else if (entry) {
    const response = await fetch(`/v1/jobs/${state.jobId}/slices/${answer.slice}/labels`);
    if (!response.ok) throw new Error(await errorMessage(response));
    entry.labels = new Uint8Array(await response.arrayBuffer());
  }
  state.result.sizes[answer.label] = answer.size;
  const row = document.querySelector(`#legend tr[data-label="${CSS.escape(answer.label)}"]`);
  if (row) {
    const volume = state.result.kind === "3d";
    const cells = row.querySelectorAll("td.num");
    cells[0].textContent = formatNumber(volume ? answer.size.voxels : answer.size.pixels, 0);
    cells[1].textContent = formatNumber(volume ? answer.size.volume_ml : answer.size.area_mm2, 2);
  }
  $("refine-undo").disabled = answer.undo_depth === 0;
  $("refine-status").textContent = `slice ${answer.slice + 1}: ${answer.points.length} point(s), ` +
    `${answer.timings_ms.total.toFixed(0)} ms`;
  if (state.volume) redrawVolume(); // the marks
  else if (answer.slice === state.slice) redraw();
}

// One refine or undo call; an answer for a job no longer shown (another file was run
// meanwhile) is dropped.
async function run(action) {
  if (busy || !state.result) return;
  busy = true;
  showError("");
  const jobId = state.jobId;
  try {
    const answer = await action();
    if (state.jobId === jobId && state.result) await applyAnswer(answer);
  } catch (error) {
    showError(error.message);
  } finally {
    busy = false;
  }
}

// One more point for the chosen label on slice ``slice`` ((x, y): slice pixels).
function addPoint(slice, [x, y], positive) {
  const label = $("refine-label").value;
  const known = points.get(key(slice, label)) || [];
  const next = [...known, [x, y, positive ? 1 : 0]];
  run(() => post("/v1/refine", { slice, label, points: next }));
}

function clickCanvas(event) {
  if (!$("refine-mode").checked || !state.result || state.volume) return;
  const pixel = canvasPixel(event);
  if (pixel) addPoint(state.slice, toSlice(pixel), !event.shiftKey);
}

export function wireRefine() {
  $("canvas").addEventListener("click", clickCanvas);
  $("refine-mode").addEventListener("change", () => {
    $("viewer").classList.toggle("refining", $("refine-mode").checked);
  });
  // Only the marks change: the volume viewer redraws without re-uploading its textures.
  $("refine-label").addEventListener("change", () => (state.volume ? redrawVolume() : redraw()));
  $("refine-undo").addEventListener("click", () => {
    run(() => post("/v1/refine/undo", { label: $("refine-label").value }));
  });
}
