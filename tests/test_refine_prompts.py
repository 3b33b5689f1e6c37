"""Click-to-refine in the library: decoder-only re-runs with points/box and the label token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssam.data.transforms import PreprocessInfo, preprocess_image, resized_shape
from ssam.inference.predictor import SSAMPredictor
from ssam.inference.refine import (
    RefinePrompt,
    map_coords_to_input,
    refine_logits,
    refine_probabilities,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def predictor(adapter, tiny_checkpoint):
    return SSAMPredictor.from_adapter(adapter, tiny_checkpoint)


@pytest.fixture(scope="module")
def slice_embedding(predictor):
    """A non-square slice (H 40, W 70): its embedding (C, h, w), info, 0-255 pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (1, 40, 70)).astype(np.float32)
    inputs, infos = predictor.preprocess([pixels])
    return predictor.encode(inputs)[0], infos[0], pixels


def test_no_points_equals_the_plain_label_prediction(predictor, slice_embedding):
    embedding, info, _ = slice_embedding
    tokens = predictor.label_tokens(predictor.trained_labels)
    plain = predictor.decode_probabilities(embedding, info, tokens)
    for k in range(len(tokens)):
        refined = refine_probabilities(predictor.model, embedding, tokens[k], info)
        assert refined.shape == (40, 70)
        np.testing.assert_allclose(refined, plain[k], atol=1e-5)
        empty = RefinePrompt.build()
        assert empty.is_empty
        again = refine_probabilities(predictor.model, embedding, tokens[k], info, empty)
        np.testing.assert_array_equal(again, refined)


def test_a_positive_point_changes_the_logits_near_it(predictor, slice_embedding):
    embedding, info, _ = slice_embedding
    token = predictor.label_tokens(predictor.trained_labels[:1])[0]
    plain = refine_logits(predictor.model, embedding, token, info)
    x, y = int(plain.argmin() % 70), int(plain.argmin() // 70)  # the least label-like pixel
    positive = RefinePrompt.build([[x, y]], [1])
    refined = refine_logits(predictor.model, embedding, token, info, positive)
    near = (slice(max(0, y - 3), y + 4), slice(max(0, x - 3), x + 4))
    assert (refined[near] - plain[near]).abs().max() > 1e-3
    negative = refine_logits(
        predictor.model, embedding, token, info, RefinePrompt.build([[x, y]], [0])
    )
    assert not torch.allclose(negative, refined)
    boxed = refine_logits(
        predictor.model, embedding, token, info, RefinePrompt.build(box=(5, 5, 30, 20))
    )
    assert boxed.shape == (40, 70) and not torch.allclose(boxed, plain)


def test_coordinate_mapping_of_a_non_square_slice():
    # 10 x 20 (H x W) to S = 64: resized to 32 x 64, scale 3.2 on both axes.
    info = PreprocessInfo((10, 20), resized_shape(10, 20, 64), 64)
    assert info.resized_size == (32, 64)
    mapped = map_coords_to_input(np.array([[0.0, 0.0], [19.0, 9.0], [7.0, 3.0]]), info)
    np.testing.assert_allclose(mapped[0], [1.1, 1.1])  # centre of pixel 0: 0.5 * 3.2 - 0.5
    np.testing.assert_allclose(mapped[1], [19.5 * 3.2 - 0.5, 9.5 * 3.2 - 0.5])
    # The bright pixel (x 7, y 3) of the slice peaks at the mapped model-input pixel.
    pixels = np.zeros((1, 10, 20), np.float32)
    pixels[0, 3, 7] = 255.0
    model_input, got = preprocess_image(pixels, 64)
    assert got == info
    row, col = np.unravel_index(int(model_input[0].argmax()), (64, 64))
    assert abs(col - mapped[2, 0]) <= 0.5 and abs(row - mapped[2, 1]) <= 0.5
    # Unequal scales: 40 x 70 -> 37 x 64 (rounding), each axis keeps its own factor.
    uneven = PreprocessInfo((40, 70), resized_shape(40, 70, 64), 64)
    edge = map_coords_to_input(np.array([69.5, 39.5]), uneven)  # bottom-right image edge
    np.testing.assert_allclose(edge, [64 - 0.5, 37 - 0.5])


def test_prompts_are_checked():
    with pytest.raises(ValueError, match="point labels"):
        RefinePrompt.build([[1, 2]], [2])
    with pytest.raises(ValueError, match="2 points but 1"):
        RefinePrompt.build([[1, 2], [3, 4]], [1])
    with pytest.raises(ValueError, match="x0 <= x1"):
        RefinePrompt.build(box=(5, 5, 1, 9))
    with pytest.raises(ValueError, match="outside"):
        RefinePrompt.build([[70, 2]], [1]).check_inside(40, 70)
    RefinePrompt.build([[69, 39]], [1], box=(0, 0, 69, 39)).check_inside(40, 70)
