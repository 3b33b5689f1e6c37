"""TinyViT's inference speed-ups (BatchNorm folded into its convolutions, channels-last
convolutions) keep the plain model's outputs: on a real photo, for the base and for an
adapted model whose BatchNorm affine and singular values moved, and through the predictor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from predict_helpers import LABELS, kvasir_image, lite_model_config
from ssam.data.transforms import preprocess_image
from ssam.factory import create_model
from ssam.inference.predictor import SSAMPredictor
from ssam.sam.tiny_vit import Conv2dBN, fold_batchnorms, prepare_inference


def _move_trained_tensors(model: nn.Module, seed: int = 0) -> None:
    """What training does to the tensors folding reads: BatchNorm affine and the spectrum."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("bn.weight", "svd_scale")):
                p.mul_(1 + 0.1 * noise)
            elif name.endswith(("bn.bias", "svd_shift")):
                p.add_(0.02 * noise)


@pytest.mark.parametrize(("size", "trained"), [(256, False), (128, True)])
def test_prepared_encoder_gives_the_plain_outputs(size, trained, kvasir_pair):
    torch.manual_seed(0)
    model = create_model(lite_model_config(size)).eval()
    if trained:
        _move_trained_tensors(model)
    photo = kvasir_pair[0].transpose(2, 0, 1).astype(np.float32)
    image = preprocess_image(photo, size, normalisation="minmax")[0]
    images = torch.stack([image, image.flip(-1)])  # a batch: encoded one image at a time
    with torch.no_grad():
        plain_embeddings = model.encode_images(images)
        plain_logits = model(images, ["polyp", "polyp"])
        fast = copy.deepcopy(model)
        prepare_inference(fast.image_encoder)
        embeddings, logits = fast.encode_images(images), fast(images, ["polyp", "polyp"])
    blocks = [m for m in fast.image_encoder.modules() if isinstance(m, Conv2dBN)]
    assert len(blocks) == 27 and all(isinstance(b.bn, nn.Identity) for b in blocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.image_encoder.modules())
    convs = [m for m in fast.image_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert fast.image_encoder.inference_chunk == 1  # on a CPU, one image per pass
    scale = plain_embeddings.abs().max()
    assert (embeddings - plain_embeddings).abs().max() < 1e-5 * scale
    assert (logits - plain_logits).abs().max() < 1e-4 * plain_logits.abs().max()


def test_folding_twice_changes_nothing_more():
    model = create_model(lite_model_config(64)).eval()
    assert fold_batchnorms(model.image_encoder) == 27
    assert fold_batchnorms(model.image_encoder) == 0


def test_predictor_runs_prepared_and_predicts_as_the_plain_model(lite_adapter, shared_data):
    fast = SSAMPredictor.from_adapter(lite_adapter)
    assert fast.model.image_encoder.channels_last
    plain = SSAMPredictor.from_adapter(lite_adapter, prepare_encoder=False)
    assert not plain.model.image_encoder.channels_last
    photo = kvasir_image(shared_data)
    a = fast.segment_file(photo, list(LABELS))
    b = plain.segment_file(photo, list(LABELS))
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
    changed = a.label_map != b.label_map
    assert changed.mean() < 1e-4  # only pixels at a tie between labels may differ
