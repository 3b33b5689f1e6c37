"""Fine-tuning methods: each builds, trains only its groups, round-trips its adapter, counts right;
LoRA layers equal their merged form."""

import re

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from ssam.cli.main import app
from ssam.cli.params import compute_parameter_report
from ssam.config.model import ModelConfig
from ssam.factory import count_sam_parameters, create_model
from ssam.sam.families import get_family
from ssam.train.losses import segmentation_loss
from ssam.tuning.adapter import adapter_state_dict, load_adapter, save_adapter
from ssam.tuning.lora import (
    LoRALinear,
    LoRATarget,
    compute_lora_delta,
    inject_lora,
    iter_lora_layers,
    merge_lora,
)
from ssam.tuning.methods import METHODS, configure_trainable, trainable_names

TEXT_AFFINE = 512 * 256 + 256 + 2 * 256  # Linear 512->256 and BatchNorm1d(256) affine


def _train_step(model: nn.Module, lr: float = 1e-2) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr)
    x, target = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = segmentation_loss(model(x, ["liver", "kidney"]), target)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()


@pytest.fixture(params=["tiny", "litemedsam"])
def base_config(request, tiny_config) -> ModelConfig:
    """Each encoder family: SAM ViT (tiny) and LiteMedSAM's TinyViT (real weights, 64 px)."""
    if request.param == "tiny":
        return tiny_config
    # The SVD cache (per test) gives a fresh model the very factors of the first: LAPACK's SVD
    # of TinyViT's weights is not bit-reproducible between calls (U differs by ~1e-6).
    return ModelConfig(image_size=64, random_text_tower=True)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_only_its_groups(method, base_config):
    torch.manual_seed(0)
    model = create_model(base_config.model_copy(update={"method": method}))
    groups = configure_trainable(model, method)
    assert all(n > 0 for n in groups.values())
    assert sum(groups.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_step(model)
    groups_here = METHODS[method].resolve_groups(get_family(model.variant))
    patterns = [(g, re.compile(rx)) for g, rx in groups_here]
    reached = dict.fromkeys(groups, False)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert p.requires_grad, f"{method}: gradient reached frozen {name}"
            group = next(g for g, rx in patterns if rx.search(name))
            reached[group] = True
        if not p.requires_grad:
            assert torch.equal(p, before[name]), f"{method}: frozen {name} changed"
        assert not (name.startswith("text_encoder.") and p.requires_grad)
    assert all(reached.values()), f"{method}: no gradient reached {reached}"
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, f"{method}: the optimiser step changed nothing"
    encoder_trains = any(n.startswith("image_encoder.") for n in trainable_names(model))
    assert METHODS[method].trains_encoder == encoder_trains  # what embedding caching trusts


@pytest.mark.parametrize("method", sorted(METHODS))
def test_adapter_round_trip_every_method(method, base_config, tmp_path):
    config = base_config.model_copy(update={"method": method})
    torch.manual_seed(0)
    model = create_model(config)
    _train_step(model)
    path = save_adapter(model, tmp_path / f"{method}.safetensors", labels=["liver"])
    torch.manual_seed(1)  # a differently initialised fresh model (LoRA's A, text affine)
    fresh = create_model(config)
    assert load_adapter(fresh, path)["method"] == method
    saved, loaded = adapter_state_dict(model), adapter_state_dict(fresh)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, ["liver"]), fresh.eval()(x, ["liver"]))


def test_lora_count_vit_b_by_hand():
    # 12 blocks x (q and v) x (A: r x 768 + B: 768 x r), r = 4
    report = compute_parameter_report(ModelConfig(variant="vit_b", method="lora"))
    per_block = 2 * (4 * 768 + 768 * 4)
    assert report["groups"] == {"lora down and up": 12 * per_block, "text affine": TEXT_AFFINE}
    assert report["trainable"] == 147_456 + 131_840
    rank8 = compute_parameter_report(ModelConfig(variant="vit_b", method="lora", lora_rank=8))
    assert rank8["groups"]["lora down and up"] == 2 * 147_456


def _mask_decoder_count() -> int:
    """SAM's MaskDecoder (dim 256, 4 mask tokens, two-way transformer depth 2, MLP 2048)."""
    d = 256
    linear = lambda i, o: i * o + o  # noqa: E731
    attention = lambda inner: 3 * linear(d, inner) + linear(inner, d)  # noqa: E731
    norm = 2 * d
    block = attention(d) + 2 * attention(d // 2) + linear(d, 2048) + linear(2048, d) + 4 * norm
    transformer = 2 * block + attention(d // 2) + norm
    tokens = (1 + 4) * d
    upscaling = (d * 64 * 4 + 64) + 2 * 64 + (64 * 32 * 4 + 32)
    hypernetworks = 4 * (2 * linear(d, d) + linear(d, 32))
    iou_head = 2 * linear(d, d) + linear(d, 4)
    return transformer + tokens + upscaling + hypernetworks + iou_head


def test_decoder_count_vit_b_by_hand():
    report = compute_parameter_report(ModelConfig(variant="vit_b", method="decoder"))
    assert _mask_decoder_count() == 4_058_340
    assert report["groups"] == {"mask decoder": 4_058_340, "text affine": TEXT_AFFINE}


def test_token_count_by_hand():
    # the decoder transformer's LayerNorms: 2 layers x norm1-4 + the final one, 2 x 256 each
    norms = (2 * 4 + 1) * 2 * 256
    for variant in ("vit_b", "litemedsam"):  # the same mask decoder on both bases
        report = compute_parameter_report(ModelConfig(variant=variant, method="token"))
        want = {"decoder transformer LayerNorms": norms, "text affine": TEXT_AFFINE}
        assert report["groups"] == want


def test_bias_and_full_counts_vit_b_by_hand():
    groups = compute_parameter_report(ModelConfig(variant="vit_b", method="bias"))["groups"]
    per_block_bias = 3 * 768 + 768 + 4 * 768 + 768  # qkv, proj, lin1, lin2
    assert groups["encoder biases"] == 768 + 12 * per_block_bias  # + patch embedding
    assert groups["encoder LayerNorms"] == 12 * 2 * 2 * 768 + 2 * 2 * 256  # blocks + neck
    assert groups["decoder transformer LayerNorms"] == (2 * 4 + 1) * 2 * 256
    full = compute_parameter_report(ModelConfig(variant="vit_b", method="full"))
    # SAM's 1024 count with the 64x64 positions pooled to 16x16 and every relative-position
    # table (head dim 64) at length 2*16-1 instead of 127 (4 global) or 27 (8 windowed).
    rel_1024 = 2 * 64 * (4 * 127 + 8 * 27)
    rel_256 = 2 * 64 * 12 * 31
    sam_256 = count_sam_parameters("vit_b") - 768 * (64 * 64 - 16 * 16) - rel_1024 + rel_256
    assert full["trainable"] == sam_256 + TEXT_AFFINE == 90_873_136


def test_params_command_lists_methods():
    runner = CliRunner()
    result = runner.invoke(app, ["params", "--model", "vit_b", "--method", "lora"])
    assert result.exit_code == 0, result.output
    assert "147,456" in result.output and "279,296" in result.output
    default = runner.invoke(app, ["params"])  # the default base: LiteMedSAM
    assert default.exit_code == 0, default.output
    assert "ssam on litemedsam" in default.output and "180,648" in default.output
    bad = runner.invoke(app, ["params", "--method", "nope"])
    assert bad.exit_code != 0


def test_lora_delta_has_zero_rows_outside_adapted_blocks():
    torch.manual_seed(0)
    down, up = torch.randn(2, 3, 10), torch.randn(2, 4, 3)
    delta = compute_lora_delta(down, up, scaling=0.5, parts=3, adapted=(0, 2))
    assert delta.shape == (12, 10)
    assert torch.allclose(delta[:4], 0.5 * up[0] @ down[0])
    assert torch.all(delta[4:8] == 0)
    assert torch.allclose(delta[8:], 0.5 * up[1] @ down[1])


def test_lora_layer_starts_at_base_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(16, 3 * 8)
    layer = LoRALinear(base, rank=2, parts=3, adapted=(0, 2))
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), base(x))  # B = 0
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ (base.weight + layer.delta_weight()).T + base.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    merged = layer.merge()
    assert type(merged) is nn.Linear and not merged.weight.requires_grad
    assert torch.allclose(merged(x), layer(x), atol=1e-5)
    assert torch.equal(layer.base_layer.weight, base.weight)  # the wrapped layer is untouched
    with pytest.raises(ValueError, match="split"):
        LoRALinear(nn.Linear(4, 10), rank=2, parts=3)


def test_lora_per_head_rows_follow_tinyvits_qkv_layout():
    """TinyViT's qkv rows run head by head (q, k, v of head 0, then head 1, ...): one q and
    one v adapter each cover all heads' q (v) rows, and the k rows stay unchanged."""
    torch.manual_seed(0)
    heads, per = 2, 4
    layer = LoRALinear(nn.Linear(8, 3 * heads * per), rank=2, parts=3, adapted=(0, 2), heads=heads)
    with torch.no_grad():
        layer.lora_B.normal_()
    delta = layer.delta_weight().view(heads, 3, per, 8)  # (head, q/k/v, row, in)
    assert torch.all(delta[:, 1] == 0) and torch.all(delta[:, 0] != 0)
    blocks = compute_lora_delta(layer.lora_A, layer.lora_B, 1.0, 3, (0, 2)).view(3, heads, per, 8)
    assert torch.equal(delta.transpose(0, 1), blocks)  # the same change, rows regrouped
    x = torch.randn(5, 8)
    merged = layer.merge()
    assert torch.allclose(merged(x), layer(x), atol=1e-5)


def test_lora_count_litemedsam_by_hand():
    # q and v of every TinyViT attention block, rank 4: blocks 2 @ 128, 6 @ 160, 2 @ 320 wide
    report = compute_parameter_report(ModelConfig(method="lora"))
    per_width = lambda dim: 2 * (4 * dim + dim * 4)  # noqa: E731
    lora = 2 * per_width(128) + 6 * per_width(160) + 2 * per_width(320)
    assert report["groups"] == {"lora down and up": lora, "text affine": TEXT_AFFINE}
    assert lora == 29_696


def test_lora_model_merged_equals_unmerged(tiny_config):
    torch.manual_seed(0)
    model = create_model(tiny_config.model_copy(update={"method": "lora"})).eval()
    assert len(list(iter_lora_layers(model))) == 4  # tiny SAM has four blocks
    with torch.no_grad():
        for _, layer in iter_lora_layers(model):
            layer.lora_B.normal_(0.0, 0.1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        unmerged = model(x, ["liver", "kidney"])
        merge_lora(model)
        merged = model(x, ["liver", "kidney"])
    assert not list(iter_lora_layers(model))
    assert type(model.image_encoder.blocks[0].attn.qkv) is nn.Linear
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert not torch.allclose(unmerged, torch.zeros_like(unmerged))


def test_lora_injection_errors_and_meta():
    with pytest.raises(ValueError, match="no nn.Linear layer matches"):
        inject_lora(nn.Sequential(nn.Linear(2, 2)), 2, [LoRATarget("attn.qkv")])
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4))
        inject_lora(model, rank=2, targets=[LoRATarget("0")])
    assert model[0].lora_A.is_meta and model[0].lora_A.shape == (1, 2, 4)


def test_lora_rank_is_validated_and_recorded(tiny_config):
    with pytest.raises(ValidationError, match="lora_rank"):
        ModelConfig(lora_rank=0)
    model = create_model(tiny_config.model_copy(update={"method": "lora", "lora_rank": 3}))
    assert model.base_info.lora_rank == 3
    assert next(iter_lora_layers(model))[1].lora_A.shape == (2, 3, 32)
    assert create_model(tiny_config).base_info.lora_rank is None
