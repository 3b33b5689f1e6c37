"""Predict cases from disk and write their outputs (the library behind ``ssam predict``).

Per case ``ID`` (the file name without its suffix, or the DICOM series folder's name), in
the output folder:

* ``ID.png`` (2D PNG/JPEG/TIFF/BMP) or ``ID.nii.gz`` (NIfTI, DICOM series and single DICOM
  files, with the source's affine, header and shape): the label map, values 1..L in the order
  of the labels, 0 background; one label per pixel, the most probable among those >= 0.5
  (``LABEL_MAP_RULE``), so overlaps show one label. NIfTI label maps name the labels in their
  header (intent "label", ``descrip``);
* ``ID.labels.json``: what each value means, ``{"labels": [{"value": 1, "name": "liver",
  "color": [r, g, b]}, ...], "background": 0}``, colours as in the overlay's legend;
* ``ID_overlay.png``: the image with the label map on top (volumes: the slices with most
  foreground, tiled) and a legend;
* ``ID_prob_LABEL.png`` (probability x 255, 8-bit) or ``ID_prob_LABEL.nii.gz`` (float32),
  with ``save_probabilities``;
* ``ID_mask_LABEL.png`` or ``ID_mask_LABEL.nii.gz`` (same writer and geometry as the label
  map, values 0/1): each label's own mask (probability >= 0.5), overlaps kept, with
  ``save_masks``;
* ``ID.json``, written last: each label's pixel count and area in mm^2 (2D), or voxel count
  and volume in mL (volumes), counted on the label's own mask (not the label map), so the
  same whatever other labels are asked for; area/volume are null where the source states no
  spacing. Also the label map's rule and, with ``save_masks``, the mask file of each label;
* ``ID.seg.dcm``, with ``dicom_seg`` and DICOM inputs only: the label map as a DICOM-SEG
  referencing the source instances (`ssam.inference.dicom_seg`); other inputs get a warning.

Every file is written atomically (a hidden temporary renamed once complete), and ``ID.json``
is removed before a case is (re)done and written after all its other files: a case whose
outputs all exist is complete, and is skipped unless ``overwrite``. A kill leaves complete
files or none, and the case to be redone; its hidden temporaries go when it is. A case that
fails (unreadable or unsupported input, bad geometry) is recorded with its reason and the
others go on.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ssam.atomic import atomic_path, is_temporary_of, write_bytes_atomic
from ssam.data.io import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    file_suffix,
    read_image,
    write_label_map,
)
from ssam.data.properties import ImageProperties
from ssam.data.transforms import scale_intensity
from ssam.errors import ConfigError, SSAMError
from ssam.inference.inputs import InputCase
from ssam.inference.label_maps import LABEL_MAP_RULE
from ssam.inference.overlay import (
    add_legend,
    blend_overlay,
    label_colours,
    render_volume_overlay,
    save_png,
)
from ssam.inference.predictor import Segmentation, SSAMPredictor

# Per-case failures that are the input's fault (or its size); anything else is a bug and stops.
CASE_ERRORS = (SSAMError, ValueError, OSError, RuntimeError, MemoryError)


@dataclass(frozen=True)
class PredictOptions:
    """What ``predict_cases`` writes, and how it slices volumes."""

    output_dir: Path
    labels: tuple[str, ...] | None = None
    axis: int = -1
    save_probabilities: bool = False
    save_masks: bool = False
    overlay: bool = True
    overlay_slices: int = 4
    overwrite: bool = False
    dicom_seg: bool = False


@dataclass(frozen=True)
class CaseOutcome:
    """One case's result: ``done``, ``skipped`` (outputs existed) or ``failed`` (reason);
    ``process``: the index of the process that handled it, when several shared the cases."""

    case_id: str
    source: str
    status: Literal["done", "skipped", "failed"]
    reason: str = ""
    outputs: tuple[Path, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())
    process: int = 0


def safe_name(label: str) -> str:
    """A label name usable in a file name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_") or "label"


def check_file_names(labels: Sequence[str]) -> None:
    """ConfigError when two labels would write the same per-label file (``safe_name``,
    compared without case, as case-insensitive file systems do): one would overwrite the
    other."""
    seen: dict[str, str] = {}
    for label in labels:
        key = safe_name(label).lower()
        if key in seen:
            raise ConfigError(
                f"labels {seen[key]!r} and {label!r} would write the same file "
                f"(*_{safe_name(label)}.*): rename one, or leave out --save-masks and "
                "--save-probabilities"
            )
        seen[key] = label


def writes_nifti(path: Path) -> bool:
    """NIfTI files, DICOM series folders and single DICOM files get NIfTI outputs (their
    geometry kept: spacing, position, orientation); PNG, JPEG, TIFF and BMP get PNG."""
    return path.is_dir() or file_suffix(path) in NIFTI_SUFFIXES + DICOM_SUFFIXES


def writes_dicom_seg(path: Path, options: PredictOptions) -> bool:
    """A DICOM-SEG is asked for and the input is DICOM (a series folder or a single file)."""
    return options.dicom_seg and (path.is_dir() or file_suffix(path) in DICOM_SUFFIXES)


def describe_labels(labels: Sequence[str]) -> dict:
    """The label map's key (``ID.labels.json``): value, name and overlay colour (RGB 0-255,
    ``label_colours``, as the legend shows it) of each label, and the background value."""
    colours = label_colours(len(labels))
    rows = [
        {"value": k, "name": name, "color": [int(c) for c in colours[k]]}
        for k, name in enumerate(labels, 1)
    ]
    return {"labels": rows, "background": 0}


def planned_outputs(case: InputCase, labels: Sequence[str], options: PredictOptions) -> list[Path]:
    """Every file the case will write: the label map first, the JSON (written last) at the
    end, its labels file and DICOM-SEG (if any) just before it."""
    out, stem = options.output_dir, case.case_id
    suffix = ".nii.gz" if writes_nifti(case.path) else ".png"
    paths = [out / f"{stem}{suffix}"]
    if options.save_probabilities:
        paths += [out / f"{stem}_prob_{safe_name(n)}{suffix}" for n in labels]
    if options.save_masks:
        paths += [out / f"{stem}_mask_{safe_name(n)}{suffix}" for n in labels]
    if options.overlay:
        paths.append(out / f"{stem}_overlay.png")
    paths.append(out / f"{stem}.labels.json")
    if writes_dicom_seg(case.path, options):
        paths.append(out / f"{stem}.seg.dcm")
    return [*paths, out / f"{stem}.json"]


def write_probability_volume(
    probabilities: np.ndarray, properties: ImageProperties, path: Path
) -> None:
    """(I, J, K) float32 probabilities as NIfTI with the source's affine (and header)."""
    source = properties.header
    header = source.copy() if isinstance(source, nib.Nifti1Header) else nib.Nifti1Header()
    image_type = nib.Nifti2Image if isinstance(source, nib.Nifti2Header) else nib.Nifti1Image
    header.set_data_dtype(np.float32)
    header.set_slope_inter(None, None)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    image = image_type(probabilities.astype(np.float32), properties.affine, header=header)
    if not isinstance(source, nib.Nifti1Header):
        image.set_qform(properties.affine, code=1)
        image.set_sform(properties.affine, code=1)
    with atomic_path(path, file_suffix(path)) as tmp:
        nib.save(image, tmp)


def render_case_overlay(
    image: np.ndarray, result: Segmentation, count: int
) -> tuple[np.ndarray, list[int]]:
    """Overlay picture of a case (display intensities as the model saw them)."""
    display = scale_intensity(image, result.intensity, result.value_range)
    n_labels = len(result.labels)
    if not result.is_volume:
        picture = blend_overlay(display[..., 0], result.label_map, n_labels)
        return add_legend(picture, result.labels), []
    nifti = file_suffix(result.properties.path) in NIFTI_SUFFIXES
    picture, shown = render_volume_overlay(
        display, result.label_map, n_labels, result.slice_axis, count, rotate=nifti
    )
    note = f"slices {shown} along axis {result.slice_axis}"
    return add_legend(picture, result.labels, note), shown


def write_masks(result: Segmentation, paths: Sequence[Path]) -> None:
    """Each label's mask (L, *spatial) bool to its path, 0/1 with the label map's writer
    (PNG for 2D, NIfTI with the source's geometry)."""
    for mask, path in zip(result.masks, paths, strict=True):
        write_label_map(mask, result.properties, path)


def build_case_report(
    case: InputCase, result: Segmentation, shown: list[int], mask_files: Sequence[Path] = ()
) -> dict:
    """The JSON summary of one case: geometry, units, each label's size (from its own mask),
    the label map's rule, and the names of the ``mask_files`` written (one per label)."""
    props = result.properties
    if result.is_volume:
        unit = "mL" if result.spacing_known else "voxels"
    else:
        unit = "mm2" if result.spacing_known else "pixels"
    report = {
        "case": case.case_id,
        "source": str(case.path),
        "kind": "3d" if result.is_volume else "2d",
        "shape": list(result.label_map.shape),
        "spacing_mm": list(props.spacing) if result.spacing_known else None,
        "unit": unit,
        "labels": result.label_sizes(),
        "label_map_rule": LABEL_MAP_RULE,
        "intensity": result.intensity.preset,
        "warnings": list(result.warnings),
    }
    if mask_files:
        names = zip(result.labels, mask_files, strict=True)
        report["mask_files"] = {label: path.name for label, path in names}
    if result.is_volume:
        report["slice_axis"] = result.slice_axis
        report["overlay_slices"] = shown
    return report


def write_case_outputs(
    case: InputCase,
    image: np.ndarray,
    result: Segmentation,
    options: PredictOptions,
) -> list[Path]:
    """Write the planned outputs of a predicted case, each atomically; the JSON goes last.

    The case JSON is what marks a case done (``predict_cases`` skips a case whose planned
    files all exist), so a previous run's JSON is removed before anything else is written:
    a run killed half-way through the case (``--overwrite`` too) leaves it to be redone.
    """
    paths = planned_outputs(case, result.labels, options)
    paths[-1].unlink(missing_ok=True)
    write_label_map(result.label_map, result.properties, paths[0], result.labels)
    index = 1
    if options.save_probabilities:
        for k in range(len(result.labels)):
            target, probs = paths[index], result.probabilities[k]
            if file_suffix(target) in NIFTI_SUFFIXES:  # volumes, and 2D NIfTI files
                shape = result.properties.shape
                write_probability_volume(probs.reshape(shape), result.properties, target)
            else:
                save_png(np.rint(probs * 255).astype(np.uint8), target)
            index += 1
    mask_files: list[Path] = []
    if options.save_masks:
        mask_files = paths[index : index + len(result.labels)]
        write_masks(result, mask_files)
        index += len(mask_files)
    shown: list[int] = []
    if options.overlay:
        picture, shown = render_case_overlay(image, result, options.overlay_slices)
        save_png(picture, paths[index])
        index += 1
    key = json.dumps(describe_labels(result.labels), indent=2)
    write_bytes_atomic(paths[index], key.encode())
    report = build_case_report(case, result, shown, mask_files)
    if writes_dicom_seg(case.path, options):
        from ssam.inference.dicom_seg import write_dicom_seg  # highdicom: only when asked

        write_dicom_seg(result.label_map, result.labels, case.path, paths[index + 1])
        report["dicom_seg"] = paths[index + 1].name
    write_bytes_atomic(paths[-1], json.dumps(report, indent=2).encode())
    return paths


def remove_leftovers(planned: Sequence[Path], found: Sequence[Path]) -> None:
    """Delete the temporary files of ``planned`` outputs among ``found`` (the output folder's
    hidden files as the run began): what atomic writes of a killed run left behind. Only a
    case's own, so processes sharing the folder never touch each other's."""
    for path in found:
        if any(is_temporary_of(path.name, target) for target in planned):
            path.unlink(missing_ok=True)


def predict_case(
    predictor: SSAMPredictor,
    case: InputCase,
    options: PredictOptions,
    progress: Callable[[int], None] | None = None,
    on_slices: Callable[[int], None] | None = None,
) -> tuple[list[Path], tuple[str, ...]]:
    """Read, segment and write one case; returns the files written and the warnings about
    its intensities (``Segmentation.warnings``).

    ``on_slices`` is told the case's slice count before prediction starts, ``progress``
    the slices done after each batch.
    """
    image, properties = read_image(case.path)
    axis = 2 if properties.is_2d else options.axis
    if on_slices is not None:
        on_slices(image.shape[1 + (axis % 3)])
    result = predictor.segment_array(
        image, properties, options.labels, axis=axis, progress=progress
    )
    if options.dicom_seg and not writes_dicom_seg(case.path, options):
        note = f"{case.path}: not a DICOM input, so no {case.case_id}.seg.dcm (--dicom-seg)"
        result = replace(result, warnings=(*result.warnings, note))
    return write_case_outputs(case, image, result, options), result.warnings


def _run_case(
    predictor: SSAMPredictor, case: InputCase, options: PredictOptions, show: bool
) -> CaseOutcome:
    bars: list[tqdm] = []  # a slice bar for volumes only

    def start(n_slices: int) -> None:
        if show and n_slices > 1:
            bar = tqdm(total=n_slices, desc=case.case_id, unit="slice", leave=False, disable=None)
            bars.append(bar)  # disable=None: shown on a terminal only, never in a log file

    def advance(done: int) -> None:
        for bar in bars:
            bar.update(done)

    try:
        written, warnings = predict_case(predictor, case, options, advance, start)
    except CASE_ERRORS as err:
        reason = str(err) if isinstance(err, SSAMError) else f"{type(err).__name__}: {err}"
        return CaseOutcome(case.case_id, str(case.path), "failed", reason)
    finally:
        for bar in bars:
            bar.close()
    for warning in warnings:  # loud and at once, not only in the summary
        tqdm.write(f"WARNING: {warning}", file=sys.stderr)
    return CaseOutcome(
        case.case_id, str(case.path), "done", outputs=tuple(written), warnings=warnings
    )


def predict_cases(
    predictor: SSAMPredictor,
    cases: Sequence[InputCase],
    options: PredictOptions,
    show_progress: bool = True,
) -> list[CaseOutcome]:
    """Predict every case in order; a failing case is recorded and the rest go on.

    The label list is resolved once (an empty or bad list fails before any case).
    """
    labels = predictor.resolve_labels(options.labels)
    if options.save_masks or options.save_probabilities:
        check_file_names(labels)
    options = replace(options, labels=labels)
    predictor.label_tokens(labels)  # a label the model cannot encode fails here, once
    options.output_dir.mkdir(parents=True, exist_ok=True)
    hidden = [p for p in options.output_dir.iterdir() if p.name.startswith(".")]
    outcomes = []
    shown = None if show_progress else True  # None: on a terminal only (never in a log file)
    for case in tqdm(cases, desc="cases", unit="case", disable=shown):
        planned = planned_outputs(case, labels, options)
        if not options.overwrite and all(p.is_file() for p in planned):
            outcomes.append(
                CaseOutcome(
                    case.case_id, str(case.path), "skipped", "outputs exist", tuple(planned)
                )
            )
            continue
        remove_leftovers(planned, hidden)
        outcomes.append(_run_case(predictor, case, options, show_progress))
    return outcomes
