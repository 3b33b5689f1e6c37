"""Label-name prompts (DESIGN.md 5): frozen CLIP text tower, feature cache, text-affine layer.

label name -> CLIP tokenizer -> CLIP ``encode_text`` (unnormalised) -> TextAffine -> one prompt
token for SAM's mask decoder. Only CLIP's text tower is built and kept in memory; features are
computed once per distinct label name and cached, so training steps never run CLIP.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssam.errors import CheckpointError
from ssam.sam.checkpoint import check_state_keys, read_state_dict
from ssam.weights import WeightsFile

# Tensors of OpenAI's archive that are settings, not weights of the text tower.
_OPENAI_SETTINGS = {"input_resolution", "context_length", "vocab_size", "logit_scale", "logit_bias"}


@dataclass(frozen=True)
class TextEncoderSpec:
    """An open_clip text tower: its config, tokenizer name and official weights."""

    name: str
    embed_dim: int
    text_cfg: dict = field(hash=False)
    quick_gelu: bool = True
    tokenizer: str = "ViT-B-32"
    weights: WeightsFile | None = None


# open_clip's "ViT-B-32-quickgelu" text config, spelled out so that importing this module does
# not import open_clip (seconds); a test checks it against open_clip's own.
CLIP_B32_TEXT_CFG = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
}

TEXT_ENCODERS: dict[str, TextEncoderSpec] = {
    # OpenAI CLIP ViT-B/32 (QuickGELU); the URL embeds the file's SHA-256.
    "clip_vit_b32": TextEncoderSpec(
        "clip_vit_b32",
        512,
        CLIP_B32_TEXT_CFG,
        weights=WeightsFile(
            "ViT-B-32.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        ),
    ),
    # Same architecture, two narrow layers: for tests and the offline demo.
    "tiny": TextEncoderSpec(
        "tiny",
        512,
        {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    ),
}


def get_text_spec(name: str) -> TextEncoderSpec:
    try:
        return TEXT_ENCODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown text encoder {name!r}; known: {', '.join(sorted(TEXT_ENCODERS))}"
        ) from None


def build_text_tower(spec: TextEncoderSpec) -> nn.Module:
    """open_clip's text tower of ``spec``, randomly initialised."""
    from open_clip.model import _build_text_tower

    return _build_text_tower(spec.embed_dim, dict(spec.text_cfg), quick_gelu=spec.quick_gelu)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_clip_text_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Text-tower tensors of a CLIP weights file, in open_clip's key layout.

    Accepts open_clip state dicts (``.safetensors``, ``.bin``, ``.pt``; full CLIP or text only)
    and OpenAI's original TorchScript archive (``ViT-B-32.pt``), read with ``torch.jit.load``
    on the CPU: TorchScript's own loader, which does not unpickle arbitrary Python objects.
    """
    path = Path(path)
    if path.is_file() and _is_torchscript(path):
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError as err:
            raise CheckpointError(f"{path}: unreadable TorchScript CLIP archive ({err})") from None
    else:
        state = read_state_dict(path)
    text = {}
    for key, value in state.items():
        key = key.removeprefix("text.")
        if key.startswith("visual.") or key in _OPENAI_SETTINGS:
            continue
        text[key] = value
    return text


def load_text_tower(spec: TextEncoderSpec, path: str | Path | None) -> nn.Module:
    """The text tower of ``spec`` with weights from ``path`` (random init when None)."""
    tower = build_text_tower(spec)
    if path is not None:
        state = read_clip_text_state(path)
        expected = tower.state_dict()
        check_state_keys(state, expected, path, f"not a {spec.name} text tower")
        wrong = [k for k in expected if expected[k].shape != state[k].shape]
        if wrong:
            raise CheckpointError(
                f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                f"{spec.name} needs {tuple(expected[wrong[0]].shape)}"
            )
        tower.load_state_dict(state)
    return tower.eval().requires_grad_(False)


def normalise_label(name: str) -> str:
    """Label names compare after trimming and collapsing whitespace."""
    cleaned = " ".join(str(name).split())
    if not cleaned:
        raise ValueError("label names must not be empty")
    return cleaned


class TextEncoder(nn.Module):
    """Frozen CLIP text tower with a per-label feature cache. names -> (N, embed_dim) float32.

    The cache keeps the ``max_cached`` most recently used names (2 KB each for CLIP ViT-B/32),
    so a server asked for ever new names does not grow without bound.
    """

    def __init__(
        self, tower: nn.Module, tokenizer, spec: TextEncoderSpec, max_cached: int = 4096
    ) -> None:
        super().__init__()
        if max_cached < 1:
            raise ValueError(f"max_cached must be >= 1, got {max_cached}")
        self.tower = tower.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_cached = max_cached
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self.tower.eval()  # frozen: dropout and the like stay off
        return self

    def cached_labels(self) -> list[str]:
        return list(self._features)

    @torch.no_grad()
    def encode(self, names: Sequence[str], device: torch.device | str | None = None):
        """CLIP features of ``names`` (N, D), computing only names not seen before."""
        keys = [normalise_label(n) for n in names]
        tower_device = next(self.tower.parameters()).device
        found = {}
        for key in dict.fromkeys(keys):
            features = self._features.get(key)
            if features is None:
                # One name per forward: a label's features must not depend on which other names
                # happened to be encoded with it (batched kernels differ in the last bits).
                tokens = self.tokenizer([key]).to(tower_device)
                features = self.tower(tokens).float().cpu()[0]
            found[key] = features
            self._features[key] = features
            self._features.move_to_end(key)
            while len(self._features) > self.max_cached:
                self._features.popitem(last=False)
        out = torch.stack([found[k] for k in keys])
        return out.to(device) if device is not None else out


def build_text_encoder(name: str, weights: str | Path | None) -> TextEncoder:
    """Frozen text encoder ``name`` (see TEXT_ENCODERS) loaded from ``weights`` (or random)."""
    import open_clip

    spec = get_text_spec(name)
    tower = load_text_tower(spec, weights)
    return TextEncoder(tower, open_clip.get_tokenizer(spec.tokenizer), spec)


class TextAffine(nn.Module):
    """Linear(in -> out), ReLU, BatchNorm1d(out): CLIP features (N, in) -> prompt tokens (N, out).

    BatchNorm needs at least two different rows to estimate statistics. A training batch with a
    single row, or with one label repeated, is normalised with the running statistics (as in
    eval) and leaves them unchanged, so training and inference agree on single-label data.
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 256) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim)
        # True: a training batch is normalised by its statistics without updating the running
        # ones (a batch decoded in chunks updates them once, not once per chunk).
        self.hold_running_stats = False

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.linear(features))
        batch_stats = self.training and torch.unique(features, dim=0).shape[0] > 1
        n = self.norm
        if batch_stats and not self.hold_running_stats:
            return n(h)
        if batch_stats:
            return F.batch_norm(h, None, None, n.weight, n.bias, True, 0.0, n.eps)
        return F.batch_norm(h, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
