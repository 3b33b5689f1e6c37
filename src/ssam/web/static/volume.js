// The volume viewer. NiiVue (npm @niivue/niivue, built into the package by
// scripts/build-web.sh and served from /static/vendor: nothing comes from the network) shows
// the job's image (GET /v1/jobs/{id}/image.nii.gz: the stored values, e.g. HU) under its label
// map (label_map, the same affine) in axial, coronal, sagittal or all three planes. NiiVue
// places both in world space from the NIfTI affine (RAS+), so the orientation follows the
// file, not the array order: radiological convention by default (the patient's right on the
// screen's left, as CT and MRI are read), neurological on request; letters at the tile edges
// name each side.
//
// Mouse: click moves the crosshair (its voxel, world position, value and label are read out),
// the wheel steps through the slices of the plane under the pointer, right-drag sets the
// window (level and width), middle-drag pans, Ctrl+wheel zooms. Keys (viewer focused):
// Up/Down or PageUp/PageDown step the active plane (Shift: 10 slices). Refine clicks act on
// the plane the model segmented, the volume's third voxel axis (``view.modelPlane``).

import { apply4, invert4, planeOfSliceAxis } from "./affine.js";
import { $, hexToRgb } from "./dom.js";
import { state } from "./state.js";

export const WINDOW_PRESETS = {
  "soft tissue": [40, 400],
  lung: [-600, 1500],
  bone: [400, 1800],
  brain: [40, 80],
};
const PLANES = ["axial", "coronal", "sagittal"];
const VIEWS = { multiplanar: 3, axial: 0, coronal: 1, sagittal: 2 };
const ZOOM_STEP = 1.25;

export const view = {
  nv: null,
  lib: null,
  toVoxel: null,     // world mm -> this volume's own voxel (i, j, k), floats
  toWorld: null,     // voxel (i, j, k) -> world mm
  dims: [1, 1, 1],   // I, J, K
  range: null,       // {full: [min, max], auto: [p1, p99]} of the image's values
  modelPlane: 0,     // NiiVue plane (0 axial, 1 coronal, 2 sagittal) of the model's slices
  activePlane: 0,    // the plane keys step through: the view's, or the last one clicked
  marks: null,       // (slice, label) => [[x, y, positive], ...]: refine points to draw
  onRefineClick: null, // (slice, [x, y], positive) => void
};

// ----- loading ---------------------------------------------------------------------------

export function volumeViewerAvailable() {
  return Boolean(state.info && state.info.viewer);
}

async function library() {
  if (!view.lib) view.lib = await import(state.info.viewer.url);
  return view.lib;
}

async function createViewer() {
  const lib = await library();
  const nv = new lib.Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [0.98, 0.8, 0.25, 0.6],
    isRadiologicalConvention: $("convention").value === "radiological",
    multiplanarShowRender: lib.SHOW_RENDER.NEVER,
    multiplanarLayout: lib.MULTIPLANAR_TYPE.GRID,
    multiplanarPadPixels: 12,
    isOrientationTextVisible: true,
    showAllOrientationMarkers: true,
    dragAndDropEnabled: false,
    isNearestInterpolation: true,
    logLevel: "warn",
    loadingText: "",
  });
  await nv.attachToCanvas($("gl"));
  const { crosshair, windowing, pan } = lib.DRAG_MODE;
  nv.setMouseEventConfig({
    leftButton: { primary: crosshair, withShift: crosshair, withCtrl: crosshair },
    rightButton: windowing,
    centerButton: pan,
  });
  nv.onLocationChange = readOut;
  nv.onMouseUp = () => syncWindow(); // a right-drag may have changed the window
  const draw = nv.drawScene.bind(nv);
  nv.drawScene = (...args) => {
    const value = draw(...args);
    drawMarks();
    return value;
  };
  view.nv = nv;
  wireVolumeControls();
  return nv;
}

// Show the job's image and label map; the page's 2D canvas steps aside.
export async function showVolume(result) {
  $("volume-viewer").hidden = false;
  const nv = view.nv || (await createViewer());
  const base = `/v1/jobs/${state.jobId}`;
  await nv.loadVolumes([
    { url: `${base}/image.nii.gz`, name: "image.nii.gz" },
    { url: `${base}/label_map`, name: "label_map.nii.gz" },
  ]);
  const image = nv.volumes[0];
  const affine = image.hdr.affine.map((row) => Array.from(row));
  view.toWorld = affine;
  view.toVoxel = invert4(affine);
  view.dims = [image.hdr.dims[1], image.hdr.dims[2], image.hdr.dims[3]];
  view.modelPlane = planeOfSliceAxis(image.permRAS);
  view.activePlane = view.modelPlane;
  $("volume-viewer").dataset.modelPlane = PLANES[view.modelPlane];
  $("model-plane").textContent = PLANES[view.modelPlane];
  styleLabels(result);
  view.range = intensityRange(image.img);
  // CT (air near -1000 HU) opens on the soft-tissue window, anything else on "auto".
  chooseWindow(view.range.full[0] < -500 ? "soft tissue" : "auto", false);
  setView($("view").value);
  nv.scene.pan2Dxyzmm = [0, 0, 0, 1]; // a new volume starts unzoomed
  // Start on the slice the server found most labelled, in the model's own plane.
  moveToSlice(result.best_slice);
  nv.updateGLVolume();
  $("volume-viewer").dataset.state = "ready";
}

export function hideVolume() {
  $("volume-viewer").hidden = true;
  $("volume-viewer").dataset.state = "empty";
  $("readout").textContent = "";
}

function labelColormap(result) {
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  result.labels.forEach((name, k) => {
    const [r, g, b] = hexToRgb(result.colours[k]);
    cm.R.push(r);
    cm.G.push(g);
    cm.B.push(b);
    cm.A.push(state.hidden.has(k + 1) ? 0 : 255);
    cm.I.push(k + 1);
    cm.labels.push(name);
  });
  return cm;
}

// Colours, hidden labels, opacity and outlines of the label volume (the caller uploads it).
function styleLabels(result) {
  const labels = view.nv.volumes[1];
  labels.setColormapLabel(labelColormap(result));
  labels.opacity = Number($("opacity").value) / 100;
  view.nv.opts.atlasOutline = $("outline").checked ? 1 : 0;
}

// Legend toggles, opacity and outlines changed: draw the labels again (one upload).
export function restyleLabels() {
  const nv = view.nv;
  if (!nv || nv.volumes.length < 2 || !state.result) return;
  styleLabels(state.result);
  nv.updateGLVolume();
}

// A refine answer: its slice of the label map (RLE, (I, J), C order) replaces the shown one.
export function patchLabelSlice(slice, rle) {
  const nv = view.nv;
  if (!nv || nv.volumes.length < 2) return;
  const labels = nv.volumes[1].img;
  const [I, J] = rle.size;
  if (I !== view.dims[0] || J !== view.dims[1] || slice >= view.dims[2]) {
    throw new Error(`refined slice ${slice} (${I} x ${J}) does not fit the shown volume`);
  }
  let flat = 0;
  rle.values.forEach((value, run) => {
    for (let n = 0; n < rle.lengths[run]; n++, flat++) {
      const i = Math.floor(flat / J);
      const j = flat % J;
      labels[i + j * I + slice * I * J] = value; // NIfTI order: i fastest
    }
  });
  nv.updateGLVolume();
}

// ----- window / level --------------------------------------------------------------------

// The image's full range and its 1st-99th percentiles of non-zero values (a sample of at
// most ~1M voxels): "full" and "auto" windows. NiiVue's own ranges look only at the
// volume's centre, which can miss what lies at its edges.
function intensityRange(values) {
  let low = Infinity;
  let high = -Infinity;
  for (let n = 0; n < values.length; n++) {
    const v = values[n];
    if (v < low) low = v;
    if (v > high) high = v;
  }
  const stride = Math.max(1, Math.floor(values.length / 1e6));
  const sample = [];
  for (let n = 0; n < values.length; n += stride) {
    if (values[n] !== 0 && Number.isFinite(values[n])) sample.push(values[n]);
  }
  const sorted = Float64Array.from(sample).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const robust = sorted.length ? [at(0.01), at(0.99)] : [low, high];
  return { full: [low, high], auto: robust[1] > robust[0] ? robust : [low, high] };
}

// [low, high] of a named window: a preset's level/width, or the image's "auto"/"full" range.
function windowRange(name) {
  if (!WINDOW_PRESETS[name]) return view.range[name];
  const [level, width] = WINDOW_PRESETS[name];
  return [level - width / 2, level + width / 2];
}

// Apply a named window; ``upload``: false while loading, where one upload follows anyway (a
// re-upload of a large volume takes seconds under software WebGL).
function chooseWindow(name, upload = true) {
  $("window-preset").value = name;
  setWindow(...windowRange(name), upload);
}

function setWindow(low, high, upload = true) {
  const image = view.nv.volumes[0];
  image.cal_min = low;
  image.cal_max = Math.max(high, low + 1e-6);
  if (upload) view.nv.updateGLVolume();
  showWindow();
}

// After NiiVue changed the window itself (right-drag): show it, and call it "custom" unless
// it is still the chosen preset's.
function syncWindow() {
  const image = view.nv && view.nv.volumes[0];
  const name = $("window-preset").value;
  if (!image || name === "custom") return showWindow();
  const [low, high] = windowRange(name);
  const tolerance = 1e-6 * Math.max(1, Math.abs(high - low));
  if (Math.abs(image.cal_min - low) > tolerance || Math.abs(image.cal_max - high) > tolerance) {
    $("window-preset").value = "custom";
  }
  showWindow();
}

// The inputs show the window in force.
function showWindow() {
  const image = view.nv && view.nv.volumes[0];
  if (!image) return;
  const width = image.cal_max - image.cal_min;
  $("wl-level").value = String(Math.round((image.cal_min + width / 2) * 100) / 100);
  $("wl-width").value = String(Math.round(width * 100) / 100);
}

function typedWindow() {
  const level = Number($("wl-level").value);
  const width = Number($("wl-width").value);
  if (!Number.isFinite(level) || !(width > 0)) return;
  $("window-preset").value = "custom";
  setWindow(level - width / 2, level + width / 2);
}

// ----- views, zoom, slices -----------------------------------------------------------------

function setView(name) {
  $("view").value = name;
  const type = VIEWS[name];
  if (type < 3) view.activePlane = type;
  view.nv.setSliceType(type);
}

function zoomBy(factor) {
  const pan = view.nv.scene.pan2Dxyzmm;
  const zoom = Math.min(16, Math.max(0.5, pan[3] * factor));
  view.nv.setPan2Dxyzmm([pan[0], pan[1], pan[2], zoom]);
}

// Step the active plane by ``delta`` slices (NiiVue moves in RAS voxel steps).
function step(delta) {
  const move = [[0, 0, delta], [0, delta, 0], [delta, 0, 0]][view.activePlane];
  view.nv.moveCrosshairInVox(...move);
}

// NiiVue's fractional position of a world point (mm, the affine's space: NiiVue's own screen
// "mm" is an axis-aligned one built from the voxel sizes, which differs for oblique volumes).
const worldToFrac = (world) => view.nv.mm2frac(world, 0, true);

// Put the crosshair on slice ``k`` of the model's plane, at the slice's central voxel.
function moveToSlice(k) {
  const [I, J] = view.dims;
  const world = apply4(view.toWorld, [Math.floor(I / 2), Math.floor(J / 2), k]);
  view.nv.scene.crosshairPos = worldToFrac(world);
  view.nv.createOnLocationChange();
  view.nv.drawScene();
}

export function voxelAt(world) {
  return apply4(view.toVoxel, world).map(Math.round);
}

function inside([i, j, k]) {
  return i >= 0 && j >= 0 && k >= 0 && i < view.dims[0] && j < view.dims[1] && k < view.dims[2];
}

// ----- crosshair read-out ----------------------------------------------------------------

function readOut(data) {
  if (Number.isInteger(data.axCorSag) && data.axCorSag < 3) view.activePlane = data.axCorSag;
  const world = Array.from(data.mm).slice(0, 3);
  const voxel = voxelAt(world);
  const [value, label] = data.values.map((v) => v.value);
  const names = state.result ? state.result.labels : [];
  const name = label >= 1 && label <= names.length ? names[Math.round(label) - 1] : "none";
  const valueText = Number.isFinite(value) ? String(Math.round(value * 1000) / 1000) : "—";
  $("readout").textContent = `voxel ${voxel.join(", ")} · ` +
    `${world.map((v) => v.toFixed(1)).join(", ")} mm (RAS) · value ${valueText} · label ${name}`;
  $("readout").dataset.voxel = voxel.join(",");
  $("readout").dataset.label = name;
  if (!inside(voxel) || !state.result) return;
  $("volume-slice").textContent = `${PLANES[view.modelPlane]} slice ${voxel[2] + 1} / ${view.dims[2]}`;
  if (voxel[2] !== state.slice) {
    state.slice = voxel[2];
    if (state.onSliceChange) state.onSliceChange();
  }
}

// ----- refine clicks and their marks -------------------------------------------------------

function canvasXY(event) {
  const canvas = $("gl");
  const rect = canvas.getBoundingClientRect();
  const dpr = canvas.width / rect.width;
  return [(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr];
}

// In refine mode a left click on the model's plane is a point (Shift: negative) and does
// not move the crosshair; clicks on the other planes navigate as usual.
function refineMouseDown(event) {
  if (!$("refine-mode").checked || event.button !== 0 || !view.onRefineClick) return;
  const [x, y] = canvasXY(event);
  const tile = view.nv.tileIndex(x, y);
  if (tile < 0) return;
  if (view.nv.screenSlices[tile].axCorSag !== view.modelPlane) {
    $("refine-status").textContent =
      `refine on the ${PLANES[view.modelPlane]} plane (the model's slices)`;
    return;
  }
  event.preventDefault();
  event.stopPropagation();
  const frac = view.nv.screenXY2TextureFrac(x, y, tile);
  if (frac[0] < 0) return;
  const world = Array.from(view.nv.frac2mm(frac, 0, true)).slice(0, 3);
  const [i, j, k] = voxelAt(world);
  if (!inside([i, j, k])) return;
  view.onRefineClick(k, [j, i], !event.shiftKey); // slice pixels: x = column j, y = row i
}

function drawMarks() {
  const marks = $("gl-marks");
  const canvas = $("gl");
  if (marks.width !== canvas.width || marks.height !== canvas.height) {
    marks.width = canvas.width;
    marks.height = canvas.height;
  }
  const context = marks.getContext("2d");
  context.clearRect(0, 0, marks.width, marks.height);
  if (!view.marks || !state.result) return;
  const points = view.marks(state.slice, $("refine-label").value);
  for (const [x, y, positive] of points) {
    const world = apply4(view.toWorld, [y, x, state.slice]);
    const found = view.nv.frac2canvasPosWithTile(worldToFrac(world), view.modelPlane);
    if (!found) continue;
    context.beginPath();
    context.arc(found.pos[0], found.pos[1], 5 * (marks.width / canvas.clientWidth), 0, 2 * Math.PI);
    context.fillStyle = positive ? "#22c55e" : "#ef4444";
    context.strokeStyle = "#ffffff";
    context.fill();
    context.stroke();
  }
}

export function redrawVolume() {
  if (view.nv) view.nv.drawScene();
}

// ----- wiring ----------------------------------------------------------------------------

function wireVolumeControls() {
  const box = $("volume-viewer");
  box.addEventListener("mousedown", refineMouseDown, { capture: true });
  box.addEventListener("wheel", (event) => {
    if (!event.ctrlKey) return; // plain wheel: NiiVue steps the slice under the pointer
    event.preventDefault();
    event.stopPropagation();
    zoomBy(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP);
  }, { capture: true, passive: false });
  box.addEventListener("keydown", (event) => {
    const steps = { ArrowUp: 1, PageUp: 1, ArrowDown: -1, PageDown: -1 }[event.key];
    if (!steps || !view.nv) return;
    event.preventDefault();
    step(steps * (event.shiftKey ? 10 : 1));
  });
  box.addEventListener("contextmenu", (event) => event.preventDefault());
  // NiiVue's double-click resets the window to its own range; the page's reset is "auto".
  box.addEventListener("dblclick", () => chooseWindow("auto"));
  $("view").addEventListener("change", () => setView($("view").value));
  $("window-preset").addEventListener("change", () => {
    if ($("window-preset").value !== "custom") chooseWindow($("window-preset").value);
  });
  $("wl-level").addEventListener("change", typedWindow);
  $("wl-width").addEventListener("change", typedWindow);
  $("convention").addEventListener("change", () => {
    view.nv.setRadiologicalConvention($("convention").value === "radiological");
  });
  $("zoom-in").addEventListener("click", () => zoomBy(ZOOM_STEP));
  $("zoom-out").addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
  $("zoom-reset").addEventListener("click", () => view.nv.setPan2Dxyzmm([0, 0, 0, 1]));
}
