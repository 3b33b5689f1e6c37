// The page's state, one object shared by app.js (inputs, jobs) and viewer.js (results).

export const state = {
  info: null,          // GET /v1/labels
  files: [],           // the chosen File(s): one, or a DICOM series' slices
  selected: new Set(), // label names asked for, in the order chosen
  custom: [],          // names typed in
  jobId: null,
  result: null,        // the job's summary
  slice: 0,
  slices: new Map(),   // slice index -> {image: ImageBitmap, labels: Uint8Array, w, h}
  hidden: new Set(),   // label values switched off in the legend
  startedAt: 0,
  timer: null,
  previewUrl: null,
  afterDraw: null,     // (context) => void, drawn over each overlay (refine's points)
  volume: false,       // the result shows in the volume viewer (volume.js), not the canvas
  onSliceChange: null, // () => void, after the volume viewer's slice changed
};
