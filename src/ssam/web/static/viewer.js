// Result view: 2D images as an overlay drawn on a canvas (fill + outlines); volumes in the
// volume viewer (volume.js, NiiVue) where it is built, else slice by slice on the canvas;
// legend, details and download links. Every function takes the page's ``state``.

import { $, el, errorMessage, formatNumber, hexToRgb } from "./dom.js";
import { state } from "./state.js";
import { hideVolume, redrawVolume, restyleLabels, showVolume, volumeViewerAvailable }
  from "./volume.js";

const DOWNLOADS = ["download-labels", "download-overlay", "download-report", "download-key",
  "download-seg"];

// ----- showing a result -----------------------------------------------------------------

export async function showResult(result) {
  state.result = result;
  state.slices.clear();
  state.hidden.clear();
  const volume = result.slices > 1;
  $("slice-control").hidden = !volume;
  $("slice").max = String(result.slices - 1);
  $("slice").value = String(result.best_slice);
  $("preview").hidden = true;
  $("placeholder").hidden = true;
  renderLegend(result);
  renderDetails(result);
  renderWarnings(result.warnings);
  setVolumeMode(result.kind === "3d" && volumeViewerAvailable());
  let note = result.rotated && !state.volume
    ? "NIfTI slices are shown rotated 90° counter-clockwise" : "";
  if (result.kind === "3d" && !state.volume) {
    note = "One plane only: the volume viewer is not built (scripts/build-web.sh)";
  }
  $("viewer-note").textContent = note;
  $("viewer-note").hidden = !note;
  if (state.volume) {
    $("slice-control").hidden = true;
    $("canvas").hidden = true;
    state.slice = result.best_slice;
    state.onSliceChange = updateDownloads;
    try {
      await showVolume(result);
      updateDownloads();
      $("viewer").dataset.state = "ready";
      return;
    } catch (error) {
      // No WebGL2, or the library failed: the slices on the canvas still show the result.
      setVolumeMode(false);
      $("slice-control").hidden = result.slices <= 1;
      $("viewer-note").textContent = `One plane only: the volume viewer failed (${error.message})`;
      $("viewer-note").hidden = false;
    }
  }
  await showSlice(result.best_slice);
}

// Volumes in the volume viewer (on) or on the canvas (off): its tools and read-out follow.
function setVolumeMode(on) {
  state.volume = on;
  $("volume-tools").hidden = !on;
  $("readout-bar").hidden = !on;
  if (!on) {
    state.onSliceChange = null;
    hideVolume();
  }
}

// Forget the shown result (a new file was chosen, or a run failed): nothing of it stays on
// screen or in the download links.
export function clearResult() {
  state.result = null;
  state.jobId = null;
  state.slices.clear();
  state.hidden.clear();
  state.afterDraw = null;
  setVolumeMode(false);
  $("canvas").hidden = true;
  $("viewer").dataset.state = "empty";
  $("placeholder").hidden = false;
  $("slice-control").hidden = true;
  $("viewer-note").hidden = true;
  $("refine-controls").hidden = true;
  const empty = el("tr", "empty");
  const cell = el("td", "", "No labels yet");
  cell.colSpan = 4;
  empty.append(cell);
  $("legend").tBodies[0].replaceChildren(empty);
  $("warnings").replaceChildren();
  $("details").replaceChildren(el("dt", "", "Status"), el("dd", "", "—"));
  for (const id of DOWNLOADS) {
    const link = $(id);
    link.removeAttribute("href");
    link.removeAttribute("download");
    link.setAttribute("aria-disabled", "true");
  }
  $("download-seg").hidden = true;
}

async function fetchSlice(index) {
  if (state.slices.has(index)) return state.slices.get(index);
  const base = `/v1/jobs/${state.jobId}/slices/${index}`;
  const [imageResponse, labelResponse] = await Promise.all([
    fetch(`${base}/image.png`), fetch(`${base}/labels`)]);
  if (!imageResponse.ok) throw new Error(await errorMessage(imageResponse));
  if (!labelResponse.ok) throw new Error(await errorMessage(labelResponse));
  const image = await createImageBitmap(await imageResponse.blob());
  const labels = new Uint8Array(await labelResponse.arrayBuffer());
  const entry = { image, labels, w: image.width, h: image.height };
  state.slices.set(index, entry);
  return entry;
}

export async function showSlice(index) {
  state.slice = index;
  $("slice-value").textContent = `${index + 1} / ${state.result.slices}`;
  updateDownloads();
  const entry = await fetchSlice(index);
  if (state.slice === index) drawOverlay(entry);
}

function drawOverlay(entry) {
  const canvas = $("canvas");
  canvas.width = entry.w;
  canvas.height = entry.h;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(entry.image, 0, 0);
  const pixels = context.getImageData(0, 0, entry.w, entry.h);
  const alpha = Number($("opacity").value) / 100;
  const outline = $("outline").checked;
  const colours = [null, ...state.result.colours.map(hexToRgb)];
  const { labels, w, h } = entry;
  const data = pixels.data;
  for (let i = 0; i < labels.length; i++) {
    const value = labels[i];
    if (value === 0 || state.hidden.has(value)) continue;
    const colour = colours[value];
    const x = i % w;
    const edge = outline && (x === 0 || x === w - 1 || i < w || i >= w * (h - 1) ||
      labels[i - 1] !== value || labels[i + 1] !== value ||
      labels[i - w] !== value || labels[i + w] !== value);
    const mix = edge ? 1 : alpha;
    for (let c = 0; c < 3; c++) {
      data[4 * i + c] = Math.round((1 - mix) * data[4 * i + c] + mix * colour[c]);
    }
  }
  context.putImageData(pixels, 0, 0);
  if (state.afterDraw) state.afterDraw(context);
  canvas.hidden = false;
  $("viewer").dataset.state = "ready";
}

export function redraw() {
  if (state.volume) {
    restyleLabels();
    redrawVolume();
    return;
  }
  const entry = state.result && state.slices.get(state.slice);
  if (entry) drawOverlay(entry);
}

function renderLegend(result) {
  const volume = result.kind === "3d";
  $("count-header").textContent = volume ? "Voxels" : "Pixels";
  $("size-header").textContent = volume ? "Volume (mL)" : "Area (mm²)";
  const rows = result.labels.map((name, i) => {
    const size = result.sizes[name];
    const row = el("tr", "legend-row");
    row.dataset.label = name;
    const swatch = el("span", "swatch");
    swatch.style.background = result.colours[i];
    const swatchCell = el("td");
    swatchCell.append(swatch);
    row.append(swatchCell, el("td", "label-name", name),
      el("td", "num", formatNumber(volume ? size.voxels : size.pixels, 0)),
      el("td", "num", formatNumber(volume ? size.volume_ml : size.area_mm2, 2)));
    row.addEventListener("click", () => {
      const value = i + 1;
      if (state.hidden.has(value)) state.hidden.delete(value);
      else state.hidden.add(value);
      row.classList.toggle("off", state.hidden.has(value));
      redraw();
    });
    return row;
  });
  $("legend").tBodies[0].replaceChildren(...rows);
}

function renderWarnings(warnings) {
  $("warnings").replaceChildren(...warnings.map((text) => el("li", "", text)));
}

function renderDetails(result) {
  const timings = result.timings_ms;
  const rows = [
    ["Format", result.format.toUpperCase()],
    ["Shape", result.shape.join(" × ")],
    ["Spacing", result.spacing_mm ? result.spacing_mm.map((v) => v.toFixed(3)).join(" × ") + " mm"
      : "unknown"],
    ["Slices", String(result.slices)],
    ["Encoder", `${result.cache.encoded} run, ${result.cache.hits} cached`],
    ["Read", `${timings.read.toFixed(0)} ms`],
    ["Encode", `${timings.encode.toFixed(0)} ms`],
    ["Decode", `${timings.decode.toFixed(0)} ms`],
  ];
  const nodes = rows.flatMap(([key, value]) => [el("dt", "", key), el("dd", "", value)]);
  $("details").replaceChildren(...nodes);
}

function setLink(id, href, filename) {
  const link = $(id);
  link.href = href;
  link.download = filename;
  link.setAttribute("aria-disabled", "false");
}

export function updateDownloads() {
  if (!state.result) return;
  const base = `/v1/jobs/${state.jobId}`;
  // Only 2D PNG/JPEG uploads give a PNG; DICOM and volumes keep their geometry in NIfTI.
  const raster = state.result.kind === "2d" && ["png", "jpeg"].includes(state.result.format);
  const suffix = raster ? ".png" : ".nii.gz";
  const opacity = (Number($("opacity").value) / 100).toFixed(2);
  setLink("download-labels", `${base}/label_map`, `label_map${suffix}`);
  const overlayName = state.result.slices > 1 ? `overlay_slice${state.slice}.png` : "overlay.png";
  setLink("download-overlay", `${base}/overlay.png?slice=${state.slice}&opacity=${opacity}`,
    overlayName);
  setLink("download-report", `${base}/report.json`, "report.json");
  setLink("download-key", `${base}/labels.json`, "label_map.labels.json");
  const dicom = state.result.format === "dicom";
  $("download-seg").hidden = !dicom;
  if (dicom) setLink("download-seg", `${base}/dicom-seg`, "label_map.seg.dcm");
}
