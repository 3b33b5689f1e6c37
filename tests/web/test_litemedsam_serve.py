"""``ssam serve`` on LiteMedSAM (the default base), over real HTTP on loopback: a real
photograph segmented by label name, then refined with a box and a point."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from web_helpers import default_settings

from ssam.inference.predictor import SSAMPredictor
from ssam.web.app import create_app
from ssam.web.encoding import decode_mask_rle
from ssam.web.server import BackgroundServer


@pytest.fixture(scope="module")
def lite_client(lite_adapter, tmp_path_factory):
    predictor = SSAMPredictor.from_adapter(lite_adapter, batch_size=2)
    settings = default_settings(tmp_path_factory.mktemp("uploads"))
    with (
        BackgroundServer(create_app(predictor, settings, {"adapter": "lite"})) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        yield http


def _photo(shared_data) -> tuple[bytes, np.ndarray]:
    folder = shared_data / "kvasir-seg"
    name = sorted(p.stem for p in (folder / "images").glob("*.jpg"))[0]
    image = Image.open(folder / "images" / f"{name}.jpg").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    truth = np.asarray(Image.open(folder / "masks" / f"{name}.png").convert("L")) > 127
    return buffer.getvalue(), truth


def test_segment_and_refine_a_photo_on_litemedsam(lite_client, shared_data):
    data, truth = _photo(shared_data)
    labels = lite_client.get("/v1/labels").json()
    assert set(labels["labels"]) >= {"liver", "kidney"}, labels
    one_shot = lite_client.post(
        "/v1/segment", files={"file": ("polyp.png", data)}, data={"labels": "liver"}
    )
    assert one_shot.status_code == 200, one_shot.text
    assert one_shot.json()["provenance"]["model"]["base_sha256"].startswith("79d8c9dc")

    job = lite_client.post(
        "/v1/jobs", files={"file": ("polyp.png", data)}, data={"labels": "liver"}
    )
    assert job.status_code == 202, job.text
    job_id, deadline = job.json()["id"], time.monotonic() + 120
    while lite_client.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ys, xs = np.nonzero(truth)
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    plain = lite_client.post("/v1/refine", json={"job_id": job_id, "label": "liver"})
    boxed = lite_client.post("/v1/refine", json={"job_id": job_id, "label": "liver", "box": box})
    assert plain.status_code == boxed.status_code == 200, boxed.text
    before, after = decode_mask_rle(plain.json()["mask"]), decode_mask_rle(boxed.json()["mask"])
    assert before.shape == after.shape == truth.shape
    assert (before != after).any(), "a box prompt on LiteMedSAM changes the mask"
    point = [[float(xs.mean()), float(ys.mean()), 1]]
    pointed = lite_client.post(
        "/v1/refine", json={"job_id": job_id, "label": "liver", "points": point, "box": box}
    )
    assert pointed.status_code == 200 and pointed.json()["undo_depth"] == 3
