"""DICOM-SEG of a predicted case (``ssam predict --dicom-seg``), built with highdicom.

highdicom is the field's library for DICOM Segmentation objects (used by the Imaging Data
Commons and OHIF tooling): it copies the patient, study and frame of reference from the
source instances, writes the per-frame positions and source references, and checks the
result against the standard, which a hand-filled pydicom dataset would not.

The SEG is BINARY, one segment per label (segment label = the label name, value k of the
label map), each frame referencing its source instance, so the SEG references the source
series. Its masks are the label map's (one label per pixel), so the SEG and the NIfTI label
map of a case agree. Frames where a segment is empty are left out (highdicom's
``omit_empty_frames``); a case with no foreground at all keeps every frame, since a SEG
needs at least one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ssam.atomic import atomic_path
from ssam.data.io import check_unique_instances, read_dicom_source_headers
from ssam.errors import DataError

# Type 2 attributes highdicom copies from the source: the standard allows them empty, and
# anonymised exports often drop them; a missing Type 1 UID stays an error naming the file.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)
_TYPE1_NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def prepare_sources(sources: Sequence[Dataset], path: Path) -> list[Dataset]:
    """Copies of the source headers with missing Type 2 attributes set empty; DataError
    naming ``path`` when a Type 1 UID a SEG must copy is missing, or when two sources share
    a SOPInstanceUID (their frames would reference one instance: no viewer could place them).
    """
    check_unique_instances(list(sources), [f"{k}" for k in range(len(sources))], path)
    prepared = []
    for ds in sources:
        missing = [name for name in _TYPE1_NEEDED if not ds.get(name)]
        if missing:
            raise DataError(
                f"{path}: DICOM header lacks {', '.join(missing)}; a DICOM-SEG must reference "
                "its source study, series and instances"
            )
        ds = ds.copy()
        for name in _TYPE2_COPIED:
            if name not in ds:
                setattr(ds, name, "")
        prepared.append(ds)
    return prepared


def stack_segments(label_map: np.ndarray, n_labels: int) -> np.ndarray:
    """(rows, columns, slices) label map -> (slices, rows, columns, n_labels) bool, segment
    k + 1 in ``[..., k]`` (highdicom's stacked-segments layout, frame i = source i)."""
    frames = np.moveaxis(np.asarray(label_map), -1, 0)
    return frames[..., None] == np.arange(1, n_labels + 1, dtype=frames.dtype)


def build_dicom_seg(
    label_map: np.ndarray, labels: Sequence[str], sources: Sequence[Dataset], path: Path
):
    """A highdicom ``Segmentation`` of ``label_map`` over its ``sources``.

    Args:
        label_map: (rows, columns, slices) integer, value k = ``labels[k - 1]``, 0 background;
            (rows, columns) for a single image. Slice k lies on ``sources[k]``.
        labels: the L label names (segment labels).
        sources: DICOM headers in slice order (`read_dicom_source_headers`).
        path: the source file or folder, named in errors.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ssam import __version__

    label_map = np.asarray(label_map)
    if label_map.ndim == 2:
        label_map = label_map[..., None]
    first = sources[0]
    expected = (int(first.Rows), int(first.Columns), len(sources))
    if label_map.shape != expected:
        raise DataError(f"{path}: label map {label_map.shape} does not match the DICOM {expected}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="S-SAM", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    # Labels are free names: a generic category and type ("Tissue", as dcmqi's defaults),
    # the name itself in the segment label.
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(labels, 1)
    ]
    try:
        return hd.seg.Segmentation(
            source_images=prepare_sources(sources, path),
            pixel_array=stack_segments(label_map, len(labels)),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=int(first.get("SeriesNumber") or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="S-SAM",
            manufacturer_model_name="S-SAM",
            software_versions=__version__,
            device_serial_number="none",
            series_description="S-SAM segmentation",
            content_description="S-SAM automatic segmentation by label name",
        )
    except (AttributeError, ValueError, TypeError, KeyError) as err:
        raise DataError(
            f"{path}: cannot build a DICOM-SEG from its headers: {type(err).__name__}: {err}"
        ) from err


def write_dicom_seg(label_map: np.ndarray, labels: Sequence[str], source: Path, path: Path) -> Path:
    """Write the DICOM-SEG of ``label_map`` (see `build_dicom_seg`) over the DICOM file or
    series folder ``source`` to ``path``, atomically."""
    seg = build_dicom_seg(label_map, labels, read_dicom_source_headers(source), source)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path
