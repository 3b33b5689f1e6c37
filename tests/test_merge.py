"""Merged models: official-layout checkpoint + companion, same masks as the adapted model."""

import pytest
import torch
from segment_anything.build_sam import _build_sam
from typer.testing import CliRunner

from predict_helpers import LABELS, tiny_model_config
from ssam.cli.main import app
from ssam.errors import CheckpointError, ConfigError
from ssam.factory import create_model
from ssam.inference.loading import load_adapted_model
from ssam.inference.merge import (
    SAM_PREFIXES,
    LabelFeatureTable,
    companion_path,
    load_merged,
    merge_adapter,
    read_companion,
)
from ssam.sam.build import build_random_sam
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import SAM_VARIANTS, SamSpec, ViTEncoderSpec
from ssam.tuning.adapter import save_adapter
from ssam.tuning.svd import iter_svd_layers

pytestmark = pytest.mark.usefixtures("single_thread")


def logits_of(model, images, labels):
    """(B, L, S/4, S/4) low-res logits of every label on every image."""
    with torch.no_grad():
        embeddings = model.encode_images(images)
        tokens = model.label_tokens(list(labels))
        return torch.stack([model.decode(e[None], tokens)[:, 0] for e in embeddings])


def perturb(model, seed: int = 0) -> None:
    """Random small changes to every trainable tensor: a non-trivial adapter of any method."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_merged_equals_adapted(adapter, tiny_checkpoint, tmp_path):
    files = merge_adapter(adapter, tmp_path / "merged.pth", tiny_checkpoint)
    assert files.companion == companion_path(files.checkpoint)
    adapted, _ = load_adapted_model(adapter, tiny_checkpoint)
    merged = load_merged(files.checkpoint)
    assert not list(iter_svd_layers(merged))
    assert isinstance(merged.text_encoder, LabelFeatureTable)  # no CLIP tower in the model
    assert not any(".tower." in name for name, _ in merged.named_parameters())
    images = torch.randn(3, 3, 64, 64)
    difference = (logits_of(adapted, images, LABELS) - logits_of(merged, images, LABELS)).abs()
    assert difference.max().item() < 1e-4


@pytest.mark.parametrize("method", ["lora", "bias"])
def test_other_methods_merge_too(method, tiny_checkpoint, tmp_path):
    config = tiny_model_config(tiny_checkpoint).model_copy(update={"method": method})
    model = create_model(config)
    perturb(model)
    path = save_adapter(model, tmp_path / "a.safetensors", labels=["polyp"])
    merged = load_merged(merge_adapter(path, tmp_path / "m.pth", tiny_checkpoint).checkpoint)
    images = torch.randn(2, 3, 64, 64)
    difference = logits_of(model.eval(), images, ["polyp"]) - logits_of(merged, images, ["polyp"])
    assert difference.abs().max().item() < 1e-4


def test_files_hold_official_layout_and_config(adapter, tiny_checkpoint, tmp_path):
    files = merge_adapter(adapter, tmp_path / "merged.pth", tiny_checkpoint)
    state = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    assert all(key.startswith(SAM_PREFIXES) for key in state)
    assert state["image_encoder.pos_embed"].shape[1:3] == (4, 4)  # the 64-pixel grid
    tensors, config = read_companion(files.companion)
    assert config["labels"] == list(LABELS) and config["image_size"] == 64
    assert config["encoder_grid"] == 4 and config["format"] == "ssam-merged"
    assert tensors["label_features"].shape == (2, 512)
    assert "text_affine.norm.running_var" in tensors


def test_segment_anything_builder_loads_merged_1024(tmp_path, monkeypatch):
    # Small encoder, official prompt encoder and decoder: what _build_sam (the function behind
    # sam_model_registry) builds for encoder width 32, depth 2, heads 2, global block 1.
    spec = SamSpec("official_small", "vit", ViTEncoderSpec(32, 2, 2, (1,)))
    monkeypatch.setitem(SAM_VARIANTS, spec.name, spec)
    base = save_state_dict(build_random_sam(spec, seed=1).state_dict(), tmp_path / "base.pth")
    model = create_model(tiny_model_config(base, image_size=1024, variant=spec.name))
    perturb(model)
    adapter = save_adapter(model, tmp_path / "a.safetensors", labels=["polyp"])
    files = merge_adapter(adapter, tmp_path / "merged.pth", base)
    official = _build_sam(32, 2, 2, [1], checkpoint=str(files.checkpoint)).eval()
    images = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = model.eval().encode_images(images)
        got = official.image_encoder(images)
    assert (got - expected).abs().max().item() < 1e-4
    state = official.state_dict()
    for key, value in load_merged(files.checkpoint).state_dict().items():
        if key.startswith(SAM_PREFIXES):
            assert torch.equal(state[key], value), key


def test_load_merged_refuses_mismatched_files(adapter, tiny_checkpoint, tmp_path):
    files = merge_adapter(adapter, tmp_path / "merged.pth", tiny_checkpoint)
    with pytest.raises(CheckpointError, match="grid 64 does not fit .* image size 64"):
        load_merged(tiny_checkpoint, files.companion)  # the 1024 base: a 64x64 grid
    other = tiny_model_config(tiny_checkpoint)
    model = create_model(other)
    perturb(model, seed=3)
    second = save_adapter(model, tmp_path / "b.safetensors", labels=["x"])
    other_files = merge_adapter(second, tmp_path / "other.pth", tiny_checkpoint)
    with pytest.raises(CheckpointError, match="keep the two files together"):
        load_merged(other_files.checkpoint, files.companion)
    with pytest.raises(CheckpointError, match="companion file .* not found"):
        load_merged(tmp_path / "nowhere.pth")


def test_untrained_label_needs_clip(adapter, tiny_checkpoint, tmp_path):
    files = merge_adapter(adapter, tmp_path / "merged.pth", tiny_checkpoint)
    merged = load_merged(files.checkpoint)
    with pytest.raises(ConfigError, match=r"\['spleen'\] are not stored"):
        merged.label_tokens(["liver", "spleen"])
    with_clip = load_merged(files.checkpoint, load_clip=True)  # tiny: a seeded tower
    adapted, _ = load_adapted_model(adapter, tiny_checkpoint)
    torch.testing.assert_close(
        with_clip.label_tokens(["spleen", "liver"]), adapted.label_tokens(["spleen", "liver"])
    )


def test_merge_command(adapter, tiny_checkpoint, tmp_path):
    output = tmp_path / "out" / "merged.pth"
    args = ["merge", "--adapter", str(adapter), "-o", str(output)]
    result = CliRunner().invoke(app, [*args, "--sam-checkpoint", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert output.is_file() and (tmp_path / "out" / "merged.ssam.safetensors").is_file()
