"""The intensity guard: an input its mapping would clip, or unlike the training data, is
reported loudly in ``ssam predict`` (line and report JSON), ``evaluate`` and the web API."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from ssam.config.data import IntensityConfig
from ssam.data.intensity_check import check_intensity, sample_values, summarise_training_values
from ssam.data.transforms import compute_intensity_range
from ssam.train import train
from ssam.tuning.adapter import read_adapter

RGB = IntensityConfig(preset="rgb")
CT = IntensityConfig(preset="ct", window_level=40, window_width=400)
UINT8_TRAINING = {"preset": "rgb", "dtypes": ["uint8"], "percentiles": {"0.5": 2.0, "50": 90.0, "99.5": 250.0}}  # fmt: skip


def _ct_volume(shape=(48, 48, 4)) -> np.ndarray:
    """An int16 'CT' in HU: air, soft tissue, bone."""
    rng = np.random.default_rng(0)
    volume = np.full(shape, -1000, np.int16)
    volume[8:40, 8:40] = rng.integers(-100, 120, size=(32, 32, shape[2]))
    volume[20:28, 20:28] = 1500
    return volume


def test_uint8_under_rgb_is_quiet():
    image = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 1)).astype(np.uint8)
    assert check_intensity(image, RGB, None, "x.png", UINT8_TRAINING) == []


def test_int16_ct_under_rgb_warns_and_a_ct_window_does_not():
    volume = _ct_volume()[None]
    warned = check_intensity(volume, RGB, None, "ct.nii.gz", UINT8_TRAINING)
    assert any("preset rgb clips" in w and "--intensity ct" in w for w in warned)
    assert any("unlike the training data" in w for w in warned)
    window = compute_intensity_range(volume, CT)
    assert check_intensity(volume, CT, window, "ct.nii.gz", UINT8_TRAINING) == []


def test_a_blank_mapping_warns():
    flat = np.full((1, 30, 30, 2), 7.0, np.float32)
    mri = IntensityConfig(preset="mri")
    warned = check_intensity(flat, mri, compute_intensity_range(flat, mri), "flat.nii", None)
    assert warned and "nearly all of this input" in warned[0]


def test_training_stats_summarise_dtypes_and_percentiles():
    image = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    stats = summarise_training_values([("uint8", sample_values(image))], "rgb")
    assert stats["dtypes"] == ["uint8"] and stats["preset"] == "rgb"
    assert stats["percentiles"]["0.5"] < 5 and stats["percentiles"]["99.5"] > 250


def _rgb_adapter(adapter, folder):
    """The trained tiny adapter, as if trained with preset rgb on 8-bit images."""
    with safe_open(str(adapter), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(f.metadata()["ssam"])
    config.update(intensity=RGB.model_dump(mode="json"), input_stats=UINT8_TRAINING)
    path = folder / "rgb.safetensors"
    save_file(tensors, path, metadata={"ssam": json.dumps(config)})
    return path


def test_predict_warns_loudly_and_reports(adapter, tiny_checkpoint, tmp_path):
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_ct_volume(), np.diag([0.8, 0.8, 2.5, 1.0])), volume)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ssam", "predict", str(volume), "-o", str(out), "--adapter",
         str(_rgb_adapter(adapter, tmp_path)), "--sam-checkpoint", str(tiny_checkpoint),
         "--offline", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARNING" in done.stderr and "preset rgb clips" in done.stderr
    assert "WARNING ct: " in done.stdout  # again in the summary
    report = json.loads((out / "ct.json").read_text())
    assert report["intensity"] == "rgb"
    assert any("preset rgb clips" in w for w in report["warnings"])
    # The warning's advice works: --intensity auto maps this input by its own type.
    advised = subprocess.run(
        [sys.executable, "-m", "ssam", "predict", str(volume), "-o", str(tmp_path / "auto"),
         "--adapter", str(_rgb_adapter(adapter, tmp_path)), "--sam-checkpoint",
         str(tiny_checkpoint), "--offline", "--no-progress", "--intensity", "auto"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert advised.returncode == 0, advised.stderr[-2000:]
    assert "preset rgb clips" not in advised.stderr
    report = json.loads((tmp_path / "auto" / "ct.json").read_text())
    assert report["intensity"] != "rgb"


@pytest.mark.usefixtures("single_thread")
def test_training_records_the_input_statistics(tmp_path, tiny_checkpoint, shared_data):
    from tests.test_train import TINY, _config, link_subset

    data = link_subset(shared_data / "kvasir-seg", tmp_path / "kv", 6)
    dataset = [{"path": str(data), "layout": "folder", "label": "polyp"}]
    result = train(_config(tmp_path, tiny_checkpoint, dataset, "max_steps=1", *TINY))
    _, config = read_adapter(result.last_adapter)
    stats = config["input_stats"]
    assert stats["dtypes"] == ["uint8"] and stats["preset"] == "auto"
    assert 0 <= stats["percentiles"]["0.5"] < stats["percentiles"]["99.5"] <= 255
