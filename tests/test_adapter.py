"""Adapter files: trainable tensors plus a JSON config, checked against the base on load."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ssam.config.model import ModelConfig
from ssam.errors import AdapterError
from ssam.factory import create_architecture, create_model
from ssam.sam.build import build_random_sam
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import get_sam_spec
from ssam.tuning.adapter import adapter_state_dict, load_adapter, read_adapter, save_adapter


def _train_a_little(model):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        loss = model(torch.randn(2, 3, 64, 64), ["liver", "kidney"]).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_round_trip_is_bit_exact(tiny_model, tiny_config, tmp_path):
    _train_a_little(tiny_model)
    path = save_adapter(tiny_model, tmp_path / "adapter.safetensors", labels=["liver", "kidney"])
    fresh = create_model(tiny_config)
    config = load_adapter(fresh, path)
    assert config["labels"] == ["liver", "kidney"]
    assert config["base_sha256"] == tiny_model.base_info.base_sha256
    saved, loaded = adapter_state_dict(tiny_model), adapter_state_dict(fresh)
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    assert "text_affine.norm.running_mean" in saved
    x = torch.randn(1, 3, 64, 64)
    tiny_model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(tiny_model(x, ["liver"]), fresh(x, ["liver"]))


def test_adapter_holds_only_trainable_tensors(tiny_model, tmp_path):
    path = save_adapter(tiny_model, tmp_path / "a.safetensors")
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["ssam"])
    assert trainable <= keys
    assert keys - trainable == {
        "text_affine.norm.running_mean",
        "text_affine.norm.running_var",
        "text_affine.norm.num_batches_tracked",
    }
    assert meta["variant"] == "tiny" and meta["image_size"] == 64 and meta["method"] == "ssam"


def test_wrong_base_is_refused(tiny_model, tiny_config, tmp_path):
    path = save_adapter(tiny_model, tmp_path / "a.safetensors")
    other_ckpt = save_state_dict(
        build_random_sam(get_sam_spec("tiny"), seed=5).state_dict(), tmp_path / "other.pth"
    )
    other = create_model(tiny_config.model_copy(update={"sam_checkpoint": other_ckpt}))
    with pytest.raises(AdapterError, match="trained on another base model.*base_sha256"):
        load_adapter(other, path)
    bigger = create_model(tiny_config.model_copy(update={"image_size": 128}))
    with pytest.raises(AdapterError, match="image_size: adapter 64, model 128"):
        load_adapter(bigger, path)


def test_not_an_adapter(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"nonsense")
    with pytest.raises(AdapterError, match="not a readable adapter"):
        read_adapter(tmp_path / "x.safetensors")
    with pytest.raises(AdapterError, match="not found"):
        read_adapter(tmp_path / "absent.safetensors")


def test_vit_b_adapter_is_about_1_8_mb():
    model = create_architecture(ModelConfig(variant="vit_b", image_size=256))
    state = adapter_state_dict(model)
    n_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert 1.75e6 < n_bytes < 1.85e6


CRAFTED = {
    "a list": lambda c: [c],
    "svd_targets 123": lambda c: {**c, "svd_targets": 123},
    "labels 5": lambda c: {**c, "labels": 5},
    "image_size abc": lambda c: {**c, "image_size": "abc"},
    "no variant": lambda c: {k: v for k, v in c.items() if k != "variant"},
    "unknown variant": lambda c: {**c, "variant": "vit_z"},
    "bad intensity": lambda c: {**c, "intensity": {"preset": "ct"}},
    "intensity a string": lambda c: {**c, "intensity": "rgb"},
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_adapter_configs_are_one_line_errors(kind, adapter, tiny_checkpoint, tmp_path):
    """Through ``ssam predict`` in a real process: exit 2, one line naming the file."""
    with safe_open(str(adapter), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(f.metadata()["ssam"])
    crafted = tmp_path / "crafted.safetensors"
    save_file(tensors, crafted, metadata={"ssam": json.dumps(CRAFTED[kind](config))})
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(image)
    done = subprocess.run(
        [sys.executable, "-m", "ssam", "predict", str(image), "-o", str(tmp_path / "out"),
         "--adapter", str(crafted), "--sam-checkpoint", str(tiny_checkpoint), "--offline"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and str(crafted) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
