"""SAM built from official modules and checkpoints, at any input size."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ssam.config.model import ModelConfig
from ssam.factory import create_model
from ssam.sam.build import PIXEL_MEAN, PIXEL_STD, build_empty_sam, build_sam
from ssam.sam.checkpoint import (
    adapt_state_dict,
    load_sam_weights,
    resize_pos_embed,
    resize_rel_pos,
)
from ssam.sam.variants import SAM_VARIANTS, get_sam_spec
from ssam.sam.vit import compute_window_size


def _official_sam(spec) -> Sam:
    """segment_anything's own ``_build_sam`` recipe, spelled out for an arbitrary spec."""
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder.depth,
            embed_dim=spec.encoder.embed_dim,
            img_size=1024,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder.num_heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder.global_attn_indexes,
            window_size=14,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    ).eval()


@pytest.fixture(scope="module")
def official_and_ours(tiny_checkpoint, tmp_path_factory):
    official = _official_sam(get_sam_spec("tiny"))
    official.load_state_dict(torch.load(tiny_checkpoint, map_location="cpu", weights_only=True))
    config = ModelConfig(
        variant="tiny",
        image_size=1024,
        sam_checkpoint=tiny_checkpoint,
        text_encoder="tiny",
        allow_download=False,
        svd_cache=False,
    )
    ours = create_model(config).eval()
    return official, ours


def test_adapted_encoder_equals_official_at_1024(official_and_ours):
    official, ours = official_and_ours
    blocks = ours.image_encoder.blocks
    assert [b.window_size for b in blocks] == [14, 0, 14, 0]  # windows and global blocks
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = official.image_encoder(x)
        got = ours.encode_images(x)
        ours.train()  # the factorised (training) path gives the same result
        got_factorised = ours.encode_images(x).detach()
        ours.eval()
    assert (got - expected).abs().max().item() < 1e-4
    assert (got_factorised - expected).abs().max().item() < 1e-4


def test_full_model_equals_official_sam_with_box_prompt(official_and_ours):
    official, ours = official_and_ours
    torch.manual_seed(1)
    raw = torch.rand(3, 1024, 1024) * 255
    box = torch.tensor([[200.0, 300.0, 700.0, 800.0]])
    with torch.no_grad():
        out = official([{"image": raw, "original_size": (1024, 1024), "boxes": box}], False)
        normalised = (raw - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[
            :, None, None
        ]
        low_res = ours.decode(ours.encode_images(normalised[None]), boxes=box)
        full = ours(normalised[None], boxes=box)
    assert (low_res - out[0]["low_res_logits"]).abs().max().item() < 1e-4
    assert full.shape == (1, 1, 1024, 1024)


def test_empty_build_then_load_equals_initialised_build(tiny_checkpoint):
    spec = get_sam_spec("tiny")
    reference = build_sam(spec, 256)
    load_sam_weights(reference, tiny_checkpoint, spec)
    empty = build_empty_sam(spec, 256)
    load_sam_weights(empty, tiny_checkpoint, spec)
    ours = dict(empty.named_buffers()) | dict(empty.named_parameters())
    expected = dict(reference.named_buffers()) | dict(reference.named_parameters())
    assert ours.keys() == expected.keys() and {"pixel_mean", "pixel_std"} <= ours.keys()
    for name, tensor in expected.items():
        assert ours[name].device.type == "cpu" and torch.equal(ours[name], tensor), name


@pytest.mark.parametrize(
    ("size", "window"),
    [(1024, 14), (256, 16), (512, 16), (768, 16), (640, 10), (64, 4), (496, 31), (928, 29)],
)
def test_window_size_never_pads_below_1024(size, window):
    spec = SAM_VARIANTS["vit_b"]
    assert compute_window_size(spec, size) == window
    if size != 1024:
        assert (size // 16) % window == 0


def test_small_input_blocks_and_tables(tiny_checkpoint):
    with torch.device("meta"):
        sam = build_sam(get_sam_spec("vit_b"), 256)
    enc = sam.image_encoder
    assert tuple(enc.pos_embed.shape) == (1, 16, 16, 768)
    for i, block in enumerate(enc.blocks):
        # every block attends over the whole 16x16 grid: no padding tokens anywhere
        assert block.window_size in (0, 16)
        assert tuple(block.attn.rel_pos_h.shape) == (31, 64), i


def test_adapt_state_dict_pools_positions_and_interpolates_tables(tiny_checkpoint):
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    sam = build_sam(get_sam_spec("tiny"), 256)
    fitted = adapt_state_dict(state, sam)
    pos = state["image_encoder.pos_embed"]
    expected_pos = F.adaptive_avg_pool2d(pos.permute(0, 3, 1, 2), 16).permute(0, 2, 3, 1)
    assert torch.allclose(fitted["image_encoder.pos_embed"], expected_pos)
    window_table = state["image_encoder.blocks.0.attn.rel_pos_h"]  # 27 rows (window 14)
    global_table = state["image_encoder.blocks.1.attn.rel_pos_h"]  # 127 rows (64x64 grid)
    assert window_table.shape[0] == 27 and global_table.shape[0] == 127
    assert fitted["image_encoder.blocks.0.attn.rel_pos_h"].shape[0] == 31
    assert fitted["image_encoder.blocks.1.attn.rel_pos_h"].shape[0] == 31
    resized = resize_rel_pos(global_table, 31)
    reference = F.interpolate(global_table.T[None], size=31, mode="linear")[0].T
    assert torch.allclose(resized, reference)
    assert torch.equal(resize_rel_pos(window_table, 27), window_table)
    # every resized table holds the interpolated values, not just the right shape
    for key, value in state.items():
        if key.endswith(("rel_pos_h", "rel_pos_w")):
            expected = resize_rel_pos(value, sam.state_dict()[key].shape[0])
            assert torch.allclose(fitted[key], expected) and expected.abs().sum() > 0, key
    grown = resize_pos_embed(pos, 80)
    assert grown.shape == (1, 80, 80, pos.shape[-1])


@pytest.mark.parametrize("size", range(128, 1024, 16))
def test_no_window_is_smaller_than_half_sams(size):
    window = compute_window_size(SAM_VARIANTS["vit_b"], size)
    assert window >= 7 and (size // 16) % window == 0


@pytest.mark.parametrize("size", [496, 928])
def test_every_token_reaches_beyond_itself_at_odd_sizes(size):
    """A windowed block at S=496 (a prime 31x31 grid) and S=928 (58x58): changing one token
    changes the output of tokens beyond its own 7x7 neighbourhood (with windows of 1, as
    before, it changed none but itself)."""
    torch.manual_seed(0)
    block = build_sam(get_sam_spec("vit_b"), size).image_encoder.blocks[0]  # windowed
    grid = size // 16
    x = torch.randn(1, grid, grid, 768)
    y = x.clone()
    y[0, 0, 0] += torch.randn(768)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        changed = (block(x) - block(y)).abs().amax(-1)[0] > 1e-6
    assert block.window_size >= 7 and changed.sum() > 49
