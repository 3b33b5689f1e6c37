"""The `Case` record, reading a case, and checking it before training."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ssam.data.intensity_check import check_values_usable
from ssam.data.io import binarize_mask, file_suffix, read_header, read_image, read_mask
from ssam.data.properties import ImageProperties
from ssam.errors import DataError

logger = logging.getLogger(__name__)

_LOSSY_SUFFIXES = (".jpg", ".jpeg")
_MAX_CHANNELS = 3


class BadCaseWarning(UserWarning):
    """A case was skipped because it is incomplete, corrupt or inconsistent."""


@dataclass(frozen=True)
class Case:
    """One training or test case.

    Attributes:
        case_id: file stem (folder layout) or nnU-Net case identifier.
        image_paths: one path per selected channel, in the chosen channel order.
        label_path: the mask or label map; None for test cases without labels.
        labels: label name -> value in the label file (background excluded); only the
            labels to train on. Folder layout: {label: 1} (after binarisation).
        dataset: dataset name (shared by all cases of one dataset).
        binary: folder layout: the mask is binary (0/255, 0/1) and is binarised on read.
        declared_values: every value dataset.json declares (background included); a mask
            value outside this set is an error.
    """

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    labels: dict[str, int] = field(hash=False)
    dataset: str
    binary: bool = False
    declared_values: frozenset[int] = frozenset({0, 1})


def report_bad_case(message: str, skip_bad: bool) -> None:
    """Raise DataError(message); with skip_bad, warn (warnings and logging) and return."""
    if not skip_bad:
        raise DataError(message)
    logger.warning("skipping bad case: %s", message)
    warnings.warn(f"skipping bad case: {message}", BadCaseWarning, stacklevel=3)


def read_case_image(case: Case) -> tuple[np.ndarray, ImageProperties]:
    """All selected channels of a case -> ((C, I, J, K) stored dtype, first file's properties)."""
    arrays, first = [], None
    for path in case.image_paths:
        array, props = read_image(path)
        if first is not None and props.shape != first.shape:
            raise DataError(f"{path}: shape {props.shape} differs from {first.path} {first.shape}")
        first = first or props
        arrays.append(array)
    for array, path in zip(arrays, case.image_paths, strict=True):
        for note in check_values_usable(array, str(path)):
            warnings.warn(note, stacklevel=2)  # once per file: the message names it
    if len(arrays) == 1:
        return arrays[0], first  # type: ignore[return-value]
    kinds = {a.dtype for a in arrays}
    if len(kinds) > 1:
        arrays = [a.astype(np.float32) for a in arrays]
    return np.concatenate(arrays, axis=0), first  # type: ignore[return-value]


def read_case_labels(case: Case) -> tuple[np.ndarray, ImageProperties]:
    """Label map of a case: (I, J, K) integer; binary folder masks become {0, 1}."""
    if case.label_path is None:
        raise DataError(f"case '{case.case_id}' of '{case.dataset}' has no label map")
    labels, props = read_mask(case.label_path)
    return (binarize_mask(labels) if case.binary else labels), props


def _is_volume_path(path: Path) -> bool:
    return path.is_dir() or file_suffix(path) in (".nii", ".nii.gz")


def _image_properties(path: Path) -> ImageProperties:
    # 2D files are decoded in full (cheap, and finds truncated files); volumes: header only.
    return read_header(path) if _is_volume_path(path) else read_image(path)[1]


def present_values(labels: np.ndarray) -> list[int]:
    """Sorted distinct values of a non-negative integer label map (bincount when small)."""
    if labels.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(labels.ravel())).tolist()
    return np.unique(labels).tolist()


def _check_values(labels: np.ndarray, case: Case) -> None:
    path = case.label_path
    values = present_values(labels)
    if case.binary:
        if len(values) > 2 and file_suffix(path) not in _LOSSY_SUFFIXES:  # type: ignore[arg-type]
            raise DataError(
                f"{path}: mask holds {len(values)} values {values[:6]}, expected a binary "
                "mask (0/255 or 0/1); use the nnunet layout for label maps"
            )
        return
    unknown = sorted(set(values) - case.declared_values)
    if unknown:
        raise DataError(
            f"{path}: label value(s) {unknown} not declared in dataset.json "
            f"(declared: {sorted(case.declared_values)})"
        )


def _check_geometry(image: ImageProperties, mask: ImageProperties) -> None:
    if mask.shape != image.shape:
        what = "size" if image.is_2d else "shape"
        size = (lambda s: s[:2]) if image.is_2d and mask.is_2d else (lambda s: s)
        raise DataError(
            f"{mask.path}: mask {what} {size(mask.shape)} differs from image "
            f"{image.path} {what} {size(image.shape)}"
        )
    if image.kind == "3d" and not np.allclose(image.affine, mask.affine, atol=1e-3, rtol=1e-4):
        raise DataError(f"{mask.path}: affine differs from image {image.path}")


def check_case(case: Case, check_values: bool = True) -> set[int] | None:
    """Raise DataError naming the file if a case cannot be used for training; returns the
    label values its mask holds (binary masks: {1} or nothing), None when not read.

    Checks: every file readable (2D decoded, volumes by header), channels of one shape and
    at most 3 in all, mask shape (and volume affine) equal to the image's, and, with
    ``check_values``, image values usable (``check_values_usable``: not all NaN, not
    constant; volumes are read in full for it) and mask values binary (folder) or declared in
    dataset.json (nnunet).
    """
    props = []
    for path in case.image_paths:
        if check_values:  # a blank image must fail here, not mid-epoch in the data loader
            array, properties = read_image(path)
            check_values_usable(array, str(path))
            props.append(properties)
        else:
            props.append(_image_properties(path))
    for other in props[1:]:
        if other.shape != props[0].shape:
            raise DataError(
                f"{other.path}: shape {other.shape} differs from {props[0].path} {props[0].shape}"
            )
    channels = sum(p.n_channels for p in props)
    if channels > _MAX_CHANNELS:
        raise DataError(
            f"{case.image_paths[0]}: case '{case.case_id}' has {channels} channels; SAM takes up to 3"
        )
    if case.label_path is None:
        return None
    if check_values:
        labels, mask_props = read_mask(case.label_path)
    else:
        labels, mask_props = None, read_header(case.label_path)
    _check_geometry(props[0], mask_props)
    if labels is None:
        return None
    _check_values(labels, case)
    if case.binary:
        return {1} if labels.any() else set()
    return {int(v) for v in present_values(labels)}


def validate_cases(
    cases: Sequence[Case],
    *,
    skip_bad: bool = False,
    check_values: bool = True,
    require_labels: bool = True,
) -> list[Case]:
    """Check every case (see `check_case`); return the good ones in order. With
    ``require_labels`` (training cases), every label to train on must appear in some mask
    (`drop_absent_labels`); a test set may lack one.

    Raises:
        DataError: an empty dataset, the first bad case (unless skip_bad: then a warning
            per bad case), or no case left after skipping.
    """
    if not cases:
        raise DataError("empty dataset: no cases to validate")
    good, seen, read_all = [], set(), check_values
    for case in cases:
        try:
            present = check_case(case, check_values=check_values)
        except DataError as exc:
            report_bad_case(f"case '{case.case_id}' of '{case.dataset}': {exc}", skip_bad)
            continue
        good.append(case)
        read_all = read_all and present is not None
        seen |= present or set()
    if not good:
        raise DataError(f"dataset '{cases[0].dataset}': all {len(cases)} cases are bad")
    if not (require_labels and read_all):
        return good
    return drop_absent_labels(good, seen, skip_bad)


def drop_absent_labels(cases: list[Case], seen: set[int], skip_bad: bool) -> list[Case]:
    """Labels to train on that no mask of the dataset contains: a DataError naming them (a
    model would learn, and its adapter list, a label it never saw), or with ``skip_bad`` a
    warning and the cases without them."""
    declared = {name: value for case in cases for name, value in case.labels.items()}
    absent = sorted(name for name, value in declared.items() if value not in seen)
    if not absent:
        return cases
    message = (
        f"dataset '{cases[0].dataset}': label(s) {absent} (values "
        f"{[declared[n] for n in absent]}) appear in no mask of its {len(cases)} cases"
    )
    if len(absent) == len(declared) or not skip_bad:
        raise DataError(message + "; remove them from the labels to train on (labels: [...])")
    report_bad_case(message + "; left out", skip_bad=True)
    return [
        replace(case, labels={n: v for n, v in case.labels.items() if n not in absent})
        for case in cases
    ]
