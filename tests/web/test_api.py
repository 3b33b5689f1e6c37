"""The HTTP API over real HTTP on loopback: results, formats, caching, limits, safety."""

from __future__ import annotations

import base64
import gzip
import io
import threading
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from web_helpers import MIB, WEB_LABELS, random_png

from predict_helpers import crop_mri, kvasir_image, write_dicom
from ssam.web.encoding import decode_label_map_rle, decode_mask_rle, png_bytes


def segment(
    client: httpx.Client, data: bytes, labels=("polyp",), name: str = "image", **form
) -> httpx.Response:
    fields = {"labels": list(labels), **form}
    return client.post("/v1/segment", files={"file": (name, data)}, data=fields)


def check_consistent(body: dict, shape: tuple[int, ...]) -> np.ndarray:
    """Label map and masks decode to ``shape`` and agree; sizes count each label's mask."""
    label_map = decode_label_map_rle(body["label_map"])
    assert label_map.shape == shape and body["shape"] == list(shape)
    for k, name in enumerate(body["labels"], start=1):
        mask = decode_mask_rle(body["masks"][name])
        assert mask.shape == shape
        assert mask[label_map == k].all()
        count_key = "voxels" if len(shape) == 3 else "pixels"
        assert body["sizes"][name][count_key] == int(mask.sum())  # overlaps included
    return label_map


def test_health_labels_and_schema(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["queue"]["running"] == 0
    labels = client.get("/v1/labels").json()
    assert labels["labels"] == WEB_LABELS and labels["model"]["image_size"] == 64
    schema = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/labels", "/healthz", "/v1/jobs"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "S-SAM" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_segment_jpeg_matches_the_predictor(client, web_predictor, shared_data):
    path = kvasir_image(shared_data)
    height, width = Image.open(path).size[::-1]
    response = segment(client, path.read_bytes(), WEB_LABELS, name="polyp.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == WEB_LABELS and body["kind"] == "2d" and body["unit"] == "pixels"
    label_map = check_consistent(body, (height, width))
    expected = web_predictor.segment(path, WEB_LABELS).label_map
    np.testing.assert_array_equal(label_map, expected)
    assert {"queue", "read", "encode", "decode", "total"} <= set(body["timings_ms"])


def test_png_and_nifti_mask_formats(client):
    data = random_png(1)
    png = segment(client, data, WEB_LABELS, mask_format="png").json()
    label_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["label_map"]["data"]))))
    assert label_map.shape == (40, 48) and set(np.unique(label_map)) <= {0, 1, 2}
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["masks"]["lung"]["data"]))))
    assert set(np.unique(mask)) <= {0, 255}
    nifti = segment(client, data, WEB_LABELS, mask_format="nifti", include_masks="false").json()
    raw = gzip.decompress(base64.b64decode(nifti["label_map"]["data"]))
    volume = nib.Nifti1Image.from_bytes(raw).get_fdata()
    np.testing.assert_array_equal(volume[..., 0], label_map)
    assert "masks" not in nifti


def test_nifti_volume_and_dicom(client, web_predictor, shared_data, tmp_path):
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz", count=3)
    body = segment(client, volume.read_bytes(), ["lung"]).json()
    shape = nib.load(volume).shape
    assert body["kind"] == "3d" and body["unit"] == "mL" and body["slices"] == 3
    label_map = check_consistent(body, tuple(shape))
    np.testing.assert_array_equal(label_map, web_predictor.segment(volume, ["lung"]).label_map)
    voxel_ml = float(np.prod(nib.load(volume).header.get_zooms()[:3])) / 1000
    assert body["sizes"]["lung"]["volume_ml"] == pytest.approx(
        body["sizes"]["lung"]["voxels"] * voxel_ml
    )
    refused = segment(client, volume.read_bytes(), ["lung"], mask_format="png")
    assert refused.status_code == 422 and "volumes" in refused.json()["detail"]
    pixels = (np.arange(48 * 40).reshape(48, 40) % 1500).astype(np.uint16)
    dicom = write_dicom(tmp_path / "ct.dcm", pixels, spacing=(0.5, 0.8))
    body = segment(client, dicom.read_bytes(), ["polyp"]).json()
    assert body["unit"] == "mm2" and body["spacing_mm"][:2] == [0.5, 0.8]
    assert body["sizes"]["polyp"]["area_mm2"] == pytest.approx(
        body["sizes"]["polyp"]["pixels"] * 0.4
    )


def test_sizes_do_not_depend_on_the_other_labels_asked(client, shared_data):
    data = kvasir_image(shared_data).read_bytes()
    alone = segment(client, data, ["lung"], name="polyp.jpg").json()
    both = segment(client, data, ["polyp", "lung"], name="polyp.jpg").json()
    check_consistent(both, tuple(both["shape"]))
    assert alone["sizes"]["lung"] == both["sizes"]["lung"] | {"value": 1}
    masks = [decode_mask_rle(both["masks"][name]) for name in ("polyp", "lung")]
    assert (masks[0] & masks[1]).any(), "the test needs masks that overlap"
    label_map = decode_label_map_rle(both["label_map"])
    assert both["sizes"]["lung"]["pixels"] > int((label_map == 2).sum())
    assert "most probable" in both["label_map_rule"]


def test_another_label_on_the_same_upload_skips_the_encoder(
    client, encoder_calls, shared_data, tmp_path
):
    data = random_png(2)
    first = segment(client, data, ["polyp"]).json()
    assert sum(encoder_calls) == 1 and first["cache"] == {"slices": 1, "hits": 0, "encoded": 1}
    second = segment(client, data, ["lung"]).json()
    assert sum(encoder_calls) == 1, "the second label ran the image encoder again"
    assert second["cache"] == {"slices": 1, "hits": 1, "encoded": 0}
    volume = crop_mri(shared_data, tmp_path / "v.nii.gz", first=60, count=3).read_bytes()
    segment(client, volume, ["polyp"])
    assert sum(encoder_calls) == 1 + 3  # one embedding per slice
    assert segment(client, volume, ["lung", "polyp"]).json()["cache"]["hits"] == 3
    assert sum(encoder_calls) == 4


def test_oversized_upload_is_413(client):
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(3 * MIB)
    response = segment(client, too_big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    just_over = b"\x89PNG\r\n\x1a\n" + bytes(2 * MIB)  # within the form slack: exact check
    response = segment(client, just_over)
    assert response.status_code == 413 and "upload is larger" in response.json()["detail"]


def test_streamed_oversized_upload_is_413(server):
    boundary = "ssamboundary"

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'.encode()
        for _ in range(4):
            yield bytes(MIB)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post("/v1/segment", content=body(), headers=headers)
    assert response.status_code == 413


def test_image_over_the_pixel_limit_is_413(client):
    blank = png_bytes(np.zeros((1100, 1000), dtype=np.uint8))  # compresses to a few KB
    assert len(blank) < 100_000
    response = segment(client, blank)
    assert response.status_code == 413 and "1,100,000 pixels" in response.json()["detail"]


def test_non_images_are_415_or_422(client):
    response = segment(client, b"hello, this is not an image\n" * 20, name="notes.png")
    assert response.status_code == 415 and "PNG, JPEG, DICOM" in response.json()["detail"]
    truncated = random_png(3)[:60]
    response = segment(client, truncated, name="cut.png")
    assert response.status_code == 422
    assert "/upload" not in response.text and "ssam-upload" not in response.text
    assert segment(client, b"", name="empty.png").status_code in (415, 422)


def test_bad_labels_are_422(client):
    data = random_png(4)
    assert segment(client, data, ["polyp", " polyp "]).status_code == 422
    assert segment(client, data, [f"label{i}" for i in range(17)]).status_code == 422
    assert segment(client, data, ["x" * 65]).status_code == 422
    unknown = segment(client, data, ["kidney"]).json()
    assert any("kidney" in note for note in unknown["warnings"])


def test_crafted_file_names_stay_in_the_temporary_folder(client, upload_root, tmp_path):
    parent = upload_root.parent
    before = {p for p in parent.rglob("*")}
    names = ["../../../../../../tmp/ssam_pwned.png", "..\\..\\ssam_pwned.png", "/etc/ssam_pwned"]
    for name in names:
        response = segment(client, random_png(5), name=name)
        assert response.status_code == 200, response.text
    assert not list(Path("/tmp").glob("ssam_pwned*")) and not list(Path.cwd().glob("ssam_pwned*"))
    assert not list(Path("/etc").glob("ssam_pwned*"))
    created = {p for p in parent.rglob("*")} - before
    assert all(upload_root in p.parents for p in created), created
    assert not list(upload_root.iterdir()), "uploads were not cleaned up"


def test_full_queue_is_429(make_server, blocked_encoder):
    entered, release = blocked_encoder
    running = make_server(workers=1, queue_size=0)
    results: list[httpx.Response] = []
    with httpx.Client(base_url=running.url, timeout=30) as http:
        first = threading.Thread(target=lambda: results.append(segment(http, random_png(6))))
        first.start()
        assert entered.wait(10), "the first request never reached the encoder"
        busy = segment(http, random_png(7))
        assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
        assert "busy" in busy.json()["detail"]
        release.set()
        first.join(30)
    assert results[0].status_code == 200


def test_slow_request_is_504_and_cancelled(make_server, blocked_encoder):
    entered, release = blocked_encoder
    running = make_server(request_timeout_s=0.5)
    with httpx.Client(base_url=running.url, timeout=30) as http:
        response = segment(http, random_png(8))
        assert response.status_code == 504 and "timeout" in response.json()["detail"]
        release.set()
        deadline = time.monotonic() + 10
        while http.get("/healthz").json()["queue"]["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/healthz").json()["queue"] == {"running": 0, "waiting": 0, "capacity": 9}


def wait_for_job(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_job_routes_serve_the_page(client, shared_data, tmp_path):
    volume = crop_mri(shared_data, tmp_path / "v.nii.gz", first=70, count=4).read_bytes()
    submitted = client.post(
        "/v1/jobs", files={"file": ("v", volume)}, data={"labels": "polyp,lung"}
    )
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]
    status = wait_for_job(client, job_id)
    assert status["state"] == "done" and status["progress"] == {"done": 4, "total": 4}
    result = status["result"]
    height, width, depth = result["shape"]
    assert depth == 4 and result["rotated"] and result["labels"] == ["polyp", "lung"]
    picture = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job_id}/slices/2/image.png").content))
    assert picture.size == (height, width)  # rotated 90 degrees for display
    labels = client.get(f"/v1/jobs/{job_id}/slices/2/labels")
    assert len(labels.content) == height * width and labels.headers["x-height"] == str(width)
    assert client.get(f"/v1/jobs/{job_id}/slices/4/labels").status_code == 422
    download = client.get(f"/v1/jobs/{job_id}/label_map")
    assert 'filename="label_map.nii.gz"' in download.headers["content-disposition"]
    assert nib.Nifti1Image.from_bytes(gzip.decompress(download.content)).shape == (
        height,
        width,
        depth,
    )
    overlay = client.get(f"/v1/jobs/{job_id}/overlay.png", params={"slice": 1, "opacity": 0.7})
    assert Image.open(io.BytesIO(overlay.content)).size[0] == height
    assert client.get(f"/v1/jobs/{job_id}/report.json").json()["labels"] == ["polyp", "lung"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get("/v1/jobs/not-an-id").status_code == 422
