import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from ssam.train.losses import focal_loss, segmentation_loss, soft_dice_loss


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    return logits, target


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_focal_matches_hand_computed_value():
    logits, target = _tiny()
    expected = 0.0
    for x, t in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p_t = _sigmoid(x) if t == 1 else 1 - _sigmoid(x)
        alpha_t = 0.75 if t == 1 else 0.25
        expected += -alpha_t * (1 - p_t) ** 3 * math.log(p_t)
    expected /= 4
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_zero_logits_give_closed_form_values():
    # p = 0.5 everywhere: focal = mean(alpha_t) * 0.5**3 * ln 2, Dice = 1 - (2*1 + 1) / (2 + 2 + 1)
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert focal_loss(logits, target).item() == pytest.approx(0.5 * 0.125 * math.log(2))
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.4)
    total = segmentation_loss(logits, target).item()
    assert total == pytest.approx(0.0625 * math.log(2) + 0.4)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 3.0), (0.25, 2.0), (0.5, 0.0)])
def test_focal_matches_torchvision(alpha, gamma):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64) * 4
    target = (torch.rand(3, 1, 8, 8, generator=gen) > 0.6).double()
    ours = focal_loss(logits, target, alpha=alpha, gamma=gamma)
    ref = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    per_pixel = focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    assert per_pixel.shape == (3, 8, 8)


def test_shapes_b1hw_and_bhw_agree():
    logits, target = _tiny()
    a = segmentation_loss(logits, target)
    b = segmentation_loss(logits[:, 0], target[:, 0])
    c = segmentation_loss(logits, target[:, 0])
    assert a.item() == pytest.approx(b.item()) == pytest.approx(c.item())


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        segmentation_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="logits"):
        focal_loss(torch.zeros(4, 4), torch.zeros(4, 4))


def test_extreme_logits_are_finite_with_finite_gradients():
    logits = torch.tensor([[[100.0, -100.0], [100.0, -100.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two right, two badly wrong
    loss = segmentation_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    # badly wrong pixels: (1 - p_t) ** gamma ~ 1 and BCE ~ 100, so focal ~ alpha_t * 100
    focal = focal_loss(logits.detach(), target, reduction="none")
    assert focal[0, 1, 0].item() == pytest.approx(0.25 * 100, rel=1e-6)
    assert focal[0, 1, 1].item() == pytest.approx(0.75 * 100, rel=1e-6)
    assert focal[0, 0, 0].item() == pytest.approx(0.0, abs=1e-30)


def test_empty_target_gives_finite_loss_pushing_predictions_down():
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]], requires_grad=True)
    target = torch.zeros_like(logits)
    loss = segmentation_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert (logits.grad > 0).all()  # gradient descent lowers every logit
    dice_grad = torch.autograd.grad(soft_dice_loss(logits, target), logits)[0]
    assert (dice_grad > 0).all()
    assert soft_dice_loss(torch.full((1, 3, 3), -100.0), torch.zeros(1, 3, 3)).item() < 1e-6


def test_dice_is_per_sample_then_mean():
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    per_sample = soft_dice_loss(logits, target, reduction="none")
    # sample 0: 1 - (2*2 + 1) / (2 + 4 + 1); sample 1 (empty): 1 - 1 / (2 + 1)
    assert per_sample.tolist() == pytest.approx([1 - 5 / 7, 1 - 1 / 3])
    assert soft_dice_loss(logits, target).item() == pytest.approx(per_sample.mean().item())


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 1, 3, 3, generator=gen) > 0.5).double()
    target[1] = 0.0  # one empty sample
    assert torch.autograd.gradcheck(lambda x: segmentation_loss(x, target), (logits,))


def test_invalid_parameters_raise():
    logits, target = _tiny()
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, target, alpha=1.5)
    with pytest.raises(ValueError, match="smooth"):
        soft_dice_loss(logits, target, smooth=0.0)
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, target, reduction="avg")
