"""Click-to-refine over real HTTP on loopback: decoder-only slice edits, undo, limits."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from web_helpers import default_settings, random_png

from ssam.inference.backends import use_backend
from ssam.inference.predictor import SSAMPredictor
from ssam.inference.refine import RefinePrompt, refine_probabilities
from ssam.web.app import create_app
from ssam.web.encoding import decode_label_map_rle, decode_mask_rle
from ssam.web.server import BackgroundServer


def submit(client: httpx.Client, data: bytes, name: str = "image") -> tuple[str, dict]:
    response = client.post("/v1/jobs", files={"file": (name, data)}, data={"labels": "polyp,lung"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            assert status["state"] == "done", status
            return job_id, status["result"]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def refine(client: httpx.Client, job_id: str, **fields) -> httpx.Response:
    return client.post("/v1/refine", json={"job_id": job_id, "label": "polyp", **fields})


def undo(client: httpx.Client, job_id: str, label: str = "polyp") -> httpx.Response:
    return client.post("/v1/refine/undo", json={"job_id": job_id, "label": label})


def served_labels(client: httpx.Client, job_id: str, index: int) -> np.ndarray:
    response = client.get(f"/v1/jobs/{job_id}/slices/{index}/labels")
    shape = int(response.headers["X-Height"]), int(response.headers["X-Width"])
    return np.frombuffer(response.content, np.uint8).reshape(shape)


def nifti_bytes(shape: tuple[int, int, int], seed: int) -> bytes:
    volume = np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)
    return nib.Nifti1Image(volume, np.eye(4)).to_bytes()


@pytest.fixture()
def client(make_server, encoder_calls):
    server = make_server(max_refine_points=4, refine_undo_depth=8)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_refine_a_2d_image_matches_the_library_and_undoes(client, web_predictor, encoder_calls):
    data = random_png(11)
    job_id, _ = submit(client, data)
    encoded = len(encoder_calls)
    plain = refine(client, job_id).json()  # no points: the label's own prediction
    assert plain["points"] == [] and plain["undo_depth"] == 1 and not plain["encoded"]
    plain_mask = decode_mask_rle(plain["mask"])
    assert plain_mask.shape == (40, 48)

    points = [[5, 30, 1], [40, 3, 0], [47.0, 39.0, 1]]
    response = refine(client, job_id, points=points, box=[2, 2, 30, 35], mask_format="png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["value"] == 1 and body["points"] == points and body["box"] == [2, 2, 30, 35]
    print(f"\nrefine (tiny model, 40 x 48, 3 points + box): {body['timings_ms']}")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
    assert len(encoder_calls) == encoded  # decoder only: the embedding came from the cache

    pixels = np.moveaxis(np.asarray(Image.open(io.BytesIO(data))), -1, 0).astype(np.float32)
    inputs, infos = web_predictor.preprocess([pixels])
    embedding = web_predictor.encode(inputs)[0]
    token = web_predictor.label_tokens(["polyp"])[0]
    prompt = RefinePrompt.build([p[:2] for p in points], [p[2] for p in points], (2, 2, 30, 35))
    expected = refine_probabilities(web_predictor.model, embedding, token, infos[0], prompt) >= 0.5
    np.testing.assert_array_equal(mask == 255, expected)

    label_map = decode_label_map_rle(body["label_map"])
    np.testing.assert_array_equal(served_labels(client, job_id, 0), label_map)
    assert expected[label_map == 1].all()
    sizes = client.get(f"/v1/jobs/{job_id}").json()["result"]["sizes"]
    assert sizes["polyp"]["pixels"] == int(expected.sum()) == body["size"]["pixels"]

    back = undo(client, job_id).json()
    np.testing.assert_array_equal(decode_mask_rle(back["mask"]), plain_mask)
    assert back["points"] == [] and back["undo_depth"] == 1
    assert undo(client, job_id).json()["undo_depth"] == 0
    nothing = undo(client, job_id)
    assert nothing.status_code == 409 and "nothing to undo" in nothing.json()["detail"]


def test_refine_one_slice_of_a_volume_leaves_the_others(client, encoder_calls):
    job_id, result = submit(client, nifti_bytes((24, 32, 3), seed=3), name="v.nii.gz")
    assert result["shape"] == [24, 32, 3]
    before = [served_labels(client, job_id, k) for k in range(3)]
    encoded = len(encoder_calls)
    times = []
    for x in (4, 8, 12):
        body = refine(client, job_id, slice=1, label="lung", points=[[x, 20, 1]]).json()
        times.append(body["timings_ms"]["total"])
    print(f"\nrefine (tiny model, volume slice 24 x 32) ms: {times}")
    assert len(encoder_calls) == encoded and body["slice"] == 1 and body["undo_depth"] == 3
    assert decode_mask_rle(body["mask"]).shape == (24, 32)
    after = [served_labels(client, job_id, k) for k in range(3)]
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[2], before[2])
    # Served slices are rotated for display (NIfTI); the answer is in the slice's own order.
    np.testing.assert_array_equal(np.rot90(decode_label_map_rle(body["label_map"])), after[1])
    for _ in range(3):
        assert undo(client, job_id, "lung").status_code == 200
    np.testing.assert_array_equal(served_labels(client, job_id, 1), before[1])


def test_an_evicted_embedding_is_encoded_again(make_server):
    server = make_server(cache_bytes=0)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        job_id, _ = submit(http, random_png(12))
        body = refine(http, job_id, points=[[10, 10, 1]]).json()
    assert body["encoded"] and decode_mask_rle(body["mask"]).shape == (40, 48)


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"label": "liver"}, 422, "label: 'liver' is not one of this job's labels"),
        ({"points": [[1, 1, 1]] * 5}, 422, "points: 5 given, at most 4"),
        ({"points": [[48, 1, 1]]}, 422, "outside the 48 x 40"),
        ({"points": [[1, 1, 2]]}, 422, "point labels must be 1"),
        ({"box": [9, 9, 1, 1]}, 422, "x0 <= x1"),
        ({"slice": 1}, 422, "slice 1 is out of range"),
        ({"points": [[1, 1]]}, 422, "points"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_bad_refine_requests_name_the_field(client, fields, status, words):
    job_id, _ = submit(client, random_png(13))
    response = refine(client, job_id, **fields)
    assert response.status_code == status, response.text
    assert words in str(response.json()["detail"])


def test_unknown_or_unfinished_jobs(client):
    missing = refine(client, "0" * 32)
    assert missing.status_code == 404 and "job_id" in missing.json()["detail"]
    assert refine(client, "not-a-job").status_code == 422
    assert undo(client, "0" * 32).status_code == 404


def test_refine_on_the_onnx_backend(
    web_adapter, tiny_checkpoint, web_predictor, upload_root, monkeypatch, tmp_path
):
    """Under ``--backend onnx`` slices are encoded and decoded by onnxruntime; a refine decodes
    its prompts with the torch decoder on that embedding: the same mask as torch's own."""
    monkeypatch.setenv("SSAM_CACHE", str(tmp_path / "cache"))
    predictor = SSAMPredictor.from_adapter(web_adapter, tiny_checkpoint, batch_size=2)
    assert use_backend(predictor, "onnx", web_adapter).startswith("backend: onnx")
    app = create_app(predictor, default_settings(upload_root))
    data = random_png(21)
    points = [[10, 12, 1], [30, 25, 0]]
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        job_id, _ = submit(http, data)
        before = served_labels(http, job_id, 0)
        body = refine(http, job_id, points=points).json()
        back = undo(http, job_id).json()
    pixels = np.moveaxis(np.asarray(Image.open(io.BytesIO(data))), -1, 0).astype(np.float32)
    inputs, infos = web_predictor.preprocess([pixels])
    embedding = web_predictor.encode(inputs)[0]
    token = web_predictor.label_tokens(["polyp"])[0]
    prompt = RefinePrompt.build([p[:2] for p in points], [p[2] for p in points])
    probs = refine_probabilities(web_predictor.model, embedding, token, infos[0], prompt)
    mask = decode_mask_rle(body["mask"])
    settled = np.abs(probs - 0.5) > 1e-3  # onnx and torch agree to float rounding
    np.testing.assert_array_equal(mask[settled], (probs >= 0.5)[settled])
    np.testing.assert_array_equal(decode_label_map_rle(back["label_map"]), before)


class HandOverLock:
    """A lock whose holder, having released it, pauses before going on, so a waiting thread
    takes its whole turn first: the holder descheduled right after releasing, as happens on
    a busy machine (under the GIL on two idle cores the gap is too short to hit reliably)."""

    def __init__(self, pause: float = 0.02) -> None:
        self.lock, self.pause = threading.Lock(), pause

    def __enter__(self) -> HandOverLock:
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        time.sleep(self.pause)


def test_concurrent_refines_each_get_their_own_answer(make_server):
    """8 clients x 3 refines of one label on one job, at once, over HTTP: every answer is its
    own request's result. The answers' ``undo_depth`` (1..24, each once) gives the order the
    server applied them in; replaying that order one by one on a fresh job of the same volume
    gives exactly the same answers (points, mask, label map, size), 24 undos the original."""
    server = make_server(refine_undo_depth=32)
    data = nifti_bytes((24, 32, 3), seed=5)
    requests = [
        {"slice": 1, "points": [[2 + 3 * t, 1 + 7 * k, 1], [20 - t, 22 - k, 0]]}
        for t in range(8)
        for k in range(3)
    ]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        job_id, _ = submit(http, data, name="v.nii.gz")
        original = [served_labels(http, job_id, k) for k in range(3)]
    services = server.server.config.app.state.services
    services.jobs.get(job_id).result.edits.lock = HandOverLock()
    barrier = threading.Barrier(8)

    def run(thread: int) -> list[tuple[dict, dict]]:
        answers = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            barrier.wait()
            for fields in requests[3 * thread : 3 * thread + 3]:
                response = refine(http, job_id, **fields)
                assert response.status_code == 200, response.text
                answers.append((fields, response.json()))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for part in pool.map(run, range(8)) for a in part]
    depths = sorted(body["undo_depth"] for _, body in answers)
    assert depths == list(range(1, 25)), f"undo_depth values {depths}"
    assert len({str(body["mask"]) for _, body in answers}) > 12  # the answers tell apart
    with httpx.Client(base_url=server.url, timeout=60) as http:
        replay_id, _ = submit(http, data, name="v.nii.gz")
        wrong = []
        for fields, body in sorted(answers, key=lambda a: a[1]["undo_depth"]):
            serial = refine(http, replay_id, **fields).json()
            if any(serial[key] != body[key] for key in ("points", "mask", "label_map", "size")):
                wrong.append(body["undo_depth"])
        assert not wrong, f"the answers applied as {wrong} are not their own request's"
        summary = http.get(f"/v1/jobs/{job_id}").json()["result"]["sizes"]
        assert summary["polyp"] == serial["size"]
        for _ in range(24):
            assert undo(http, job_id).status_code == 200
        for k in range(3):
            np.testing.assert_array_equal(served_labels(http, job_id, k), original[k])
