"""What prediction reads: cases among files, folders and globs; geometry of plain arrays.

Adapters over the data layer (``ssam.data.io``): it reads one file or series; this module
decides which paths are cases and whether a source's spacing is a real size in mm (the data
layer gives 1.0 both for "1 mm" and for "unknown").
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

# The suffix tuples are imported by ssam.data.io from its private readers.
from ssam.data.io import DICOM_SUFFIXES, NIFTI_SUFFIXES, SUPPORTED_SUFFIXES, file_suffix
from ssam.data.properties import ImageProperties, pixel_affine

ARRAY_PATH = Path("<array>")
_GLOB_CHARS = set("*?[")
_DICOM_READ_ERRORS = (OSError, EOFError, ValueError, InvalidDicomError)


def array_properties(
    image: np.ndarray,
    spacing: Sequence[float] | None,
    kind: str,
    affine: np.ndarray | None = None,
) -> ImageProperties:
    """Properties of a (C, I, J, K) array given in memory.

    ``spacing``: 2 or 3 sizes in mm along (I, J[, K]); None: taken from ``affine`` (column
    norms) if given, else 1 (pixels). ``affine``: (4, 4) voxel -> mm, else diag(spacing).
    """
    if spacing is None and affine is not None:
        spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    values = tuple(float(v) for v in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
    if len(values) not in (2, 3) or min(values) <= 0:
        raise ValueError(f"spacing must be 2 or 3 positive sizes in mm, got {spacing}")
    full = (*values, 1.0)[:3] if len(values) == 2 else values
    matrix = pixel_affine(full) if affine is None else np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got {matrix.shape}")
    return ImageProperties(
        path=ARRAY_PATH,
        shape=tuple(int(s) for s in image.shape[1:]),
        spacing=full,
        affine=matrix,
        kind=kind,
        n_channels=int(image.shape[0]),
        dtype=str(image.dtype),
    )


def _first_dicom(path: Path) -> Path | None:
    if path.is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return files[0] if files else None


def spacing_is_known(properties: ImageProperties) -> bool:
    """True when the source states its pixel size: NIfTI always, DICOM with PixelSpacing
    (or ImagerPixelSpacing); PNG/JPEG/TIFF/BMP and arrays without spacing never."""
    path = Path(properties.path)
    suffix = file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return True
    if path == ARRAY_PATH or not (path.is_dir() or suffix in DICOM_SUFFIXES):
        return False
    first = _first_dicom(path)
    if first is None:
        return False
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True)
    except _DICOM_READ_ERRORS:
        return False
    return ds.get("PixelSpacing") is not None or ds.get("ImagerPixelSpacing") is not None


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its id (output file stem) and the file or series folder."""

    case_id: str
    path: Path


def case_id_for(path: Path) -> str:
    """File name without its image suffix (``.nii.gz`` counts as one); folder name."""
    if path.is_dir():
        return path.name
    suffix = file_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def dicom_series_counts(folder: Path) -> dict[str, int] | None:
    """Files per SeriesInstanceUID of a folder of at least two DICOM files (``.dcm``,
    ``.dicom`` or no suffix; unreadable ones skipped: reading the series then names them), or
    None for any other folder."""
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    ]
    if len(files) < 2 or any(file_suffix(p) not in (*DICOM_SUFFIXES, "") for p in files):
        return None
    counts: dict[str, int] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except _DICOM_READ_ERRORS:
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        counts[uid] = counts.get(uid, 0) + 1
    return counts or None


def is_dicom_series_folder(folder: Path) -> bool:
    """A DICOM folder read as one case: one series, or several series of which one has two
    or more files (a mixed folder: reading it fails, naming the series, never silently).
    A folder of separate 2D DICOM images (one series each) is not: each file is a case."""
    counts = dicom_series_counts(folder)
    return counts is not None and (len(counts) == 1 or max(counts.values()) > 1)


def _cases_in_folder(folder: Path, top: bool = True) -> list[Path]:
    """Supported image files directly in ``folder``, and of its subfolders those holding
    DICOM: a series (or a mixed folder, which then fails naming its series) as one case,
    separate DICOM images file by file. Other subfolders are not searched."""
    if is_dicom_series_folder(folder):
        return [folder]
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and file_suffix(path) in SUPPORTED_SUFFIXES:
            found.append(path)
        elif top and path.is_dir() and dicom_series_counts(path) is not None:
            found += _cases_in_folder(path, top=False)
    return found


def _expand(item: str | Path) -> tuple[list[Path], str | None]:
    """Paths named by one input (file, folder or glob), or a reason it names none."""
    path = Path(item).expanduser()
    if path.is_file():
        return [path], None
    if path.is_dir():
        found = _cases_in_folder(path)
        return found, None if found else "folder holds no supported images"
    if _GLOB_CHARS & set(str(item)):
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        paths = [p for m in matches for p in ([m] if m.is_file() else _cases_in_folder(m))]
        return paths, None if paths else "pattern matches no supported images"
    return [], "no such file or folder"


def discover_cases(inputs: Sequence[str | Path]) -> tuple[list[InputCase], list[tuple[str, str]]]:
    """Cases named by ``inputs`` (files, folders, globs), in order, without repeats.

    Returns (cases, problems): problems are (input or path, reason) for inputs that name
    nothing and for a second file whose case id (output name) is already taken.
    """
    cases: list[InputCase] = []
    problems: list[tuple[str, str]] = []
    seen_paths: set[Path] = set()
    seen_ids: dict[str, Path] = {}
    for item in inputs:
        paths, reason = _expand(item)
        if reason is not None:
            problems.append((str(item), reason))
        for path in paths:
            resolved = path.resolve()
            if resolved in seen_paths:
                continue
            seen_paths.add(resolved)
            case_id = case_id_for(path)
            if case_id in seen_ids:
                problems.append(
                    (str(path), f"case id {case_id!r} is taken by {seen_ids[case_id]}; rename one")
                )
                continue
            seen_ids[case_id] = path
            cases.append(InputCase(case_id, path))
    return cases, problems
