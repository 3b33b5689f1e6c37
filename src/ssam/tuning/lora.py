"""Low-rank adaptation (LoRA, Hu et al. 2021) of linear layers, as SAMed applies it to SAM.

A frozen linear layer y = x W^T + c gets a trainable low-rank change on chosen output blocks:

    W' = W + scaling * ΔW,   ΔW[part p] = B_p A_p  (A_p: r x in, B_p: out/parts x r)

SAMed (Zhang & Liu 2023) adapts the query and value blocks of every encoder ``attn.qkv`` (parts
(q, k, v), adapted q and v), with rank 4 and no scaling. ``B`` starts at zero, so the adapted
model equals the base model at initialisation. Trainable tensors carry the prefix ``lora_``.

The wrapped layer stays intact (``base_layer``); ``compute_lora_delta`` gives ΔW, and merging
folds it into a plain ``nn.Linear``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LORA_PREFIX = "lora_"


@dataclass(frozen=True)
class LoRATarget:
    """Linear layers matching ``pattern`` (glob over module names, ``*`` spans dots), their
    output split into ``parts`` equal blocks, of which the blocks ``adapted`` get an adapter.

    ``per_head``: the output rows are ordered head by head, each head holding its ``parts``
    (TinyViT's qkv: q, k, v per head), not part by part (SAM ViT's qkv: all q, all k, all v);
    the number of heads is the ``num_heads`` of the layer's parent module. One adapter still
    covers a part across all heads.
    """

    pattern: str
    parts: int = 1
    adapted: tuple[int, ...] = (0,)
    per_head: bool = False


def qkv_targets(pattern: str, per_head: bool) -> tuple[LoRATarget, ...]:
    """SAMed's placement: q and v of every fused qkv projection matching ``pattern``."""
    return (LoRATarget(pattern, parts=3, adapted=(0, 2), per_head=per_head),)


def expand_lora_up(up: torch.Tensor, parts: int, adapted: Sequence[int]) -> torch.Tensor:
    """Per-block up projections ``up`` (n, out/parts, r) -> one (out, n*r) matrix.

    Row block ``adapted[j]`` holds ``up[j]`` in columns j*r:(j+1)*r; other rows are zero, so
    ``expand_lora_up(B) @ A.flatten(0, 1)`` is ΔW with zero rows where no adapter sits.
    Differentiable, and shape-only on the meta device.
    """
    n, rows, rank = up.shape
    blocks = []
    for p in range(parts):
        if p in adapted:
            j = adapted.index(p)
            blocks.append(F.pad(up[j], (j * rank, (n - j - 1) * rank)))
        else:
            blocks.append(up.new_zeros(rows, n * rank))
    return torch.cat(blocks, dim=0)


def compute_lora_delta(
    down: torch.Tensor,
    up: torch.Tensor,
    scaling: float,
    parts: int = 1,
    adapted: Sequence[int] = (0,),
) -> torch.Tensor:
    """ΔW (out x in) = scaling * [B_p A_p on adapted blocks, 0 elsewhere].

    ``down`` (n, r, in) holds the A_j, ``up`` (n, out/parts, r) the B_j, j over ``adapted``.
    """
    return scaling * (expand_lora_up(up, parts, adapted) @ down.flatten(0, 1))


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank change. Input (..., in) -> (..., out).

    ``lora_A`` (n, r, in) is Kaiming-uniform initialised (as peft and SAMed), ``lora_B``
    (n, out/parts, r) zero, n = len(adapted).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float | None = None,
        parts: int = 1,
        adapted: Sequence[int] = (0,),
        heads: int = 1,
    ) -> None:
        super().__init__()
        out_features, in_features = base_layer.out_features, base_layer.in_features
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        bad_split = out_features % (parts * heads)
        if bad_split or not adapted or any(not 0 <= p < parts for p in adapted):
            raise ValueError(
                f"cannot split {out_features} outputs into {parts} parts of {heads} head(s) "
                f"and adapt {adapted}"
            )
        self.base_layer = base_layer.requires_grad_(False)
        self.rank, self.parts, self.adapted, self.heads = rank, parts, tuple(adapted), heads
        self.scaling = (alpha if alpha is not None else rank) / rank
        device = base_layer.weight.device
        n = len(self.adapted)
        self.lora_A = nn.Parameter(torch.empty(n, rank, in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(n, out_features // parts, rank, device=device))
        for j in range(n):
            nn.init.kaiming_uniform_(self.lora_A.data[j], a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def _to_layer_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(out, ...) rows ordered part by part -> the layer's order (head by head if heads)."""
        if self.heads == 1:
            return rows
        per = rows.shape[0] // (self.parts * self.heads)
        split = rows.view(self.parts, self.heads, per, *rows.shape[1:]).transpose(0, 1)
        return split.reshape(rows.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out x in), scaled."""
        delta = compute_lora_delta(self.lora_A, self.lora_B, self.scaling, self.parts, self.adapted)
        return self._to_layer_rows(delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls (in -> n*r -> out) instead of building the out x in change.
        h = F.linear(x, self.lora_A.flatten(0, 1))
        up = self._to_layer_rows(expand_lora_up(self.lora_B, self.parts, self.adapted))
        return self.base_layer(x) + F.linear(h, up) * self.scaling

    def merge(self) -> nn.Linear:
        """A plain frozen ``nn.Linear`` with W + ΔW; the wrapped layer is left unchanged."""
        base = self.base_layer
        layer = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None)
        with torch.no_grad():
            layer.to(base.weight.device, base.weight.dtype)
            layer.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
            if base.bias is not None:
                layer.bias.copy_(base.bias)
        return layer.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, parts={self.parts}, " + (
            f"adapted={self.adapted}, heads={self.heads}"
        )


def inject_lora(
    model: nn.Module,
    rank: int,
    targets: Iterable[LoRATarget],
    alpha: float | None = None,
) -> list[str]:
    """Wrap each ``nn.Linear`` matching a target in a ``LoRALinear``, in place.

    Returns the wrapped module names; a target that matches nothing is a ValueError.
    """
    wrapped = []
    for target in targets:
        names = [
            name
            for name, module in model.named_modules()
            if type(module) is nn.Linear and fnmatch.fnmatchcase(name, target.pattern)
        ]
        if not names:
            raise ValueError(f"no nn.Linear layer matches the LoRA target {target.pattern!r}")
        for name in names:
            heads = 1
            if target.per_head:
                heads = model.get_submodule(name.rpartition(".")[0]).num_heads
            base = model.get_submodule(name)
            layer = LoRALinear(base, rank, alpha, target.parts, target.adapted, heads)
            model.set_submodule(name, layer)
            wrapped.append(name)
    return wrapped


def iter_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer of ``model`` into a plain ``nn.Linear``, in place; returns it."""
    for name, layer in list(iter_lora_layers(model)):
        model.set_submodule(name, layer.merge())
    return model
