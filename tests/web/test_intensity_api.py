"""The intensity guard over real HTTP: the API returns the warning, and a request may choose
its own mapping (a CT window) instead of the adapter's."""

from __future__ import annotations

import time

import httpx
import nibabel as nib
import numpy as np
import pytest

from ssam.config.data import IntensityConfig

UINT8_TRAINING = {"preset": "rgb", "dtypes": ["uint8"], "percentiles": {"0.5": 2.0, "50": 90.0, "99.5": 250.0}}  # fmt: skip


@pytest.fixture()
def rgb_trained(web_predictor):
    """The shared model, as if its adapter had been trained with preset rgb on 8-bit images."""
    before = web_predictor.intensity, web_predictor.input_stats
    web_predictor.intensity = IntensityConfig(preset="rgb")
    web_predictor.input_stats = UINT8_TRAINING
    yield web_predictor
    web_predictor.intensity, web_predictor.input_stats = before


def _ct_upload(tmp_path) -> bytes:
    volume = np.full((32, 32, 2), -1000, np.int16)
    volume[6:26, 6:26] = 50
    volume[12:18, 12:18] = 1500
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path.read_bytes()


@pytest.mark.usefixtures("rgb_trained")
def test_the_api_warns_and_takes_a_ct_window(make_server, tmp_path):
    running = make_server()
    data = _ct_upload(tmp_path)

    def segment(http, **fields):
        files = {"file": ("ct.nii.gz", data, "application/gzip")}
        return http.post("/v1/segment", files=files, data={"labels": "polyp", **fields})

    with httpx.Client(base_url=running.url, timeout=60) as http:
        plain = segment(http)
        assert plain.status_code == 200, plain.text
        assert any("preset rgb clips" in w for w in plain.json()["warnings"])
        windowed = segment(http, intensity="ct", window_level="40", window_width="400")
        assert windowed.status_code == 200, windowed.text
        assert not any("clips" in w or "unlike" in w for w in windowed.json()["warnings"])
        bad = segment(http, intensity="ct")
        assert bad.status_code == 422 and "window" in bad.text
        job = http.post(
            "/v1/jobs",
            files={"file": ("ct.nii.gz", data, "application/gzip")},
            data={"labels": "polyp", "intensity": "mri"},
        )
        assert job.status_code == 202, job.text


def test_a_blank_upload_is_a_clear_422(make_server, tmp_path):
    """A constant image is the request's fault: 422 naming the problem, on /v1/segment and
    as a job's error, never a 500 'internal error'."""
    running = make_server()
    path = tmp_path / "black.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    files = {"file": ("black.png", path.read_bytes(), "image/png")}
    with httpx.Client(base_url=running.url, timeout=60) as http:
        direct = http.post("/v1/segment", files=files, data={"labels": "polyp"})
        assert direct.status_code == 422 and "constant image" in direct.text, direct.text
        job = http.post("/v1/jobs", files=files, data={"labels": "polyp"})
        assert job.status_code == 202, job.text
        status = job.json()
        for _ in range(200):
            status = http.get(f"/v1/jobs/{job.json()['id']}").json()
            if status["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert status["state"] == "failed" and "constant image" in str(status), status
        assert "internal error" not in str(status)
