"""Singular-value tuning of linear and convolution layers (DESIGN.md 2).

A pretrained weight W (out x in; a conv weight viewed as out x (in*kh*kw)) is factorised once,
W = U diag(sigma) V^T, and frozen. Each singular value gets a trainable scale ``a`` (init 1) and
shift ``b`` (init 0):

    W' = U diag(ReLU(a * sigma + b)) V^T

so at initialisation W' = W. Trainable tensors carry the prefix ``svd_``. Depthwise convs
(one k x k filter per channel) are tuned the same way, their weight viewed as C x k².

Three ways to apply W':
* factorised, ((x V) * s') U^T: never materialises a weight-sized tensor, forward or backward;
* dense with gradients, x W'^T with W' rebuilt from U, s', V on each call;
* dense cached, W' built once and kept until ``a`` or ``b`` change (tracked through the
  tensors' version counters): inference, where it costs what the plain layer costs.
While the spectrum trains, each call takes the cheaper of the first two for its number of
tokens T (``prefer_factorised``): factorised costs about 2·T·r·(in+out) multiply-adds forward
and backward, dense 3·T·in·out (the weight's gradient is one more product) plus 2·in·out·r to
build W' and carry its gradient back. Few tokens (ViT-B's 16 x 16 grid at small batches)
favour the factorised form, many (TinyViT's full-resolution stage) the dense one; depthwise
convs have no factorised form and are always rebuilt.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SVD_PREFIX = "svd_"


@dataclass(frozen=True)
class SVDFactors:
    """Thin SVD of a weight viewed as a matrix: U (out x r), S (r,), Vh (r x in_flat)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def compute_svd(weight: torch.Tensor) -> SVDFactors:
    """Thin SVD of a linear (out x in) or conv (out x in x kh x kw) weight, in float32.

    The relative reconstruction error ||U diag(S) Vh - W|| / ||W|| is about 1e-6.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1).float()
    if matrix.shape[0] < matrix.shape[1]:
        # LAPACK's divide-and-conquer SVD is much slower on wide matrices (ViT-B's lin2:
        # 768 x 3072): factor the tall transpose, W^T = V S U^T, and swap.
        Vt, S, Ut = torch.linalg.svd(matrix.T, full_matrices=False)
        U, Vh = Ut.T, Vt.T
    else:
        U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return SVDFactors(U.contiguous(), S.contiguous(), Vh.contiguous())


def compute_svds(
    weights: Mapping[str, torch.Tensor], workers: int | None = None
) -> dict[str, SVDFactors]:
    """``compute_svd`` of several weights, by name: each SVD single-threaded, ``workers`` of
    them at a time (default: torch's intra-op thread count).

    At ViT sizes LAPACK's SVD gains little from threads, and its many short parallel regions
    stall whenever one thread is descheduled by another process (on a busy 2-core machine
    ViT-B's 50 SVDs took 2 minutes instead of 20 s). Independent single-threaded SVDs in
    parallel keep every core busy. torch's thread count is 1 meanwhile, then restored.
    """
    workers = max(1, min(workers or torch.get_num_threads(), len(weights)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="svd") as pool:
            factors = pool.map(compute_svd, weights.values())
            return dict(zip(weights, factors, strict=True))
    finally:
        torch.set_num_threads(threads)


def compute_singular_values(scale: torch.Tensor, shift: torch.Tensor, sigma: torch.Tensor):
    """The adapted spectrum s' = ReLU(a * sigma + b), shape (r,)."""
    return F.relu(scale * sigma + shift)


def compute_adapted_weight(factors: SVDFactors, scale: torch.Tensor, shift: torch.Tensor):
    """W' = U diag(ReLU(a * sigma + b)) Vh as a matrix (out x in_flat)."""
    s = compute_singular_values(scale, shift, factors.S)
    return (factors.U * s) @ factors.Vh


def prefer_factorised(tokens: int, rows: int, cols: int, rank: int) -> bool:
    """Whether ((x V) * s') U^T costs less than rebuilding W' (rows x cols) for ``tokens``
    inputs, forward plus backward, with gradients to the spectrum only (module docstring)."""
    factorised = 2 * tokens * rank * (rows + cols)
    dense = 3 * tokens * rows * cols + 2 * rows * cols * rank
    return factorised <= dense


class _SVDLayer(nn.Module):
    """Shared state of SVD-tuned layers: frozen factors (buffers) and the trainable spectrum."""

    def __init__(self, factors: SVDFactors, bias: torch.Tensor | None) -> None:
        super().__init__()
        # Non-persistent: the factors are derived from the base checkpoint (and cached on disk),
        # never part of a saved model or adapter.
        self.register_buffer("U", factors.U, persistent=False)
        self.register_buffer("S", factors.S, persistent=False)
        self.register_buffer("Vh", factors.Vh, persistent=False)
        rank = factors.S.shape[0]
        self.svd_scale = nn.Parameter(torch.ones(rank, device=factors.S.device))
        self.svd_shift = nn.Parameter(torch.zeros(rank, device=factors.S.device))
        if bias is None:
            self.bias = None
        else:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        return self.S.shape[0]

    def factors(self) -> SVDFactors:
        return SVDFactors(self.U, self.S, self.Vh)

    def singular_values(self) -> torch.Tensor:
        return compute_singular_values(self.svd_scale, self.svd_shift, self.S)

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and (
            self.svd_scale.requires_grad or self.svd_shift.requires_grad
        )

    def dense_matrix(self) -> torch.Tensor:
        """W' (out x in_flat), rebuilt only when the spectrum parameters changed."""
        a, b = self.svd_scale, self.svd_shift
        key = (
            a._version,
            b._version,
            a.data_ptr(),
            b.data_ptr(),
            self.U.data_ptr(),
            torch.is_inference_mode_enabled(),
        )
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, compute_adapted_weight(self.factors(), a, b))
        return self._cache[1]

    def _apply(self, fn, recurse=True):  # device or dtype moves invalidate the cache
        self._cache = None
        return super()._apply(fn, recurse)

    def adapted_matrix(self) -> torch.Tensor:
        """W' (out x in_flat): with gradients to the spectrum while it trains, else cached."""
        if self._needs_grad():
            return compute_adapted_weight(self.factors(), self.svd_scale, self.svd_shift)
        return self.dense_matrix()

    def use_factorised(self, tokens: int) -> bool:
        """Factorised for ``tokens`` inputs when the spectrum trains and that is cheaper."""
        rows, cols = self.U.shape[0], self.Vh.shape[1]
        return self._needs_grad() and prefer_factorised(tokens, rows, cols, self.rank)


class SVDLinear(_SVDLayer):
    """An ``nn.Linear`` whose weight is U diag(ReLU(a*sigma+b)) Vh. Input (..., in) -> (..., out)."""

    def __init__(self, factors: SVDFactors, bias: torch.Tensor | None) -> None:
        super().__init__(factors, bias)
        self.out_features, self.in_features = factors.U.shape[0], factors.Vh.shape[1]

    @classmethod
    def from_linear(cls, layer: nn.Linear, factors: SVDFactors | None = None) -> SVDLinear:
        return cls(factors or _factors_for(layer.weight), layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_factorised(x.numel() // self.in_features):
            h = F.linear(x, self.Vh) * self.singular_values()
            return F.linear(h, self.U, self.bias)
        return F.linear(x, self.adapted_matrix(), self.bias)

    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W' folded in (frozen like the rest of the base)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            layer.to(self.U.device, self.U.dtype)
            layer.weight.copy_(
                compute_adapted_weight(self.factors(), self.svd_scale, self.svd_shift)
            )
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class SVDConv2d(_SVDLayer):
    """An ``nn.Conv2d`` whose weight, viewed as out x (in/groups*kh*kw), is SVD-tuned: a dense
    conv (groups=1) or a depthwise one (groups = in = out: C x k²).

    Factorised form (dense convs): a conv with the r filters of Vh, a per-channel scale s',
    then a 1x1 conv with U. Input (B, in, H, W) -> (B, out, H', W').
    """

    def __init__(self, factors: SVDFactors, bias: torch.Tensor | None, conv: nn.Conv2d) -> None:
        super().__init__(factors, bias)
        depthwise = conv.groups == conv.in_channels == conv.out_channels
        if (conv.groups != 1 and not depthwise) or conv.padding_mode != "zeros":
            raise ValueError(
                f"SVD tuning supports Conv2d with groups=1 or depthwise, and zero padding, got "
                f"groups={conv.groups} ({conv.in_channels} -> {conv.out_channels} channels), "
                f"padding_mode={conv.padding_mode!r}"
            )
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation, self.groups = conv.padding, conv.dilation, conv.groups

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, factors: SVDFactors | None = None) -> SVDConv2d:
        return cls(factors or _factors_for(layer.weight), layer.bias, layer)

    def _weight_shape(self, rows: int) -> tuple[int, ...]:
        return (rows, self.in_channels // self.groups, *self.kernel_size)

    def use_factorised(self, tokens: int) -> bool:
        return self.groups == 1 and super().use_factorised(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_factorised(x.numel() // self.in_channels):
            filters = self.Vh.view(self._weight_shape(self.rank))
            h = F.conv2d(x, filters, None, self.stride, self.padding, self.dilation)
            h = h * self.singular_values().view(1, -1, 1, 1)
            return F.conv2d(h, self.U[:, :, None, None], self.bias)
        weight = self.adapted_matrix().view(self._weight_shape(self.out_channels))
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def merge(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with W' folded in."""
        layer = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            layer.to(self.U.device, self.U.dtype)
            weight = compute_adapted_weight(self.factors(), self.svd_scale, self.svd_shift)
            layer.weight.copy_(weight.view_as(layer.weight))
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, rank={self.rank}"
        )


SVD_LAYER_TYPES = (SVDLinear, SVDConv2d)


def _factors_for(weight: torch.Tensor) -> SVDFactors:
    """Factors of a real weight, or correctly shaped empty factors for a meta-device weight."""
    if weight.device.type != "meta":
        return compute_svd(weight)
    out, inner = weight.shape[0], weight[0].numel()
    rank = min(out, inner)
    meta = {"device": "meta", "dtype": torch.float32}
    return SVDFactors(
        torch.empty(out, rank, **meta), torch.empty(rank, **meta), torch.empty(rank, inner, **meta)
    )


def find_targets(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of Linear/Conv2d submodules matching any glob pattern (``*`` spans dots)."""
    patterns = tuple(patterns)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
        and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]


def inject_svd(
    model: nn.Module,
    patterns: Iterable[str],
    factors: dict[str, SVDFactors] | None = None,
) -> dict[str, SVDFactors]:
    """Replace each matching Linear/Conv2d of ``model`` in place by its SVD-tuned twin.

    ``factors`` may supply precomputed SVDs by module name (e.g. from the on-disk cache);
    the others are computed. Returns the factors used, by module name.
    """
    factors = dict(factors or {})
    names = find_targets(model, patterns)
    if not names:
        raise ValueError(f"no Linear or Conv2d layer matches the SVD targets {list(patterns)}")
    layers = {name: model.get_submodule(name) for name in names}
    for name, layer in layers.items():
        known = factors.get(name)
        if known is not None and known.U.shape[0] != layer.weight.shape[0]:
            raise ValueError(
                f"cached SVD factors for {name} have {known.U.shape[0]} rows, "
                f"the layer has {layer.weight.shape[0]} outputs"
            )
    missing = {
        name: layer.weight
        for name, layer in layers.items()
        if name not in factors and not layer.weight.is_meta
    }
    if missing:
        factors.update(compute_svds(missing))
    for name, layer in layers.items():
        known = factors.get(name)  # None only on the meta device: shaped empty factors
        if isinstance(layer, nn.Linear):
            svd_layer: _SVDLayer = SVDLinear.from_linear(layer, known)
        else:
            svd_layer = SVDConv2d.from_conv(layer, known)
        factors[name] = svd_layer.factors()
        model.set_submodule(name, svd_layer)
    return factors


def iter_svd_layers(model: nn.Module) -> Iterator[tuple[str, _SVDLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, SVD_LAYER_TYPES):
            yield name, module


def merge_svd(model: nn.Module) -> nn.Module:
    """Fold every SVD-tuned layer of ``model`` into a plain layer, in place; returns ``model``."""
    for name, layer in list(iter_svd_layers(model)):
        model.set_submodule(name, layer.merge())
    return model


def compute_svd_regulariser(model: nn.Module) -> torch.Tensor:
    """sum over layers of ||1 - a||_2 + ||b||_2 (DESIGN.md 2; weight it by lambda)."""
    terms = [
        torch.linalg.vector_norm(1 - layer.svd_scale) + torch.linalg.vector_norm(layer.svd_shift)
        for _, layer in iter_svd_layers(model)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())
