"""Intensity presets, SAM preprocessing and its inverse, seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssam.config.data import AugmentConfig, IntensityConfig
from ssam.data.transforms import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    augment_pair,
    augmentation_rng,
    compute_intensity_range,
    preprocess_image,
    preprocess_mask,
    preprocess_pair,
    resized_shape,
    resolve_intensity,
    restore_to_original,
    scale_intensity,
)


def test_rgb_preset_passes_uint8_through():
    image = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    np.testing.assert_array_equal(
        scale_intensity(image, IntensityConfig(preset="rgb")), image.astype(np.float32)
    )


def test_auto_preset_is_resolved_by_type_and_dimensionality():
    hu = np.linspace(-1000, 1500, 2 * 8 * 8 * 4).reshape(2, 8, 8, 4).astype(np.int16)
    auto = IntensityConfig()
    assert auto.preset == "auto"
    assert resolve_intensity(auto, hu.astype(np.uint8), is_2d=True).preset == "rgb"
    assert resolve_intensity(None, hu[..., :1], is_2d=True).preset == "minmax"
    assert resolve_intensity(auto, hu, is_2d=False).preset == "mri"
    narrow = resolve_intensity(IntensityConfig(percentiles=(2, 98)), hu, is_2d=False)
    assert narrow == IntensityConfig(preset="mri", percentiles=(2, 98))
    window = IntensityConfig(preset="ct", window_level=40, window_width=400)
    assert resolve_intensity(window, hu, is_2d=False) is window
    for function in (compute_intensity_range, scale_intensity):
        with pytest.raises(ValueError, match="'auto' must be resolved"):
            function(hu, auto)


def test_ct_window_by_level_width_equals_min_max():
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 1000.0]]], dtype=np.float32)
    by_width = scale_intensity(hu, IntensityConfig(preset="ct", window_level=40, window_width=400))
    by_bounds = scale_intensity(hu, IntensityConfig(preset="ct", window_min=-160, window_max=240))
    np.testing.assert_allclose(by_width, by_bounds)
    np.testing.assert_allclose(by_width[0, 0], [0.0, 0.0, 127.5, 255.0, 255.0])


def test_minmax_and_mri_percentiles_per_channel():
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(100, 10, (32, 32)), rng.normal(-5, 1, (32, 32))]).astype(
        np.float32
    )
    image[0, 0, 0] = 1e6  # an outlier the percentile clip ignores
    minmax = scale_intensity(image, IntensityConfig(preset="minmax"))
    assert minmax.min() == 0.0 and minmax.max() == 255.0
    assert np.median(minmax[0]) < 1.0  # squashed by the outlier
    mri = scale_intensity(image, IntensityConfig(preset="mri", percentiles=(0.5, 99.5)))
    assert 100 < np.median(mri[0]) < 155 and 100 < np.median(mri[1]) < 155
    # A volume-wide range applied to one slice gives the same values as on the volume.
    value_range = compute_intensity_range(image[:, None], IntensityConfig(preset="mri"))
    np.testing.assert_allclose(
        scale_intensity(image, IntensityConfig(preset="mri"), value_range), mri
    )
    flat = scale_intensity(np.full((1, 4, 4), 7.0), IntensityConfig(preset="minmax"))
    assert flat.max() == 0.0


def test_preprocess_image_resizes_longest_side_pads_and_normalises():
    image = np.full((1, 30, 60), 255.0, dtype=np.float32)
    tensor, info = preprocess_image(image, 64)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    assert info.original_size == (30, 60) and info.resized_size == (32, 64) == resized_shape(
        30, 60, 64
    )
    expected = (255.0 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD)
    torch.testing.assert_close(tensor[:, 10, 10], expected)
    assert torch.all(tensor[:, 32:, :] == 0)  # bottom padding, zero after normalisation


def test_mask_stays_binary_and_restore_inverts_preprocessing():
    yy, xx = np.mgrid[:90, :120]
    mask = ((yy - 40) ** 2 + (xx - 70) ** 2 < 30**2).astype(np.uint8)
    target = preprocess_mask(mask, 64)
    assert target.shape == (64, 64) and set(target.unique().tolist()) == {0.0, 1.0}
    assert target[48:].sum() == 0  # resized to 48 x 64, rest is padding
    _, info = preprocess_image(mask[None] * 255.0, 64)
    restored = restore_to_original(target[None], info)
    assert restored.shape == (1, 90, 120)
    ours = restored[0].numpy() > 0.5
    iou = (ours & (mask > 0)).sum() / (ours | (mask > 0)).sum()
    assert iou > 0.95
    with pytest.raises(ValueError, match=r"expected \(N, 64, 64\)"):
        restore_to_original(target, info)


def test_augmentation_is_seeded_and_identical_for_image_and_mask():
    yy, xx = np.mgrid[:48, :64]
    mask = torch.from_numpy(((yy - 20) ** 2 + (xx - 30) ** 2 < 12**2).astype(np.float32))
    image = mask[None].repeat(3, 1, 1) * 255.0
    config = AugmentConfig(rotation_deg=10, brightness=0.1, hflip=True, vflip=True)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = augment_pair(image, mask, config, augmentation_rng(7, 2, 5))
    second = augment_pair(image, mask, config, augmentation_rng(7, 2, 5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(torch.get_rng_state(), torch_state)  # no global RNG touched
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    other = augment_pair(image, mask, config, augmentation_rng(7, 3, 5))
    assert not torch.equal(first[0], other[0])
    for out_image, out_mask in (first, other):
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        agree = ((out_image[0] > 127) == (out_mask > 0.5)).float().mean()
        assert agree > 0.99


def test_flips_happen_only_when_enabled():
    image = torch.arange(12.0).reshape(1, 3, 4)
    still = AugmentConfig(rotation_deg=0, brightness=0)
    flips = AugmentConfig(rotation_deg=0, brightness=0, hflip=True)
    seen = set()
    for seed in range(20):
        assert torch.equal(augment_pair(image, None, still, augmentation_rng(seed, 0, 0))[0], image)
        out = augment_pair(image, None, flips, augmentation_rng(seed, 0, 0))[0]
        assert torch.equal(out, image) or torch.equal(out, image.flip(-1))
        seen.add(torch.equal(out, image))
    assert seen == {True, False}


def test_preprocess_pair_with_augmentation_needs_an_rng():
    with pytest.raises(ValueError, match="rng"):
        preprocess_pair(np.zeros((1, 8, 8)), np.zeros((8, 8)), 16, AugmentConfig())
