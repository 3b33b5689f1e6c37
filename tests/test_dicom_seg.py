"""``ssam predict --dicom-seg`` in a real process on a small pydicom series and a single DICOM
file: the SEG read back with highdicom and pydicom agrees with the NIfTI label map; every
case gets its ``ID.labels.json``; a single DICOM file gives NIfTI with its spacing."""

import json
import os
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from predict_helpers import LABELS, dicom_dataset, write_dicom, write_png
from ssam import __version__
from ssam.cli.main import app
from ssam.data._nifti import describe_label_names
from ssam.data.io import read_image
from ssam.errors import DataError
from ssam.inference.dicom_seg import prepare_sources
from ssam.inference.overlay import label_colours

pytestmark = pytest.mark.usefixtures("single_thread")

SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
SPACING = (0.7, 0.8)


def write_clinical_dicom(path, pixels, series_uid, z, number):
    """A CT slice with the patient/study attributes a scanner writes (a SEG copies them)."""
    ds = dicom_dataset(pixels, spacing=SPACING, position=(-50.0, -60.0, z), series_uid=series_uid)
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.9"
    ds.PatientName, ds.PatientID, ds.StudyID = "Test^Patient", "P001", "1"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240101", "120000", 3, number
    ds.save_as(path, enforce_file_format=True)
    return path


def make_inputs(folder):
    """A 3-slice series (files named against their z order), one DICOM file, a PNG, a NIfTI."""
    rng = np.random.default_rng(3)
    series = folder / "series"
    series.mkdir(parents=True)
    for k, z in enumerate((14.0, 10.0, 12.0)):
        pixels = rng.integers(0, 1500, (32, 28)).astype(np.uint16)
        pixels[8:20, 6:18] += 1500  # something brighter to find
        write_clinical_dicom(series / f"IM{k}.dcm", pixels, SERIES_UID, z, k + 1)
    pixels = rng.integers(0, 3000, (40, 30)).astype(np.uint16)
    write_clinical_dicom(folder / "single.dcm", pixels, "1.2.826.0.1.3680043.8.498.3", 10.0, 1)
    write_png(folder / "grey.png", rng.integers(0, 255, (36, 30)).astype(np.uint8))
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    volume = rng.normal(100, 20, (24, 20, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), folder / "vol.nii.gz")
    return folder


def ssam_predict(*args):
    return subprocess.run(
        [sys.executable, "-m", "ssam", "predict", *map(str, args), "--threads", "1"]
        + ["--no-progress", "--offline"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def run(adapter, tiny_checkpoint, tmp_path_factory):
    inputs = make_inputs(tmp_path_factory.mktemp("seg") / "in")
    out = inputs.parent / "out"
    base = ["--adapter", adapter, "--sam-checkpoint", tiny_checkpoint]
    cases = [inputs / "series", inputs / "single.dcm", inputs / "grey.png", inputs / "vol.nii.gz"]
    done = ssam_predict(*cases, "-o", out, *base, "--dicom-seg")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return inputs, out, done, base


def source_uids(folder):
    """SOPInstanceUIDs of a series folder in slice order (z up)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()]
    headers.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return [str(ds.SOPInstanceUID) for ds in headers]


def expected_frames(label_map, n_labels):
    """BINARY frames highdicom keeps: one per (slice, label) present; all when none is."""
    present = [(label_map[..., k] == v).any() for k in range(label_map.shape[2])
               for v in range(1, n_labels + 1)]  # fmt: skip
    return sum(present) or label_map.shape[2] * n_labels


@pytest.mark.parametrize(("case", "source"), [("series", "series"), ("single", "single.dcm")])
def test_dicom_seg_agrees_with_the_label_map(run, case, source):
    inputs, out, _, _ = run
    label_map = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
    path = inputs / source
    uids = source_uids(path) if path.is_dir() else [str(pydicom.dcmread(path).SOPInstanceUID)]
    source_header = pydicom.dcmread(next(path.iterdir()) if path.is_dir() else path)
    seg = hd.seg.segread(out / f"{case}.seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == list(LABELS)
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "S-SAM"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    assert seg.SoftwareVersions == __version__
    assert int(seg.NumberOfFrames) == expected_frames(label_map, len(LABELS))
    referenced = seg.ReferencedSeriesSequence
    assert [str(s.SeriesInstanceUID) for s in referenced] == [source_header.SeriesInstanceUID]
    assert {
        str(i.ReferencedSOPInstanceUID) for i in referenced[0].ReferencedInstanceSequence
    } == set(uids)
    assert seg.StudyInstanceUID == source_header.StudyInstanceUID
    masks = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )  # (slices, rows, columns, labels)
    wanted = np.stack([label_map == v for v in (1, 2)], axis=-1)  # (rows, columns, slices, L)
    np.testing.assert_array_equal(masks.astype(bool), np.moveaxis(wanted, 2, 0))
    plain = pydicom.dcmread(out / f"{case}.seg.dcm")  # and a plain DICOM reader agrees
    assert plain.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [s.SegmentLabel for s in plain.SegmentSequence] == list(LABELS)


def test_single_dicom_gives_nifti_with_its_geometry(run):
    inputs, out, _, _ = run
    assert not (out / "single.png").exists()
    written = nib.load(out / "single.nii.gz")
    _, properties = read_image(inputs / "single.dcm")
    assert written.shape == (40, 30, 1)
    assert written.header.get_zooms()[:2] == pytest.approx(SPACING)
    np.testing.assert_allclose(written.affine, properties.affine, atol=1e-5)
    report = json.loads((out / "single.json").read_text())
    assert report["unit"] == "mm2" and report["dicom_seg"] == "single.seg.dcm"


def test_every_case_names_its_labels(run):
    _, out, _, _ = run
    colours = label_colours(len(LABELS))
    expected = {
        "labels": [
            {"value": k, "name": name, "color": colours[k].tolist()}
            for k, name in enumerate(LABELS, 1)
        ],
        "background": 0,
    }
    for case in ("series", "single", "grey", "vol"):
        assert json.loads((out / f"{case}.labels.json").read_text()) == expected
    assert expected["labels"][0]["color"] == [31, 119, 180]  # the legend's first colour
    for case in ("series", "vol"):
        header = nib.load(out / f"{case}.nii.gz").header
        assert header.get_intent() == ("label", (), "label")
        assert header["descrip"].item() == b"labels 1=liver 2=kidney"


def test_non_dicom_inputs_get_a_note_not_a_seg(run):
    _, out, done, _ = run
    assert sorted(p.name for p in out.glob("*.seg.dcm")) == ["series.seg.dcm", "single.seg.dcm"]
    for case, name in (("grey", "grey.png"), ("vol", "vol.nii.gz")):
        note = f"{name}: not a DICOM input, so no {case}.seg.dcm (--dicom-seg)"
        assert note in done.stderr
        assert any(note in w for w in json.loads((out / f"{case}.json").read_text())["warnings"])
    assert "4 done, 0 skipped, 0 failed" in done.stdout


def test_sidecar_and_seg_count_in_the_planned_outputs(run, tmp_path):
    inputs, out, _, base = run
    runner = CliRunner()
    args = ["predict", str(inputs / "series"), "-o", str(out), *map(str, base), "--no-progress"]
    again = runner.invoke(app, [*args, "--dicom-seg"])
    assert "0 done, 1 skipped" in " ".join(again.output.split()), again.output
    (out / "series.seg.dcm").unlink()
    redo = runner.invoke(app, [*args, "--dicom-seg"])
    assert "1 done, 0 skipped" in " ".join(redo.output.split()), redo.output
    assert (out / "series.seg.dcm").is_file()
    (out / "series.labels.json").unlink()
    without = runner.invoke(app, args)  # no --dicom-seg: the missing labels file is redone
    assert "1 done, 0 skipped" in " ".join(without.output.split()), without.output
    assert (out / "series.labels.json").is_file()


def test_a_seg_needs_the_source_study(tmp_path):
    header = dicom_dataset(np.zeros((4, 4), np.uint16))  # no StudyInstanceUID
    with pytest.raises(DataError, match=r"ct\.dcm: DICOM header lacks StudyInstanceUID"):
        prepare_sources([header], tmp_path / "ct.dcm")


def test_nifti_description_fits_its_80_bytes():
    assert describe_label_names(LABELS) == b"labels 1=liver 2=kidney"
    assert (
        describe_label_names(["a" * 50, "b" * 50])
        == b"2 labels, names in the .labels.json beside it"
    )
    assert describe_label_names(["fóie"]) == b"labels 1=f?ie"


def test_a_source_without_its_study_fails_its_case_only(run, tmp_path):
    inputs, _, _, base = run
    pixels = np.arange(20 * 16, dtype=np.uint16).reshape(20, 16)
    bare = write_dicom(tmp_path / "bare.dcm", pixels)  # no StudyInstanceUID
    args = [bare, inputs / "grey.png", "-o", tmp_path / "out", *base, "--dicom-seg"]
    result = CliRunner().invoke(app, ["predict", *map(str, args), "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "1 done, 0 skipped, 1 failed" in text, result.output
    assert "FAILED bare" in text and "bare.dcm: DICOM header lacks StudyInstanceUID" in text, text


def test_slices_sharing_one_instance_uid_fail_their_case(run, tmp_path):
    """Two slices of a series with one SOPInstanceUID: the SEG's frames could not be placed,
    so the case fails naming the UID, the others go on; a SEG built from such headers is
    refused the same way."""
    inputs, _, _, base = run
    series = tmp_path / "dup"
    series.mkdir()
    for k, path in enumerate(sorted((inputs / "series").iterdir())):
        ds = pydicom.dcmread(path)
        if k < 2:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.5.5"
        ds.save_as(series / path.name, enforce_file_format=True)
    args = [series, inputs / "grey.png", "-o", tmp_path / "out", *base, "--dicom-seg"]
    result = CliRunner().invoke(app, ["predict", *map(str, args), "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "1 done, 0 skipped, 1 failed" in text, result.output
    assert "FAILED dup" in text and "share SOPInstanceUID 1.2.826.0.1.5.5" in text, text
    assert not (tmp_path / "out" / "dup.seg.dcm").exists()
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    with pytest.raises(DataError, match=r"share SOPInstanceUID 1\.2\.826\.0\.1\.5\.5"):
        prepare_sources(headers, series)
