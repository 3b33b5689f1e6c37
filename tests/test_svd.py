import pytest
import torch
from torch import nn

from ssam.tuning.svd import (
    SVDConv2d,
    SVDLinear,
    compute_svd,
    compute_svd_regulariser,
    compute_svds,
    find_targets,
    inject_svd,
    merge_svd,
)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _perturb(layer) -> None:
    with torch.no_grad():
        layer.svd_scale.uniform_(0.5, 1.5)
        layer.svd_shift.normal_(0.0, 0.05)


@pytest.mark.parametrize("shape", [(96, 48), (48, 96), (64, 64)])
def test_svd_reconstructs_linear_weight(shape):
    weight = torch.randn(*shape)
    f = compute_svd(weight)
    assert f.S.shape == (min(shape),)
    assert _relative((f.U * f.S) @ f.Vh, weight) < 1e-5


def test_wide_svd_is_orthonormal_and_parallel_svds_agree():
    torch.manual_seed(4)
    weights = {
        "wide": torch.randn(24, 80),
        "tall": torch.randn(80, 24),
        "conv": torch.randn(8, 4, 3, 3),
    }
    threads = torch.get_num_threads()
    factors = compute_svds(weights, workers=2)
    assert torch.get_num_threads() == threads
    for name, weight in weights.items():
        f, single = factors[name], compute_svd(weight)
        matrix = weight.reshape(weight.shape[0], -1)
        r = min(matrix.shape)
        assert f.U.shape == (matrix.shape[0], r) and f.Vh.shape == (r, matrix.shape[1])
        assert _relative((f.U * f.S) @ f.Vh, matrix) < 1e-5
        assert torch.allclose(f.U.T @ f.U, torch.eye(r), atol=1e-5)
        assert torch.allclose(f.Vh @ f.Vh.T, torch.eye(r), atol=1e-5)
        assert torch.all(f.S[:-1] >= f.S[1:]) and torch.allclose(f.S, single.S)


def test_svd_reconstructs_conv_weight():
    weight = torch.randn(16, 8, 3, 3)
    f = compute_svd(weight)
    assert f.U.shape == (16, 16) and f.Vh.shape == (16, 72)
    assert _relative(((f.U * f.S) @ f.Vh).view_as(weight), weight) < 1e-5


def test_init_equals_original_linear_and_conv():
    torch.manual_seed(0)
    linear, conv = nn.Linear(40, 24), nn.Conv2d(6, 10, 3, padding=1, bias=False)
    x, img = torch.randn(5, 40), torch.randn(2, 6, 9, 9)
    svd_linear, svd_conv = SVDLinear.from_linear(linear), SVDConv2d.from_conv(conv)
    assert _relative(svd_linear(x), linear(x)) < 1e-5
    assert _relative(svd_conv(img), conv(img)) < 1e-5
    with torch.no_grad():
        assert _relative(svd_linear(x), linear(x)) < 1e-5
        assert _relative(svd_conv(img), conv(img)) < 1e-5


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3"])
def test_factorised_dense_and_merged_paths_agree(kind):
    torch.manual_seed(1)
    if kind == "linear":
        base, x = nn.Linear(32, 48), torch.randn(7, 32)
        layer = SVDLinear.from_linear(base)
    else:
        k = 1 if kind == "conv1x1" else 3
        base, x = nn.Conv2d(12, 8, k, padding=k // 2, bias=False), torch.randn(2, 12, 6, 6)
        layer = SVDConv2d.from_conv(base)
    _perturb(layer)
    factorised = layer(x)  # grad enabled, spectrum trainable, few tokens: factorised path
    assert layer.use_factorised(2)
    with torch.no_grad():
        assert not layer.use_factorised(2)
        dense = layer(x)
    merged = layer.merge()
    assert type(merged) is type(base)
    with torch.no_grad():
        assert _relative(dense, factorised) < 1e-5
        assert _relative(merged(x), factorised) < 1e-5


def test_factorised_backward_keeps_no_weight_sized_tensor():
    torch.manual_seed(2)
    layer = SVDLinear.from_linear(nn.Linear(64, 80))
    x = torch.randn(3, 64)
    saved_sizes = []
    factor_storage = {layer.U.data_ptr(), layer.Vh.data_ptr()}

    def pack(t):
        # The frozen factors are saved by reference; anything else would be new memory.
        if t.data_ptr() not in factor_storage:
            saved_sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.square().sum().backward()
    weight_size = 64 * 80
    assert saved_sizes and max(saved_sizes) < weight_size
    assert layer.svd_scale.grad is not None and layer.svd_shift.grad is not None
    assert layer.U.grad is None and layer.Vh.grad is None


def test_dense_weight_cached_until_parameters_change():
    layer = SVDLinear.from_linear(nn.Linear(16, 16)).eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        layer(x)
        first = layer.dense_matrix()
        layer(x)
        assert layer.dense_matrix() is first
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()
    optimiser.step()
    with torch.no_grad():
        second = layer.dense_matrix()
    assert second is not first
    assert not torch.equal(second, first)


def test_relu_clamps_negative_singular_values():
    layer = SVDLinear.from_linear(nn.Linear(8, 8))
    with torch.no_grad():
        layer.svd_scale.fill_(-1.0)
    assert torch.all(layer.singular_values() == 0)


def test_inject_and_merge_model():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    x = torch.randn(5, 8)
    expected = model(x)
    factors = inject_svd(model, ["0", "2"])
    assert set(factors) == {"0", "2"}
    assert isinstance(model[0], SVDLinear) and isinstance(model[2], SVDLinear)
    assert _relative(model(x), expected) < 1e-5
    assert compute_svd_regulariser(model).item() == pytest.approx(0.0, abs=1e-6)
    _perturb(model[0])
    adapted = model(x).detach()
    assert compute_svd_regulariser(model).item() > 0
    merge_svd(model)
    assert type(model[0]) is nn.Linear
    assert _relative(model(x), adapted) < 1e-5


def test_find_targets_glob_and_unmatched_patterns():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()))
    assert find_targets(model, ["*"]) == ["0", "1.0"]
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        inject_svd(model, ["nothing.*"])


def test_grouped_conv_is_refused():
    with pytest.raises(ValueError, match="groups=1 or depthwise"):
        SVDConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


def test_depthwise_conv_is_tuned_as_channels_by_kernel():
    """A depthwise conv (TinyViT's 3x3 per-channel filters) is C x k² under SVD: it starts
    equal, trains through its rebuilt weight (no factorised form), and merges exactly."""
    torch.manual_seed(3)
    base = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
    layer = SVDConv2d.from_conv(base)
    assert layer.rank == 9 and layer.U.shape == (16, 9) and layer.Vh.shape == (9, 9)
    x = torch.randn(2, 16, 11, 11)
    assert _relative(layer(x), base(x)) < 1e-5
    _perturb(layer)
    assert not layer.use_factorised(1)  # depthwise: always the rebuilt weight
    out = layer(x)
    out.square().sum().backward()
    assert layer.svd_scale.grad.abs().sum() > 0 and layer.svd_shift.grad.abs().sum() > 0
    merged = layer.merge()
    assert merged.groups == 16 and type(merged) is nn.Conv2d
    with torch.no_grad():
        assert _relative(merged(x), out) < 1e-5 and _relative(layer(x), out) < 1e-5


@pytest.mark.parametrize("tokens", [4, 50_000])
def test_training_path_follows_cost_and_both_give_the_same_gradients(tokens):
    """Few tokens: ((x V) * s') U^T; many: W' rebuilt per call. Same outputs and gradients."""
    torch.manual_seed(4)
    layer = SVDLinear.from_linear(nn.Linear(128, 128))  # square: dense wins beyond 256 tokens
    _perturb(layer)
    x = torch.randn(tokens, 128)
    factorised = layer.use_factorised(tokens)
    assert factorised == (tokens == 4)
    grads = []
    for force in (True, False):
        layer.zero_grad()
        layer.use_factorised = lambda t, force=force: force  # the other path, same layer
        layer(x).sin().sum().backward()
        grads.append((layer.svd_scale.grad.clone(), layer.svd_shift.grad.clone()))
    del layer.use_factorised
    assert _relative(grads[0][0], grads[1][0]) < 1e-4 and _relative(grads[0][1], grads[1][1]) < 1e-4
