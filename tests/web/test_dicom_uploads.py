"""Clinical inputs and outputs over real HTTP: DICOM series uploads (repeated file fields,
one zip, mixed series, bombs), DICOM downloads (NIfTI, label names, DICOM-SEG), provenance."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from datetime import datetime
from pathlib import Path

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from browser import require, viewer_missing
from test_api import wait_for_job
from web_helpers import MIB, random_png

import ssam
from predict_helpers import crop_mri, dicom_dataset
from ssam.cli.serve import model_info
from ssam.data.io import read_image
from ssam.web.errors import PayloadTooLarge
from ssam.web.series_uploads import extract_zip
from ssam.web.settings import ServerSettings


def write_series(folder: Path, uid: str, count: int, offset: int = 0) -> list[Path]:
    """``count`` 32 x 40 CT slices 2 mm apart of one study, written by pydicom, listed in
    reverse order (the server must sort them by position, not by upload order)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count + offset)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 1500, (32, 40)).astype(np.uint16)
        ds = dicom_dataset(pixels, series_uid=uid, position=(-50.0, -60.0, 10.0 + 2 * i))
        ds.StudyInstanceUID, ds.PatientID = STUDY_UID, "anon"
        ds.FrameOfReferenceUID = STUDY_UID + ".1"
        path = folder / f"IM{offset + i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[::-1]


STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def zip_bytes(paths: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in paths:
            bundle.write(path, f"study/{path.name}")
    return buffer.getvalue()


def as_files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (path.name, path.read_bytes())) for path in paths]


def test_series_as_files_and_as_zip(client, web_predictor, tmp_path):
    paths = write_series(tmp_path / "series", "1.2.826.0.1.7", 4)
    expected = web_predictor.segment(tmp_path / "series", ["lung"]).label_map
    form = {"labels": ["lung"]}
    as_parts = client.post("/v1/segment", files=as_files(paths), data=form)
    assert as_parts.status_code == 200, as_parts.text
    body = as_parts.json()
    assert body["kind"] == "3d" and body["shape"] == [32, 40, 4]
    assert body["spacing_mm"] == pytest.approx([0.7, 0.8, 2.0])
    archive = {"file": ("series.zip", zip_bytes(paths))}
    as_zip = client.post("/v1/segment", files=archive, data=form)
    assert as_zip.status_code == 200, as_zip.text
    assert as_zip.json()["sizes"] == body["sizes"]
    assert body["sizes"]["lung"]["voxels"] == int((expected == 1).sum())
    submitted = client.post("/v1/jobs", files=archive, data=form)
    assert submitted.status_code == 202
    status = wait_for_job(client, submitted.json()["id"])
    assert status["state"] == "done" and status["result"]["shape"] == [32, 40, 4]


def test_mixed_series_is_422_naming_both(client, tmp_path):
    first = write_series(tmp_path / "a", "1.2.3.100", 2)
    second = write_series(tmp_path / "b", "1.2.3.200", 2, offset=10)
    for files in (
        {"file": ("mixed.zip", zip_bytes(first + second))},
        as_files(first + second),
    ):
        response = client.post("/v1/segment", files=files, data={"labels": ["lung"]})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "1.2.3.100" in detail and "1.2.3.200" in detail
        assert str(tmp_path) not in detail
    corrupt = client.post("/v1/segment", files={"file": ("c.zip", b"PK\x03\x04" + bytes(200))})
    assert corrupt.status_code == 422 and "cannot read the zip" in corrupt.json()["detail"]


def test_slices_sharing_one_instance_uid_are_422_naming_it(client, tmp_path):
    """Distinct slices (own positions and pixels) with one SOPInstanceUID: a DICOM-SEG's
    frames would all reference one instance, so the upload is refused, naming the UID."""
    paths = write_series(tmp_path / "series", "1.2.3.300", 3)
    for path in paths[:2]:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.300.7"
        ds.save_as(path, enforce_file_format=True)
    for files in ({"file": ("s.zip", zip_bytes(paths))}, as_files(paths)):
        response = client.post("/v1/jobs", files=files, data={"labels": ["lung"]})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "share SOPInstanceUID 1.2.3.300.7" in detail and str(tmp_path) not in detail


def test_dicom_without_pixel_data_is_422_at_upload(client, tmp_path):
    """A header without its PixelData is refused with the other header checks (before: the
    job was admitted and failed when it ran)."""
    paths = write_series(tmp_path / "series", "1.2.3.400", 2)
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(paths[0], enforce_file_format=True)
    for files in ([("file", ("one.dcm", paths[0].read_bytes()))], as_files(paths)):
        response = client.post("/v1/jobs", files=files, data={"labels": ["lung"]})
        assert response.status_code == 422, response.text
        assert "holds no pixel data" in response.json()["detail"]


def test_an_empty_zip_says_it_holds_no_files(client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass  # an archive of no members: its end record only
    response = client.post("/v1/jobs", files={"file": ("empty.zip", buffer.getvalue())})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "the zip holds no files"


def test_series_limits_are_413(make_server, tmp_path, upload_root):
    paths = write_series(tmp_path / "series", "1.2.3.9", 4)
    server = make_server(max_slices=3)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for files in (as_files(paths), {"file": ("s.zip", zip_bytes(paths))}):
            response = http.post("/v1/segment", files=files, data={"labels": ["lung"]})
            assert response.status_code == 413, response.text
            assert "over the limit of 3" in response.json()["detail"]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("zeros.dcm", bytes(8 * MIB))  # compresses to a few KiB
    assert len(bomb.getvalue()) < MIB
    with httpx.Client(base_url=make_server().url, timeout=60) as http:
        response = http.post("/v1/segment", files={"file": ("b.zip", bomb.getvalue())})
    assert response.status_code == 413 and "uncompressed" in response.json()["detail"]
    assert not any(upload_root.glob("*/series"))  # nothing left behind


def test_zip_bomb_is_refused_before_extracting(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("../../escape.dcm", bytes(4 * MIB))
    settings = ServerSettings(max_upload_bytes=MIB, upload_dir=tmp_path)
    with pytest.raises(PayloadTooLarge, match="4,194,304 uncompressed bytes"):
        extract_zip(archive, tmp_path / "series", settings)
    assert not (tmp_path / "series").exists()


def test_zip_member_names_never_become_paths(tmp_path):
    paths = write_series(tmp_path / "series", "1.2.3.5", 2)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in paths:
            bundle.write(path, f"../../{path.name}")
    target = tmp_path / "out" / "series"
    target.parent.mkdir()
    assert extract_zip(archive, target, ServerSettings(upload_dir=tmp_path)) == 2
    assert sorted(p.name for p in target.iterdir()) == ["slice0000.dcm", "slice0001.dcm"]
    assert not list(tmp_path.glob("IM*.dcm")) and read_image(target)[0].shape == (1, 32, 40, 2)


def download_seg(client: httpx.Client, job_id: str):
    response = client.get(f"/v1/jobs/{job_id}/dicom-seg")
    assert response.status_code == 200, response.text
    assert 'filename="label_map.seg.dcm"' in response.headers["content-disposition"]
    return hd.seg.segread(io.BytesIO(response.content))


def test_dicom_job_downloads_keep_geometry_and_names(client, tmp_path):
    paths = write_series(tmp_path / "series", "1.2.826.0.1.77", 3)
    form = {"labels": ["lung", "polyp"]}
    submitted = client.post("/v1/jobs", files={"file": ("s.zip", zip_bytes(paths))}, data=form)
    job_id = submitted.json()["id"]
    assert wait_for_job(client, job_id)["state"] == "done"
    label_map = client.get(f"/v1/jobs/{job_id}/label_map")
    assert 'filename="label_map.nii.gz"' in label_map.headers["content-disposition"]
    image = nib.Nifti1Image.from_bytes(gzip.decompress(label_map.content))
    assert image.shape == (32, 40, 3)
    np.testing.assert_allclose(image.affine, read_image(tmp_path / "series")[1].affine)
    key = client.get(f"/v1/jobs/{job_id}/labels.json").json()
    assert [row["name"] for row in key["labels"]] == ["lung", "polyp"]
    seg = download_seg(client, job_id)
    assert [s.segment_label for s in seg.SegmentSequence] == ["lung", "polyp"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.77"
    assert seg.StudyInstanceUID == STUDY_UID
    values = np.asarray(image.dataobj)
    filled = sum(int((values[..., k] == v).any()) for v in (1, 2) for k in range(3))
    assert int(seg.NumberOfFrames) == (filled or 2 * 3)  # empty frames left out, unless all


def test_single_dicom_file_downloads_nifti_and_seg(client, tmp_path):
    path = write_series(tmp_path / "one", "1.2.826.0.1.78", 1)[0]
    form = {"labels": ["polyp"]}
    submitted = client.post("/v1/jobs", files={"file": ("ct.dcm", path.read_bytes())}, data=form)
    job_id = submitted.json()["id"]
    assert wait_for_job(client, job_id)["state"] == "done"
    label_map = client.get(f"/v1/jobs/{job_id}/label_map")
    assert 'filename="label_map.nii.gz"' in label_map.headers["content-disposition"]
    seg = download_seg(client, job_id)
    assert [s.segment_label for s in seg.SegmentSequence] == ["polyp"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.78"
    png = client.post("/v1/jobs", files={"file": ("p.png", random_png(5))}, data=form)
    assert wait_for_job(client, png.json()["id"])["state"] == "done"
    refused = client.get(f"/v1/jobs/{png.json()['id']}/dicom-seg")
    assert refused.status_code == 422 and "DICOM upload" in refused.json()["detail"]


def test_results_carry_their_provenance(client, web_predictor, web_adapter, tmp_path, monkeypatch):
    paths = write_series(tmp_path / "series", "1.2.826.0.1.79", 2)
    files = as_files(paths)
    response = client.post("/v1/segment", files=files, data={"labels": ["lung"]})
    record = response.json()["provenance"]
    assert record["ssam_version"] == ssam.__version__ and record["threshold"] == 0.5
    assert record["model"]["base_sha256"] == web_predictor.model.base_info.base_sha256
    assert record["intensity"]["preset"] in ("auto", "ct", "minmax", "mri", "rgb")
    digests = b"".join(hashlib.sha256(data).digest() for _, (_, data) in files)
    assert record["input"] == {
        "filename": paths[0].name,
        "files": 2,
        "bytes": sum(len(data) for _, (_, data) in files),
        "sha256": hashlib.sha256(digests).hexdigest(),
    }
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    png = random_png(11)
    form = {"labels": ["polyp"], "intensity": "minmax"}
    submitted = client.post("/v1/jobs", files={"file": ("scan.png", png)}, data=form)
    assert wait_for_job(client, submitted.json()["id"])["state"] == "done"
    report = client.get(f"/v1/jobs/{submitted.json()['id']}/report.json").json()["provenance"]
    assert report["input"]["sha256"] == hashlib.sha256(png).hexdigest()
    assert report["input"]["filename"] == "scan.png" and report["intensity"]["preset"] == "minmax"
    monkeypatch.setenv("SSAM_CACHE", str(tmp_path / "cache"))  # file_sha256's index
    info = model_info(web_adapter, None)
    assert info["adapter_sha256"] == hashlib.sha256(web_adapter.read_bytes()).hexdigest()


def test_the_image_volume_lies_under_the_label_map(client, shared_data, tmp_path):
    """GET /v1/jobs/{id}/image.nii.gz: the stored values (HU for DICOM, the file's own for
    NIfTI) with the label map's affine; 2D uploads give the model's 0-255 input."""
    paths = write_series(tmp_path / "series", "1.2.826.0.1.82", 3)
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz", first=90, count=2)
    cases = [(as_files(paths), read_image(tmp_path / "series")[0][0])]
    cases.append(([("file", ("flair.nii.gz", volume.read_bytes()))], read_image(volume)[0][0]))
    for files, stored in cases:
        job_id = client.post("/v1/jobs", files=files, data={"labels": ["lung"]}).json()["id"]
        assert wait_for_job(client, job_id)["state"] == "done"
        served = client.get(f"/v1/jobs/{job_id}/image.nii.gz")
        assert served.status_code == 200
        assert 'filename="image.nii.gz"' in served.headers["content-disposition"]
        image = nib.Nifti1Image.from_bytes(gzip.decompress(served.content))
        labels = nib.Nifti1Image.from_bytes(
            gzip.decompress(client.get(f"/v1/jobs/{job_id}/label_map").content)
        )
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), stored)
        np.testing.assert_allclose(image.affine, labels.affine)
        assert image.header.get_intent()[0] == "none" and labels.header.get_intent()[0] == "label"
    png = client.post("/v1/jobs", files={"file": ("p.png", random_png(9))}, data={"labels": "lung"})
    assert wait_for_job(client, png.json()["id"])["state"] == "done"
    flat = nib.Nifti1Image.from_bytes(
        gzip.decompress(client.get(f"/v1/jobs/{png.json()['id']}/image.nii.gz").content)
    )
    assert flat.shape == (40, 48, 1) and flat.get_data_dtype() == np.uint8


def test_labels_names_the_volume_viewer(client):
    require(viewer_missing())
    viewer = client.get("/v1/labels").json()["viewer"]
    assert viewer["name"] == "NiiVue" and viewer["url"] == "/static/vendor/niivue/niivue.js"
    bundle = client.get(viewer["url"])
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert f'version: "{viewer["version"]}"' in bundle.text  # the package.json it was built from
