"""Label-name prompts: open_clip's tokenizer and text tower, the cache, the text-affine layer."""

import open_clip
import pytest
import torch

from ssam.errors import CheckpointError
from ssam.text import (
    CLIP_B32_TEXT_CFG,
    TextAffine,
    build_text_encoder,
    build_text_tower,
    get_text_spec,
    load_text_tower,
    read_clip_text_state,
)


def test_clip_config_matches_open_clip():
    cfg = open_clip.get_model_config("ViT-B-32-quickgelu")
    assert cfg["text_cfg"] == CLIP_B32_TEXT_CFG
    assert cfg["embed_dim"] == get_text_spec("clip_vit_b32").embed_dim
    assert cfg["quick_gelu"] is get_text_spec("clip_vit_b32").quick_gelu


def test_features_are_cached_per_label():
    torch.manual_seed(0)
    encoder = build_text_encoder("tiny", None)
    calls = []
    encoder.tower.register_forward_hook(lambda *a: calls.append(1))
    first = encoder.encode(["liver", "kidney", "liver"])
    assert first.shape == (3, 512) and len(calls) == 2  # one forward per new name
    assert torch.equal(first[0], first[2])
    again = encoder.encode(["kidney", " liver "])  # whitespace does not make a new label
    assert len(calls) == 2
    assert torch.equal(again[1], first[0])
    assert encoder.cached_labels() == ["kidney", "liver"]  # least recently used first
    assert not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(["  "])


def test_feature_cache_is_bounded_and_evicts_least_recently_used():
    torch.manual_seed(0)
    encoder = build_text_encoder("tiny", None)
    encoder.max_cached = 2
    calls = []
    encoder.tower.register_forward_hook(lambda *a: calls.append(1))
    liver = encoder.encode(["liver"])
    encoder.encode(["kidney"])
    encoder.encode(["liver"])  # used again: now the most recent
    encoder.encode(["spleen"])  # evicts kidney, the least recent
    assert encoder.cached_labels() == ["liver", "spleen"] and len(calls) == 3
    assert torch.equal(encoder.encode(["liver"]), liver) and len(calls) == 3
    # More new names in one call than the cache holds: all are returned, the last ones kept.
    many = encoder.encode(["a", "b", "c", "a"])
    assert many.shape == (4, 512) and torch.equal(many[0], many[3])
    assert encoder.cached_labels() == ["b", "c"]
    assert torch.equal(encoder.encode(["kidney"]), encoder.encode(["kidney"]))


def test_features_equal_open_clip_encode_text():
    torch.manual_seed(0)
    encoder = build_text_encoder("tiny", None)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["pancreas"])
    with torch.no_grad():
        expected = encoder.tower(tokens)
    assert torch.allclose(encoder.encode(["pancreas"]), expected)


def test_text_weights_load_from_open_clip_layout(tmp_path):
    spec = get_text_spec("tiny")
    torch.manual_seed(1)
    source = build_text_tower(spec)
    state = {k: v for k, v in source.state_dict().items()}
    state["visual.proj"] = torch.zeros(2, 2)  # a full CLIP file: vision weights are skipped
    state["logit_scale"] = torch.ones(())
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    assert "visual.proj" not in read_clip_text_state(path)
    tower = load_text_tower(spec, path)
    for key, value in source.state_dict().items():
        assert torch.equal(tower.state_dict()[key], value), key
    del state["ln_final.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="ln_final.weight"):
        load_text_tower(spec, path)


def test_text_affine_handles_batch_of_one_and_repeated_labels():
    torch.manual_seed(0)
    affine = TextAffine(512, 32).train()
    one = affine(torch.randn(1, 512))
    assert one.shape == (1, 32) and torch.isfinite(one).all()
    assert affine.norm.num_batches_tracked.item() == 0
    same = torch.randn(1, 512).expand(4, -1)
    out = affine(same)
    affine.eval()
    assert torch.allclose(out, affine(same), atol=1e-6)  # train and eval agree on one label
    affine.train()
    mixed = affine(torch.randn(4, 512))
    assert affine.norm.num_batches_tracked.item() == 1
    assert torch.allclose(mixed.mean(0), affine.norm.bias, atol=1e-5)
