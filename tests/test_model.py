"""The assembled model: prompts, shapes, trainable set, learning on a real image."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssam.factory import create_model
from ssam.sam.build import PIXEL_MEAN, PIXEL_STD
from ssam.sam.checkpoint import resize_pos_embed, resize_rel_pos
from ssam.tuning.methods import trainable_names
from ssam.tuning.svd import SVDConv2d, SVDLinear


def _to_input(image: np.ndarray, size: int) -> torch.Tensor:
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)
    x = (resized - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def test_forward_shapes_and_prompts(tiny_model):
    x = torch.randn(2, 3, 64, 64)
    logits = tiny_model(x, ["polyp", "lung"])
    assert logits.shape == (2, 1, 64, 64)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0]])
    assert tiny_model(x, boxes=boxes).shape == (2, 1, 64, 64)
    points = (torch.tensor([[[20.0, 20.0]], [[30.0, 30.0]]]), torch.ones(2, 1))
    both = tiny_model(x, ["polyp", "lung"], boxes=boxes, points=points)
    assert both.shape == (2, 1, 64, 64)
    assert not torch.allclose(both, logits)
    with pytest.raises(ValueError, match="label name, a box or points"):
        tiny_model(x)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        tiny_model(torch.randn(1, 3, 32, 32), ["polyp"])


def test_batched_decoding_matches_official_decoder_per_image(tiny_model):
    """forward decodes B images with B prompts in one call; the official MaskDecoder, called
    once per image, gives the same logits for label tokens, boxes and points."""
    tiny_model.eval()
    x = torch.randn(3, 3, 64, 64)
    labels = ["polyp", "lung", "liver"]
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]])
    points = (torch.tensor([[[20.0, 20.0]], [[30.0, 30.0]], [[5.0, 50.0]]]), torch.ones(3, 1))
    with torch.no_grad():
        embeddings = tiny_model.encode_images(x)
        tokens = tiny_model.label_tokens(labels)
        for kwargs in ({"labels": labels}, {"boxes": boxes}, {"labels": labels, "points": points}):
            batched = tiny_model(x, **kwargs)
            for i in range(3):
                one = tiny_model.decode(
                    embeddings[i : i + 1],
                    tokens[i : i + 1] if "labels" in kwargs else None,
                    (points[0][i : i + 1], points[1][i : i + 1]) if "points" in kwargs else None,
                    boxes[i : i + 1] if "boxes" in kwargs else None,
                )
                torch.testing.assert_close(batched[i], tiny_model.upscale(one)[0])
    with pytest.raises(ValueError, match="3 images need 3 prompts"):
        tiny_model(x, boxes=boxes[:2])


def test_all_targets_are_svd_tuned(tiny_model):
    enc = tiny_model.image_encoder
    for block in enc.blocks:
        assert isinstance(block.attn.qkv, SVDLinear) and isinstance(block.mlp.lin2, SVDLinear)
    assert isinstance(enc.neck[0], SVDConv2d) and isinstance(enc.neck[2], SVDConv2d)


def test_segment_labels_batches_decoder_and_matches_forward(tiny_model):
    tiny_model.eval()
    x = torch.randn(2, 3, 64, 64)
    calls = []
    tiny_model.image_encoder.register_forward_hook(lambda *a: calls.append("enc"))
    tiny_model.mask_decoder.register_forward_hook(lambda *a: calls.append("dec"))
    probs = tiny_model.segment_labels(x, ["liver", "kidney", "tumor"])
    assert probs.shape == (2, 3, 64, 64)
    assert calls == ["enc", "dec", "dec"]  # encoder once, decoder once per image
    with torch.no_grad():
        single = tiny_model(x[1:], ["kidney"]).sigmoid()
    assert torch.allclose(probs[1, 1], single[0, 0], atol=1e-5)


def test_training_updates_only_trainable_set_and_learns(tiny_model, kvasir_pair):
    image, mask = kvasir_pair
    x = _to_input(image, 64)
    target = torch.from_numpy(
        np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((64, 64))) > 127
    ).float()[None, None]
    frozen_before = {
        n: p.detach().clone() for n, p in tiny_model.named_parameters() if not p.requires_grad
    }
    names = trainable_names(tiny_model)
    assert names and all(
        ".svd_" in n or "norm" in n or "pos_embed" in n or n.startswith("text_affine")
        for n in names
    )
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    tiny_model.train()
    with torch.no_grad():
        initial = tiny_model(x, ["polyp"])
    losses = []
    for _ in range(25):
        loss = F.binary_cross_entropy_with_logits(tiny_model(x, ["polyp"]), target)
        optimiser.zero_grad()
        loss.backward()
        for name, p in tiny_model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
    with torch.no_grad():
        assert not torch.allclose(tiny_model(x, ["polyp"]), initial)
    for name, p in tiny_model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
    assert all(
        p.grad is None for n, p in tiny_model.named_parameters() if n.startswith("text_encoder")
    )


def test_no_clip_forward_in_training_once_cached(tiny_model):
    tiny_model.text_encoder.encode(["liver", "kidney"])
    calls = []
    tiny_model.text_encoder.tower.register_forward_hook(lambda *a: calls.append(1))
    tiny_model.train()
    loss = tiny_model(torch.randn(2, 3, 64, 64), ["liver", "kidney"]).mean()
    loss.backward()
    assert calls == []


def test_batch_of_one_trains(tiny_model):
    tiny_model.train()
    tiny_model(torch.randn(1, 3, 64, 64), ["liver"]).mean().backward()
    assert tiny_model.text_affine.linear.weight.grad is not None


def test_svd_cache_skips_recomputation(tiny_config, monkeypatch, isolated_cache):
    create_model(tiny_config)
    assert list((isolated_cache / "svd").glob("*.safetensors"))

    def fail(*_):
        raise AssertionError("SVD recomputed despite the cache")

    monkeypatch.setattr("ssam.tuning.svd.compute_svd", fail)
    again = create_model(tiny_config)
    assert isinstance(again.image_encoder.blocks[0].attn.qkv, SVDLinear)


def _paper_trainable_set(depth: int, decoder_depth: int) -> set[str]:
    """DESIGN.md 3 written out by hand: what S-SAM trains, name by name."""
    names = {"image_encoder.pos_embed"}
    for i in range(depth):
        block = f"image_encoder.blocks.{i}"
        names |= {f"{block}.{norm}.{p}" for norm in ("norm1", "norm2") for p in ("weight", "bias")}
        for layer in ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"):
            names |= {f"{block}.{layer}.svd_scale", f"{block}.{layer}.svd_shift"}
    names |= {f"image_encoder.neck.{i}.svd_{p}" for i in (0, 2) for p in ("scale", "shift")}
    decoder = "mask_decoder.transformer"
    for i in range(decoder_depth):
        names |= {
            f"{decoder}.layers.{i}.norm{k}.{p}" for k in (1, 2, 3, 4) for p in ("weight", "bias")
        }
    names |= {f"{decoder}.norm_final_attn.{p}" for p in ("weight", "bias")}
    names |= {f"text_affine.{m}.{p}" for m in ("linear", "norm") for p in ("weight", "bias")}
    return names


def test_trainable_set_is_exactly_the_papers(tiny_model):
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == _paper_trainable_set(depth=4, decoder_depth=2)
    assert set(trainable_names(tiny_model)) == trainable


def test_loaded_positions_are_the_checkpoints_fitted_to_the_input_size(tiny_model, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ours = tiny_model.state_dict()
    grid = tiny_model.image_size // 16
    pos = resize_pos_embed(state["image_encoder.pos_embed"], grid)
    assert torch.allclose(ours["image_encoder.pos_embed"], pos)
    tables = [k for k in state if k.endswith(("rel_pos_h", "rel_pos_w"))]
    assert len(tables) == 2 * 4
    for key in tables:
        expected = resize_rel_pos(state[key], ours[key].shape[0])
        assert torch.allclose(ours[key], expected) and expected.abs().sum() > 0, key
